"""One trial, top to bottom: the Tune trial driver, the Ray Train worker, `lexiray train`.

The flow of one tuning trial, each integration point numbered where it happens:

  Tune's trial actor ─► run_tune_trial(sample, plan)          (the per-trial driver)
      1. the trial's config = the experiment's config + this sample
      2. a trial that finished before a driver restart replays its results, never retrains
      3. its resolved config and fingerprint (lexiray.warm) are saved where it runs; a trial
         whose twin (same fingerprint) finished in the warm-start experiment or trains in
         this run replays the twin's results instead of training (reused); a sample
         estimated over its GPU's memory (lexiray.memory) stops here, recorded as skipped
      4. one Ray Train run named by the trial id ─► build_torch_trainer: with one worker,
         Train's local mode in this actor (trains_in_trial_actor), reporting to Tune's
         session; with several, a worker group whose reports reach Tune via the mailbox
  each Ray Train worker ─► train_worker(settings)
      5. threads and precision for the hardware this worker got
      6. tokenizer, base model + LoRA, the tokenized data from the object store
      7. Tune (in place) or Train (a worker group) hands back the last persisted
         checkpoint after a failure: resume from it
      8. the HF Trainer (lexiray.hf_trainer): each save → one report with its checkpoint
      9. fit, then drop the local scratch folder (every checkpoint is in Ray's storage)
      6–9 again after a CUDA out-of-memory error, on the OOM back-off ladder's next rung
         (lexiray.oom): memory freed, the trial rebuilt in place with a smaller footprint
      6–9 again after a non-finite loss or gradient norm, on the precision ladder's next rung
         (lexiray.precision), from the last finite checkpoint; with no rung left the trial
         stops there and its last report records it as diverged (a result, not an error)

`lexiray train` (run_training) runs steps 4–9 without Tune. What crosses the Ray boundary
is a frozen dataclass: `TrialPlan` (Tune driver → trial driver), `WorkerSettings`
(trial driver → workers).

Only Ray and light lexiray modules are imported at the top: Ray imports this module in
the Tune driver and in every trial's actor, and a multi-worker trial's actor only drives
its Train run (transformers alone would cost it ~3 CPU-seconds).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import ray.train
import ray.tune
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.backend import BackendConfig

from lexiray import ray_seam, storage
from lexiray.channel import ReportToTune, TrainRunChannel, TrialChannel, TuneSessionChannel
from lexiray.chaos import ChaosSpec
from lexiray.cluster import check_resources, init_ray
from lexiray.config import ExperimentConfig, apply_sample
from lexiray.cost import COST_KEYS, hourly_rate, usd
from lexiray.data import load_prepared, prepare_data, save_prepared
from lexiray.errors import LexirayError
from lexiray.memory import mfu_inputs, over_budget
from lexiray.model import build_peft_model, check_bitsandbytes, choose_precision, detect_hardware, load_tokenizer
from lexiray.model import check_precision
from lexiray.oom import OomLadder, free_memory, is_out_of_memory, raise_oom_above_batch, shorten_rows
from lexiray.precision import NonFinite, PrecisionLadder, diverged_report, inject_nan_loss
from lexiray.results import TrialReport, is_number
from lexiray.space import describe_sample
from lexiray.storage import ExperimentLayout, TrainRunLayout
from lexiray.warm import trial_fingerprint

log = logging.getLogger(__name__)

# A Tune trial's driver only waits on its Train run; Ray refuses a 0-CPU bundle.
TRIAL_DRIVER_CPUS = 0.01


@dataclass(frozen=True)
class TrainingData:
    """The tokenized train / eval sets: Arrow tables in the object store (tuning: tokenized
    once, shared by every trial) or a folder written by `data.save_prepared` (one run)."""

    train_ref: Any = None  # ray.ObjectRef of a pyarrow.Table
    eval_ref: Any = None
    folder: str | None = None

    def load(self):
        if self.folder is not None:
            return load_prepared(self.folder)
        import datasets

        return datasets.Dataset(ray.get(self.train_ref)), datasets.Dataset(ray.get(self.eval_ref))


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a Ray Train worker needs, from the driver that launches it."""

    config: ExperimentConfig  # the trial's resolved config
    data: TrainingData
    tensorboard_dir: str | None = None
    eval_on_start: bool = False  # a step-0 evaluation, for the "before" of a single run
    chaos: ChaosSpec | None = None
    print_progress: bool = False
    searched: frozenset[str] = frozenset()  # settings the search varies: the OOM ladder keeps them
    # How the worker reports, resumes, hears "stop" and knows its rank (lexiray.channel):
    # chosen by the driver from where the trial trains (`trains_in_trial_actor`).
    channel: TrialChannel = field(default_factory=TrainRunChannel)
    started_at: float = field(default_factory=time.time)  # for the startup_s metric; the cost's clock
    paid_before_s: float = 0.0  # seconds the trial's earlier attempts were paid for (lexiray.cost)


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a tuning experiment shares, from the Tune driver."""

    base_config: ExperimentConfig  # the experiment's config; the sample is applied per trial
    data: TrainingData
    layout: ExperimentLayout
    chaos: ChaosSpec | None = None
    mailbox: Any = None  # the run's TrialMailbox actor: multi-worker trials' Train → Tune reports
    data_fingerprint: str = ""  # lexiray.warm.data_fingerprint of the data every trial trains on
    warm_start: ExperimentLayout | None = None  # the earlier experiment whose finished trials are reused


def trains_in_trial_actor(config: ExperimentConfig) -> bool:
    """A single-worker trial trains inside its Tune trial actor: Ray Train's local mode
    (`num_workers=0`), the same `train_worker` function, reporting to Tune directly.

    Why: a Train run with one worker costs four more Python processes per trial (Train
    controller, placement-group cleaner, synchronization actor, the worker itself), each
    ~1.5 CPU-s of start-up and imports on 2 cores, plus a report hop through an actor: on
    short trials under ASHA that start-up was most of the slot time. With one worker,
    Train's worker restart and Tune's trial retry are the same thing (a fresh process
    resumed from the last persisted checkpoint), so Tune's FailureConfig does it. Trials
    with several workers keep the full Train run: its worker group, torch.distributed
    and worker-level fault tolerance."""
    return config.resources.num_workers == 1


def trial_actor_resources(config: ExperimentConfig) -> dict:
    """What Tune reserves for a trial's actor: the whole trial's CPUs / GPU when it trains
    in place, else a sliver (its Train run reserves the workers' resources)."""
    resources = config.resources
    if not trains_in_trial_actor(config):
        return {"CPU": TRIAL_DRIVER_CPUS}
    reserved = {"CPU": resources.cpus_per_trial}
    if resources.gpus_per_trial:
        reserved["GPU"] = resources.gpus_per_trial
    if resources.accelerator_type:  # as Ray Train's ScalingConfig asks for it
        reserved[f"accelerator_type:{resources.accelerator_type}"] = 0.001
    return reserved


# --------------------------------------------------------------------------- the trial driver


def run_tune_trial(sample: dict, plan: TrialPlan) -> None:
    """The Tune trainable: one Ray Train run for one sample of the search space."""
    # 1. The trial's config: derived settings and the constant effective batch applied.
    started = time.time()  # a reused trial pays from here: the slot it holds while it waits for its twin
    config = apply_sample(plan.base_config, sample)
    trial_id = ray.tune.get_context().get_trial_id()
    # 2. Finished (or stopped by ASHA) before a driver restart: never train it again, but
    #    hand Tune back the results its restore dropped.
    if storage.is_finished(plan.layout, trial_id):
        for result in storage.read_history(plan.layout, trial_id):
            ray.tune.report({**result, "replayed": True})
        return
    # 3. Saved where it runs, so the report never has to re-derive it.
    storage.write_trial_config(plan.layout, trial_id, config)
    fingerprint = trial_fingerprint(config, plan.data_fingerprint)
    storage.write_trial_fingerprint(plan.layout, trial_id, fingerprint, plan.data_fingerprint)
    # 3a. Trained before, with the same settings, model and data: replayed, not trained again.
    twin = reusable_twin(plan, trial_id, fingerprint)
    if twin == STOPPED_WAITING:
        return
    if twin is not None:
        replay_twin(twin, paid_s=time.time() - started, hourly=hourly_rate(config.resources))
        return
    # 3b. A sample whose estimated peak memory is over its GPU's would only run out of
    #     memory: it is not trained, it is recorded as skipped with its estimate.
    over = over_budget(config)
    if over is not None:
        skip_over_budget(plan.layout, trial_id, config.tune.metric, *over)
        return
    chaos = plan.chaos if plan.chaos and plan.chaos.hits_trial(trial_id) else None
    in_process = trains_in_trial_actor(config)
    settings = WorkerSettings(
        config=config,
        data=plan.data,
        tensorboard_dir=plan.layout.trial_tensorboard_dir(trial_id, describe_sample(sample)),
        # the first trial also evaluates the untrained model: the "before" of the leaderboard
        eval_on_start=storage.claim_untrained_evaluation(plan.layout, trial_id),
        chaos=chaos,
        searched=frozenset(plan.base_config.search_space.keys),
        channel=TuneSessionChannel() if in_process else TrainRunChannel(),
        paid_before_s=paid_before(plan.layout, trial_id) if config.resources.price_per_hour else 0.0,
    )
    if in_process:  # 4. Ray Train's local mode, in this process (trains_in_trial_actor)
        build_torch_trainer(settings, storage_path=plan.layout.trials_storage, name=trial_id, worker_retries=0,
                            in_process=True).fit()
        return
    # 4. Named by the (stable) trial id: a retried or restored trial finds its own
    #    checkpoints. Retries belong to Tune here (tune.RunConfig's FailureConfig), not to
    #    Train: when ASHA stops a trial, Ray tears its Train controller down, the workers
    #    die first, and a controller allowed to retry starts a fresh worker group in its
    #    last ~0.2 s whose placement group nobody removes: its CPUs stay taken and later
    #    trials wait forever (seen: a 12-trial run hung with two such groups).
    # One mailbox slot per attempt: a retried trial keeps its id, and the report a killed
    # attempt left behind must not reach the next one.
    mailbox_key = f"{trial_id}/{uuid.uuid4().hex}"
    trainer = build_torch_trainer(settings, storage_path=plan.layout.trials_storage, name=trial_id,
                                  worker_retries=0, callbacks=[ReportToTune(plan.mailbox, mailbox_key)],
                                  driver_cpus=TRIAL_DRIVER_CPUS)
    try:
        trainer.fit()
    finally:
        plan.mailbox.forget.remote(mailbox_key)


def paid_before(layout: ExperimentLayout, trial_id: str) -> float:
    """The seconds the trial's earlier attempts reported paying for (a retry, a resumed
    experiment; 0 for a first attempt): its recorded results, which outlive the attempts."""
    paid = [result.get("paid_s") for result in storage.read_history(layout, trial_id)]
    return max([value for value in paid if is_number(value)], default=0.0)
# How long a trial waits for its twin in this run at most: a guard, not a schedule. A twin
# that failed (Tune retries it, or gives up) marks it at once (storage.mark_failed); this only
# matters if a retried twin waits for a slot its waiting twins hold.
TWIN_WAIT_S = 1800.0
TWIN_POLL_S = 1.0
STOPPED_WAITING = ("stopped", "")


class Twin(NamedTuple):
    """A finished trial with the same fingerprint, and the results it recorded (read once)."""
    source: ExperimentLayout
    trial_id: str
    history: list[dict]


def reusable_twin(plan: TrialPlan, trial_id: str, fingerprint: str) -> Twin | None | tuple[str, str]:
    """The finished trial with this fingerprint to replay (a Twin), None to
    train, or STOPPED_WAITING when Tune stopped this trial while it waited. The warm-start
    experiment's finished trial first; else the first trial of this run to claim the
    fingerprint trains it and every later twin waits for it to finish, then replays it (a
    twin stopped by ASHA is replayed as far as it went, so this one stops there too). A twin
    that failed or takes longer than TWIN_WAIT_S is not waited for: this one trains."""
    source = plan.warm_start
    if source is not None:
        owner = storage.fingerprint_owner(source, fingerprint)
        history = storage.read_history(source, owner) if owner and storage.is_finished(source, owner) else []
        # a twin skipped over its GPU memory there never trained: this run's memory budget decides anew
        if history and not history[-1].get("skipped_memory"):
            storage.claim_fingerprint(plan.layout, fingerprint, trial_id)  # a later warm start finds it here too
            return Twin(source, owner, history)
    owner = storage.claim_fingerprint(plan.layout, fingerprint, trial_id)
    if owner == trial_id:  # first with it (or this trial again, retried): trains
        return None
    deadline = time.monotonic() + TWIN_WAIT_S
    log.info("trial %s: same settings as trial %s, which trains them: waiting for its results", trial_id, owner)
    while time.monotonic() < deadline:
        if storage.is_finished(plan.layout, owner):
            history = storage.read_history(plan.layout, owner)
            return Twin(plan.layout, owner, history) if history else None
        if storage.has_failed(plan.layout, owner):
            return None
        if ray_seam.tune_asked_to_stop():  # the run ends (time budget, Ctrl-C)
            return STOPPED_WAITING
        time.sleep(TWIN_POLL_S)
    return None


def replay_twin(twin: Twin, paid_s: float = 0.0, hourly: float | None = None) -> None:
    """Hand Tune the twin's reports as this trial's, marked reused: ASHA judges them as it
    judges a trained trial's. Checkpoint paths point at the twin's checkpoints (in its
    experiment: `checkpoint_location`), so the report and export find them; a twin that was
    itself reused keeps the trial that trained. Its cost is this run's, not the twin's: the
    `paid_s` seconds it held its slot (waiting for a twin of this run) at this run's price
    (`hourly`; none: no cost keys, as for any trial of an unpriced run)."""
    source = twin.source
    for result in twin.history:
        result.pop("checkpoint_dir_name", None)  # Tune's name inside the twin's folder, not this one's
        if isinstance(result.get("checkpoint_path"), str):
            location = source.checkpoint_location(result["checkpoint_path"])
            # the twin's run pruned it (tune.keep_checkpoints); ASHA may stop this one at that step
            if storage.exists(location):
                result["checkpoint_path"] = location
            else:
                del result["checkpoint_path"]
        result.setdefault("reused_from", f"{source.name}/{twin.trial_id}")
        for key in COST_KEYS:
            result.pop(key, None)
        if hourly is not None:
            result.update(paid_s=paid_s, cost_usd=usd(paid_s, hourly), projected_cost_usd=usd(paid_s, hourly))
        ray.tune.report(result)


def skip_over_budget(layout: ExperimentLayout, trial_id: str, metric: str, estimate_gb: float,
                     budget_gb: float) -> None:
    """One Tune result that says the trial was skipped, then its finished record. Tune
    refuses a result without the scheduler's metric: NaN, which ranks the trial last."""
    result = TrialReport(skipped_memory=True, estimated_memory_gb=round(estimate_gb, 2),
                         memory_budget_gb=round(budget_gb, 2)).with_value(metric, float("nan")).to_result()
    ray.tune.report(result)
    storage.mark_finished(layout, trial_id, result)


def backend_config(num_workers: int, use_gpu: bool) -> BackendConfig:
    """No distributed backend for one worker; torch.distributed (NCCL / gloo) for several."""
    if num_workers == 1:
        return BackendConfig()
    from ray.train.torch import TorchConfig  # imports torch: only multi-worker trials pay it

    return TorchConfig(backend="nccl" if use_gpu else "gloo")


def build_torch_trainer(settings: WorkerSettings, storage_path: str, name: str, worker_retries: int,
                        callbacks: list | None = None, driver_cpus: float = 0.0,
                        in_process: bool = False) -> ray_seam.LeanTrainer:
    """A Ray Train run of `train_worker` on the config's resources; checkpoints ranked by
    the tuned metric, the best `tune.keep_checkpoints` kept. `worker_retries`: how often
    Train restarts failed workers from the last checkpoint (0 under Tune, which retries).
    `in_process`: Ray Train's local mode (num_workers=0), `train_worker` in this process."""
    config = settings.config
    resources = config.resources
    # A Tune trial's driver holds a sliver of CPU; the first worker gives it back, or on a
    # 2-CPU machine 2 x (1 + 0.01) CPUs would not fit and trials would run one at a time.
    per_worker = {"CPU": max(resources.cpus_per_trial - driver_cpus / resources.num_workers, 0.01)}
    if resources.gpus_per_trial:
        per_worker["GPU"] = resources.gpus_per_trial
    use_gpu = resources.gpus_per_trial > 0
    return ray_seam.LeanTrainer(
        # The settings travel in the pickled function, not as `train_loop_config`: Ray
        # types that as a JSON-like dict (its state export converts it to a protobuf Struct).
        functools.partial(train_worker, settings),
        backend_config=backend_config(resources.num_workers, use_gpu),
        scaling_config=ScalingConfig(num_workers=0) if in_process else ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=use_gpu,
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
            failure_config=FailureConfig(max_failures=worker_retries),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="WARNING"),  # no line per report / checkpoint
        ),
    )


