"""Leaderboard rows from trial records: status, ranking, mode=max, settings from the config
each trial saved where it ran."""

from __future__ import annotations

import csv

import pytest

from lexiray.config import apply_sample, load_config
from lexiray.plots import pareto_front
from lexiray.report import TrialRecord, leaderboard_csv, leaderboard_rows

BASE = load_config("smoke")


def _reports(losses: list[float | None], every: int = 6, total: int = 36, **extra) -> list[dict]:
    return [{"step": every * (i + 1), "eval_loss": loss, "total_steps": total,
             "checkpoint_path": f"/ckpt/{every * (i + 1)}", **extra} for i, loss in enumerate(losses)]


def _record(trial_id: str, status: str, losses: list, lr: float = 1e-3, r: int = 8, **extra) -> TrialRecord:
    sample = {"training.learning_rate": lr, "lora.r": r}
    return TrialRecord(trial_id, status, _reports(losses, **extra), apply_sample(BASE, sample), sample)


def test_status_of_done_stopped_errored_and_running_trials():
    rows = leaderboard_rows([
        _record("done", "TERMINATED", [3.0] * 6),                  # reached max_t
        _record("stopped", "TERMINATED", [4.0]),                   # ASHA stopped it at its first rung
        _record("errored", "ERROR", [3.5, 3.4]),
        _record("running", "RUNNING", [3.9]),
    ])
    by_id = {row.trial_id: row for row in rows}
    assert by_id["done"].status == "DONE" and not by_id["done"].stopped_early
    assert by_id["stopped"].status == "STOPPED" and by_id["stopped"].stopped_early
    assert by_id["stopped"].steps == 6 and by_id["stopped"].total_steps == 36
    assert by_id["errored"].status == "ERROR" and not by_id["errored"].stopped_early
    assert by_id["running"].status == "RUNNING"


def test_rank_by_best_report_lowest_first_and_unscored_last():
    rows = leaderboard_rows([
        _record("late-best", "TERMINATED", [5.0, 4.0, 2.5, 2.6, 2.7, 2.8]),
        _record("steady", "TERMINATED", [3.0, 2.9, 2.8, 2.7, 2.7, 2.7]),
        _record("nothing", "ERROR", []),
        _record("nan", "TERMINATED", [float("nan")]),
    ])
    assert [row.trial_id for row in rows][:2] == ["late-best", "steady"]
    assert [row.rank for row in rows] == [1, 2, 3, 4]
    assert {row.trial_id for row in rows[2:]} == {"nothing", "nan"}
    best = rows[0]
    assert best.value("eval_loss") == 2.5 and best.value("best_checkpoint") == "/ckpt/18"  # its best, not its last
    assert [h["step"] for h in best.history] == [6, 12, 18, 24, 30, 36]


def test_mode_max_ranks_highest_first():
    records = [TrialRecord("low", "TERMINATED", [{"step": 6, "eval_accuracy": 0.6, "eval_loss": 1.0, "total_steps": 6}]),
               TrialRecord("high", "TERMINATED", [{"step": 6, "eval_accuracy": 0.9, "eval_loss": 2.0, "total_steps": 6},
                                                  {"step": 12, "eval_accuracy": 0.7, "eval_loss": 2.1,
                                                   "total_steps": 12}])]
    rows = leaderboard_rows(records, metric="eval_accuracy", mode="max")
    assert [row.trial_id for row in rows] == ["high", "low"]
    assert rows[0].score == 0.9 and rows[0].value("eval_loss") == 2.0  # the best report's own loss
    min_rows = leaderboard_rows(records, metric="eval_accuracy", mode="min")
    assert [row.trial_id for row in min_rows] == ["low", "high"]


def test_settings_come_from_the_trial_config():
    record = _record("t", "TERMINATED", [3.0], lr=4e-3, r=16)
    row = leaderboard_rows([record])[0]
    assert row.learning_rate == 4e-3 and row.lora_r == 16
    assert row.lora_alpha == 32  # derived: 2 * lora.r in the smoke search block
    effective = BASE.training.effective_batch_size
    assert row.batch_size * row.grad_accum == effective


def test_leaderboard_csv_adds_the_tuned_metric_column():
    rows = leaderboard_rows([TrialRecord("a", "TERMINATED", [{"step": 6, "eval_accuracy": 0.5, "total_steps": 6}])],
                            metric="eval_accuracy", mode="max")
    header, first = list(csv.reader(leaderboard_csv(rows, "eval_accuracy").splitlines()))
    assert header[:4] == ["rank", "trial_id", "status", "eval_accuracy"]
    assert first[:4] == ["1", "a", "DONE", "0.5"]


@pytest.mark.parametrize("total", [None, 36])
def test_max_t_fills_in_when_reports_lack_total_steps(total):
    record = TrialRecord("t", "TERMINATED", [{"step": 36, "eval_loss": 1.0}])
    row = leaderboard_rows([record], max_t=total)[0]
    assert row.status == ("DONE" if total else "STOPPED")


def test_per_task_losses_come_from_the_best_report_and_get_their_columns():
    reports = [{"step": 6, "eval_loss": 3.0, "eval_loss/grammar": 2.0, "eval_loss/vocabulary": 4.5, "total_steps": 12},
               {"step": 12, "eval_loss": 3.2, "eval_loss/grammar": 2.1, "eval_loss/vocabulary": 4.9, "total_steps": 12}]
    row = leaderboard_rows([TrialRecord("t", "TERMINATED", reports)])[0]
    assert row.task_losses == {"grammar": 2.0, "vocabulary": 4.5}  # step 6: the best eval_loss
    assert row.final_eval_loss == 3.2
    header, first = list(csv.reader(leaderboard_csv([row], "eval_loss").splitlines()))
    at = header.index("eval_loss")
    assert header[at:at + 3] == ["eval_loss", "eval_loss/grammar", "eval_loss/vocabulary"]
    assert first[at:at + 3] == ["3.0", "2.0", "4.5"]


def test_pareto_front_keeps_only_undominated_trials():
    points = [(10.0, 2.0, "fast-good"), (5.0, 1.5, "slow-best"), (8.0, 2.5, "dominated"), (12.0, 3.0, "fastest"),
              (4.0, 1.6, "slow-worse")]
    front = pareto_front(points, higher_x_is_better=True)
    assert [name for _, _, name in front] == ["fastest", "fast-good", "slow-best"]
    memory = [(100.0, 2.0, "small"), (200.0, 1.0, "big-best"), (150.0, 2.5, "dominated")]
    assert [name for _, _, name in pareto_front(memory, higher_x_is_better=False)] == ["small", "big-best"]


def test_a_checkpoint_path_missing_or_nan_is_filled_from_the_checkpoint_folder():
    """Tune's results table has NaN where some rows carry `checkpoint_path` (results replayed
    after a restore) and others only `checkpoint_dir_name`: NaN is not a path."""
    from lexiray.storage import fill_checkpoint_path

    filled = fill_checkpoint_path({"checkpoint_dir_name": "checkpoint_000001", "checkpoint_path": float("nan")},
                                  "/x/trial_a")
    assert filled["checkpoint_path"] == "/x/trial_a/checkpoint_000001"
    assert fill_checkpoint_path({"checkpoint_dir_name": "c"}, "/x")["checkpoint_path"] == "/x/c"
    kept = fill_checkpoint_path({"checkpoint_dir_name": "c", "checkpoint_path": "/train/run/c"}, "/x")
    assert kept["checkpoint_path"] == "/train/run/c"
