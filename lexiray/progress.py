"""Live progress of a tuning run: one status line per trial event, not Ray's raw tables."""

from __future__ import annotations

from ray.tune import Callback


def _console():
    # Created on use, never stored: Tune pickles its callbacks with the experiment state.
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _sample(trial) -> str:
    from lexiray.space import describe_sample

    return describe_sample(trial.config)


def mark_finished(folder: str, trial_id: str, last_result: dict) -> None:
    """Record at once that a trial is over (done or stopped by ASHA). Tune persists its
    experiment state only every so often, and a driver killed in between would otherwise
    run a finished trial again on resume."""
    import json
    from pathlib import Path

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in last_result.items() if isinstance(v, (int, float, str, bool)) or v is None}
    temporary = path / f".{trial_id}.json.tmp"
    temporary.write_text(json.dumps(kept))
    temporary.replace(path / f"{trial_id}.json")  # atomic: complete or absent


def is_finished(folder: str | None, trial_id: str) -> bool:
    from pathlib import Path

    return bool(folder) and (Path(folder) / f"{trial_id}.json").is_file()


# Filled in by Tune for every result; a replayed result must not carry the old ones.
TUNE_AUTO_KEYS = {"done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s",
                  "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "experiment_tag",
                  "should_checkpoint", "replayed"}


def _plain(result: dict) -> dict:
    return {k: v for k, v in result.items()
            if k not in TUNE_AUTO_KEYS and (isinstance(v, (int, float, str, bool)) or v is None)}


def append_history(folder: str, trial_id: str, result: dict) -> None:
    """Every result of a trial, as it arrives: Tune drops an unfinished trial's results
    when an experiment is restored, and a finished trial replays these instead."""
    import json
    from pathlib import Path

    path = Path(folder) / "history"
    path.mkdir(parents=True, exist_ok=True)
    with (path / f"{trial_id}.jsonl").open("a") as handle:
        handle.write(json.dumps(_plain(result)) + "\n")


def read_history(folder: str, trial_id: str) -> list[dict]:
    import json
    from pathlib import Path

    path = Path(folder) / "history" / f"{trial_id}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ProgressCallback(Callback):
    """Prints trial starts, each evaluation (step / total, eval_loss), stops and errors."""

    def __init__(self, console=None, max_t: int | None = None, finished_dir: str | None = None):
        self.max_t = max_t
        self.best = None
        self.finished_dir = finished_dir

    def __getstate__(self):
        return {"max_t": self.max_t, "best": self.best, "finished_dir": self.finished_dir}

    def on_trial_start(self, iteration, trials, trial, **info):
        _console().print(f"[cyan]{trial.trial_id}[/] started   {_sample(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.finished_dir and not result.get("replayed"):
            append_history(self.finished_dir, trial.trial_id, result)
        loss = result.get("eval_loss")
        if loss is None:
            return
        total = result.get("total_steps", self.max_t)
        marker = ""
        if self.best is None or loss < self.best:
            self.best, marker = loss, "  [green]best so far[/]"
        running = sum(1 for t in trials if t.status == "RUNNING")
        done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        _console().print(f"[cyan]{trial.trial_id}[/] step {result.get('step', '?')}/{total}  "
                         f"eval_loss {loss:.4f}{marker}   [dim]({running} running, {done} done)[/]")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if self.finished_dir:
            mark_finished(self.finished_dir, trial.trial_id, last)
        step, total = last.get("step"), last.get("total_steps", self.max_t)
        how = "finished" if step is not None and total is not None and step >= total else "stopped by ASHA"
        _console().print(f"[cyan]{trial.trial_id}[/] {how} at step {step}/{total}  "
                         f"eval_loss {last.get('eval_loss', float('nan')):.4f}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        failures = getattr(trial, "num_failures", "?")
        _console().print(f"[yellow]{trial.trial_id} failed[/] (failure {failures}): restarting it from its last "
                         f"checkpoint; details in {trial.path}/error.txt")

    def on_trial_error(self, iteration, trials, trial, **info):
        _console().print(f"[red]{trial.trial_id} failed[/]: see {trial.path}/error.txt")
