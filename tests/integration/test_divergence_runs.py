"""Divergence in a real `lexiray tune` on CPU: a trial whose loss turns non-finite at fp32
(a precision it cannot leave) is stopped at once, recorded as DIVERGED, ranked last and
never exported as best; the run goes on and exits 0. And `--chaos nan-loss@step=N`: the
precision back-off ladder's machinery (detect, one log line, resume, finish)."""

from __future__ import annotations

import csv
import json
import math
import time

import pytest

from lexiray.config import load_config
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

SHORT_RUN = ["--set", "tune.scheduler=fifo", "--set", "data.max_rows=120", "--set", "training.max_steps=12",
             "--set", "training.save_steps=4", "--set", "training.eval_steps=4", "--set", "tune.max_failures=0",
             "--set", "search.lora.r={choice: [8]}",
             "--set", "search.training.per_device_train_batch_size={choice: [8]}"]


def _leaderboard(root) -> list[dict]:
    with (root / "leaderboard.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_a_diverging_trial_is_stopped_ranked_last_and_never_best(tmp_path, no_ray_leftovers):
    started = time.time()
    result = run_cli(["tune", "--num-samples", "1", "--max-concurrent", "2", *SHORT_RUN,
                      "--set", "search.training.learning_rate={grid: [3.0e-3, 200.0]}",
                      "--storage-path", str(tmp_path / "results"), "--name", "div"], cwd=tmp_path)
    wall = time.time() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "results" / "div"
    rows = _leaderboard(root)
    by_lr = {float(row["learning_rate"]): row for row in rows}
    good, bad = by_lr[3.0e-3], by_lr[200.0]
    good_steps, bad_steps = int(good["steps"]), int(bad["steps"])
    print(f"\ndiverged trial: {bad['diverged']}; trained {bad_steps} of 12 steps (good trial {good_steps}); "
          f"run wall time {wall:.0f} s")
    assert bad["status"] == "DIVERGED" and good["status"] == "DONE"
    assert bad_steps < good_steps == 12  # stopped at once, not trained to max_steps
    assert [row["trial_id"] for row in rows] == [good["trial_id"], bad["trial_id"]]  # ranked after the good one
    summary = json.loads((root / "summary.json").read_text())
    assert summary["best"]["trial_id"] == good["trial_id"] and summary["diverged"] == 1
    exported = load_config(str(root / "best" / "config.yaml"))
    assert exported.training.learning_rate == 3.0e-3  # best/ holds the good trial
    best_metrics = json.loads((root / "best" / "metrics.json").read_text())["best"]
    assert best_metrics["eval_loss"] == pytest.approx(float(good["eval_loss"]))
    assert f"{bad['trial_id']}" in result.stdout and "diverged: non-finite" in result.stdout
    assert "1 diverged" in result.stdout


def test_an_injected_nan_loss_backs_off_and_the_trial_finishes(tmp_path, no_ray_leftovers):
    # `lexiray train`: its worker's log lines reach the terminal (a tuning run's trials log to
    # their own files; the leaderboard's NaN column shows the rungs there)
    started = time.time()
    output = tmp_path / "run"
    result = run_cli(["train", *SHORT_RUN, "--set", "training.learning_rate=3.0e-3", "--chaos", "nan-loss@step=5",
                      "--output", str(output)], cwd=tmp_path)
    wall = time.time() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logged = result.stdout + result.stderr
    lines = [line for line in logged.splitlines() if "precision back-off rung" in line]
    print(f"\nback-off line: {lines[0] if lines else None}; run wall time {wall:.0f} s")
    assert len(lines) == 1
    assert ("non-finite training loss nan at step 5 on fp32 (--chaos nan-loss's virtual rung): precision back-off "
            "rung 1/1: fp32 (--chaos nan-loss's virtual rung) → fp32") in lines[0]
    final = json.loads((output / "metrics.json").read_text())["final"]
    assert (final["step"], final["precision_retries"], final["ran_precision"]) == (12, 1, "fp32")
    assert "diverged" not in final
    # resumed from the finite step-4 checkpoint, not from the poisoned weights
    assert math.isfinite(final["eval_loss"]) and final["resumed_from_step"] == 4
