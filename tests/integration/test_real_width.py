"""Qwen2.5 at its real width through the product, on CPU: a Qwen2.5-0.5B-shaped folder (its
896 width, 151936-token vocabulary and Qwen's real tokenizer; one layer, random weights)
through `analyze`, `plan`, a two-trial `tune` with a worker killed and resumed, `export
--merge`, and `train -o DIR` followed by `export DIR --merge`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lexiray.config import LEXILINGO_TASKS
from tests.conftest import run_cli
from tests.real_width import write_qwen25_folder

pytestmark = pytest.mark.slow

VOCAB = 151936
# Short rows and few steps: a step at this width costs seconds on two CPU cores (the logits
# alone are 151936 wide), so the sequence is cut to 128 tokens and the batch to 2.
REAL_WIDTH = ["--set", "data.max_rows=40", "--set", "data.max_seq_length=128",
              "--set", "training.per_device_train_batch_size=2", "--set", "training.per_device_eval_batch_size=2",
              "--set", "search.training.per_device_train_batch_size={choice: [2]}",
              "--set", "training.max_steps=4", "--set", "training.save_steps=2", "--set", "training.eval_steps=2",
              "--set", "training.logging_steps=2"]


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory) -> Path:
    return write_qwen25_folder(tmp_path_factory.mktemp("models") / "qwen2.5-0.5b-shaped", layers=1)


def _loads_as_a_plain_model(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.vocab_size == VOCAB and model.config.hidden_size == 896
    assert not (folder / "adapter_config.json").exists() and (folder / "adapter" / "adapter_config.json").is_file()


def test_analyze_and_plan_on_the_real_width_folder(qwen_folder, tmp_path):
    analyzed = run_cli(["analyze", "--model", str(qwen_folder)], cwd=tmp_path, check=True)
    assert "p90" in analyzed.stdout and all(task in analyzed.stdout for task in LEXILINGO_TASKS)
    planned = run_cli(["plan", "--set", f"model.name={qwen_folder}"], cwd=tmp_path, check=True)
    assert "GB" in planned.stdout


def test_tune_resume_and_merge_at_real_width(qwen_folder, tmp_path, no_ray_leftovers):
    root = tmp_path / "results" / "real"
    result = run_cli(["tune", "--num-samples", "1", "--max-concurrent", "2", "--storage-path",
                      str(tmp_path / "results"), "--name", "real", "--set", f"model.name={qwen_folder}", *REAL_WIDTH,
                      "--set", "tune.scheduler=fifo", "--set", "search.lora.r={choice: [8]}",
                      "--set", "search.training.learning_rate={grid: [1.0e-3, 3.0e-4]}",
                      "--chaos", "kill-worker@step=3"], cwd=tmp_path, check=True, timeout=900)
    assert "failed (failure 1): restarting it from its last checkpoint" in result.stdout
    with (root / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["status"] == "DONE" for row in rows), rows
    assert all(any(row.get(f"eval_loss/{task}") for task in LEXILINGO_TASKS) for row in rows)  # per-task losses
    (killed,) = root.glob("trial_*_00000")
    reports = [json.loads(line) for line in (killed / "result.json").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in reports] == [2, 4] and reports[-1]["resumed_from_step"] == 2
    summary = json.loads((root / "summary.json").read_text())
    print(f"real width, 2 trials x 4 steps: {summary['wall_time_s']:.0f} s; best eval_loss "
          f"{summary['best']['eval_loss']:.3f}, untrained {summary['eval_loss_at_start']:.3f}; "
          f"{summary['best']['tokens_per_second']:.0f} tokens/s, peak {summary['best']['peak_memory_mb']:.0f} MB")
    assert summary["eval_loss_at_start"] > summary["best"]["eval_loss"]  # it learned, even from random weights

    merged = tmp_path / "merged"
    run_cli(["export", str(root), "--merge", "-o", str(merged)], cwd=tmp_path, check=True)
    _loads_as_a_plain_model(merged)


def test_train_then_export_merge_of_its_output(qwen_folder, tmp_path, no_ray_leftovers):
    output = tmp_path / "trained"
    run_cli(["train", "--set", f"model.name={qwen_folder}", *REAL_WIDTH, "--set", "training.max_steps=2",
             "-o", str(output)], cwd=tmp_path, check=True, timeout=600)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["final"]["step"] == 2
    merged = tmp_path / "merged"
    result = run_cli(["export", str(output), "--merge", "-o", str(merged)], cwd=tmp_path, check=True)
    assert str(merged) in result.stdout
    _loads_as_a_plain_model(merged)
    copied = tmp_path / "copied"
    run_cli(["export", str(output), "-o", str(copied)], cwd=tmp_path, check=True)
    assert (copied / "adapter_model.safetensors").is_file() and (copied / "config.yaml").is_file()
    refused = run_cli(["export", str(output), "--trial", "x"], cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
