"""Build, run and restore the Ray Tune experiment: scheduler, search algorithm, failure policy.

Each Tune trial runs `trial.run_tune_trial`, one Ray Train run per trial: in Train's local
mode inside the trial's actor when it has one worker, else a worker group whose reports
reach Tune through the run's mailbox (lexiray.channel). The data is tokenized once, here
in the driver, and shared with every trial through the object store. The leaderboard and
the best-adapter export come after, from `lexiray.report` (the CLI calls both).
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import contextmanager

import ray
from ray import tune
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, Searcher

from lexiray import ray_seam, scoring, storage
from lexiray.channel import start_mailbox
from lexiray.chaos import ChaosSpec
from lexiray.cluster import check_resources, check_shared_storage, default_concurrency, init_ray
from lexiray.config import ExperimentConfig
from lexiray.cost import BudgetLedger, hourly_rate, money, planned_trials, price_unit
from lexiray.data import prepare_data
from lexiray.errors import ConfigError, LexirayError
from lexiray.model import check_bitsandbytes, check_precision, load_tokenizer
from lexiray.progress import PrintTrialProgress
from lexiray.space import build_param_space
from lexiray.storage import ExperimentLayout, TuningRun
from lexiray.trial import TrainingData, TrialPlan, run_tune_trial, trains_in_trial_actor, trial_actor_resources
from lexiray.warm import WarmStart, data_fingerprint, describe, read_warm_start


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
    if config.tune.scheduler == "asha" and grace >= max_t:
        raise ConfigError(f"tune.grace_period={grace} but a trial has only {max_t} steps: ASHA would stop no "
                          "trial early; lower tune.grace_period (or raise tune.max_t)")
    if grace % every:
        raise ConfigError(f"tune.grace_period={grace} is not a multiple of training.eval_steps={every}: "
                          "ASHA's rungs would fall between evaluations")
    return max_t, grace


def budget_ledger(config: ExperimentConfig) -> BudgetLedger | None:
    """The run's cost account when `tune.budget_usd` is set (lexiray.cost)."""
    if config.tune.budget_usd is None:
        return None
    return BudgetLedger(config.tune.budget_usd, planned=planned_trials(config))


class BudgetedVariantGenerator(BasicVariantGenerator):
    """Random and grid search (Tune's BasicVariantGenerator: the same seeded samples, in the same
    order) that starts no trial while the budget's spent plus committed cost has reached it,
    and ends the search once no running trial can free any. Tune feeds every search algorithm
    each trial's results and its end: the ledger's costs come from there."""

    def __init__(self, ledger: BudgetLedger, **kwargs):
        super().__init__(**kwargs)
        self.ledger = ledger

    def next_trial(self):
        if not self.is_finished() and not self.ledger.may_start():
            if self.ledger.final:
                self.set_finished()
            return None
        trial = super().next_trial()
        if trial is not None:
            self.ledger.start(trial.trial_id)
        return trial

    def on_trial_result(self, trial_id: str, result: dict):
        super().on_trial_result(trial_id, result)
        self.ledger.record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result=result, error=error)
        self.ledger.finish(trial_id, result)


class BudgetLimiter(Searcher):
    """A Searcher (Optuna's, behind its ConcurrencyLimiter) that suggests nothing while the
    budget's spent plus committed cost has reached it, and FINISHED once no running trial can
    free any: what BudgetedVariantGenerator does for random search, in Searcher terms."""

    def __init__(self, searcher: Searcher, ledger: BudgetLedger):
        self.searcher, self.ledger = searcher, ledger
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str):
        if not self.ledger.may_start():
            return Searcher.FINISHED if self.ledger.final else None
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.ledger.start(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)
        self.ledger.record(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)
        self.ledger.finish(trial_id, result)

    # Tune's SearchGenerator saves each wrapper of the searcher through get_state / set_state
    # (the experiment's searcher checkpoint): a resumed run keeps what was spent.
    def get_state(self) -> dict:
        return {"ledger": self.ledger}

    def set_state(self, state: dict) -> None:
        self.ledger = state["ledger"]


