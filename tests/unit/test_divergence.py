"""Non-finite losses: the `--chaos nan-loss` grammar, the precision back-off ladder's rungs
and lines, the callback that stops training on a non-finite loss / gradient norm / eval_loss
(with the real tiny model and HF Trainer), what ASHA makes of a diverged trial's report, and
the leaderboard's place for a diverged trial (after every finished one, never best)."""

from __future__ import annotations

import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from transformers import TrainerControl, TrainerState

from lexiray.chaos import parse_chaos
from lexiray.config import apply_sample, load_config
from lexiray.data import prepare_data
from lexiray.errors import ConfigError
from lexiray.hf_trainer import StopOnNonFinite, build_hf_trainer
from lexiray.model import build_peft_model, load_tokenizer
from lexiray.precision import NonFinite, PrecisionLadder, diverged_report, inject_nan_loss, precision_rungs
from lexiray.report import TrialRecord, leaderboard_rows
from lexiray.results import TrialReport, precision_cell

SMOKE = load_config("smoke")


# --------------------------------------------------------------------------- chaos grammar


def test_nan_loss_chaos_parses_with_and_without_a_trial():
    spec = parse_chaos("nan-loss@step=5")
    assert (spec.action, spec.step, spec.trial_index) == ("nan-loss", 5, 0)
    spec = parse_chaos("nan-loss@step=3,trial=2")
    assert (spec.action, spec.step, spec.trial_index) == ("nan-loss", 3, 2)
    assert spec.hits_trial("exp_00002") and not spec.hits_trial("exp_00000")
    for bad in ("nan-loss@step=0", "nan-loss=5", "nan-loss@step=x", "nan-loss@batch=2"):
        with pytest.raises(ConfigError, match="nan-loss@step=N"):
            parse_chaos(bad)


# --------------------------------------------------------------------------- the ladder


def test_rungs_go_from_the_trials_precision_down_to_fp32():
    labels = [(rung.weights, rung.autocast, rung.label) for rung in precision_rungs("fp16")]
    assert labels == [("fp16", "fp16", "fp16"), ("fp32", "fp16", "fp16 autocast, fp32 weights"),
                      ("fp32", "fp32", "fp32")]
    assert [rung.label for rung in precision_rungs("bf16")] == ["bf16", "bf16 autocast, fp32 weights", "fp32"]
    assert [rung.label for rung in precision_rungs("fp32")] == ["fp32"]
    # the chaos rung is added only where there is no rung to go to (an fp32 trial)
    assert [rung.label for rung in precision_rungs("fp32", virtual_top=True)] == [
        "fp32 (--chaos nan-loss's virtual rung)", "fp32"]
    assert precision_rungs("fp16", virtual_top=True) == precision_rungs("fp16")


def test_each_back_off_is_one_line_and_the_last_rung_diverges(caplog):
    ladder = PrecisionLadder("fp16")
    assert ladder.report() == TrialReport(precision="fp16", precision_retries=0, ran_precision="fp16")
    with caplog.at_level(logging.WARNING, logger="lexiray.precision"):
        first = ladder.back_off(NonFinite("loss", math.nan, 7, 12))
        second = ladder.back_off(NonFinite("eval_loss", math.inf, 9, 12))
    assert (first.weights, first.autocast, second.weights, second.autocast) == ("fp32", "fp16", "fp32", "fp32")
    assert caplog.messages == [
        "non-finite training loss nan at step 7 on fp16: precision back-off rung 1/2: fp16 → fp16 autocast, fp32 "
        "weights, resuming from the last finite checkpoint",
        "non-finite eval_loss inf at step 9 on fp16 autocast, fp32 weights: precision back-off rung 2/2: "
        "fp16 autocast, fp32 weights → fp32, resuming from the last finite checkpoint"]
    found = NonFinite("loss", math.nan, 10, 12)
    assert ladder.back_off(found) is None  # nowhere left: diverged
    report = diverged_report(ladder, found, "eval_loss")
    assert report.diverged == ("diverged: non-finite training loss nan at step 10 on fp32 after 2 precision "
                               "back-off rungs")
    assert (report.step, report.total_steps, report.precision_retries, report.precision) == (10, 12, 2, "fp32")
    assert math.isnan(report.eval_loss)  # Tune wants the metric; NaN is what ASHA can skip
    assert TrialReport.from_result(report.to_result()) == report.with_value("eval_loss", report.eval_loss)


