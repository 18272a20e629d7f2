"""CPU time of every process a benchmark starts, grouped by what the process is.

Ray names its processes: an actor's process title is `ray::<Class>.<method>` while it runs
(`ray::IDLE` before), and the daemons keep their command lines (raylet, gcs_server, ...).
A sampler thread reads /proc every `interval` seconds and keeps, per pid, the last CPU time
and the most telling title it saw. A process that exits between two samples loses at most
its last `interval` of CPU: small next to the seconds measured here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

DAEMONS = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "agent")


def kind_of(title: str) -> str:
    """A short name for a process from its title / command line."""
    if title.startswith("ray::"):
        name = title[5:].split()[0]
        return name.split(".")[0] or "IDLE"
    if "default_worker.py" in title:
        return "IDLE"  # a Ray worker before its title is set
    for daemon in DAEMONS:
        if daemon in title:
            return daemon
    if "lexiray" in title:
        return "lexiray driver"
    return title.split()[0].rsplit("/", 1)[-1] if title else "?"


@dataclass
class Seen:
    kind: str
    cpu_s: float = 0.0
    created: float = 0.0
    last_seen: float = 0.0


@dataclass
class ProcessSampler:
    """Samples the descendants of this process (the subprocess it starts and their Ray)."""

    interval: float = 0.2
    seen: dict[int, Seen] = field(default_factory=dict)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            now = time.time()
            for process in me.children(recursive=True):
                try:
                    with process.oneshot():
                        title = " ".join(process.cmdline()) or process.name()
                        times = process.cpu_times()
                        created = process.create_time()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                entry = self.seen.setdefault(process.pid, Seen(kind_of(title), created=created))
                kind = kind_of(title)
                if kind != "IDLE" and title.startswith("ray::"):
                    entry.kind = kind  # an idle worker became an actor
                entry.cpu_s = times.user + times.system
                entry.last_seen = now
            self._stop.wait(self.interval)

    def cpu_by_kind(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for entry in self.seen.values():
            totals[entry.kind] += entry.cpu_s
        return dict(totals)

    def processes(self, kind: str) -> list[Seen]:
        return sorted((e for e in self.seen.values() if e.kind == kind), key=lambda e: e.created)
