"""tune.search_algorithm under a warm start: the earlier best configurations come first, and an
Optuna search holds the earlier results before it samples (real Ray Tune and Optuna objects;
the random search's points: tests/integration/test_warm_start.py)."""

from __future__ import annotations

import pytest

from lexiray.config import load_config
from lexiray.space import build_param_space
from lexiray.storage import ExperimentLayout
from lexiray.tune import search_algorithm
from lexiray.warm import WarmStart

POINTS = ({"training.learning_rate": 3e-3, "lora.r": 4, "training.per_device_train_batch_size": 4},
          {"training.learning_rate": 1e-3, "lora.r": 8, "training.per_device_train_batch_size": 8})
EVALUATED = ((POINTS[0], 5.4), (POINTS[1], 5.9), ({**POINTS[1], "lora.r": 16}, 7.0))


def test_optuna_suggests_the_points_first_and_knows_the_earlier_results():
    pytest.importorskip("optuna")
    config = load_config("smoke", ["tune.search_alg=optuna"])
    warm = WarmStart(ExperimentLayout("/earlier/cold"), POINTS, EVALUATED, seed=11)
    algorithm = search_algorithm(config, 2, warm=warm)  # a ConcurrencyLimiter around the Optuna search
    assert algorithm.set_search_properties(config.tune.metric, config.tune.mode, build_param_space(config))
    study = algorithm.searcher._ot_study  # Optuna's study: the told results are its complete trials
    assert len([trial for trial in study.trials if trial.state.name == "COMPLETE"]) == 3
    assert [algorithm.suggest(f"t{index}") for index in range(2)] == list(POINTS)
    third = algorithm.suggest("t2")  # the limit is 2 at a time: nothing until one completes
    assert third is None
    algorithm.on_trial_complete("t0", {config.tune.metric: 5.4})
    assert set(algorithm.suggest("t3")) == set(POINTS[0])  # sampled by TPE now

