"""lexiray.warm: a trial's fingerprint (settings that change results + the data's bytes), and
what an earlier experiment hands a warm-started search (its best configurations, its results)."""

from __future__ import annotations

import json

import pytest

from lexiray import storage
from lexiray.config import apply_sample, load_config
from lexiray.errors import ConfigError
from lexiray.storage import ExperimentLayout
from lexiray.warm import (carried_count, carried_point, data_fingerprint, read_warm_start, search_seed,
                          trial_fingerprint)

SAMPLE = {"training.learning_rate": 3e-3, "lora.r": 4, "training.per_device_train_batch_size": 4}


def _data_file(tmp_path, text: str = '{"instruction": "Say hi", "output": "hi"}\n'):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def _fingerprint(overrides: list[str], sample: dict = SAMPLE) -> str:
    config = load_config("smoke", overrides)
    return trial_fingerprint(apply_sample(config, sample), data_fingerprint(config))


def test_the_same_configuration_has_the_same_fingerprint():
    assert _fingerprint([]) == _fingerprint([])
    # sampled or set in the base config: the resolved config is what counts
    assert _fingerprint([], SAMPLE) == _fingerprint(["training.learning_rate=3e-3", "lora.r=4", "lora.alpha=8"],
                                                    {"training.per_device_train_batch_size": 4})


@pytest.mark.parametrize("irrelevant", ["tune.num_samples=3", "tune.scheduler=fifo", "tune.storage_path=/elsewhere",
                                        "tune.name=other", "name=renamed", "report.plots=false",
                                        "resources.cpus_per_trial=2", "resources.price_per_hour=0.526", "training.dataloader_num_workers=0",
                                        "tune.warm_start=/earlier", "search.lora.dropout={uniform: [0.0, 0.1]}"])
def test_settings_that_change_no_result_leave_the_fingerprint(irrelevant):
    assert _fingerprint([irrelevant]) == _fingerprint([])


@pytest.mark.parametrize("relevant", ["resources.num_workers=2", "resources.gpus_per_trial=1", "training.seed=7",
                                      "training.max_steps=12", "data.max_seq_length=128", "model.revision=v2",
                                      "lora.dropout=0.1"])
def test_settings_that_change_results_change_the_fingerprint(relevant):
    assert _fingerprint([relevant]) != _fingerprint([])


def test_another_sample_has_another_fingerprint():
    assert _fingerprint([], {**SAMPLE, "lora.r": 8}) != _fingerprint([])


def test_a_changed_data_file_is_detected(tmp_path):
    path = _data_file(tmp_path)
    before = _fingerprint([f"data.path={path}"])
    assert _fingerprint([f"data.path={path}"]) == before
    path.write_text(path.read_text() + '{"instruction": "Say bye", "output": "bye"}\n')
    assert _fingerprint([f"data.path={path}"]) != before
    assert before != _fingerprint([])  # not the bundled sample's


def test_a_data_folder_is_fingerprinted_by_every_file(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"instruction": "a", "output": "a"}\n')
    config = load_config("smoke", [f"data.path={folder}"])
    before = data_fingerprint(config)
    (folder / "b.jsonl").write_text('{"instruction": "b", "output": "b"}\n')
    assert data_fingerprint(config) != before


def test_a_hub_dataset_is_identified_by_its_id():
    one, other = load_config("smoke", ["data.path=org/dataset"]), load_config("smoke", ["data.path=org/other"])
    assert data_fingerprint(one) != data_fingerprint(other)


# --------------------------------------------------------------------------- warm start


def test_a_point_keeps_what_the_new_search_samples_and_fits():
    config = load_config("smoke")
    assert carried_point(config, {**SAMPLE, "lora.dropout": 0.1}) == SAMPLE  # not searched now: left out
    assert carried_point(config, {**SAMPLE, "lora.r": 32}) is None  # not a choice now
    assert carried_point(config, {**SAMPLE, "training.learning_rate": 0.5}) is None  # outside the range
    assert carried_point(config, {"lora.dropout": 0.1}) is None  # nothing shared
    assert carried_point(config, {"lora.r": 8}) == {"lora.r": 8}  # the rest is sampled


def test_a_grid_setting_is_laid_out_for_a_point_too():
    config = load_config("smoke", ["search.lora.r={grid: [4, 8]}"])
    assert carried_point(config, SAMPLE) == {key: SAMPLE[key] for key in SAMPLE if key != "lora.r"}


def test_carried_count_is_at_most_half_the_budget():
    assert [carried_count(n) for n in (1, 2, 4, 6, 8, 20)] == [1, 1, 2, 3, 3, 3]


def _earlier_experiment(tmp_path, rows: list[dict], metric: str = "eval_loss") -> ExperimentLayout:
    """An experiment folder as `lexiray tune` leaves it: config, summary, trials' fingerprints."""
    config = load_config("smoke")
    layout = ExperimentLayout(str(tmp_path / "earlier"))
    storage.write_experiment_config(layout, config, 36, 6, 2)
    data = data_fingerprint(config)
    for row in rows:
        fingerprint = trial_fingerprint(apply_sample(config, row["sample"]), data)
        storage.write_trial_fingerprint(layout, row["trial_id"], fingerprint, data)
    storage.write_text(layout.summary_file, json.dumps({"metric": metric, "mode": "min", "leaderboard": rows}))
    return layout


