"""`lexiray tune` through a real local Ray Tune + Train run with ASHA on the tiny model."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.conftest import evaluate_adapter, run_cli

pytestmark = pytest.mark.slow

# Six trials, two at a time; three learning rates are far too small to learn, so ASHA has
# clearly worse trials to stop at its rungs while the good ones run to max_t.
FAST_TUNE = [
    "--num-samples", "1",
    "--set", "data.max_rows=200",
    "--set", "training.max_steps=16",
    "--set", "training.save_steps=4", "--set", "training.eval_steps=4",
    "--set", "search.training.learning_rate={grid: [6.0e-3, 1.0e-6, 5.0e-3, 1.0e-6, 1.0e-6, 4.0e-3]}",
    "--set", "search.lora.r={choice: [4, 8]}",
]


def test_tune_with_asha(tmp_path, no_ray_leftovers):
    result = run_cli(["tune", *FAST_TUNE, "--storage-path", str(tmp_path / "results"), "--name", "asha"],
                     cwd=tmp_path, check=True)
    root = tmp_path / "results" / "asha"
    out = result.stdout
    assert f"tensorboard --logdir {root / 'tensorboard'}" in out
    assert out.count(f"tensorboard --logdir {root / 'tensorboard'}") == 2  # at the start and the end
    assert "best adapter:" in out and "leaderboard" in out

    with (root / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert all(row["status"] in ("DONE", "STOPPED") for row in rows), rows
    losses = [float(row["eval_loss"]) for row in rows]
    assert losses == sorted(losses)
    total = int(rows[0]["total_steps"])
    assert any(row["stopped_early"] == "True" and int(row["steps"]) < total for row in rows)
    assert any(int(row["steps"]) == total for row in rows)

    summary = json.loads((root / "summary.json").read_text())
    assert summary["trials"] == 6 and summary["stopped_early"] >= 1
    # the first trial evaluated the untrained model: tuning must have improved on it
    assert summary["eval_loss_at_start"] > summary["best"]["eval_loss"]
    assert f"untrained model (step 0): eval_loss {summary['eval_loss_at_start']:.4f}" in out
    assert summary["best"]["trial_id"] == rows[0]["trial_id"]
    best_dir = root / "best"
    best_metrics = json.loads((best_dir / "metrics.json").read_text())
    assert best_metrics["eval_loss_best"] == pytest.approx(losses[0])
    # the exported adapter really is the checkpoint that scored the leaderboard's first row
    assert evaluate_adapter(best_dir, root / "config.yaml") == pytest.approx(losses[0], rel=1e-4)
    # every trial wrote its HF curves into the experiment folder, one TensorBoard run each
    runs = [p for p in (root / "tensorboard").iterdir() if p.is_dir()]
    assert len(runs) == 6 and all(list(run.glob("events.out.tfevents.*")) for run in runs)
    # each trial saved its resolved config where it ran; the leaderboard's settings are those
    for row in rows:
        saved = yaml.safe_load((root / "trials" / row["trial_id"] / "config.yaml").read_text())
        assert saved["training"]["learning_rate"] == pytest.approx(float(row["learning_rate"]))
        assert saved["lora"]["r"] == int(row["lora_r"]) and saved["lora"]["alpha"] == 2 * int(row["lora_r"])

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


def test_tune_gpu_request_without_gpu_fails_fast(tmp_path, no_ray_leftovers):
    result = run_cli(["tune", "--set", "resources.gpus_per_trial=1", "--storage-path", str(tmp_path / "r"),
                      "--name", "gpu"], cwd=tmp_path, timeout=180)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "gpus_per_trial" in lines[0]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "r" / "gpu").glob("trial_*"))  # no trial started
