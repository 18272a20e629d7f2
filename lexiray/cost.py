"""What trials cost, from `resources.price_per_hour`, and the `--budget` accounting.

What the price is per (config.ResourceSettings.price_per_hour):
- GPU trials (`gpus_per_trial` > 0): per GPU-hour. A trial pays for every GPU it holds:
  price x gpus_per_trial x num_workers an hour.
- CPU trials: per worker-hour, price x num_workers an hour: which share of a node a trial's
  `cpus_per_trial` hold is unknowable offline (the node's CPU count is the cluster's), so a
  user whose trials share a node gives the node's price divided by the trials it runs at once.

The clock (`paid_s`): wall seconds from the start of the trial's attempt (its Tune actor
building the trial, model loading and evaluations included: the GPU is held all along), plus
what its earlier attempts had reported (a retry after a fault, a resumed experiment). The
tail of a failed attempt after its last report is not counted: the cost is a lower bound by
at most one report interval per fault. Tune's `time_total_s` is not used: a worker of a
multi-worker trial never sees it, and it restarts from the checkpoint's on a retry just the same.

`BudgetLedger`: the Tune driver's running account of a run's cost (lexiray.tune feeds it every
trial result and asks it before starting a trial). Plain Python: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math

from lexiray.config import ExperimentConfig, ResourceSettings
from lexiray.results import is_number

SECONDS_PER_HOUR = 3600.0
# A report's cost keys: a reused trial (trial.replay_twin) replays its twin's reports without the
# twin's figures: these carry this run's wait for the twin at this run's price, or are left out.
COST_KEYS = ("paid_s", "cost_usd", "projected_cost_usd")


def hourly_rate(resources: ResourceSettings) -> float | None:
    """What one trial pays an hour (USD), or None when no price is set."""
    if resources.price_per_hour is None:
        return None
    units = resources.gpus_per_trial if resources.gpus_per_trial > 0 else 1.0  # a CPU trial: per worker
    return resources.price_per_hour * units * resources.num_workers


def planned_trials(config: ExperimentConfig) -> int:
    """Trials the search starts: num_samples per point of the grid dimensions (choices are sampled)."""
    return config.tune.num_samples * math.prod(len(dimension.args) for dimension in config.search_space.dimensions
                                               if dimension.kind == "grid")


def usd(seconds: float, hourly: float) -> float:
    return seconds / SECONDS_PER_HOUR * hourly


def price_unit(resources: ResourceSettings) -> str:
    """What `price_per_hour` is per, for the lines that quote it."""
    return "GPU-hour" if resources.gpus_per_trial > 0 else "worker-hour"


def money(value: float | None) -> str:
    """A USD amount as the closing lines print it: cents, or four decimals below a dollar."""
    if value is None:
        return "-"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"


@dataclass
class BudgetLedger:
    """A run's spent and committed cost, trial by trial, against `budget_usd`.

    - spent: every trial's cost so far (its newest `cost_usd`), finished or running;
    - committed: what the running trials will still cost if they train to the end: their
      newest `projected_cost_usd` minus `cost_usd`; a trial without a report yet (starting,
      or pending) is committed at `estimate()`, the mean projected cost of the trials that
      have one (0 while none has: the first trials start on no estimate).
    Committed is pessimistic under ASHA (most trials are stopped early) and falls as trials end.

    `may_start()` is asked before each new trial: once spent + committed reaches the budget no
    trial starts; while trials still run it waits (their end may free committed cost), with
    none running it is final (`stopped`)."""

    budget_usd: float
    planned: int | None = None  # trials the search would start: a stop with all started is no stop
    cost: dict[str, float] = field(default_factory=dict)  # trial id -> cost so far
    projected: dict[str, float] = field(default_factory=dict)  # trial id -> projected cost of its full run
    reused: set[str] = field(default_factory=set)  # replayed a twin (lexiray.warm): paid no training
    running: set[str] = field(default_factory=set)
    started: int = 0
    final: bool = False  # refused with no trial running: the search is over
    stopped: bool = False  # ... and trials were left to start: the budget stopped new trials
    # (spent, committed) when it first refused a trial since the last start: where the budget was reached
    at_stop: tuple[float, float] | None = None

    def start(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.started += 1
        self.at_stop = None

    def record(self, trial_id: str, result: dict | None) -> None:
        """A trial's result: its cost so far and projected cost, where it carries them."""
        if (result or {}).get("reused_from"):
            self.reused.add(trial_id)
        for key, book in (("cost_usd", self.cost), ("projected_cost_usd", self.projected)):
            value = (result or {}).get(key)
            if is_number(value):
                book[trial_id] = max(float(value), book.get(trial_id, 0.0)) if key == "cost_usd" else float(value)

    def finish(self, trial_id: str, result: dict | None = None) -> None:
        self.record(trial_id, result)
        self.running.discard(trial_id)

    def estimate(self) -> float:
        # what a trial that trains costs: a reused one's (its wait, if any) says nothing of it
        known = [cost for trial_id, cost in self.projected.items() if trial_id not in self.reused]
        return sum(known) / len(known) if known else 0.0

    def spent(self) -> float:
        return sum(self.cost.values())

    def committed(self) -> float:
        total = 0.0
        for trial_id in self.running:
            if trial_id in self.projected:
                total += max(self.projected[trial_id] - self.cost.get(trial_id, 0.0), 0.0)
            else:
                total += max(self.estimate() - self.cost.get(trial_id, 0.0), 0.0)
        return total

    def reached(self) -> bool:
        return self.spent() + self.committed() >= self.budget_usd

    def may_start(self) -> bool:
        """True: start a trial. False: not now while trials still run (their end may free
        committed cost); with none running, never again (`final`: the search ends)."""
        if self.final:
            return False
        if not self.reached():
            return True
        if self.at_stop is None:
            self.at_stop = (self.spent(), self.committed())
        if not self.running:
            self.final = True
            # trials were left to start (else the search was over anyway)
            self.stopped = self.planned is None or self.started < self.planned
        return False

    def outcome(self) -> dict:
        """What summary.json says of the budget."""
        return {"budget_usd": self.budget_usd, "stopped_new_trials": self.stopped, "trials_started": self.started,
                "trials_planned": self.planned, "spent_usd": self.spent(),
                "spent_at_stop_usd": self.at_stop[0] if self.stopped and self.at_stop else None,
                "committed_at_stop_usd": self.at_stop[1] if self.stopped and self.at_stop else None}
