"""Starting Ray and building one trial's Ray Train `TorchTrainer` (shared by train and tune)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from lexiray.config import ExperimentConfig, config_to_yaml
from lexiray.errors import ResourceError

log = logging.getLogger(__name__)

# Ray Train's controller polls workers every 2 s by default and a report waits for the
# next poll: 0.2 s cut 100 tiny steps from ~17 s to ~6 s (STACK-NOTES). The print patch
# only adds noise; on a local machine nothing is preempted, so the preemption watcher
# would be one more process per trial for nothing.
RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0 Tune then prints no tables: progress.py reports
}
LOCAL_ONLY_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


def init_ray(address: str | None = None, num_cpus: float | None = None, verbose: bool = False,
             log_to_driver: bool | None = None) -> None:
    """Connect to a cluster (address / RAY_ADDRESS, as under `ray job submit`) or start a
    local one in-process. Environment defaults are set before Ray starts so every worker
    inherits them."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not address:
        for key, value in LOCAL_ONLY_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    kwargs = {"log_to_driver": verbose if log_to_driver is None else log_to_driver, "configure_logging": True,
              "logging_level": logging.INFO if verbose else logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=True, **kwargs)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def check_resources(config: ExperimentConfig) -> None:
    """Refuse before any trial starts when the cluster cannot hold one trial."""
    import ray

    total = ray.cluster_resources()
    per_trial = config.resources
    gpus_needed = per_trial.gpus_per_trial * per_trial.num_workers
    if gpus_needed > total.get("GPU", 0):
        raise ResourceError(
            f"resources.gpus_per_trial={per_trial.gpus_per_trial:g} but this Ray cluster has "
            f"{total.get('GPU', 0):g} GPUs; set resources.gpus_per_trial=0 to train on CPU"
        )
    cpus_needed = per_trial.cpus_per_trial * per_trial.num_workers
    if cpus_needed > total.get("CPU", 0):
        raise ResourceError(
            f"resources.cpus_per_trial={per_trial.cpus_per_trial:g} x num_workers={per_trial.num_workers} "
            f"needs {cpus_needed:g} CPUs but this Ray cluster has {total.get('CPU', 0):g}"
        )
    if per_trial.accelerator_type:
        key = f"accelerator_type:{per_trial.accelerator_type}"
        if key not in total:
            raise ResourceError(f"resources.accelerator_type={per_trial.accelerator_type}: no such GPU in this cluster")