def test_chaos_strikes_the_first_rung_only_and_multi_worker_trials_never_back_off():
    ladder = PrecisionLadder("fp32", chaos_nan_loss=True)
    assert ladder.injects_nan_loss and ladder.budget == 1
    assert ladder.back_off(NonFinite("loss", math.nan, 5)).label == "fp32"
    assert not ladder.injects_nan_loss and ladder.report().precision_retries == 1
    assert PrecisionLadder("fp32").back_off(NonFinite("loss", math.nan, 5)) is None  # plain fp32: diverged
    assert PrecisionLadder("fp16", can_back_off=False).back_off(NonFinite("loss", math.nan, 5)) is None


# --------------------------------------------------------------------------- the callback


def _log(callback: StopOnNonFinite, logs: dict, step: int = 4) -> TrainerControl:
    control = TrainerControl(should_save=True, should_evaluate=True)
    return callback.on_log(None, TrainerState(global_step=step, max_steps=12), control, logs=logs)


@pytest.mark.parametrize("key", ["loss", "eval_loss", "grad_norm"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_logged_value_stops_training_without_saving(key, value):
    callback = StopOnNonFinite()
    control = _log(callback, {"loss": 2.0, "grad_norm": 0.5, key: value, "learning_rate": 1e-3})
    assert control.should_training_stop and not control.should_save and not control.should_evaluate
    assert callback.found.what == key and callback.found.step == 4 and callback.found.total_steps == 12


def test_finite_values_do_not_stop_and_fp16_tolerates_a_skipped_step():
    callback = StopOnNonFinite()
    control = _log(callback, {"loss": 2.0, "grad_norm": 0.5, "eval_loss": 3.0, "epoch": 0.5})
    assert not control.should_training_stop and control.should_save and callback.found is None
    # under fp16 autocast an inf gradient norm is the loss scaler skipping a step
    fp16 = StopOnNonFinite(grad_norm=False)
    assert not _log(fp16, {"loss": 2.0, "grad_norm": math.inf}).should_training_stop
    assert _log(fp16, {"loss": math.nan, "grad_norm": math.inf}).should_training_stop


def test_the_first_non_finite_step_stops_training_before_its_state_is_saved(tmp_path):
    """Real tiny model, real HF Trainer: the loss is NaN from step 3 (the chaos hook); saves
    every 2 steps. Training stops at step 3 itself: checkpoint-2 is the last one, and finite."""
    config = load_config("smoke", ["search={}", "training.max_steps=8", "training.save_steps=2",
                                   "training.eval_steps=2", "training.logging_steps=4", "data.max_rows=64",
                                   "training.per_device_train_batch_size=4"])
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_data(config.data, tokenizer)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    watch = StopOnNonFinite()
    trainer = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, str(tmp_path), "fp32",
                               cuda=False, callbacks=[watch])
    inject_nan_loss(model, 3, lambda: trainer.state.global_step + 1, lambda: True)
    trainer.train()
    assert trainer.state.global_step == 3 and watch.found.what == "loss" and watch.found.step == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]
    assert any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)  # step 3 poisoned LoRA
    saved = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert saved and all(torch.isfinite(weight).all() for weight in saved.values())  # the one to resume is finite
    # the logged loss is not averaged over (HF's logging_nan_inf_filter is off)
    assert trainer.args.logging_nan_inf_filter is False


# --------------------------------------------------------------------------- ASHA


