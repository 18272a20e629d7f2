"""`lexiray tune --budget` on a real local Ray Tune run of the tiny model: every trial is priced
(resources.price_per_hour), and the budget stops starting trials before num_samples."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import check_no_ray_leftovers, run_cli

pytestmark = pytest.mark.slow

# $0.36 a worker-hour: a trial costs $0.0001 a second. Two trials start at once, before any has
# a cost. A trial in a fresh actor takes ~7 s here (imports, model, 8 steps, 2 evaluations), one
# reusing a warm actor ~2 s: the $0.0003 budget is spent once the first trial ends, so the
# second is the last one started here; a much faster machine might start a third or fourth, never six.
PRICED_TUNE = [
    "--num-samples", "6", "--max-concurrent", "2", "--budget", "0.0003",
    "--set", "resources.price_per_hour=0.36",
    "--set", "tune.scheduler=fifo",
    "--set", "data.max_rows=120",
    "--set", "training.max_steps=8", "--set", "training.save_steps=4", "--set", "training.eval_steps=4",
]


# Random search runs Tune's BasicVariantGenerator behind the budget; Optuna a Searcher behind
# its ConcurrencyLimiter and the budget's (lexiray.tune).
@pytest.mark.parametrize("search_alg", ["random", "optuna"])
def test_budget_stops_starting_trials_and_every_trial_is_priced(tmp_path, search_alg):
    try:
        result = run_cli(["tune", *PRICED_TUNE, "--set", f"tune.search_alg={search_alg}", "--storage-path",
                          str(tmp_path / "results"), "--name", "priced"], cwd=tmp_path, check=True, timeout=300)
    finally:
        check_no_ray_leftovers()
    out, root = result.stdout, tmp_path / "results" / "priced"
    print(out[-4000:])  # the leaderboard and closing lines, for the record (pytest -rA)
    assert "price $0.3600 per worker-hour" in out and "budget $0.0003" in out
    assert f"search {search_alg}" in out

    with (root / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert 2 <= len(rows) < 6, out  # fewer trials than num_samples
    for row in rows:
        cost = float(row["cost_usd"])
        # its seconds at $0.0001 each: at least its training steps' (a trial reusing a warm actor
        # takes ~2 s in all), at most the whole run's
        samples = int(row["steps"]) * int(row["batch_size"]) * int(row["grad_accum"])
        assert 0.0001 * samples / float(row["samples_per_second"]) * 0.99 <= cost < 0.03, row
        assert float(row["projected_cost_usd"]) >= cost * 0.8, row  # a finished trial: its own cost, about
        assert float(row["projected_wall_s"]) > 0, row

    summary = json.loads((root / "summary.json").read_text())
    assert summary["cost_usd"] == pytest.approx(sum(float(row["cost_usd"]) for row in rows))
    assert summary["projected_cost_usd"] > summary["cost_usd"]  # all 6 planned trials, not only those started
    budget = summary["budget"]
    assert budget["stopped_new_trials"] is True and budget["trials_started"] == len(rows)
    assert budget["trials_planned"] == 6 and budget["budget_usd"] == 0.0003
    assert budget["spent_at_stop_usd"] + budget["committed_at_stop_usd"] >= 0.0003
    assert summary["cost_usd"] >= budget["spent_at_stop_usd"]
    # the closing line, the terminal's $ column and the report's
    assert "budget $0.0003 reached at $" in out, out
    assert f"committed: stopped starting trials after {len(rows)} of 6" in out, out
    assert f"cost: ${summary['cost_usd']:.4f} spent" in out
    readme = (root / "report" / "README.md").read_text()
    assert "| $ |" in readme and "proj. $" in readme and "stopped starting trials" in readme
    assert "against the trial's cost" in readme
