"""Results of a tuning experiment -> leaderboard, plot, summary, best-adapter export.

Reads what the experiment wrote (Tune's trial results, each trial's resolved config saved
where it ran) through `lexiray.storage`; never re-runs or re-derives anything.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from lexiray import storage
from lexiray.config import ExperimentConfig
from lexiray.errors import LexirayError
from lexiray.storage import ExperimentLayout
from lexiray.tune import TuningRun

LEADERBOARD_COLUMNS = [
    "rank", "trial_id", "status", "eval_loss", "steps", "total_steps", "stopped_early",
    "learning_rate", "lora_r", "lora_alpha", "batch_size", "grad_accum", "samples_per_second",
    "tokens_per_second", "peak_memory_mb", "estimated_memory_gb", "wall_time_s", "best_checkpoint",
]


@dataclass
class TrialRecord:
    """One trial as the experiment recorded it."""

    trial_id: str
    tune_status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, ...
    reports: list[dict] = field(default_factory=list)  # every result, in order
    config: ExperimentConfig | None = None  # the resolved config saved where it ran
    sample: dict = field(default_factory=dict)


def collect_trials(layout: ExperimentLayout) -> list[TrialRecord]:
    """Every trial from Tune's experiment state, its results and its saved config."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(layout.root)
    records = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        reports = frame.to_dict("records") if frame is not None and len(frame) else []
        records.append(TrialRecord(trial.trial_id, trial.status, reports,
                                   storage.read_trial_config(layout, trial.trial_id), dict(trial.config)))
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def leaderboard_row(record: TrialRecord, metric: str, mode: str, max_t: int | None) -> dict:
    """A trial's row: its best report by `metric`, how far it got, and its settings."""
    scored = [r for r in record.reports if _is_number(r.get(metric))]
    best = (min if mode == "min" else max)(scored, key=lambda r: r[metric]) if scored else {}
    last = record.reports[-1] if record.reports else {}
    total = last.get("total_steps", max_t)
    total = int(total) if _is_number(total) else None
    steps = int(max((r.get("step") or 0) for r in record.reports)) if record.reports else 0
    if record.tune_status == "ERROR":
        status = "ERROR"
    elif last.get("skipped_memory"):
        status = "SKIPPED"  # estimated over its GPU's memory: never trained
    elif total and steps >= total:
        status = "DONE"
    elif record.tune_status == "TERMINATED":
        status = "STOPPED"  # ended before max_t: the scheduler stopped it
    else:
        status = record.tune_status
    config = record.config
    return {
        "trial_id": record.trial_id,
        "status": status,
        metric: best.get(metric),
        "eval_loss": best.get("eval_loss"),
        "steps": steps,
        "total_steps": total,
        "stopped_early": status == "STOPPED",
        "learning_rate": config.training.learning_rate if config else record.sample.get("training.learning_rate"),
        "lora_r": config.lora.r if config else None,
        "lora_alpha": config.lora.alpha if config else None,
        "batch_size": config.training.per_device_train_batch_size if config else None,
        "grad_accum": config.training.gradient_accumulation_steps if config else None,
        "samples_per_second": last.get("samples_per_second"),
        "tokens_per_second": last.get("tokens_per_second"),
        "peak_memory_mb": last.get("peak_memory_mb"),
        "estimated_memory_gb": last.get("estimated_memory_gb"),
        "wall_time_s": last.get("time_total_s"),
        "best_checkpoint": best.get("checkpoint_path"),
        "sample": record.sample,
        "history": [{"step": r.get("step"), metric: r.get(metric)} for r in scored],
    }


def leaderboard_rows(records: list[TrialRecord], metric: str = "eval_loss", mode: str = "min",
                     max_t: int | None = None) -> list[dict]:
    """Rows ranked by the trial's best `metric` (lowest first for mode=min, highest first
    for mode=max); trials without a score come last."""
    rows = [leaderboard_row(record, metric, mode, max_t) for record in records]
    sign = 1 if mode == "min" else -1
    rows.sort(key=lambda row: (row[metric] is None, sign * row[metric] if row[metric] is not None else 0))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def leaderboard_csv(rows: list[dict], metric: str) -> str:
    columns = list(LEADERBOARD_COLUMNS)
    if metric not in columns:
        columns.insert(columns.index("status") + 1, metric)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def plot_curves(rows: list[dict], location: str, title: str, metric: str = "eval_loss") -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(8, 5))
    for row in rows:
        points = [(h["step"], h[metric]) for h in row["history"] if h["step"] is not None]
        if points:
            axis.plot(*zip(*points), marker="o", markersize=3, label=f"{row['trial_id']} ({row['status'].lower()})")
    axis.set_xlabel("training step")
    axis.set_ylabel(metric)
    axis.set_title(f"{title}: {metric} per trial")
    if axis.lines:  # every trial may have been skipped: no curve to label
        axis.legend(fontsize=7)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    plt.close(figure)
    storage.write_bytes(location, image.getvalue())
    return location


def build_report(layout: ExperimentLayout, max_t: int | None = None, wall_time_s: float | None = None) -> dict:
    """leaderboard.csv, summary.json and the metric's plot, written into the experiment
    (a local folder or a URI)."""
    config = storage.read_experiment_config(layout)
    metric, mode = config.tune.metric, config.tune.mode
    rows = leaderboard_rows(collect_trials(layout), metric, mode, max_t)
    storage.write_text(layout.leaderboard_file, leaderboard_csv(rows, metric))
    summary = {
        "experiment": layout.root,
        "metric": metric,
        "mode": mode,
        "trials": len(rows),
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "errored": sum(r["status"] == "ERROR" for r in rows),
        "skipped_memory": sum(r["status"] == "SKIPPED" for r in rows),
        "total_steps_trained": sum(r["steps"] for r in rows),
        "wall_time_s": wall_time_s,
        "best": {k: v for k, v in rows[0].items() if k != "history"} if rows else None,
        "leaderboard": [{k: v for k, v in r.items() if k != "history"} for r in rows],
        "tensorboard": layout.tensorboard_dir,
    }
    if config.report.plots:
        plot = plot_curves(rows, layout.plot_file(metric), layout.name, metric)
        summary["plot"] = plot
    storage.write_text(layout.summary_file, json.dumps(summary, indent=2, default=str))
    return summary


