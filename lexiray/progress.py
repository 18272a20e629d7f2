"""What the terminal shows while trials run: one line per trial event, not Ray's tables.

Printing only; the records resume depends on are written by `tune.RecordFinishedTrials`.
"""

from __future__ import annotations

from ray.tune import Callback

from lexiray.cost import money
from lexiray.results import TrialReport
from lexiray.space import describe_sample


def _console():
    # Created on use, never stored: Tune pickles its callbacks with the experiment state.
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _cost(report: TrialReport) -> str:
    """'  $0.0123 so far (full run $0.0400)' with a price (lexiray.cost), else ''."""
    if report.cost_usd is None:
        return ""
    projected = f" (full run {money(report.projected_cost_usd)})" if report.projected_cost_usd is not None else ""
    return f"  {money(report.cost_usd)} so far{projected}"


class PrintTrialProgress(Callback):
    """Prints trial starts, each evaluation (step / total, eval_loss), stops and errors."""

    def __init__(self, max_t: int | None = None):
        self.max_t = max_t
        self.best = None

    def on_trial_start(self, iteration, trials, trial, **info):
        _console().print(f"[cyan]{trial.trial_id}[/] started   {describe_sample(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = TrialReport.from_result(result)
        if report.diverged:  # its last report (lexiray.precision.diverged_report)
            _console().print(f"[cyan]{trial.trial_id}[/] [red]{report.diverged}[/]: stopped at step {report.step}/"
                             f"{self.max_t if report.total_steps is None else report.total_steps}")
            return
        loss = report.eval_loss
        if loss is None or report.skipped_memory:  # a skipped trial's loss is NaN
            return
        total = self.max_t if report.total_steps is None else report.total_steps
        marker = ""
        if self.best is None or loss < self.best:
            self.best, marker = loss, "  [green]best so far[/]"
        running = sum(1 for t in trials if t.status == "RUNNING")
        done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        _console().print(f"[cyan]{trial.trial_id}[/] step {'?' if report.step is None else report.step}/{total}  "
                         f"eval_loss {loss:.4f}{marker}{_cost(report)}   [dim]({running} running, {done} done)[/]")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = TrialReport.from_result(trial.last_result or {})
        if last.skipped_memory:
            _console().print(f"[cyan]{trial.trial_id}[/] [yellow]skipped[/]: estimated peak memory "
                             f"{last.estimated_memory_gb} GB, over the {last.memory_budget_gb} GB budget")
            return
        if last.diverged:  # said when it happened (on_trial_result)
            return
        step, total = last.step, self.max_t if last.total_steps is None else last.total_steps
        how = "finished" if step is not None and total is not None and step >= total else "stopped by ASHA"
        loss = float("nan") if last.eval_loss is None else last.eval_loss
        reused = f"  [dim](reused: {last.reused_from}, not trained)[/]" if last.reused_from else ""
        _console().print(f"[cyan]{trial.trial_id}[/] {how} at step {step}/{total}  eval_loss {loss:.4f}{_cost(last)}"
                         f"{reused}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        failures = getattr(trial, "num_failures", "?")
        _console().print(f"[yellow]{trial.trial_id} failed[/] (failure {failures}): restarting it from its last "
                         f"checkpoint; details in {trial.path}/error.txt")

    def on_trial_error(self, iteration, trials, trial, **info):
        _console().print(f"[red]{trial.trial_id} failed[/]: see {trial.path}/error.txt")