# --------------------------------------------------------------------------- the Train worker


def set_thread_count(cpus: float) -> None:
    """Ray starts workers with OMP_NUM_THREADS=1; give torch the CPUs the trial holds."""
    import torch

    threads = max(1, round(cpus))  # 0.99 CPU (a trial driver's sliver given back) is 1 thread
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def train_worker(settings: WorkerSettings) -> None:
    """What every training process runs: a Ray Train worker, or a single-worker trial in its
    Tune actor. Where it runs is the channel's business (`settings.channel`): reports,
    the checkpoint to resume from, "asked to stop" and rank zero. A CUDA out-of-memory
    error does not fail the trial: the worker frees the memory and trains again, in place,
    on the next rung of the OOM back-off ladder (lexiray.oom; single-worker trials only:
    one rank retrying alone would leave the others waiting in their collectives). Nor does
    a non-finite loss: the worker backs off to a safer precision (lexiray.precision, single-
    worker trials too) and resumes from the last finite checkpoint; with no rung left it
    reports the trial as diverged and returns."""
    ray_seam.quiet_train_reports()
    config = settings.config
    # 5. Threads and precision for the hardware this worker got.
    hardware = detect_hardware()
    if not hardware.cuda:
        set_thread_count(config.resources.cpus_per_trial)
    precision = choose_precision(config.training.precision, hardware)
    train_set, eval_set = settings.data.load()
    lengths = list(train_set["length"]) if "length" in train_set.column_names else None  # for the OOM ladder
    ladder = OomLadder(config, settings.searched, train_lengths=lengths)
    precisions = PrecisionLadder(precision, chaos_nan_loss=bool(settings.chaos and settings.chaos.action == "nan-loss"),
                                 can_back_off=config.resources.num_workers == 1)
    # 7. After a worker failure (or `train --resume`) Train hands back the last persisted
    #    checkpoint; a resumed run has its step-0 evaluation in the restored history already.
    checkpoint = settings.channel.latest_checkpoint()
    output_dir = storage.make_scratch_dir()
    paged_noted = False
    try:
        while True:
            paged_noted = paged_noted or note_paged_optimizer_on_cpu(ladder.config.training.optim, hardware.cuda)
            try:
                with resume_source(checkpoint, output_dir, ladder) as resume_dir:
                    found = fit_attempt(settings, ladder, hardware, precisions, train_set, eval_set, output_dir,
                                        resume_dir)
            except Exception as error:
                if not is_out_of_memory(error) or config.resources.num_workers > 1:
                    raise
                message = str(error).strip().splitlines()[0]
            else:
                if found is None:  # finished (or stopped when asked)
                    return
                # non-finite: the stop came before its state was saved
                free_memory()
                if precisions.back_off(found) is None:
                    report_divergence(settings, ladder, precisions, found)
                    return
                continue
            # Outside the `except`: the error's traceback no longer holds the attempt's model.
            free_memory()
            rung = ladder.back_off(message)  # the one-line error once no rung is left
            if not rung.keeps_optimization:  # no checkpoint of the earlier recipe may be resumed
                shutil.rmtree(output_dir, ignore_errors=True)
                output_dir = storage.make_scratch_dir()
    finally:
        # 9. Every checkpoint is in Ray's storage by now: drop the local scratch folder.
        shutil.rmtree(output_dir, ignore_errors=True)