def read_summary(layout: ExperimentLayout) -> dict | None:
    text = storage.read_text(layout.summary_file)
    return None if text is None else json.loads(text)


def print_leaderboard(summary: dict, console, top: int = 20) -> None:
    from rich.table import Table

    metric = summary["metric"]
    table = Table(title=f"leaderboard — {summary['experiment']} ({metric}, {summary['mode']})")
    for column in ("#", "trial", "status", metric, "steps", "lr", "r", "alpha", "batch×accum",
                   "samples/s", "tokens/s", "peak MB", "wall s"):
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")

    def number(value, fmt):
        return "-" if value is None else format(value, fmt)

    for row in summary["leaderboard"][:top]:
        status = row["status"].lower()
        if row.get("estimated_memory_gb") is not None:
            status += f" (est. {row['estimated_memory_gb']:.1f} GB)"
        table.add_row(
            str(row["rank"]), row["trial_id"], status, number(row.get(metric), ".4f"),
            f"{row['steps']}/{row['total_steps'] or '?'}", number(row["learning_rate"], ".2e"),
            str(row["lora_r"]), str(row["lora_alpha"]), f"{row['batch_size']}×{row['grad_accum']}",
            number(row["samples_per_second"], ".1f"), number(row["tokens_per_second"], ".0f"),
            number(row["peak_memory_mb"], ".0f"), number(row["wall_time_s"], ".0f"),
        )
    console.print(table)


def export_trial(layout: ExperimentLayout, destination: str | Path | None = None, trial_id: str | None = None) -> str:
    """Export a trial's best checkpoint (default: the leaderboard's first) to `destination`
    (default: the experiment's `best/`, beside the leaderboard, local or at the URI)."""
    summary = read_summary(layout) or build_report(layout)
    rows = summary["leaderboard"]
    row = next((r for r in rows if r["trial_id"] == trial_id), None) if trial_id else (rows[0] if rows else None)
    if row is None:
        known = ", ".join(r["trial_id"] for r in rows) or "none"
        raise LexirayError(f"{layout.root}: no trial {trial_id!r} (trials: {known})" if trial_id
                           else f"{layout.root}: no trials to export")
    if not row.get("best_checkpoint"):
        raise LexirayError(f"{layout.root}: trial {row['trial_id']} kept no checkpoint")
    config = storage.read_trial_config(layout, row["trial_id"])
    if config is None:
        raise LexirayError(f"{layout.root}: trial {row['trial_id']} has no saved config")
    destination = str(destination or layout.best_dir)
    metric = summary["metric"]
    storage.export_adapter(layout.checkpoint(row["best_checkpoint"]), destination, config,
                           final_metrics={k: v for k, v in row.items() if k != "sample"},
                           best_metrics={metric: row.get(metric), "eval_loss": row["eval_loss"],
                                         "trial_id": row["trial_id"]})
    return destination


def finish_experiment(run: TuningRun, console) -> dict:
    """After `Tuner.fit`: leaderboard, summary, plot, best adapter export, closing lines."""
    layout, config = run.layout, run.config
    summary = build_report(layout, max_t=run.max_t, wall_time_s=run.wall_time_s)
    print_leaderboard(summary, console, top=config.report.top)
    best = summary.get("best")
    skipped = f"{summary['skipped_memory']} skipped over the GPU memory budget, " if summary["skipped_memory"] else ""
    console.print(f"{summary['trials']} trials, {summary['stopped_early']} stopped early by "
                  f"{config.tune.scheduler.upper()}, {summary['errored']} errored, {skipped}"
                  f"{summary['total_steps_trained']} training steps in {run.wall_time_s:.0f} s")
    if best and best.get("best_checkpoint"):
        destination = export_trial(layout)
        summary["best_adapter"] = destination
        storage.write_text(layout.summary_file, json.dumps(summary, indent=2, default=str))
        console.print(f"best trial {best['trial_id']}: {summary['metric']} {best[summary['metric']]:.4f} "
                      f"(lr {best['learning_rate']:.2e}, r {best['lora_r']}, alpha {best['lora_alpha']}, "
                      f"batch {best['batch_size']}×{best['grad_accum']})")
        console.print(f"best adapter: {destination}")
    console.print(f"leaderboard: {layout.leaderboard_file}")
    console.print(f"tensorboard --logdir {layout.tensorboard_dir}")
    return summary


def finish_interrupted(run: TuningRun, console) -> dict:
    """After a Ctrl-C / SIGTERM stopped `Tuner.fit`: the leaderboard of what ran so far, and
    the exact command that continues the experiment (no adapter is exported)."""
    summary = build_report(run.layout, max_t=run.max_t, wall_time_s=run.wall_time_s)
    print_leaderboard(summary, console, top=run.config.report.top)
    console.print(f"{run.interrupted}: stopped after {summary['total_steps_trained']} training steps in "
                  f"{run.wall_time_s:.0f} s; the trials' checkpoints are kept")
    console.print(f"partial leaderboard: {run.layout.leaderboard_file}")
    console.print(f"resume with: {run.resume_command}", markup=False)
    return summary