def build_torch_trainer(config: ExperimentConfig, loop_config: dict, storage_path: str, name: str,
                        callbacks: list | None = None, max_failures: int | None = None,
                        driver_cpus: float = 0.0):
    """A Ray Train `TorchTrainer` running `trial.train_loop_per_worker` on the config's
    resources; checkpoints ranked by eval_loss, the best `keep_checkpoints` kept."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    from lexiray.trial import train_loop_per_worker

    resources = config.resources
    # A Tune trial's driver holds a sliver of CPU; the first worker gives it back, or on a
    # 2-CPU machine 2 x (1 + 0.01) CPUs would not fit and trials would run one at a time.
    per_worker = {"CPU": max(resources.cpus_per_trial - driver_cpus / resources.num_workers, 0.01)}
    if resources.gpus_per_trial:
        per_worker["GPU"] = resources.gpus_per_trial
    return lean_torch_trainer_class()(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.gpus_per_trial > 0,
            resources_per_worker=per_worker,
            accelerator_type=resources.accelerator_type,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.tune.keep_checkpoints,
                checkpoint_score_attribute=config.tune.metric,
                checkpoint_score_order=config.tune.mode,
            ),
            failure_config=FailureConfig(
                max_failures=config.tune.max_failures if max_failures is None else max_failures
            ),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="WARNING"),  # no line per report / checkpoint
        ),
    )


def lean_torch_trainer_class():
    """`TorchTrainer` without the Ray Data plumbing lexiray does not use. Every Train run
    starts a DatasetManager actor (and pushes Ray Data's context to the workers) even when
    no `datasets=` is given: one more Python process per trial, seconds of CPU on a small
    machine. (The placement-group cleaner stays: when ASHA stops a trial its controller
    dies with the trial, and only the cleaner gives the workers' CPUs / GPU back.)"""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:  # another Ray version: keep Ray's defaults
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]

    return LeanTorchTrainer


def loop_config_for(config: ExperimentConfig, data_dir: str | Path, tensorboard_dir: str | None,
                    eval_on_start: bool = False, chaos: dict | None = None) -> dict:
    return {
        "experiment": config.model_dump(mode="json"),
        "data_dir": str(data_dir),
        "tensorboard_dir": tensorboard_dir,
        "eval_on_start": eval_on_start,
        "started_at": time.time(),
        "chaos": chaos,
    }


def best_checkpoint(result, metric: str = "eval_loss", mode: str = "min"):
    """(checkpoint, metrics) of a Train result's best kept checkpoint by `metric`."""
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not ranked:
        return (result.checkpoint, result.metrics) if result.checkpoint else (None, {})
    pick = min if mode == "min" else max
    return pick(ranked, key=lambda pair: pair[1][metric])


def write_resolved_config(config: ExperimentConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(config_to_yaml(config))
    return path


def run_training(config: ExperimentConfig, output: Path, resume: bool = False, chaos: dict | None = None,
                 address: str | None = None, verbose: bool = False) -> dict:
    """`lexiray train`: one trial through Ray Train; the adapter, tokenizer, resolved config
    and metrics are exported to `output`. `resume` continues the run already in `output`
    (Ray Train restores a run with the same storage path and name)."""
    from lexiray.chaos import with_marker
    from lexiray.data import prepare_data, save_prepared
    from lexiray.errors import LexirayError
    from lexiray.model import load_tokenizer
    from lexiray.report import export_checkpoint

    output = output.expanduser().resolve()
    run_dir = output / "ray" / "train"
    if run_dir.exists() and not resume:
        raise LexirayError(f"{output} already holds a training run: pass --resume to continue it "
                           "or choose another --output")
    if resume and not run_dir.exists():
        raise LexirayError(f"--resume: {output} holds no training run to continue")
    data_dir = output / "data"
    if not (resume and (data_dir / "train").is_dir()):
        tokenizer = load_tokenizer(config.model)
        prepared = prepare_data(config.data, tokenizer)  # fails before any folder is made
        print(f"data: {len(prepared.train)} train / {len(prepared.eval)} eval rows "
              f"({prepared.shape} shape, {len(prepared.bad_rows)} skipped, {prepared.truncated} truncated)")
        save_prepared(prepared, data_dir)
    write_resolved_config(config, output)
    init_ray(address, verbose=verbose, log_to_driver=True)
    check_resources(config)
    loop_config = loop_config_for(config, data_dir, str(output / "tensorboard"), eval_on_start=True,
                                  chaos=with_marker(chaos, output))
    loop_config["print_progress"] = True
    trainer = build_torch_trainer(config, loop_config, storage_path=str(output / "ray"), name="train")
    started = time.time()
    result = fit_or_explain(trainer)
    checkpoint, best_metrics = best_checkpoint(result, config.tune.metric, config.tune.mode)
    if checkpoint is None:
        raise LexirayError("training finished without a checkpoint: check training.save_steps")
    summary = export_checkpoint(checkpoint, output, config, final_metrics=result.metrics,
                                best_metrics=best_metrics, latest_checkpoint=result.checkpoint)
    summary["wall_time_s"] = time.time() - started
    return summary


def fit_or_explain(trainer):
    """`trainer.fit()`, with a failed run turned into one readable line."""
    from ray.train import TrainingFailedError

    from lexiray.errors import LexirayError

    try:
        return trainer.fit()
    except TrainingFailedError as error:
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        lines = [line for line in str(root).strip().splitlines() if line.strip()]
        raise LexirayError(f"training failed: {lines[-1] if lines else type(root).__name__}") from error
