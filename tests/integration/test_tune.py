"""`lexiray tune` through a real local Ray Tune + Train run with ASHA on the tiny model, and
what is read from it afterwards: leaderboard, report, TensorBoard (curves, HParams), exports."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from lexiray.config import LEXILINGO_TASKS
from tests.conftest import SIXTEEN_STEP_TRIALS, check_no_ray_leftovers, evaluate_adapter, read_leaderboard, run_cli

pytestmark = pytest.mark.slow

# Six trials, two at a time (explicitly: never the machine's core count); three learning
# rates are far too small to learn, so ASHA has clearly worse trials to stop at its rungs
# while the good ones run to max_t.
FAST_TUNE = [
    *SIXTEEN_STEP_TRIALS,
    "--set", "search.training.learning_rate={grid: [6.0e-3, 1.0e-6, 5.0e-3, 1.0e-6, 1.0e-6, 4.0e-3]}",
    "--set", "search.lora.r={choice: [4, 8]}",
]


@dataclass(frozen=True)
class TuningRun:
    cwd: Path
    root: Path  # the experiment folder
    stdout: str


@pytest.fixture(scope="module")
def asha(tmp_path_factory) -> TuningRun:
    """ONE smoke tuning run, shared by the checks of its leaderboard, report, TensorBoard
    files and exports (none of them starts Ray again)."""
    cwd = tmp_path_factory.mktemp("tune")
    try:
        result = run_cli(["tune", *FAST_TUNE, "--storage-path", str(cwd / "results"), "--name", "asha"], cwd=cwd,
                         check=True)
    finally:
        check_no_ray_leftovers()
    return TuningRun(cwd, cwd / "results" / "asha", result.stdout)


def test_tune_with_asha(asha):
    root, out = asha.root, asha.stdout
    assert f"tensorboard --logdir {root / 'tensorboard'}" in out
    assert out.count(f"tensorboard --logdir {root / 'tensorboard'}") == 2  # at the start and the end
    assert "best adapter:" in out and "leaderboard" in out
    assert f"experiment {root}: 6 trials, 2 at a time" in out  # 1 sample x 6 grid points

    rows = read_leaderboard(root)
    assert len(rows) == 6
    assert all(row["status"] in ("DONE", "STOPPED") for row in rows), rows
    losses = [float(row["eval_loss"]) for row in rows]
    assert losses == sorted(losses)
    total = int(rows[0]["total_steps"])
    assert any(row["stopped_early"] == "True" and int(row["steps"]) < total for row in rows)
    assert any(int(row["steps"]) == total for row in rows)
    # the bundled data's five tasks: each evaluation reported eval_loss/<task> to Tune too
    for task in LEXILINGO_TASKS:
        assert all(float(row[f"eval_loss/{task}"]) > 0 for row in rows), task

    summary = json.loads((root / "summary.json").read_text())
    assert summary["trials"] == 6 and summary["stopped_early"] >= 1
    # the first trial evaluated the untrained model: tuning must have improved on it
    assert summary["eval_loss_at_start"] > summary["best"]["eval_loss"]
    assert f"untrained model (step 0): eval_loss {summary['eval_loss_at_start']:.4f}" in out
    assert summary["best"]["trial_id"] == rows[0]["trial_id"]
    assert sorted(summary["tasks"]) == sorted(LEXILINGO_TASKS)
    best_dir = root / "best"
    best_metrics = json.loads((best_dir / "metrics.json").read_text())
    assert best_metrics["eval_loss_best"] == pytest.approx(losses[0])
    # the exported adapter really is the checkpoint that scored the leaderboard's first row
    assert evaluate_adapter(best_dir, root / "config.yaml") == pytest.approx(losses[0], rel=1e-4)
    # every trial wrote its HF curves into the experiment folder, one TensorBoard run each
    runs = [p for p in (root / "tensorboard").iterdir() if p.is_dir()]
    assert len(runs) == 6 and all(list(run.glob("events.out.tfevents.*")) for run in runs)
    # a single-worker trial trains in its Tune trial actor (Tune's own `pid` of the trial),
    # and a finished or stopped trial hands that warm actor to a later trial
    pids = set()
    folders = sorted(root.glob("trial_*"))
    assert len(folders) == 6, folders
    for folder in folders:
        reports = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        assert reports and all(report["training_pid"] == report["pid"] for report in reports), folder.name
        pids.add(reports[-1]["pid"])
    assert len(pids) < 6, pids  # two at a time: a later trial got an earlier one's actor
    # each trial saved its resolved config where it ran; the leaderboard's settings are those
    for row in rows:
        saved = yaml.safe_load((root / "trials" / row["trial_id"] / "config.yaml").read_text())
        assert saved["training"]["learning_rate"] == pytest.approx(float(row["learning_rate"]))
        assert saved["lora"]["r"] == int(row["lora_r"]) and saved["lora"]["alpha"] == 2 * int(row["lora_r"])


def test_export_another_trial(asha, tmp_path):
    root, rows = asha.root, read_leaderboard(asha.root)
    # `export --trial`: another trial's best checkpoint, not the leaderboard's first
    other = rows[-1]
    exported = tmp_path / "other-adapter"
    result = run_cli(["export", str(root), "--trial", other["trial_id"], "-o", str(exported)], cwd=tmp_path,
                     check=True)
    assert str(exported) in result.stdout
    other_metrics = json.loads((exported / "metrics.json").read_text())
    assert other_metrics["eval_loss_best"] == pytest.approx(float(other["eval_loss"]))
    assert json.loads((exported / "adapter_config.json").read_text())["r"] == int(other["lora_r"])
    assert evaluate_adapter(exported, root / "config.yaml") == pytest.approx(float(other["eval_loss"]), rel=1e-4)
    missing = run_cli(["export", str(root), "--trial", "no_such_trial"], cwd=tmp_path)
    assert missing.returncode == 2 and "no trial 'no_such_trial'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def _markdown_table(text: str) -> list[dict]:
    """The first Markdown table of a text, as dicts by header."""
    all_lines = text.splitlines()
    start = next(index for index, line in enumerate(all_lines) if line.startswith("|"))
    lines = []
    for line in all_lines[start:]:  # up to the table's end: the task-score tables come later
        if not line.startswith("|"):
            break
        lines.append(line)
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_report_writes_plots_and_a_readme_with_theread_leaderboard(asha):
    from PIL import Image

    root = asha.root
    result = run_cli(["report", str(root)], cwd=asha.cwd, check=True)
    report = root / "report"
    assert f"report: {report / 'README.md'}" in result.stdout and "leaderboard" in result.stdout
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["eval_loss.png", "eval_loss_by_setting.png", "quality_speed.png", "task_losses.png",
                    "task_scores.png"]  # task_scores: lexiray.scoring, run at the end of the tune
    for name in pngs:
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 400
            assert len(image.getcolors(maxcolors=1 << 20) or range(2)) > 1  # something is drawn
    readme = (report / "README.md").read_text()
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)) == pngs  # every plot embedded, by relative path
    table, rows = _markdown_table(readme), read_leaderboard(root)
    assert [(r["#"], r["trial"], r["status"]) for r in table] == \
        [(r["rank"], r["trial_id"], r["status"].lower()) for r in rows]
    for shown, row in zip(table, rows):
        assert float(shown["eval_loss"]) == pytest.approx(float(row["eval_loss"]), abs=6e-5)
        assert float(shown["eval_loss/grammar"]) == pytest.approx(float(row["eval_loss/grammar"]), abs=6e-5)
        assert shown["steps"] == f"{row['steps']}/{row['total_steps']}"


def _tensorboard(logdir: Path):
    """TensorBoard's own readers over a logdir: (event multiplexer, data provider, the
    HParams plugin's backend, a request context)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import backend_context

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(logdir))
    tb_context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    return multiplexer, provider, backend_context.Context(tb_context), context.RequestContext()


