"""`--chaos`: a testing aid that SIGKILLs a training worker once, to prove resume works.

  kill-worker@step=N   kill the worker process when it finishes step N
  kill-save@step=N     kill it inside the checkpoint save of step N, after the local
                       files are written and before Ray has persisted the checkpoint

Only the first trial of an experiment is hit, once: a marker file beside the experiment
records that the kill happened, so the restarted worker trains on undisturbed.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from lexiray.errors import ConfigError

_SPEC = re.compile(r"^(?P<action>kill-worker|kill-save)@step=(?P<step>\d+)$")


def parse_chaos(text: str) -> dict:
    match = _SPEC.match(text.strip())
    if not match or int(match.group("step")) <= 0:
        raise ConfigError(f"--chaos {text!r}: expected kill-worker@step=N or kill-save@step=N with N > 0")
    return {"action": match.group("action"), "step": int(match.group("step"))}


def with_marker(chaos: dict | None, folder: Path) -> dict | None:
    """The chaos spec bound to the marker file that makes it fire only once."""
    if not chaos:
        return None
    return {**chaos, "marker": str(folder / ".chaos-fired")}


def _fire(chaos: dict) -> None:
    marker = Path(chaos["marker"])
    try:  # O_EXCL: exactly one process wins, even with several workers
        descriptor = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(descriptor, f"{chaos['action']}@step={chaos['step']} pid={os.getpid()}\n".encode())
    os.close(descriptor)
    os.kill(os.getpid(), signal.SIGKILL)


def chaos_callback(chaos: dict):
    from transformers import TrainerCallback

    class ChaosCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if chaos["action"] == "kill-worker" and state.global_step == chaos["step"]:
                _fire(chaos)

        def on_save(self, args, state, control, **kwargs):
            if chaos["action"] == "kill-save" and state.global_step == chaos["step"]:
                _fire(chaos)

    return ChaosCallback()
