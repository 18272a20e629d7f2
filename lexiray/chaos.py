"""`--chaos`: testing aids that SIGKILL a training worker once, to prove resume works, make
it run out of memory, to prove the OOM back-off ladder works, or make its loss non-finite,
to prove the precision back-off ladder works.

  kill-worker@step=N          kill the worker process when it finishes step N
  kill-save@step=N            kill it inside the checkpoint save of step N, after the local
                              files are written and before Ray has persisted the checkpoint
  oom-above-batch=N           every training forward pass over more than N samples raises
                              torch.OutOfMemoryError (`lexiray.oom.raise_oom_above_batch`)
  nan-loss@step=N             the training loss is NaN from step N on, on the trial's first
                              precision rung only (`lexiray.precision.inject_nan_loss`; an
                              fp32 trial gets a virtual rung above fp32 for it)
  ...,trial=K                 in a tuning run, hit the K-th trial (0-based; default the first)

A marker file beside the experiment records that the kill happened, so the restarted worker
trains on undisturbed. The HF callback that fires it is `hf_trainer.KillWorkerOnce`.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, replace
from pathlib import Path

from lexiray.errors import ConfigError

_SPEC = re.compile(r"^(?:(?P<action>kill-worker|kill-save|nan-loss)@step=(?P<step>\d+)|oom-above-batch=(?P<batch>\d+))"
                   r"(?:,trial=(?P<trial>\d+))?$")
MARKER_NAME = ".chaos-fired"


@dataclass(frozen=True)
class ChaosSpec:
    action: str  # "kill-worker", "kill-save", "nan-loss" or "oom-above-batch"
    step: int = 0  # the kills' step; nan-loss: the first step whose loss is NaN
    trial_index: int = 0
    marker: str | None = None  # the file whose creation makes the kill happen only once
    batch_limit: int = 0  # oom-above-batch: the most samples a training forward pass may hold

    def bound_to(self, folder: str | Path) -> "ChaosSpec":
        return replace(self, marker=str(Path(folder) / MARKER_NAME))

    def hits_trial(self, trial_id: str) -> bool:
        """Tune names trials `<experiment>_<index, 5 digits>`."""
        return trial_id.endswith(f"_{self.trial_index:05d}")


def parse_chaos(text: str) -> ChaosSpec:
    match = _SPEC.match(text.strip())
    number = match and int(match.group("step") or match.group("batch"))
    if not number:
        raise ConfigError(f"--chaos {text!r}: expected kill-worker@step=N, kill-save@step=N, nan-loss@step=N or "
                          "oom-above-batch=N with N > 0 (optionally ,trial=K)")
    trial = int(match.group("trial") or 0)
    if match.group("batch"):
        return ChaosSpec("oom-above-batch", trial_index=trial, batch_limit=number)
    return ChaosSpec(match.group("action"), number, trial)


def fire_once(chaos: ChaosSpec) -> None:
    """SIGKILL this process, unless another process already did it for this spec."""
    if chaos.marker is None:
        raise ValueError("a chaos spec must be bound to a marker folder before it can fire")
    try:  # O_EXCL: exactly one process wins, even with several workers
        descriptor = os.open(chaos.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(descriptor, f"{chaos.action}@step={chaos.step} pid={os.getpid()}\n".encode())
    os.close(descriptor)
    os.kill(os.getpid(), signal.SIGKILL)