def test_tensorboard_has_every_trial_curves_and_one_hparams_session_each(asha):
    from tensorboard.plugins.hparams import api_pb2, get_experiment, list_session_groups

    from lexiray.report import read_summary, write_hparams
    from lexiray.storage import ExperimentLayout

    root, rows = asha.root, read_leaderboard(asha.root)
    layout = ExperimentLayout(str(root))
    write_hparams(layout, read_summary(layout)["leaderboard"])  # a later report rewrites, never adds, sessions
    _, provider, backend, ctx = _tensorboard(root / "tensorboard")
    scalars = provider.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=1000)
    runs = {run.split(" ", 1)[0]: tags for run, tags in scalars.items()}
    assert sorted(runs) == sorted(row["trial_id"] for row in rows)  # one run per trial
    for row in rows:
        tags = runs[row["trial_id"]]
        assert tags["eval/loss"][-1].value == pytest.approx(float(row["final_eval_loss"]), rel=1e-5)
        assert [point.step for point in tags["eval/loss"]][-1] == int(row["steps"])
        for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/samples_per_second",
                    "train/tokens_per_second", "train/peak_memory_mb", "eval/loss/grammar"):
            assert tags[tag], tag

    experiment = get_experiment.Handler(ctx, backend, "", api_pb2.GetExperimentRequest()).run()
    assert {"learning_rate", "lora_r", "lora_alpha", "lora_dropout", "batch_x_accum"} <= \
        {info.name for info in experiment.hparam_infos}
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    groups = list_session_groups.Handler(ctx, backend, "", request).run().session_groups
    assert sorted(group.name for group in groups) == sorted(row["trial_id"] for row in rows)
    assert all(len(group.sessions) == 1 for group in groups)
    by_id = {row["trial_id"]: row for row in rows}
    for group in groups:
        row = by_id[group.name]
        assert group.hparams["learning_rate"].number_value == pytest.approx(float(row["learning_rate"]))
        assert group.hparams["lora_r"].number_value == int(row["lora_r"])
        assert group.hparams["batch_x_accum"].string_value == f"{row['batch_size']}x{row['grad_accum']}"
        metrics = {value.name.tag: value.value for value in group.metric_values}
        assert metrics["hparams/best_eval_loss"] == pytest.approx(float(row["eval_loss"]), rel=1e-6)
        assert metrics["hparams/steps"] == int(row["steps"])
        assert metrics["hparams/stopped_early"] == (1.0 if row["stopped_early"] == "True" else 0.0)
        assert metrics["hparams/best_eval_loss/grammar"] == pytest.approx(float(row["eval_loss/grammar"]), rel=1e-6)


