"""Shared fixtures: run the real `lexiray` command, and leave no Ray process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LEXIRAY = [sys.executable, "-m", "lexiray"]
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "dashboard.py", "default_worker.py", "ray.dashboard",
                       "runtime_env/agent", "log_monitor.py", "monitor.py --logs-dir")


def cli_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("RAY_ADDRESS", None)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run([*LEXIRAY, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"lexiray {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


# Ray processes that were running before this test session (another user's cluster, another
# session): never waited for or killed here.
_PREEXISTING: set[int] = set()


def ray_processes() -> list[int]:
    """PIDs of Ray's own processes on this machine started since this session began."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in command for marker in RAY_PROCESS_MARKERS) and int(entry.name) not in _PREEXISTING:
            pids.append(int(entry.name))
    return pids


def kill_ray_processes() -> list[int]:
    pids = ray_processes()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


@pytest.fixture
def no_ray_leftovers():
    """Tests that start Ray end with none of its processes alive, also on failure."""
    yield
    deadline = time.time() + 20  # a driver's own shutdown takes a few seconds
    while ray_processes() and time.time() < deadline:
        time.sleep(0.5)
    kill_ray_processes()


@pytest.fixture(scope="session", autouse=True)
def _final_ray_cleanup():
    _PREEXISTING.update(ray_processes())
    yield
    kill_ray_processes()
