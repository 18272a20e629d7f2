"""Warm starts and reuse (lexiray.warm), for real: a search seeded by an earlier experiment
runs its best configurations first and replays the finished ones instead of training them,
and within one run the same configuration sampled twice trains once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import QUICK_TUNE, read_leaderboard, run_cli

pytestmark = pytest.mark.slow


def _summary(root: Path) -> dict:
    return json.loads((root / "summary.json").read_text())


def test_same_configuration_sampled_twice_trains_once(tmp_path, no_ray_leftovers):
    root = tmp_path / "results" / "twins"
    # every setting the smoke preset searches has one value: all three samples are the same trial
    result = run_cli(["tune", "--num-samples", "3", "--storage-path", str(tmp_path / "results"), "--name", "twins",
                      *QUICK_TUNE, "--set", "search.training.learning_rate={choice: [0.003]}",
                      "--set", "search.lora.r={choice: [4]}",
                      "--set", "search.training.per_device_train_batch_size={choice: [4]}"], cwd=tmp_path, check=True)
    assert result.stdout.count("not trained)") == 2 and "2 reused (16 steps not trained again)" in result.stdout
    rows = read_leaderboard(root)
    assert len(rows) == 3, rows
    trained = [row for row in rows if not row["reused_from"]]
    reused = [row for row in rows if row["reused_from"]]
    assert len(trained) == 1 and len(reused) == 2, rows
    assert all(row["reused_from"] == f"twins/{trained[0]['trial_id']}" for row in reused)
    # the replay is the twin's results, checkpoint included
    assert {(row["eval_loss"], row["steps"], row["best_checkpoint"]) for row in rows} == \
        {(trained[0]["eval_loss"], "8", trained[0]["best_checkpoint"])}
    summary = _summary(root)
    assert summary["total_steps_trained"] == 8 and summary["reused"] == 2 and summary["steps_reused"] == 16
    assert len(list(root.glob("trial_*/checkpoint_*"))) == 1  # only the trained trial saved checkpoints
    # one checkpoint, scored once (the base and it), its task score on all three rows
    scores = json.loads((root / "scores.json").read_text())
    names = [model["name"] for model in scores["models"]]
    assert len(names) == 2 and names[0] == "base" and names[1] in {row["trial_id"] for row in rows}
    assert {row["task_score"] for row in rows} == {str(scores["models"][1]["task_score"])}


def test_warm_start_trains_less_and_finds_a_best_at_least_as_good(tmp_path, no_ray_leftovers):
    results = tmp_path / "results"
    common = ["tune", "--num-samples", "4", "--storage-path", str(results), *QUICK_TUNE]
    run_cli([*common, "--name", "cold"], cwd=tmp_path, check=True)
    # by its name under --storage-path; priced, which changes no trial's fingerprint
    warm = run_cli([*common, "--name", "warm", "--warm-start", "cold", "--set", "resources.price_per_hour=0.36"],
                   cwd=tmp_path, check=True)
    assert "warm start from" in warm.stdout and "2 of its best configurations run first" in warm.stdout
    assert "2 of them reused as they are" in warm.stdout
    cold_rows, warm_rows = read_leaderboard(results / "cold"), read_leaderboard(results / "warm")
    assert len(cold_rows) == 4 and len(warm_rows) == 4
    reused = [row for row in warm_rows if row["reused_from"]]
    # the earlier best two, replayed with their results and their checkpoints in the earlier experiment
    assert len(reused) == 2
    assert {row["reused_from"] for row in reused} == {f"cold/{row['trial_id']}" for row in cold_rows[:2]}
    assert {row["eval_loss"] for row in reused} == {row["eval_loss"] for row in cold_rows[:2]}
    assert all(row["best_checkpoint"].startswith(str(results / "cold")) for row in reused)
    # a reused trial pays only its own seconds at this run's price, not its twin's training
    trained = [row for row in warm_rows if not row["reused_from"]]
    assert len(trained) == 2 and all(float(row["cost_usd"]) > 0 for row in trained)
    assert max(float(row["cost_usd"]) for row in reused) < min(float(row["cost_usd"]) for row in trained)
    assert all(row["cost_usd"] == "" for row in cold_rows)  # no price there: no cost
    cold, warm_summary = _summary(results / "cold"), _summary(results / "warm")
    assert warm_summary["cost_usd"] == pytest.approx(sum(float(row["cost_usd"]) for row in warm_rows))
    assert warm_summary["total_steps_trained"] < cold["total_steps_trained"]
    assert warm_summary["best"]["eval_loss"] <= cold["best"]["eval_loss"]
    # the best adapter exports from wherever its checkpoint is
    assert (results / "warm" / "best" / "adapter_config.json").is_file()


def test_bad_warm_start_is_refused_before_ray_starts(tmp_path):
    result = run_cli(["tune", "--storage-path", str(tmp_path / "results"), "--name", "x",
                      "--warm-start", str(tmp_path / "nowhere")], cwd=tmp_path)
    assert result.returncode == 2
    assert "not a lexiray experiment" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