def note_paged_optimizer_on_cpu(optim: str, cuda: bool) -> bool:
    """Say once in the trial log that a paged optimizer pages nothing on CPU (bitsandbytes
    falls back to plain state tensors there). True once said."""
    if cuda or not optim.startswith("paged_"):
        return False
    log.warning("training.optim=%s runs without paging on CPU: bitsandbytes keeps the optimizer state "
                "in ordinary CPU memory", optim)
    return True


@contextlib.contextmanager
def resume_source(checkpoint, output_dir: str, ladder: OomLadder):
    """The HF checkpoint folder an attempt resumes from, or None to train from step 0: this
    worker's newest local checkpoint (an earlier attempt saved it before running out of
    memory), else Train's persisted one. None once a rung changed the recipe (the sequence
    length, r or optimizer): no earlier checkpoint's adapter or optimizer state fits it."""
    from transformers.trainer_utils import get_last_checkpoint

    if not ladder.keeps_optimization:
        yield None
    elif os.path.isdir(output_dir) and get_last_checkpoint(output_dir):
        yield get_last_checkpoint(output_dir)
    elif checkpoint is not None and (checkpoint := present_checkpoint(checkpoint)) is not None:
        with checkpoint.as_directory() as restored:
            yield os.path.join(restored, storage.CHECKPOINT_NAME)
    else:
        yield None


