"""Every use of a Ray internal in lexiray, in one place: the rest of the package imports only
Ray's public API.

Each entry says why it is here and what Ray offers publicly instead (nothing equivalent,
where it stays). Ray is pinned to the tested minor (pyproject: ray>=2.60,<2.61), and
`tests/unit/test_ray_seam.py` fails when an upgrade renames or drops any of them: a private
import, a private attribute, a method override, an environment knob, a logger name or a log
message that lexiray matches.

  environment knobs   RAY_ENV_DEFAULTS, LOCAL_ONLY_ENV_DEFAULTS, DRIVER_ENV_DEFAULTS
  Ray Train           LeanTrainer (a private method override, a private import)
  Tune's session      tune_asked_to_stop (a private attribute), route_train_reports (a
                      private attribute and the protocol of Ray's queue it replaces)
  Tune's controller   record_trials_whose_actor_died (a monkey patch)
  logging             quiet_train_reports (loggers named by file path),
                      quiet_trial_tracebacks (two logger names, two messages)
"""

from __future__ import annotations

import logging
import os

import ray
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

# --------------------------------------------------------------------------- environment knobs
# Read by Ray in every process it starts, so they are set before Ray starts (cluster.init_ray)
# and in the cluster's runtime_env (cluster/runtime_env.yaml). Name → (value, why).

RAY_ENV = {
    # Train's controller polls workers every 2 s by default and a report waits for the next
    # poll: 0.2 s cut 100 tiny steps from ~17 s to ~6 s (STACK-NOTES).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": ("0.2", "a report waits for the controller's next poll"),
    "RAY_TRAIN_ENABLE_PRINT_PATCH": ("0", "the print patch only adds noise to worker logs"),
    "RAY_TRAIN_V2_ENABLED": ("1", "lexiray is written against Train V2 (the default in 2.60: say so)"),
    "TOKENIZERS_PARALLELISM": ("false", "HF tokenizers' thread pool warns after Ray forks"),  # not Ray's
    "RAY_DEDUP_LOGS": ("1", "one line for what every worker logs alike"),
    "RAY_AIR_NEW_OUTPUT": ("0", "with verbose=0 Tune then prints no tables: lexiray.progress reports"),
    # How long a reused trial actor waits for the previous trial's training thread to end
    # (Tune's default, 2 s, is shorter than one step of a real model on a T4; the thread
    # stops at its next step, hf_trainer.StopWhenAsked). Past it, the next trial fails.
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": ("60", "a reused actor waits for the last trial's step to end"),
}
# On one machine nothing is preempted and nobody scrapes Prometheus: the preemption watcher
# and the metrics callbacks would be work (and a process) per trial for nothing.
LOCAL_ONLY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": ("0", "nothing is preempted on one machine"),
    "RAY_TRAIN_METRICS_ENABLED": ("0", "nobody scrapes Prometheus on one machine"),
}
# Read by the Tune driver only, when `Tuner.fit` runs.
DRIVER_ENV = {
    # lexiray installs its own SIGINT / SIGTERM handlers (tune.stop_on_signals): Tune's knows
    # nothing of SIGTERM and would not tell lexiray it ran.
    "TUNE_DISABLE_SIGINT_HANDLER": ("1", "lexiray's own handler stops the run on SIGINT and SIGTERM"),
    # Tune saves its experiment state after every checkpoint it prunes (tune.keep_checkpoints)
    # and warns each time it does so often: on short trials that is a wall of warnings.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": ("0", "no warning per pruned checkpoint"),
}
# The dashboard's address for Ray's state API (cluster.init_ray explains why it is set).
STATE_API_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"

RAY_ENV_DEFAULTS = {name: value for name, (value, _) in RAY_ENV.items()}
LOCAL_ONLY_ENV_DEFAULTS = {name: value for name, (value, _) in LOCAL_ONLY_ENV.items()}


def set_driver_env() -> None:
    """The Tune driver's knobs (DRIVER_ENV); the first one is forced, not a default."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = DRIVER_ENV["TUNE_DISABLE_SIGINT_HANDLER"][0]
    name = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"
    os.environ.setdefault(name, DRIVER_ENV[name][0])


# --------------------------------------------------------------------------- Ray Train


class LeanTrainer(DataParallelTrainer):
    """Ray Train's data-parallel trainer (what `TorchTrainer` is) without Ray Data: every
    Train run starts a DatasetManager actor (and pushes Ray Data's context to the workers)
    even when no `datasets=` is given: one more Python process per trial, seconds of CPU on
    a small machine. Ray offers no public switch for it, so the private method that builds
    Train's default callbacks drops the datasets one. (`tests/integration/test_ray_processes.py`
    pins the actors a run starts.)"""

    def _create_default_callbacks(self):
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

        callbacks = super()._create_default_callbacks()
        if self.datasets:
            return callbacks
        return [callback for callback in callbacks if not isinstance(callback, DatasetsCallback)]


# --------------------------------------------------------------------------- Tune's session


def _tune_session():
    """The function trainable's session of this process (None outside a Tune trial)."""
    from ray.train._internal.session import get_session

    return get_session()