ROWS = [
    {"trial_id": "a", "status": "DONE", "eval_loss": 1.0, "sample": SAMPLE},
    {"trial_id": "e", "status": "ERROR", "eval_loss": None, "sample": {**SAMPLE, "lora.r": 16}},
    {"trial_id": "b", "status": "STOPPED", "eval_loss": 1.5, "sample": {**SAMPLE, "lora.r": 8}},
    {"trial_id": "c", "status": "DONE", "eval_loss": 2.0, "sample": {**SAMPLE, "lora.r": 32}},  # no longer fits
    {"trial_id": "d", "status": "STOPPED", "eval_loss": 3.0, "sample": {**SAMPLE, "training.learning_rate": 1e-3}},
]


def test_warm_start_carries_the_best_configurations_in_rank_order(tmp_path):
    layout = _earlier_experiment(tmp_path, ROWS)
    config = load_config("smoke", [f"tune.warm_start={layout.root}", "tune.num_samples=4"])
    warm = read_warm_start(config, data_fingerprint(config))
    assert warm.source.root == layout.root
    assert warm.points == (SAMPLE, {**SAMPLE, "lora.r": 8})  # the errored one and the misfit are skipped
    assert warm.finished == 4 and warm.reusable == 2
    assert warm.evaluated == ()  # random search: nobody to tell
    assert warm.seed == search_seed(0, layout) != 0  # not the earlier experiment's samples again


def test_optuna_is_told_every_earlier_result(tmp_path):
    layout = _earlier_experiment(tmp_path, ROWS)
    config = load_config("smoke", [f"tune.warm_start={layout.root}", "tune.search_alg=optuna", "tune.num_samples=8"])
    warm = read_warm_start(config, data_fingerprint(config))
    assert len(warm.points) == 3
    assert warm.evaluated == ((SAMPLE, 1.0), ({**SAMPLE, "lora.r": 8}, 1.5),
                              ({**SAMPLE, "training.learning_rate": 1e-3}, 3.0))


def test_other_data_carries_configurations_but_reuses_nothing(tmp_path):
    layout = _earlier_experiment(tmp_path, ROWS)
    config = load_config("smoke", [f"tune.warm_start={layout.root}", f"data.path={_data_file(tmp_path)}"])
    warm = read_warm_start(config, data_fingerprint(config))
    assert len(warm.points) == 3 and warm.reusable == 0


def test_another_model_carries_configurations_only(tmp_path):
    layout = _earlier_experiment(tmp_path, ROWS)
    config = load_config("smoke", [f"tune.warm_start={layout.root}", "model.name=Qwen/Qwen2.5-1.5B-Instruct"])
    warm = read_warm_start(config, data_fingerprint(config))
    assert len(warm.points) == 3 and warm.reusable == 0


def test_a_bad_warm_start_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="tune.warm_start: .*not a lexiray experiment"):
        read_warm_start(load_config("smoke", [f"tune.warm_start={tmp_path}"]), "x")
    layout = _earlier_experiment(tmp_path, ROWS)
    (tmp_path / "earlier" / "summary.json").unlink()
    with pytest.raises(ConfigError, match="no summary.json yet: run `lexiray report"):
        read_warm_start(load_config("smoke", [f"tune.warm_start={layout.root}"]), "x")
    with pytest.raises(ConfigError, match="is this experiment itself"):
        read_warm_start(load_config("smoke", [f"tune.warm_start={layout.root}"]), "x", layout)


def test_a_reused_checkpoint_is_located_beyond_its_experiment():
    remote = ExperimentLayout("s3://bucket/runs/cold?region=eu-west-1")
    # Tune records a URI experiment's paths inside its filesystem
    assert remote.checkpoint_location("bucket/runs/cold/trial_1/checkpoint_000001") == \
        "s3://bucket/runs/cold/trial_1/checkpoint_000001?region=eu-west-1"
    assert remote.checkpoint_location("s3://other/x") == "s3://other/x"
    local = ExperimentLayout("/results/cold")
    assert local.checkpoint_location("/results/cold/trial_1/checkpoint_000001") == \
        "/results/cold/trial_1/checkpoint_000001"


def test_a_checkpoint_at_a_uri_is_read_from_any_experiment(tmp_path):
    folder = tmp_path / "cold" / "trial_1" / "checkpoint_000001"
    folder.mkdir(parents=True)
    checkpoint = ExperimentLayout(str(tmp_path / "warm")).checkpoint(f"file://{folder}")
    with checkpoint.as_directory() as restored:
        assert restored == str(folder)


def test_a_file_uri_experiments_checkpoint_keeps_its_absolute_path():
    assert ExperimentLayout("file:///results/cold").checkpoint_location("/results/cold/trial_1/checkpoint_000001") \
        == "file:///results/cold/trial_1/checkpoint_000001"