def present_checkpoint(checkpoint):
    """The persisted checkpoint to resume from: the one Tune or Train hands back, or where it
    is gone, the trial's newest complete one beside it (None: none left). A driver killed
    between an experiment-state snapshot and the trial's next save leaves the snapshot naming
    a checkpoint that tune.keep_checkpoints has since pruned: every retry would fail on it."""
    import pyarrow.fs
    from ray.train import Checkpoint

    fs = checkpoint.filesystem

    def complete(path: str) -> bool:  # HF writes trainer_state.json last
        state = f"{path}/{storage.CHECKPOINT_NAME}/trainer_state.json"
        return fs.get_file_info(state).type == pyarrow.fs.FileType.File

    if complete(checkpoint.path):
        return checkpoint
    parent = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    siblings = sorted((info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))
                       if info.type == pyarrow.fs.FileType.Directory
                       and info.base_name.startswith("checkpoint_")), reverse=True)
    newest = next((path for path in siblings if complete(path)), None)
    log.warning("checkpoint %s is gone; resuming from %s", checkpoint.path, newest or "step 0 (none is left)")
    return None if newest is None else Checkpoint(newest, filesystem=fs)


def report_divergence(settings: WorkerSettings, ladder: OomLadder, precisions: PrecisionLadder,
                      found: NonFinite) -> None:
    """A diverged trial's last report (every rank sends it: Train waits for all), logged on one line."""
    report = diverged_report(precisions, found, settings.config.tune.metric).merged(ladder.report())
    log.warning("%s: stopped at step %d, recorded as diverged", report.diverged, found.step)
    settings.channel.report(report.to_result())


