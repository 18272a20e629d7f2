"""How a training process talks to whoever runs it: the trial channel.

The trial's driver chooses it once, by where the trial trains (`trial.trains_in_trial_actor`),
and hands it to `trial.train_worker` inside `WorkerSettings`; the worker never asks where it
runs. A channel answers four things:

  report(metrics, checkpoint_dir)   one result, with the checkpoint folder to persist
  latest_checkpoint()               the last persisted checkpoint to resume from, or None
  asked_to_stop()                   the scheduler wants this trial to end now
  is_rank_zero()                    this process writes what only one rank writes

- `TuneSessionChannel`: a single-worker trial training inside its Tune trial actor (Ray
  Train's local mode). Tune's session persists the checkpoint into the trial's folder
  (`trial_<id>/checkpoint_*`) and hands the metrics to the scheduler.
- `TrainRunChannel`: a Ray Train worker (a multi-worker trial's worker group, or
  `lexiray train`). Train persists the checkpoint under the run's folder; under Tune the
  run's reports reach the trial through the run's `TrialMailbox` (`ReportToTune`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import ray
import ray.train
from ray.train.v2.api.callback import UserCallback

from lexiray import ray_seam


class TrialChannel:
    """The interface; see the module docstring."""

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        raise NotImplementedError

    def latest_checkpoint(self):
        raise NotImplementedError

    def asked_to_stop(self) -> bool:
        raise NotImplementedError

    def is_rank_zero(self) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class TuneSessionChannel(TrialChannel):
    """A trial that trains in its Tune trial actor: it is the only rank."""

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self):
        import ray.tune

        return ray.tune.get_checkpoint()

    def asked_to_stop(self) -> bool:
        return ray_seam.tune_asked_to_stop()

    def is_rank_zero(self) -> bool:
        return True


@dataclass(frozen=True)
class TrainRunChannel(TrialChannel):
    """A Ray Train worker. Stopping comes from outside (Tune tears the Train run down), so it
    is never asked to stop between steps."""

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self):
        return ray.train.get_checkpoint()

    def asked_to_stop(self) -> bool:
        return False

    def is_rank_zero(self) -> bool:
        return ray.train.get_context().get_world_rank() == 0


# --------------------------------------------------------------------------- Train → Tune reports
#
# Ray's own `TuneReportCallback` starts a queue actor per trial (one more Python process,
# ~1.3 CPU-s on 2 cores, measured) for the Train controller to hand each report to the Tune
# trial. One mailbox actor for the whole tuning run does the same job.


class TrialMailbox:
    """Each trial's reports, in order, from its Train controller to its Tune trial driver.
    At most one waiting report per trial, as in Ray's queue: a controller waits for Tune."""

    def __init__(self):
        self.queues: dict[str, asyncio.Queue] = {}

    def _queue(self, key: str) -> asyncio.Queue:
        return self.queues.setdefault(key, asyncio.Queue(maxsize=1))

    async def put(self, key: str, report: dict) -> None:
        await self._queue(key).put(report)

    async def get(self, key: str, timeout: float | None) -> dict | None:
        """The next report, or None after `timeout` s. A report is taken off the queue only
        by a `get` that returns it: a timed-out wait is cancelled before it takes one."""
        queue = self._queue(key)
        if timeout is not None and timeout <= 0:
            return None if queue.empty() else queue.get_nowait()
        waiting = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait({waiting}, timeout=timeout)
        if not done and waiting.cancel():
            return None
        return waiting.result()

    def forget(self, key: str) -> None:
        self.queues.pop(key, None)


def start_mailbox():
    return ray.remote(num_cpus=0)(TrialMailbox).remote()


class ReportToTune(UserCallback):
    """Ray's `TuneReportCallback`, through the run's mailbox: each Train report (the rank-0
    metrics, and the persisted checkpoint's path) becomes one Tune result. Built in the
    trial's driver (Tune's trial actor), whose session then reads from the mailbox."""

    def __init__(self, mailbox, key: str):
        self.mailbox, self.key = mailbox, key
        ray_seam.route_train_reports(mailbox, key)

    def after_report(self, run_context, metrics: list[dict], checkpoint=None) -> None:
        report = dict(metrics[0])
        if checkpoint:
            report[ray_seam.CHECKPOINT_PATH_KEY] = checkpoint.path
        ray.get(self.mailbox.put.remote(self.key, report))
