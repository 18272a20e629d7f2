"""Build, run and restore the Ray Tune experiment.

Each Tune trial runs `run_trial`, which fits one Ray Train `TorchTrainer` (the Ray 2.51+
pattern); Train forwards every report to Tune through `TuneReportCallback`. The data is
tokenized once, in the driver, and shared with every trial through the object store.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from pathlib import Path

from lexiray.config import ExperimentConfig, config_from_dict
from lexiray.errors import ConfigError, LexirayError, ResourceError

EXPERIMENT_CONFIG = "config.yaml"
TRIAL_DRIVER_CPUS = 0.01  # the trial driver only waits on Train; Ray refuses a 0-CPU bundle


def parse_duration(text: str) -> float:
    """'90m', '2h', '1h30m', '45s', '600' -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise ConfigError(f"--time-budget {text!r}: expected e.g. 45m, 2h, 1h30m or seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigError(f"--time-budget {text!r}: must be more than 0")
    return total


def is_uri(path: str) -> bool:
    return "://" in path


def experiment_location(config: ExperimentConfig) -> tuple[str, str]:
    """(storage_path, name): a local storage path is made absolute; the default name is
    the preset's plus the start time, so a second run never collides with the first."""
    storage = config.tune.storage_path
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    name = config.tune.name or f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return storage, name


def join(storage: str, *parts: str) -> str:
    return "/".join([storage.rstrip("/"), *parts])


def write_text(location: str, text: str) -> None:
    """Write a small file to a local path or a pyarrow URI (s3://, gs://, file://)."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_text(text)
        return
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode())


def read_text(location: str) -> str | None:
    if not is_uri(location):
        return Path(location).read_text() if Path(location).is_file() else None
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
    if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode()


def total_steps(config: ExperimentConfig, train_rows: int) -> int:
    """Optimizer steps of a full trial: max_t for ASHA, derived from the epochs."""
    training = config.training
    if training.max_steps > 0:
        return training.max_steps
    per_epoch = max(1, math.ceil(train_rows / (training.effective_batch_size * config.resources.num_workers)))
    return max(1, math.ceil(per_epoch * training.num_train_epochs))


def check_schedule(config: ExperimentConfig, max_t: int) -> tuple[int, int]:
    """ASHA needs rungs: evaluations (= reports) must come before max_t. Returns
    (max_t, grace_period)."""
    every = config.training.effective_eval_steps
    max_t = config.tune.max_t or max_t
    if config.tune.scheduler == "asha" and every >= max_t:
        raise ConfigError(
            f"training.eval_steps/save_steps={every} but a trial has only {max_t} steps: ASHA would "
            "see one result per trial; lower training.save_steps (and eval_steps)"
        )
    grace = config.tune.grace_period or every
    if grace % every:
        raise ConfigError(f"tune.grace_period={grace} is not a multiple of training.eval_steps={every}: "
                          "ASHA's rungs would fall between evaluations")
    return max_t, grace


def check_storage(storage: str) -> None:
    """Ray no longer syncs trial folders to the head node: on several nodes a plain local
    path would scatter results over the nodes' disks."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    if len(alive) > 1 and not is_uri(storage):
        raise ResourceError(
            f"tune.storage_path={storage} is a local folder but the cluster has {len(alive)} nodes: use "
            "s3://..., gs://... or a shared NFS mount written as file:///mnt/shared/..."
        )


def default_concurrency(config: ExperimentConfig) -> int:
    import ray

    total = ray.cluster_resources()
    resources = config.resources
    if resources.gpus_per_trial > 0:
        return max(1, int(total.get("GPU", 0) // (resources.gpus_per_trial * resources.num_workers)))
    return max(1, int(total.get("CPU", 0) // (resources.cpus_per_trial * resources.num_workers)))


def quiet_trial_tracebacks(verbose: bool) -> None:
    """Tune logs a full traceback for every failed trial attempt, retried or not. The progress
    callback prints one line instead and the traceback stays in the trial's error.txt."""
    import logging

    if not verbose:
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)


def search_algorithm(config: ExperimentConfig, concurrency: int):
    from ray.tune.search import BasicVariantGenerator

    if config.tune.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("tune.search_alg=optuna needs Optuna: pip install 'lexiray[optuna]'") from None
        return OptunaSearch(metric=config.tune.metric, mode=config.tune.mode, seed=config.tune.seed)
    # Tune ignores max_concurrent_trials for an explicit BasicVariantGenerator: set it here.
    return BasicVariantGenerator(random_state=config.tune.seed, max_concurrent=concurrency)


def scheduler(config: ExperimentConfig, max_t: int, grace: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.tune.scheduler == "fifo":
        return FIFOScheduler()
    # Keyed on the optimizer step, not training_iteration: the step survives retries and
    # restores (training_iteration restarts at 1), so a resumed trial stays on its rung.
    return ASHAScheduler(time_attr="step", metric=config.tune.metric, mode=config.tune.mode, max_t=max_t,
                         grace_period=grace, reduction_factor=config.tune.reduction_factor)


# --------------------------------------------------------------------------- one trial


def run_trial(sample: dict, base: dict, data_refs: dict, experiment: dict) -> None:
    """Tune trainable: the trial's config from the sample, then one Ray Train run, named by
    the (stable) trial id so a retried or restored trial resumes its own checkpoints."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lexiray.launch import build_torch_trainer, loop_config_for
    from lexiray.space import apply_sample, describe_sample

    from lexiray.progress import is_finished, read_history

    config = apply_sample(config_from_dict(base), sample)
    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    if is_finished(experiment.get("finished_dir"), trial_id):
        # Finished (or stopped by ASHA) before a driver restart: never train it again, but
        # hand Tune back the results its restore dropped.
        for result in read_history(experiment["finished_dir"], trial_id):
            ray.tune.report({**result, "replayed": True})
        return
    tensorboard = None
    if experiment["tensorboard_root"]:
        tensorboard = str(Path(experiment["tensorboard_root"]) / f"{trial_id} {describe_sample(sample)}")
    chaos = experiment.get("chaos")
    if chaos and not trial_id.endswith("_00000"):
        chaos = None  # the chaos aid hits the first trial only
    loop_config = loop_config_for(config, "", tensorboard, chaos=chaos)
    loop_config["data_refs"] = data_refs
    # Retries belong to Tune here (tune.RunConfig's FailureConfig), not to Train: when ASHA
    # stops a trial, Ray tears its Train controller down, the workers die first, and a
    # controller allowed to retry starts a fresh worker group in its last ~0.2 s whose
    # placement group nobody ever removes: its CPUs stay taken and later trials wait
    # forever (seen: a 12-trial run hung with two such groups). A retried Tune trial resumes
    # from the same Train checkpoints, because its Train run keeps the trial id as name.
    trainer = build_torch_trainer(config, loop_config, storage_path=experiment["trials_storage"], name=trial_id,
                                  callbacks=[TuneReportCallback()], driver_cpus=TRIAL_DRIVER_CPUS, max_failures=0)
    trainer.fit()


# --------------------------------------------------------------------------- experiment


def _share_data(config: ExperimentConfig, console) -> tuple[dict, int]:
    """Tokenize once; put the Arrow tables in the object store for every trial."""
    import ray

    from lexiray.data import prepare_data
    from lexiray.model import load_tokenizer

    prepared = prepare_data(config.data, load_tokenizer(config.model))
    console.print(f"data: {len(prepared.train)} train / {len(prepared.eval)} eval rows "
                  f"({prepared.shape} shape, {len(prepared.bad_rows)} skipped, {prepared.truncated} truncated), "
                  "tokenized once for all trials")
    refs = {"train": ray.put(prepared.train.data.table), "eval": ray.put(prepared.eval.data.table)}
    return refs, len(prepared.train)


def _trainable(config: ExperimentConfig, data_refs: dict, experiment: dict):
    from ray import tune

    trainable = tune.with_parameters(run_trial, base=config.model_dump(mode="json"), data_refs=data_refs,
                                     experiment=experiment)
    return tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})


def _experiment_info(storage: str, name: str, chaos: dict | None) -> dict:
    root = join(storage, name)
    from lexiray.chaos import with_marker

    return {
        "root": root,
        "trials_storage": join(root, "trials"),
        "tensorboard_root": None if is_uri(root) else str(Path(root) / "tensorboard"),
        "chaos": with_marker(chaos, Path(root)) if chaos and not is_uri(root) else None,
        "finished_dir": None if is_uri(root) else str(Path(root) / "finished"),
    }


def _fit_and_finish(tuner, root: str, config: ExperimentConfig, console, max_t: int) -> dict:
    """Run (or continue) the Tuner, then the leaderboard, summary and best-adapter export."""
    from lexiray.report import finish_experiment
    from lexiray.trial import sweep_scratch_dirs

    started = time.time()
    tuner.fit()
    sweep_scratch_dirs()  # left by the killed workers of stopped trials (on this machine)
    return finish_experiment(root, config, console, wall_time_s=time.time() - started, max_t=max_t)


def run_tuning(config: ExperimentConfig, console, chaos: dict | None = None, address: str | None = None,
               verbose: bool = False) -> dict:
    """`lexiray tune`: validate everything, run the Tuner, then report and export."""
    from ray import tune

    from lexiray.launch import check_resources, init_ray
    from lexiray.progress import ProgressCallback

    storage, name = experiment_location(config)
    root = join(storage, name)
    if not is_uri(root) and Path(root).exists():
        raise LexirayError(f"experiment {root} exists already: `lexiray resume {root}` continues it, "
                           "or pick another --name")
    if not config.search:
        console.print("note: the config has no search: block; every trial runs the same settings")
    init_ray(address, verbose=verbose)
    quiet_trial_tracebacks(verbose)
    check_resources(config)
    check_storage(storage)
    data_refs, train_rows = _share_data(config, console)
    max_t, grace = check_schedule(config, total_steps(config, train_rows))
    concurrency = config.tune.max_concurrent_trials or default_concurrency(config)
    experiment = _experiment_info(storage, name, chaos)
    write_text(join(root, EXPERIMENT_CONFIG), _experiment_yaml(config, max_t, grace, concurrency))
    console.print(f"experiment {root}: {config.tune.num_samples} trials, {concurrency} at a time, "
                  f"{config.tune.scheduler.upper()} over {max_t} steps (first rung {grace}, "
                  f"reduction {config.tune.reduction_factor:g}), search {config.tune.search_alg}")
    if experiment["tensorboard_root"]:
        console.print(f"tensorboard --logdir {experiment['tensorboard_root']}")
    tuner = tune.Tuner(
        _trainable(config, data_refs, experiment),
        param_space=_param_space(config),
        tune_config=tune.TuneConfig(
            num_samples=config.tune.num_samples,
            # random search carries its own limit (Tune ignores this one for it)
            max_concurrent_trials=concurrency if config.tune.search_alg == "optuna" else None,
            search_alg=search_algorithm(config, concurrency),
            scheduler=scheduler(config, max_t, grace),
            time_budget_s=config.tune.time_budget_s,
            trial_name_creator=lambda trial: trial.trial_id,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
            callbacks=[ProgressCallback(console, max_t, experiment["finished_dir"])],
            verbose=1 if verbose else 0,
        ),
    )
    return _fit_and_finish(tuner, root, config, console, max_t)


def _param_space(config: ExperimentConfig) -> dict:
    from lexiray.space import build_param_space

    return build_param_space(config)


def _experiment_yaml(config: ExperimentConfig, max_t: int, grace: int, concurrency: int) -> str:
    from lexiray.config import config_to_yaml

    header = f"# resolved by lexiray: max_t={max_t} grace_period={grace} max_concurrent_trials={concurrency}\n"
    return header + config_to_yaml(config)


def resolve_experiment(path_or_name: str) -> str:
    candidate = Path(path_or_name).expanduser()
    if is_uri(path_or_name):
        if read_text(join(path_or_name, EXPERIMENT_CONFIG)) is None:
            raise LexirayError(f"{path_or_name}: not a lexiray experiment (no {EXPERIMENT_CONFIG})")
        return path_or_name.rstrip("/")
    if not (candidate / EXPERIMENT_CONFIG).is_file():
        default = Path(ExperimentConfig().tune.storage_path).resolve() / path_or_name
        if (default / EXPERIMENT_CONFIG).is_file():
            candidate = default
        else:
            raise LexirayError(f"{path_or_name}: not a lexiray experiment folder (no {EXPERIMENT_CONFIG})")
    return str(candidate.resolve())


def resume_tuning(path_or_name: str, console, retry_errored: bool = False, address: str | None = None,
                  verbose: bool = False) -> dict:
    """`lexiray resume`: finished trials (ASHA-stopped ones included) are kept, unfinished
    ones continue from their last persisted checkpoint, errored ones rerun on request."""
    from ray import tune

    from lexiray.launch import check_resources, init_ray
    from lexiray.progress import ProgressCallback

    root = resolve_experiment(path_or_name)
    from lexiray.config import yaml_load

    config = config_from_dict(yaml_load(read_text(join(root, EXPERIMENT_CONFIG))) or {}, f"{root}/{EXPERIMENT_CONFIG}")
    if not tune.Tuner.can_restore(root):
        raise LexirayError(f"{root}: no Tune experiment state to resume from")
    init_ray(address, verbose=verbose)
    quiet_trial_tracebacks(verbose)
    check_resources(config)
    data_refs, train_rows = _share_data(config, console)
    max_t, _ = check_schedule(config, total_steps(config, train_rows))
    storage, name = root.rsplit("/", 1)
    experiment = _experiment_info(storage, name, None)
    console.print(f"resuming {root}")
    tuner = tune.Tuner.restore(
        root,
        trainable=_trainable(config, data_refs, experiment),
        resume_unfinished=True,
        resume_errored=retry_errored,
        restart_errored=False,
        param_space=_param_space(config),
    )
    return _fit_and_finish(tuner, root, config, console, max_t)


def read_summary(root: str | Path) -> dict:
    return json.loads((Path(root) / "summary.json").read_text())