def fit_attempt(settings: WorkerSettings, ladder: OomLadder, hardware, precisions: PrecisionLadder, train_set,
                eval_set, output_dir: str, resume_dir: str | None) -> NonFinite | None:
    """Steps 6, 8 and 9 with the ladders' current config and precision: model, HF Trainer,
    fit. Returns what turned non-finite when that stopped it, else None."""
    from lexiray import hf_trainer  # transformers: paid by the workers only

    config = ladder.config
    precision, weights = precisions.rung.autocast, precisions.rung.weights
    # 6. Model and data. A shorter data.max_seq_length rung truncates the training rows only:
    #    the evaluation rows stay whole, so the trial's eval_loss still compares with the others'.
    tokenizer = load_tokenizer(config.model)
    # The LoRA weights' initial values come from the global RNG: seeded, a trial starts the
    # same in a fresh process and in a reused trial actor (whose RNG the last trial moved).
    from transformers import set_seed

    set_seed(config.training.seed)
    hf_trainer.reset_peak_memory()  # the peak of this attempt, model loading included
    model = build_peft_model(config.model, config.lora, config.training, weights)
    if settings.chaos and settings.chaos.action == "oom-above-batch":
        raise_oom_above_batch(model, settings.chaos.batch_limit)
    if config.data.max_seq_length < settings.config.data.max_seq_length:
        train_set = shorten_rows(train_set, config.data.max_seq_length)
    # 8. The HF Trainer. Callback order matters: the chaos kill inside a save strikes
    #    before the report persists that checkpoint.
    throughput = hf_trainer.ThroughputMeter(
        settings.started_at, **mfu_inputs(config, model.config.to_dict(), hardware.gpu_name, precision),
        hourly_usd=hourly_rate(config.resources), paid_before_s=settings.paid_before_s)
    # After EvaluateAndSaveAtLastStep: a non-finite last step must not be saved either.
    non_finite = hf_trainer.StopOnNonFinite(each_step=config.resources.num_workers == 1,
                                            grad_norm=precision != "fp16")
    callbacks = [throughput, hf_trainer.EvaluateAndSaveAtLastStep(), non_finite]
    if settings.chaos:
        callbacks.append(hf_trainer.KillWorkerOnce(settings.chaos))
    # Which precision and which Ray node: what a user checks first on a mixed cluster; the
    # OOM rungs taken and the settings the trial finally ran with.
    where = TrialReport(precision=precision, node_id=ray.get_runtime_context().get_node_id(),
                        training_pid=os.getpid()).merged(ladder.report()).merged(precisions.report())
    channel = settings.channel
    callbacks.append(hf_trainer.ReportOnSave(throughput, channel.report, constants=where))
    callbacks.append(hf_trainer.StopWhenAsked(channel.asked_to_stop))
    if settings.print_progress:
        callbacks.append(hf_trainer.PrintTrainingProgress())
    if settings.tensorboard_dir and channel.is_rank_zero():
        callbacks.extend(hf_trainer.tensorboard_callbacks(settings.tensorboard_dir, scratch=output_dir))
    trainer = hf_trainer.build_hf_trainer(
        config, model, tokenizer, train_set, eval_set, output_dir, precision, hardware.cuda,
        eval_on_start=settings.eval_on_start and resume_dir is None, callbacks=callbacks,
    )
    if precisions.injects_nan_loss:
        inject_nan_loss(model, settings.chaos.step, lambda: trainer.state.global_step + 1,
                        lambda: non_finite.found is None)
    # 9. Fit.
    if resume_dir is not None:
        log.info("resuming from %s", resume_dir)
    trainer.train(resume_from_checkpoint=resume_dir)
    return non_finite.found