def informed_optuna_search(evaluated: tuple[tuple[dict, float], ...], **options):
    """An OptunaSearch told earlier results before it samples (a warm start; none on a cold
    start, where it is Ray's OptunaSearch as is), besides the points it evaluates first. Ray's `evaluated_rewards` would record the points instead of
    evaluating them; Optuna needs the search space to record a result, which Tune hands the
    searcher in `set_search_properties` (public Searcher API), so the results go in there."""
    from ray.tune.search.optuna import OptunaSearch

    class InformedOptunaSearch(OptunaSearch):
        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            if not super().set_search_properties(metric, mode, config, **spec):
                return False
            for point, reward in evaluated:
                self.add_evaluated_point(point, reward)
            return True

    return InformedOptunaSearch(**options)


def search_algorithm(config: ExperimentConfig, concurrency: int, ledger: BudgetLedger | None = None,
                     warm: WarmStart | None = None):
    """tune.search_alg's algorithm, running at most `concurrency` trials at a time, starting
    none while `ledger`'s budget is reached (tune.budget_usd); a warm start's configurations
    evaluated first, its results told to Optuna, its seed."""
    points = [dict(point) for point in warm.points] if warm else None
    seed = warm.seed if warm else config.tune.seed
    if config.tune.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise ConfigError("tune.search_alg=optuna needs Optuna: pip install 'lexiray[optuna]'") from None
        algorithm = informed_optuna_search(warm.evaluated if warm else (), metric=config.tune.metric,
                                           mode=config.tune.mode, seed=seed, points_to_evaluate=points)
    else:
        # Not a Searcher: Tune ignores max_concurrent_trials for it and a ConcurrencyLimiter
        # cannot wrap it, so it carries its own limit. Each point replaces one of the
        # num_samples samples (its grid laid out as for any sample: lexiray.warm.carried_point).
        options = dict(random_state=seed, max_concurrent=concurrency, points_to_evaluate=points)
        algorithm = (BasicVariantGenerator(**options) if ledger is None
                     else BudgetedVariantGenerator(ledger, **options))
    # Every other algorithm is a Searcher, which suggests a trial whenever Tune has room: left
    # alone it runs as many trials as the cluster holds, not `concurrency` (the slots
    # tune.max_concurrent_trials or the resources give), and a model-based one suggests from fewer
    # finished results. Wrapped here, by its type, so no algorithm added above goes unlimited.
    if isinstance(algorithm, Searcher):
        algorithm = ConcurrencyLimiter(algorithm, max_concurrent=concurrency)
        if ledger is not None:
            algorithm = BudgetLimiter(algorithm, ledger)
    return algorithm


