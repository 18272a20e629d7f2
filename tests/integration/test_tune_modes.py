"""`lexiray tune` beyond a first run: `--overwrite` replaces an experiment, `--resume`
continues one (finished trials are not trained again), and an Optuna search really tunes
(its trials are sampled by TPE, trained and ranked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUICK_TUNE, read_leaderboard, run_cli

pytestmark = pytest.mark.slow


def _checkpoints(root: Path) -> dict[str, list[str]]:
    return {folder.name: sorted(p.name for p in folder.glob("checkpoint_*")) for folder in root.glob("trial_*")}


def test_tune_overwrite_replaces_and_resume_continues(tmp_path, no_ray_leftovers):
    results, root = tmp_path / "results", tmp_path / "results" / "again"
    first = ["tune", "--num-samples", "2", "--storage-path", str(results), "--name", "again", *QUICK_TUNE]
    run_cli(first, cwd=tmp_path, check=True)
    before = read_leaderboard(root)
    assert len(before) == 2 and all(row["status"] == "DONE" for row in before)
    checkpoints = _checkpoints(root)
    assert len(checkpoints) == 2 and all(checkpoints.values())

    # --resume on a finished experiment: nothing is trained again, the leaderboard is the same
    resumed = run_cli([*first, "--resume"], cwd=tmp_path, check=True)
    assert f"resuming {root}" in resumed.stdout
    assert _checkpoints(root) == checkpoints
    after = read_leaderboard(root)
    assert [(r["trial_id"], r["eval_loss"]) for r in after] == [(r["trial_id"], r["eval_loss"]) for r in before]

    # --overwrite: a new experiment in its place, with the new settings
    marker = root / "trial_marker_left_by_the_old_run"
    marker.mkdir()
    replaced = run_cli(["tune", "--num-samples", "1", "--storage-path", str(results), "--name", "again", *QUICK_TUNE,
                        "--set", "training.max_steps=4", "--set", "training.save_steps=2",
                        "--set", "training.eval_steps=2", "--overwrite"], cwd=tmp_path, check=True)
    assert "best adapter:" in replaced.stdout and not marker.exists()
    rows = read_leaderboard(root)
    assert len(rows) == 1 and rows[0]["status"] == "DONE" and int(rows[0]["steps"]) == 4
    assert yaml.safe_load((root / "config.yaml").read_text())["training"]["max_steps"] == 4


def test_optuna_search_tunes_and_ranks_its_trials(tmp_path, no_ray_leftovers):
    root = tmp_path / "results" / "tpe"
    result = run_cli(["tune", "--num-samples", "4", "--storage-path", str(tmp_path / "results"), "--name", "tpe",
                      *QUICK_TUNE, "--set", "tune.search_alg=optuna",
                      "--set", "search.training.learning_rate={loguniform: [1.0e-5, 1.0e-2]}",
                      "--set", "search.lora.r={choice: [4, 8]}"], cwd=tmp_path, check=True)
    assert "search optuna" in result.stdout
    rows = read_leaderboard(root)
    assert len(rows) == 4 and all(row["status"] == "DONE" for row in rows), rows
    losses = [float(row["eval_loss"]) for row in rows]
    assert losses == sorted(losses) and losses[0] < losses[-1]
    rates = {float(row["learning_rate"]) for row in rows}
    assert len(rates) == 4 and all(1e-5 <= rate <= 1e-2 for rate in rates)  # drawn by Optuna, not a grid
    summary = json.loads((root / "summary.json").read_text())
    assert summary["best"]["trial_id"] == rows[0]["trial_id"]
    assert summary["eval_loss_at_start"] > losses[0]  # the best trial learned
