"""The Ray processes one trial's Train run starts, pinned: lexiray depends on Ray internals
(`LeanTrainer` drops Ray Data's DatasetManager actor through a private method), and an
upgrade that changes what a Train run starts must fail here instead of silently costing a
process per trial."""

from __future__ import annotations

from collections import Counter

import pytest

from lexiray.config import load_config
from lexiray.data import prepare_data
from lexiray.model import load_tokenizer

pytestmark = pytest.mark.slow

# One Python process each, per Train run (on top of Tune's own trial actor under `tune`).
ACTORS_PER_TRAIN_RUN = Counter({"TrainController": 1, "PlacementGroupCleaner": 1, "SynchronizationActor": 1,
                                "RayTrainWorker": 1})


def _actors():
    """This test's own cluster, by address: other Ray instances on the machine are not ours."""
    import ray
    from ray.util.state import list_actors

    return list_actors(address=ray.get_runtime_context().gcs_address, limit=1000)


def _new_actors(ray, before: set[str]) -> Counter:
    return Counter(actor.class_name for actor in _actors() if actor.actor_id not in before)


def _actor_ids() -> set[str]:
    return {actor.actor_id for actor in _actors()}


def test_a_train_run_starts_exactly_the_expected_ray_actors(tmp_path, no_ray_leftovers):
    import ray
    from ray.train.torch import TorchTrainer

    from lexiray.cluster import init_ray
    from lexiray.ray_seam import LeanTrainer
    from lexiray.trial import TrainingData, WorkerSettings, build_torch_trainer

    config = load_config("smoke", ["training.max_steps=2", "training.save_steps=2", "training.eval_steps=2",
                                   "data.max_rows=60"])
    init_ray(num_cpus=2)
    try:
        prepared = prepare_data(config.data, load_tokenizer(config.model))
        data = TrainingData(train_ref=ray.put(prepared.train.data.table), eval_ref=ray.put(prepared.eval.data.table))
        settings = WorkerSettings(config, data)
        # The first run also starts Ray's per-cluster singletons; the second shows the cost of one run.
        build_torch_trainer(settings, storage_path=str(tmp_path), name="warm-up", worker_retries=0).fit()
        before = _actor_ids()
        trainer = build_torch_trainer(settings, storage_path=str(tmp_path), name="measured", worker_retries=0)
        assert isinstance(trainer, LeanTrainer)
        result = trainer.fit()
        assert result.metrics["step"] == 2
        assert _new_actors(ray, before) == ACTORS_PER_TRAIN_RUN

        # Ray's own TorchTrainer starts one more: the lean trainer is what removes it.
        before = _actor_ids()
        plain = TorchTrainer(trainer.train_loop_per_worker, scaling_config=trainer.scaling_config,
                             run_config=ray.train.RunConfig(name="plain", storage_path=str(tmp_path)))
        plain.fit()
        assert _new_actors(ray, before) - ACTORS_PER_TRAIN_RUN == Counter({"DatasetManager": 1})
    finally:
        ray.shutdown()
