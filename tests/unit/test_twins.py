"""trial.reusable_twin on real experiment folders: which finished trial a trial replays, when
it waits for a twin of its run, and when it trains itself (a twin that failed is not waited for)."""

from __future__ import annotations

import threading

from lexiray import storage
from lexiray.config import load_config
from lexiray.storage import ExperimentLayout
from lexiray.trial import TrainingData, TrialPlan, reusable_twin

CONFIG = load_config("smoke")


def _plan(tmp_path, warm_start: ExperimentLayout | None = None) -> TrialPlan:
    return TrialPlan(CONFIG, TrainingData(), ExperimentLayout(str(tmp_path / "now")), data_fingerprint="d",
                     warm_start=warm_start)


def _finish(layout: ExperimentLayout, trial_id: str) -> None:
    storage.append_history(layout, trial_id, {"step": 4, "eval_loss": 2.0})
    storage.mark_finished(layout, trial_id, {"step": 4, "eval_loss": 2.0})


def test_the_first_trial_with_a_fingerprint_trains_and_a_retry_of_it_too(tmp_path):
    plan = _plan(tmp_path)
    assert reusable_twin(plan, "a", "fp") is None
    assert reusable_twin(plan, "a", "fp") is None  # retried: its own claim
    assert storage.fingerprint_owner(plan.layout, "fp") == "a"


def test_a_finished_twin_of_this_run_is_replayed(tmp_path):
    plan = _plan(tmp_path)
    assert reusable_twin(plan, "a", "fp") is None
    _finish(plan.layout, "a")
    assert reusable_twin(plan, "b", "fp")[:2] == (plan.layout, "a")


def test_a_running_twin_is_waited_for(tmp_path):
    plan = _plan(tmp_path)
    assert reusable_twin(plan, "a", "fp") is None
    threading.Timer(1.5, _finish, (plan.layout, "a")).start()
    assert reusable_twin(plan, "b", "fp")[:2] == (plan.layout, "a")


def test_a_twin_that_failed_is_not_waited_for(tmp_path):
    plan = _plan(tmp_path)
    assert reusable_twin(plan, "a", "fp") is None
    threading.Timer(1.5, storage.mark_failed, (plan.layout, "a")).start()
    assert reusable_twin(plan, "b", "fp") is None  # trains itself


def test_the_warm_start_experiments_finished_trial_is_replayed_and_claimed_here(tmp_path):
    earlier = ExperimentLayout(str(tmp_path / "earlier"))
    storage.claim_fingerprint(earlier, "fp", "old")
    plan = _plan(tmp_path, warm_start=earlier)
    assert reusable_twin(plan, "x", "other") is None  # another fingerprint: trains
    storage.claim_fingerprint(earlier, "unfinished", "old2")
    assert reusable_twin(plan, "y", "unfinished") is None  # never finished there: trains here
    _finish(earlier, "old")
    assert reusable_twin(plan, "z", "fp")[:2] == (earlier, "old")
    assert storage.fingerprint_owner(plan.layout, "fp") == "z"  # a later warm start from this one finds it