# --------------------------------------------------------------------------- `lexiray train`


def best_checkpoint(result, metric: str = "eval_loss", mode: str = "min"):
    """(checkpoint, metrics) of a Train result's best kept checkpoint by `metric`."""
    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not ranked:
        return (result.checkpoint, result.metrics) if result.checkpoint else (None, {})
    pick = min if mode == "min" else max
    return pick(ranked, key=lambda pair: pair[1][metric])


def fit_or_explain(trainer):
    """`trainer.fit()`, with a failed run turned into one readable line."""
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as error:
        root = error
        while root.__cause__ is not None:
            root = root.__cause__
        lines = [line for line in str(root).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else type(root).__name__
        # A worker's LexirayError (e.g. lexiray.oom's out-of-rungs error) reads on its own:
        # no "lexiray.oom.OutOfRungsError: " from the traceback's last line in front of it.
        last = re.sub(r"^lexiray\.[\w.]+Error: ", "", last)
        raise LexirayError(f"training failed: {last}") from error


def run_training(config: ExperimentConfig, output: Path, resume: bool = False, chaos: ChaosSpec | None = None,
                 address: str | None = None, verbose: bool = False) -> dict:
    """`lexiray train`: one trial through Ray Train; the adapter, tokenizer, resolved config
    and metrics are exported to `output`. `resume` continues the run already in `output`
    (Ray Train restores a run with the same storage path and name)."""
    layout = TrainRunLayout(output.expanduser().resolve())
    if layout.run_dir.exists() and not resume:
        raise LexirayError(f"{layout.output} already holds a training run: pass --resume to continue it "
                           "or choose another --output")
    if resume and not layout.run_dir.exists():
        raise LexirayError(f"--resume: {layout.output} holds no training run to continue")
    storage.check_storage(str(layout.output), field="--output")
    check_bitsandbytes(config.model, config.training, config.resources.gpus_per_trial)
    check_precision(config)
    prepared = None
    if not (resume and (layout.data_dir / "train").is_dir()):
        prepared = prepare_data(config.data, load_tokenizer(config.model))  # fails before any folder is made
        print(f"data: {len(prepared.train)} train / {len(prepared.eval)} eval rows "
              f"({prepared.shape} shape, {len(prepared.bad_rows)} skipped, {prepared.truncated} truncated)")
    init_ray(address, verbose=verbose, log_to_driver=True)
    check_resources(config)  # still before the output folder is made
    if prepared is not None:
        save_prepared(prepared, layout.data_dir)
    storage.write_config(layout.config_file, config)
    settings = WorkerSettings(
        config=config,
        data=TrainingData(folder=str(layout.data_dir)),
        tensorboard_dir=str(layout.tensorboard_dir),
        eval_on_start=True,
        chaos=chaos.bound_to(layout.output) if chaos else None,
        print_progress=True,
    )
    # Without Tune, Train itself restarts failed workers from the last checkpoint.
    trainer = build_torch_trainer(settings, storage_path=layout.ray_storage, name=layout.run_name,
                                  worker_retries=config.tune.max_failures)
    started = time.time()
    result = fit_or_explain(trainer)
    checkpoint, best_metrics = best_checkpoint(result, config.tune.metric, config.tune.mode)
    if checkpoint is None:
        raise LexirayError("training finished without a checkpoint: check training.save_steps")
    summary = storage.export_adapter(checkpoint, layout.output, config, final_metrics=result.metrics,
                                     best_metrics=best_metrics, latest_checkpoint=result.checkpoint)
    summary["wall_time_s"] = time.time() - started
    return summary