def scheduler(config: ExperimentConfig, max_t: int, grace: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if config.tune.scheduler == "fifo":
        return FIFOScheduler()
    # Keyed on the optimizer step, not training_iteration: the step survives retries and
    # restores (training_iteration restarts at 1), so a resumed trial stays on its rung.
    return ASHAScheduler(time_attr="step", metric=config.tune.metric, mode=config.tune.mode, max_t=max_t,
                         grace_period=grace, reduction_factor=config.tune.reduction_factor)


def tune_config(config: ExperimentConfig, max_t: int, grace: int, concurrency: int,
                ledger: BudgetLedger | None = None, warm: WarmStart | None = None) -> tune.TuneConfig:
    return tune.TuneConfig(
        num_samples=config.tune.num_samples,
        # the search algorithm carries the limit, whichever it is (search_algorithm); Tune would
        # only warn that this one is ignored
        max_concurrent_trials=None,
        search_alg=search_algorithm(config, concurrency, ledger, warm),
        scheduler=scheduler(config, max_t, grace),
        time_budget_s=config.tune.time_budget_s,
        trial_name_creator=lambda trial: trial.trial_id,
        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        # A trial that trains in its Tune actor leaves it warm (torch, transformers, peft
        # imported): the next trial reuses it instead of starting a process. Not with a
        # Train run inside: its controller and workers are per trial anyway.
        reuse_actors=trains_in_trial_actor(config),
    )


def run_config(config: ExperimentConfig, layout: ExperimentLayout, max_t: int, verbose: bool = False,
               extra_callbacks: tuple = ()) -> tune.RunConfig:
    """Where the experiment lives, its failure policy, and the callbacks that print
    progress and keep the records resume relies on (benchmarks/scale_sim.py reuses it)."""
    return tune.RunConfig(
        name=layout.name,
        storage_path=layout.storage_path,
        failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
        # For trials that train in their Tune actor, Tune keeps the checkpoints (Train's
        # run does it for multi-worker trials): the same ranking, the same count.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=config.tune.keep_checkpoints,
                                                checkpoint_score_attribute=config.tune.metric,
                                                checkpoint_score_order=config.tune.mode),
        callbacks=[RecordFinishedTrials(layout), PrintTrialProgress(max_t), *extra_callbacks],
        verbose=1 if verbose else 0,
    )


class RecordFinishedTrials(tune.Callback):
    """Writes the records resume relies on (lexiray.storage): every result as it arrives,
    and "finished" the moment a trial is done or stopped by ASHA."""

    def __init__(self, layout: ExperimentLayout):
        self.layout = layout

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("replayed"):
            storage.append_history(self.layout, trial.trial_id, storage.fill_checkpoint_path(dict(result), trial.path))

    def on_trial_complete(self, iteration, trials, trial, **info):
        storage.mark_finished(self.layout, trial.trial_id, trial.last_result or {})

    # A failed attempt (retried or not): twins waiting for this trial's results train instead.
    def on_trial_recover(self, iteration, trials, trial, **info):
        storage.mark_failed(self.layout, trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        storage.mark_failed(self.layout, trial.trial_id)


def _prepare_data(config: ExperimentConfig, console):
    """Tokenize once, in the driver, before Ray starts: a data mistake leaves no Ray session."""
    prepared = prepare_data(config.data, load_tokenizer(config.model))
    console.print(f"data: {len(prepared.train)} train / {len(prepared.eval)} eval rows "
                  f"({prepared.shape} shape, {len(prepared.bad_rows)} skipped, {prepared.truncated} truncated), "
                  "tokenized once for all trials")
    return prepared


def _share_data(prepared) -> TrainingData:
    """The Arrow tables in the object store, for every trial."""
    return TrainingData(train_ref=ray.put(prepared.train.data.table), eval_ref=ray.put(prepared.eval.data.table))


def check_before_ray(config: ExperimentConfig, layout: ExperimentLayout, console):
    """Every check that needs no cluster: model, bitsandbytes, data, schedule.
    Returns (prepared data, max_t, grace)."""
    check_bitsandbytes(config.model, config.training, config.resources.gpus_per_trial)
    check_precision(config)
    prepared = _prepare_data(config, console)
    max_t, grace = check_schedule(config, total_steps(config, len(prepared.train)))
    return prepared, max_t, grace


def _trainable(plan: TrialPlan):
    trainable = tune.with_parameters(run_tune_trial, plan=plan)
    return tune.with_resources(trainable, trial_actor_resources(plan.base_config))


def trial_plan(config: ExperimentConfig, data: TrainingData, layout: ExperimentLayout,
               chaos: ChaosSpec | None = None, data_print: str = "",
               warm_start: ExperimentLayout | None = None) -> TrialPlan:
    """What every trial shares; the report mailbox only where trials run a Train controller."""
    mailbox = None if trains_in_trial_actor(config) else start_mailbox()
    return TrialPlan(config, data, layout, chaos, mailbox=mailbox, data_fingerprint=data_print,
                     warm_start=warm_start)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; `ray job stop` and Kubernetes


@contextmanager
def stop_on_signals(resume_command: str, received: list[str]):
    """The first SIGINT or SIGTERM during `Tuner.fit` stops the run the way Tune's own Ctrl-C
    does: the loop ends, the trials are stopped with their checkpoints kept, the experiment
    state is saved, and `fit` returns (the signal's name is appended to `received`). A
    second signal exits at once (KeyboardInterrupt); the experiment is still resumable.

    Tune's SIGINT handler is off (ray_seam.DRIVER_ENV) because it knows nothing of
    SIGTERM and would not tell us it ran; its SIGUSR1 handler, installed when `fit` starts,
    stops the run the same way and is called for both signals."""

    def exit_now(signum, frame):
        # Printed here: typer turns the KeyboardInterrupt into a bare exit code 130.
        sys.stderr.write(f"interrupted: resume with: {resume_command}\n")
        raise KeyboardInterrupt

    def stop_tune(signum, frame):
        name = signal.Signals(signum).name
        received.append(name)
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if not callable(tune_stop):  # fit has not started Tune's loop yet
            exit_now(signum, frame)
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, exit_now)
        sys.stderr.write(f"\n{name}: stopping the trials, keeping their checkpoints ({name} again exits at once)\n")
        tune_stop(signum, frame)
        signal.signal(signal.SIGINT, exit_now)  # again: Tune's handler resets SIGINT to ours

    previous = {stop_signal: signal.getsignal(stop_signal) for stop_signal in STOP_SIGNALS}
    ray_seam.set_driver_env()
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, stop_tune)
    try:
        yield
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)


