"""Typed results: a trial's report survives the trip through Tune's flat dict, and the one
table of metrics (lexiray.results.METRICS) decides every view: leaderboard.csv, the
terminal table, the report's README table, the HParams view and the TensorBoard curves."""

from __future__ import annotations

import csv
from dataclasses import fields, replace

import pytest
from rich.console import Console

from lexiray import results
from lexiray.config import load_config
from lexiray.report import TrialRecord, leaderboard_csv, leaderboard_markdown, leaderboard_rows, print_leaderboard, \
    session_metrics
from lexiray.results import CSV, CURVES, HPARAMS, LAST, REPORT, TERMINAL, LeaderboardRow, Metric, TrialReport

CONFIG = load_config("smoke")

FULL = TrialReport(
    step=12, eval_loss=2.5, task_losses={"grammar": 2.0, "vocabulary": 3.0}, train_loss=2.7,
    samples_per_second=16.0, tokens_per_second=900.0, steps_per_second=2.0, phase_steps_per_second=1.5,
    peak_memory_mb=700.0, total_steps=12, world_size=1, resumed_from_step=6, first_step_at=1000.0,
    projected_wall_s=8.0, paid_s=40.0, cost_usd=0.01, projected_cost_usd=0.02, mfu=0.02, startup_s=3.5, reported_at=1010.0, precision="bf16", node_id="n1",
    training_pid=4242, oom_retries=2, ran_with="batch 4×2, checkpointing on", ran_batch_size=4, ran_grad_accum=2,
    ran_gradient_checkpointing=True, ran_max_seq_length=512, ran_lora_r=8, ran_optim="adamw_torch",
    precision_retries=1, ran_precision="fp16 autocast, fp32 weights", diverged="diverged: non-finite loss nan",
    eval_loss_at_start=4.0, skipped_memory=True, estimated_memory_gb=3.2, memory_budget_gb=16.0,
    checkpoint_path="/exp/trial_1/checkpoint_000001", time_total_s=30.0, reused_from="cold/a1b2c3d4",
    extra={"learning_rate": 1e-4, "epoch": 0.5, "grad_norm": 0.7},
)


def test_every_field_survives_the_round_trip_through_tunes_dict():
    assert all(getattr(FULL, item.name) not in (None, {}) for item in fields(TrialReport))  # every field set
    result = FULL.to_result()
    # the wire keys stored experiments and ASHA read: flat, per-task losses flattened
    assert result["step"] == 12 and result["eval_loss"] == 2.5 and result["eval_loss/grammar"] == 2.0
    assert result["skipped_memory"] == 1 and result["learning_rate"] == 1e-4 and "task_losses" not in result
    assert TrialReport.from_result(result) == FULL
    # Tune's own keys are dropped, missing keys stay unset
    tuned = TrialReport.from_result({**result, "trial_id": "t", "done": False, "training_iteration": 3})
    assert tuned == FULL
    assert TrialReport.from_result({"eval_loss": 1.0}) == TrialReport(eval_loss=1.0)
    assert TrialReport().to_result() == {}


def _rows(metric: str = "eval_loss") -> list[LeaderboardRow]:
    trained = replace(FULL, skipped_memory=False, diverged=None)
    first = replace(trained, step=6, eval_loss=3.0, task_losses={"grammar": 2.5, "vocabulary": 3.5})
    records = [TrialRecord("full", "TERMINATED", [first.to_result(), trained.to_result()], CONFIG,
                           {"training.learning_rate": 1e-4}),
               TrialRecord("short", "TERMINATED", [first.to_result()], CONFIG, {})]
    return leaderboard_rows(records, metric=metric, max_t=12)


def _terminal_columns(rows: list[LeaderboardRow], metric: str) -> list[str]:
    console = Console(record=True, width=250)
    print_leaderboard({"metric": metric, "mode": "min", "experiment": "x", "leaderboard": rows}, console)
    header = next(line for line in console.export_text().splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in header.strip("┃").split("┃")]


def _views(rows: list[LeaderboardRow], metric: str = "eval_loss") -> dict[str, list[str]]:
    markdown = leaderboard_markdown(rows, metric).splitlines()[0]
    return {
        CSV: next(csv.reader(leaderboard_csv(rows, metric).splitlines())),
        TERMINAL: _terminal_columns(rows, metric),
        REPORT: [cell.strip() for cell in markdown.strip("|").split("|")],
        HPARAMS: [tag[len("hparams/"):] for tag in session_metrics(rows[0])],
    }


