"""A tuning run whose every sample is estimated over its memory budget: the trials are
skipped (never trained), and the leaderboard and summary say so, with each estimate."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_trials_over_the_memory_budget_are_skipped_not_trained(tmp_path, no_ray_leftovers):
    result = run_cli(["tune", "--num-samples", "2", "--set", "data.max_rows=100",
                      "--set", "resources.gpu_memory_gb=0.01",  # the tiny model's estimate is ~0.1 GB
                      "--storage-path", str(tmp_path / "results"), "--name", "tight"], cwd=tmp_path, check=True)
    root = tmp_path / "results" / "tight"
    assert result.stdout.count("skipped: estimated peak memory") == 2
    assert "2 skipped over the GPU memory budget" in result.stdout
    with (root / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["SKIPPED", "SKIPPED"]
    assert all(float(row["estimated_memory_gb"]) > 0.01 and row["steps"] == "0" for row in rows)
    assert json.loads((root / "summary.json").read_text())["skipped_memory"] == 2
    for row in rows:  # recorded as finished (resume never trains it), and nothing was trained
        assert json.loads((root / "finished" / f"{row['trial_id']}.json").read_text())["skipped_memory"] == 1
        assert not list((root / "trials" / row["trial_id"]).glob("checkpoint_*"))