def tune_asked_to_stop() -> bool:
    """Tune has stopped this trial (ASHA, or the end of the run) and wants its actor back for
    the next trial (`reuse_actors`). Public API only notices at the next report, which ends
    the thread (`sys.exit`) and is a whole evaluation away; the session's stop event is set
    at once, so a trial that trains in its actor can end at its next step."""
    session = _tune_session()
    return bool(session and session.stop_event.is_set())


class _MailboxReader:
    """What Tune's function-trainable session reads Train's reports from: the part of
    `ray.util.queue.Queue` it uses (`get(block, timeout)`, `Empty` when there is none)."""

    def __init__(self, mailbox, key: str):
        self.mailbox, self.key = mailbox, key

    def get(self, block: bool = True, timeout: float | None = None) -> dict:
        from ray.util.queue import Empty

        report = ray.get(self.mailbox.get.remote(self.key, timeout if block else 0))
        if report is None:
            raise Empty
        return report


def route_train_reports(mailbox, key: str) -> None:
    """Tune's session takes the reports of the Train run this trial drives from the run's
    mailbox actor (lexiray.channel.TrialMailbox) under `key`. Ray's public
    `TuneReportCallback` does the same through a queue actor per trial, one more process
    each (~1.3 CPU-s on 2 cores, measured); the session reads whatever sits in this
    private attribute."""
    _tune_session()._inter_actor_queue = _MailboxReader(mailbox, key)


# Where a Train report's persisted checkpoint travels in the result Tune receives: the key of
# Ray's `ray.tune.integration.ray_train.CHECKPOINT_PATH_KEY` (Tune's session turns it back into
# a checkpoint). Written out so that importing this module loads no Ray Tune.
CHECKPOINT_PATH_KEY = "checkpoint_path"


# --------------------------------------------------------------------------- Tune's controller


def record_trials_whose_actor_died() -> None:
    """Ray 2.60 leaves a trial whose actor died, with no retry left, RUNNING in the saved
    experiment state: `TuneController._schedule_trial_stop` sets it to ERROR but returns
    before marking it for the next state snapshot when it has no live actor. A trial that
    trains in its actor fails exactly so when its process crashes; without this,
    `lexiray resume` would rerun it as unfinished and the leaderboard would call it pending.
    A Tune `Callback.on_trial_error` sees the trial but not the controller whose snapshot
    needs it, so the public API cannot do it. Idempotent."""
    from ray.tune.execution.tune_controller import TuneController

    stop = TuneController._schedule_trial_stop
    if getattr(stop, "lexiray_marks_trial", False):
        return

    def schedule_trial_stop(self, trial, exception=None):
        stop(self, trial, exception=exception)
        self._mark_trial_to_checkpoint(trial)

    schedule_trial_stop.lexiray_marks_trial = True
    TuneController._schedule_trial_stop = schedule_trial_stop


# --------------------------------------------------------------------------- logging

def quiet_train_reports() -> None:
    """No log line per report: Ray Train logs each one at INFO, partly under "ray.train" and
    partly from loggers named by their file's path (`logging.getLogger(__file__)`), which no
    logger prefix reaches. Those are found by path among the loggers created so far (the
    worker has imported Train's modules by the time the training function runs)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    train_package = os.path.join(os.path.dirname(os.path.realpath(ray.__file__)), "train")
    for name in list(logging.Logger.manager.loggerDict):
        if os.path.isabs(name) and os.path.realpath(name).startswith(train_package + os.sep):
            logging.getLogger(name).setLevel(logging.WARNING)


TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"  # logs each failed attempt's traceback
TUNE_RUN_LOGGER = "ray.tune.tune"  # logs the Ctrl-C lines below
TUNE_RESUME_HINTS = ("Tuner.restore", "Stop signal received")


class _DropTuneResumeHints(logging.Filter):
    """Tune's own Ctrl-C lines point at `Tuner.restore(...)`; lexiray prints its command instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(hint in message for hint in TUNE_RESUME_HINTS)


def quiet_trial_tracebacks(verbose: bool) -> None:
    """Tune logs a full traceback for every failed trial attempt, retried or not. The progress
    callback prints one line instead and the traceback stays in the trial's error.txt."""
    if not verbose:
        logging.getLogger(TUNE_CONTROLLER_LOGGER).setLevel(logging.CRITICAL)
        logging.getLogger(TUNE_RUN_LOGGER).addFilter(_DropTuneResumeHints())