def test_export_merge_gives_a_plain_model_with_the_adapters_logits(asha, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = tmp_path / "merged"
    result = run_cli(["export", str(asha.root), "--merge", "-o", str(output)], cwd=tmp_path, check=True)
    assert f"merged model exported to {output}" in result.stdout
    assert (output / "model.safetensors").is_file() and not (output / "adapter_config.json").exists()
    assert "merged into the base model" in (output / "README.md").read_text()
    adapter = output / "adapter"
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]

    merged = AutoModelForCausalLM.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(adapter)).eval()
    inputs = tokenizer(["Rewrite with correct grammar: she go to school every days."], return_tensors="pt")
    with torch.no_grad():
        merged_logits, adapter_logits = merged(**inputs).logits, unmerged(**inputs).logits
        with unmerged.disable_adapter():
            base_logits = unmerged(**inputs).logits
    difference = (merged_logits - adapter_logits).abs().max().item()
    print(f"merged vs base + adapter: max logit difference {difference:.2e}")
    assert difference < 1e-4
    assert (base_logits - adapter_logits).abs().max().item() > 1e-2  # the adapter does change the model
    generated = merged.generate(**inputs, min_new_tokens=4, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4


def test_tune_gpu_request_without_gpu_fails_fast(tmp_path, no_ray_leftovers):
    result = run_cli(["tune", "--set", "resources.gpus_per_trial=1", "--storage-path", str(tmp_path / "r"),
                      "--name", "gpu"], cwd=tmp_path, timeout=180)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "gpus_per_trial" in lines[0]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "r" / "gpu").glob("trial_*"))  # no trial started