def _fit(tuner: tune.Tuner, layout: ExperimentLayout, config: ExperimentConfig, max_t: int,
         ledger: BudgetLedger | None = None, eval_data=None) -> TuningRun:
    started = time.time()
    scoring.warm_imports(config, layout)  # while the driver waits on its trials
    ray_seam.record_trials_whose_actor_died()
    received: list[str] = []
    with stop_on_signals(f"lexiray resume {layout.root}", received):
        tuner.fit()
    # The scratch folders the killed workers of stopped trials left on this machine; the
    # workers of the trials ASHA stopped last may still be dying, so give them a moment.
    storage.sweep_scratch_dirs(wait_s=10)
    return TuningRun(layout, config, max_t, time.time() - started, interrupted=received[0] if received else None,
                     budget=ledger.outcome() if ledger is not None else None, eval_data=eval_data)


def run_tuning(config: ExperimentConfig, console, chaos: ChaosSpec | None = None, address: str | None = None,
               verbose: bool = False, existing: str = "refuse") -> TuningRun:
    """`lexiray tune`: validate everything, then run the Tuner. `existing` says what to do
    with an experiment of the same name: "refuse", "resume" it or "overwrite" it."""
    layout = ExperimentLayout.for_new_experiment(config)
    storage.check_storage(layout.storage_path)  # first: a dead endpoint would retry for a minute below
    if layout.exists() and existing == "resume":
        return resume_tuning(layout.root, console, address=address, verbose=verbose)
    if layout.exists() and existing != "overwrite":
        raise LexirayError(f"experiment {layout.root} exists already: `lexiray resume {layout.root}` (or tune "
                           "--resume) continues it, --overwrite replaces it, or pick another --name")
    if existing == "resume":
        raise LexirayError(f"--resume: no experiment {layout.root} to continue; give the --name it was started "
                           "with, or drop --resume")
    if not config.search:
        console.print("note: the config has no search: block; every trial runs the same settings")
    prepared, max_t, grace = check_before_ray(config, layout, console)
    data_print = data_fingerprint(config)
    warm = read_warm_start(config, data_print, layout)  # a bad --warm-start fails before Ray starts
    if warm is not None:  # saved as found, so `lexiray resume` from another folder finds it too
        config = config.model_copy(update={"tune": config.tune.model_copy(update={"warm_start": warm.source.root})})
    init_ray(address, verbose=verbose)
    ray_seam.quiet_trial_tracebacks(verbose)
    check_resources(config)
    check_shared_storage(layout.storage_path)
    if layout.exists():  # --overwrite, once nothing else stands in the way
        storage.remove_experiment(layout.root)
    data = _share_data(prepared)
    concurrency = config.tune.max_concurrent_trials or default_concurrency(config)
    storage.write_experiment_config(layout, config, max_t, grace, concurrency)
    console.print(f"experiment {layout.root}: {planned_trials(config)} trials, {concurrency} at a time, "
                  f"{config.tune.scheduler.upper()} over {max_t} steps (first rung {grace}, "
                  f"reduction {config.tune.reduction_factor:g}), search {config.tune.search_alg}")
    if config.resources.price_per_hour is not None:
        console.print(price_line(config))
    if warm is not None:
        console.print(describe(warm))
    if layout.tensorboard_dir:
        console.print(f"tensorboard --logdir {layout.tensorboard_dir}")
    ledger = budget_ledger(config)
    plan = trial_plan(config, data, layout, chaos.bound_to(layout.chaos_folder) if chaos and layout.is_local else None,
                      data_print=data_print, warm_start=warm.source if warm else None)
    tuner = tune.Tuner(
        _trainable(plan),
        param_space=build_param_space(config),
        tune_config=tune_config(config, max_t, grace, concurrency, ledger, warm),
        run_config=run_config(config, layout, max_t, verbose),
    )
    return _fit(tuner, layout, config, max_t, ledger, prepared.eval)