def test_each_view_shows_exactly_the_metrics_its_table_entries_name():
    rows = _rows()
    # the first trial scored (lexiray.scoring): its task score and one figure in every view that shows them
    rows = [replace(rows[0], task_score=0.4, score_figures={"grammar/chrf": 31.5}), *rows[1:]]
    views = _views(rows)
    for metric in results.METRICS:
        for column, label, hparam, _ in metric.columns(["grammar", "vocabulary"], ["grammar/chrf"]):
            for view, names in views.items():
                name = {CSV: column, HPARAMS: hparam}.get(view, label)
                if metric.name == "eval_loss" and view in (CSV, TERMINAL, REPORT):
                    continue  # the tuned metric: its own column after the status, checked below
                assert (name in names) == (view in metric.shown), (metric.name, view, names)
    # the tuned metric follows the status in every table
    for view in (CSV, TERMINAL, REPORT):
        names = views[view]
        assert names[names.index("status") + 1] == "eval_loss", view
    # the values behind the names: the best report's loss, the last report's throughput, the trial's settings
    full = next(row for row in rows if row.trial_id == "full")
    assert full.rank == 1 and full.score == 2.5 and full.value("samples_per_second") == 16.0
    assert full.value("best_checkpoint") == "/exp/trial_1/checkpoint_000001" and full.value("wall_time_s") == 30.0
    assert session_metrics(full)["hparams/best_eval_loss/grammar"] == 2.0
    assert session_metrics(full)["hparams/stopped_early"] == 0.0
    # summary.json's row reads back into the same row
    assert LeaderboardRow.from_dict(full.as_dict()).as_dict() == full.as_dict()


def test_the_curve_metrics_are_what_the_throughput_meter_logs(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from lexiray.hf_trainer import ThroughputMeter

    meter = ThroughputMeter()
    state, control = TrainerState(max_steps=4), TrainerControl()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    meter.on_train_begin(args, state, control)
    meter.on_step_begin(args, state, control)
    state.global_step = 1
    meter.on_step_end(args, state, control)
    logs = {"loss": 2.0}
    meter.on_log(args, state, control, logs=logs)
    curves = {metric.name for metric in results.METRICS if CURVES in metric.shown}
    assert curves == {"samples_per_second", "tokens_per_second", "peak_memory_mb"}
    assert set(logs) == {"loss", *curves}


def test_adding_a_metric_is_one_table_entry(monkeypatch):
    added = Metric("mfu", "MFU", ".1%", take=LAST, shown=frozenset({CSV, TERMINAL, REPORT, HPARAMS}))
    monkeypatch.setattr(results, "METRICS", (*results.METRICS, added))
    monkeypatch.setitem(results.METRIC, "mfu", added)
    rows = _rows()
    views = _views(rows)
    assert all("mfu" in views[view] for view in (CSV, HPARAMS)) and "MFU" in views[TERMINAL] + views[REPORT]
    assert rows[0].as_dict()["mfu"] == 0.02 and "| 2.0% |" in leaderboard_markdown(rows, "eval_loss")


@pytest.mark.parametrize(("metric", "best"), [("eval_loss/grammar", 2.0), ("grad_norm", 0.7)])
def test_another_tuned_metric_gets_its_column_after_the_status(metric, best):
    rows = _rows(metric)
    views = _views(rows, metric)
    for view in (CSV, TERMINAL, REPORT):
        assert views[view][views[view].index("status") + 1] == metric, view
    assert rows[0].score == best and rows[0].as_dict()[metric] == best


def test_a_reused_trial_is_marked_in_every_table():
    report = TrialReport(step=8, eval_loss=2.0, total_steps=8, reused_from="cold/abc")
    rows = leaderboard_rows([TrialRecord("t1", "TERMINATED", [report.to_result()], CONFIG, {})])
    assert len(rows) == 1 and rows[0].status == "DONE"
    assert "done (reused)" in leaderboard_markdown(rows, "eval_loss")
    parsed = list(csv.DictReader(leaderboard_csv(rows, "eval_loss").splitlines()))
    assert len(parsed) == 1 and parsed[0]["reused_from"] == "cold/abc" and parsed[0]["status"] == "DONE"