def _asha_decisions(diverged_value: float) -> str:
    """A trial reaches the first rung (step 4) with eval_loss 1.0 and a diverged one reports
    `diverged_value` there; then a bad trial (5.0) arrives: ASHA should stop it."""
    scheduler = ASHAScheduler(time_attr="step", metric="eval_loss", mode="min", max_t=16, grace_period=4,
                              reduction_factor=2)
    trials = [SimpleNamespace(trial_id=name) for name in ("good", "diverged", "bad")]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    for trial, loss in zip(trials, (1.0, diverged_value)):
        scheduler.on_trial_result(None, trial, {"step": 4, "eval_loss": loss})
    return scheduler.on_trial_result(None, trials[2], {"step": 4, "eval_loss": 5.0})


def test_asha_still_stops_bad_trials_beside_a_diverged_trials_nan():
    assert _asha_decisions(3.0) == TrialScheduler.STOP  # the baseline
    assert _asha_decisions(math.nan) == TrialScheduler.STOP  # NaN: skipped by the rung's nanpercentile
    # why not +inf: the rung's cutoff interpolates between -inf and -1.0 (rewards are -loss): NaN,
    # and the bad trial is kept
    assert _asha_decisions(math.inf) == TrialScheduler.CONTINUE


# --------------------------------------------------------------------------- the leaderboard


def _record(trial_id: str, losses: list, lr: float = 1e-3, diverged_at: int | None = None) -> TrialRecord:
    reports = [{"step": 6 * (i + 1), "eval_loss": loss, "total_steps": 36, "checkpoint_path": f"/ckpt/{6 * (i + 1)}",
                "precision_retries": 0, "ran_precision": "fp32"} for i, loss in enumerate(losses)]
    if diverged_at is not None:
        ladder = PrecisionLadder("fp32")
        reports.append(diverged_report(ladder, NonFinite("loss", math.nan, diverged_at, 36), "eval_loss").to_result())
    sample = {"training.learning_rate": lr}
    return TrialRecord(trial_id, "TERMINATED", reports, apply_sample(SMOKE, sample), sample)


def test_a_diverged_trial_ranks_after_every_finished_one_and_is_never_best():
    rows = leaderboard_rows([
        _record("diverged-early-low", [0.5], lr=200.0, diverged_at=8),  # the lowest loss of all, then NaN
        _record("done", [3.0] * 6),
        _record("stopped", [4.0]),
        _record("diverged-at-once", [], lr=300.0, diverged_at=2),  # no finite evaluation at all
    ], max_t=36)
    assert [row.trial_id for row in rows] == ["done", "stopped", "diverged-early-low", "diverged-at-once"]
    by_id = {row.trial_id: row for row in rows}
    low = by_id["diverged-early-low"]
    assert low.status == "DIVERGED" and not low.stopped_early and low.steps == 8 and low.total_steps == 36
    assert low.score == 0.5 and low.final_eval_loss == 0.5  # its last finite eval_loss, not the NaN
    assert low.value("diverged").startswith("diverged: non-finite training loss nan at step 8 on fp32")
    assert by_id["diverged-at-once"].score is None and by_id["diverged-at-once"].status == "DIVERGED"
    assert (by_id["done"].status, by_id["stopped"].status) == ("DONE", "STOPPED")
    # read back from summary.json's rows, the status and the reason stay
    again = rows[2].from_dict(rows[2].as_dict())
    assert again.status == "DIVERGED" and again.value("diverged") == low.value("diverged")


def test_precision_back_off_shows_in_the_leaderboard():
    record = _record("t", [3.0] * 6)
    record.reports = [{**report, "precision_retries": 1, "ran_precision": "fp16 autocast, fp32 weights"}
                      for report in record.reports]
    (row,) = leaderboard_rows([record], max_t=36)
    assert row.status == "DONE" and row.value("precision_retries") == 1
    assert precision_cell(row) == "1: fp16 autocast, fp32 weights"
    assert precision_cell(leaderboard_rows([_record("u", [3.0])], max_t=36)[0]) == "-"