def price_line(config: ExperimentConfig) -> str:
    """The start line's word on cost: the price, what a trial pays an hour, the budget."""
    resources = config.resources
    line = (f"price {money(resources.price_per_hour)} per {price_unit(resources)}: "
            f"{money(hourly_rate(resources))} per trial-hour")
    if config.tune.budget_usd is not None:
        line += (f"; budget {money(config.tune.budget_usd)}: no trial starts once spent + committed "
                 "(the running trials' projected rest) reaches it")
    return line


def resume_tuning(path_or_name: str, console, retry_errored: bool = False, address: str | None = None,
                  verbose: bool = False) -> TuningRun:
    """`lexiray resume`: finished trials (ASHA-stopped ones included) are kept, unfinished
    ones continue from their last persisted checkpoint, errored ones rerun on request."""
    if storage.is_uri(path_or_name):
        storage.check_storage(path_or_name, field="lexiray resume")
    layout = storage.find_experiment(path_or_name)
    config = storage.read_experiment_config(layout)
    if not tune.Tuner.can_restore(layout.root):
        raise LexirayError(f"{layout.root}: no Tune experiment state to resume from")
    prepared, max_t, _ = check_before_ray(config, layout, console)
    data_print = data_fingerprint(config)
    # the earlier experiment's finished trials stay reusable; the search itself is restored
    try:
        warm = read_warm_start(config, data_print, layout)
    except LexirayError as error:  # gone since: the trials it would have spared train instead
        console.print(f"note: {error}; its trials are not reused")
        warm = None
    init_ray(address, verbose=verbose)
    ray_seam.quiet_trial_tracebacks(verbose)
    check_resources(config)
    check_shared_storage(layout.storage_path)
    data = _share_data(prepared)
    console.print(f"resuming {layout.root}")
    tuner = tune.Tuner.restore(
        layout.root,
        trainable=_trainable(trial_plan(config, data, layout, data_print=data_print,
                                        warm_start=warm.source if warm else None)),
        resume_unfinished=True,
        resume_errored=retry_errored,
        restart_errored=False,
        param_space=build_param_space(config),
    )
    return _fit(tuner, layout, config, max_t, eval_data=prepared.eval)
