"""Tuner building blocks that need no running cluster: schedule, search algorithm, budget."""

from __future__ import annotations

import sys
import typing

import pytest

from lexiray.config import TuneSettings, load_config
from lexiray.errors import ConfigError
from lexiray.config import parse_duration
from lexiray.tune import check_schedule, scheduler, search_algorithm, total_steps


def test_total_steps_follow_epochs_or_max_steps():
    config = load_config("balanced")  # 4 epochs, effective batch 24
    assert total_steps(config, train_rows=480) == 4 * 20
    assert total_steps(config, train_rows=481) == 4 * 21
    assert total_steps(load_config("smoke"), train_rows=10_000) == 36  # max_steps wins


def test_asha_is_keyed_on_the_training_step():
    config = load_config("smoke")
    max_t, grace = check_schedule(config, 36)
    asha = scheduler(config, max_t, grace)
    assert asha._time_attr == "step" and asha._max_t == 36 and grace == 6
    assert type(scheduler(load_config("smoke", ["tune.scheduler=fifo"]), 36, 6)).__name__ == "FIFOScheduler"


def test_evaluation_must_come_before_max_t():
    with pytest.raises(ConfigError, match="save_steps"):
        check_schedule(load_config("smoke", ["training.save_steps=60", "training.eval_steps=60"]), 36)
    with pytest.raises(ConfigError, match="grace_period"):
        check_schedule(load_config("smoke", ["tune.grace_period=7"]), 36)


def test_random_search_carries_the_concurrency_limit():
    generator = search_algorithm(load_config("smoke"), concurrency=2)
    assert type(generator).__name__ == "BasicVariantGenerator" and generator.max_concurrent == 2


SEARCH_ALGS = typing.get_args(TuneSettings.model_fields["search_alg"].annotation)


@pytest.mark.parametrize("name", SEARCH_ALGS)
def test_every_search_algorithm_runs_at_most_the_concurrency(name):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher

    from lexiray.tune import tune_config

    config = load_config("smoke", [f"tune.search_alg={name}"])
    built = tune_config(config, max_t=36, grace=6, concurrency=3)
    algorithm = built.search_alg
    assert built.max_concurrent_trials is None  # the algorithm carries the limit; Tune would ignore this one
    if name == "random":
        assert type(algorithm) is BasicVariantGenerator and algorithm.max_concurrent == 3
    else:  # a Searcher (not the random search under another name), capped by a ConcurrencyLimiter
        assert isinstance(algorithm, ConcurrencyLimiter) and algorithm.max_concurrent == 3
        assert isinstance(algorithm.searcher, Searcher) and not isinstance(algorithm.searcher, ConcurrencyLimiter)
        assert name in type(algorithm.searcher).__name__.lower()


def test_optuna_search_and_its_missing_extra(monkeypatch):
    config = load_config("smoke", ["tune.search_alg=optuna"])
    from ray.tune.search.optuna import OptunaSearch

    assert isinstance(search_algorithm(config, 2).searcher, OptunaSearch)  # told no earlier results: cold
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"lexiray\[optuna\]"):
        search_algorithm(config, 2)


def test_grid_needs_random_search():
    with pytest.raises(ConfigError, match="grid"):
        load_config("smoke", ["tune.search_alg=optuna", "search.lora.r={grid: [4, 8]}"])


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("45s", 45), ("600", 600)])
def test_time_budget(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0", "-5m", ""])
def test_bad_time_budget(text):
    with pytest.raises(ConfigError, match="time-budget"):
        parse_duration(text)


def test_time_budget_flows_from_the_cli_option_into_tune():
    from lexiray.cli import tune_overrides
    from lexiray.tune import tune_config

    overrides = tune_overrides(["lora.r=4"], num_samples=3, time_budget="1h30m", name="budgeted")
    config = load_config("smoke", overrides)
    assert config.tune.time_budget_s == 5400 and config.tune.num_samples == 3 and config.tune.name == "budgeted"
    built = tune_config(config, max_t=36, grace=6, concurrency=2)
    assert built.time_budget_s == 5400 and built.num_samples == 3
    assert tune_config(load_config("smoke"), 36, 6, 2).time_budget_s is None
    with pytest.raises(ConfigError, match="time-budget"):
        tune_overrides(None, time_budget="soon")


def test_a_single_worker_trial_trains_in_its_tune_actor_which_holds_the_trials_resources():
    from lexiray.trial import TRIAL_DRIVER_CPUS, trains_in_trial_actor, trial_actor_resources
    from lexiray.tune import tune_config

    one = load_config("smoke", ["resources.cpus_per_trial=2"])
    assert trains_in_trial_actor(one) and trial_actor_resources(one) == {"CPU": 2}
    assert tune_config(one, 36, 6, 1).reuse_actors  # the warm actor goes to the next trial
    gpu = load_config("balanced", ["resources.accelerator_type=T4"])
    assert trial_actor_resources(gpu) == {"CPU": gpu.resources.cpus_per_trial, "GPU": 1,
                                          "accelerator_type:T4": 0.001}
    # several workers: a full Ray Train run; the Tune actor only drives it
    two = load_config("smoke", ["resources.num_workers=2"])
    assert not trains_in_trial_actor(two) and trial_actor_resources(two) == {"CPU": TRIAL_DRIVER_CPUS}
    assert not tune_config(two, 36, 6, 1).reuse_actors
