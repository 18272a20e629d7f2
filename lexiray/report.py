"""Results -> best-adapter export, leaderboard and plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lexiray.config import ExperimentConfig
from lexiray.trial import CHECKPOINT_NAME, read_log_history

# Files of a HF checkpoint needed only to resume training, not to use the adapter.
TRAINING_STATE_FILES = {"optimizer.pt", "scheduler.pt", "training_args.bin", "trainer_state.json", "scaler.pt"}


def _clean(metrics: dict) -> dict:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


def export_checkpoint(checkpoint, destination: Path, config: ExperimentConfig, final_metrics: dict,
                      best_metrics: dict, latest_checkpoint=None) -> dict:
    """Copy a Ray checkpoint's adapter + tokenizer into `destination` (loadable with
    `PeftModel.from_pretrained`), with the resolved config and metrics beside them."""
    from lexiray.launch import write_resolved_config

    destination.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    with checkpoint.as_directory() as restored:
        source = Path(restored) / CHECKPOINT_NAME
        for item in source.iterdir():
            if item.name in TRAINING_STATE_FILES or item.name.startswith("rng_state"):
                continue
            target = destination / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
        history = read_log_history(source)
    if latest_checkpoint is not None and latest_checkpoint.path != checkpoint.path:
        with latest_checkpoint.as_directory() as restored:
            history = read_log_history(Path(restored) / CHECKPOINT_NAME) or history
    write_resolved_config(config, destination)
    evals = [entry for entry in history if "eval_loss" in entry]
    summary = {
        "best": _clean(best_metrics),
        "final": _clean(final_metrics),
        "eval_loss_at_start": evals[0]["eval_loss"] if evals and evals[0].get("step") == 0 else None,
        "eval_loss_best": _clean(best_metrics).get("eval_loss"),
        "eval_loss_final": _clean(final_metrics).get("eval_loss"),
        "history": history,
        "checkpoint": checkpoint.path,
    }
    (destination / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------- experiments

LEADERBOARD_COLUMNS = [
    "rank", "trial_id", "status", "eval_loss", "steps", "total_steps", "stopped_early",
    "learning_rate", "lora_r", "lora_alpha", "batch_size", "grad_accum", "samples_per_second",
    "tokens_per_second", "peak_memory_mb", "wall_time_s", "best_checkpoint",
]


def _trial_rows(root: str, metric: str = "eval_loss", mode: str = "min", max_t: int | None = None) -> list[dict]:
    """One row per trial from Tune's experiment state and each trial's result history."""
    from ray.tune import ExperimentAnalysis

    from lexiray.config import ExperimentConfig
    from lexiray.space import apply_sample

    base = ExperimentConfig()
    analysis = ExperimentAnalysis(root)
    rows = []
    for trial in analysis.trials:
        frame = analysis.trial_dataframes.get(trial.trial_id)
        reports = frame.to_dict("records") if frame is not None and len(frame) else []
        scored = [r for r in reports if r.get(metric) is not None and r[metric] == r[metric]]
        best = (min if mode == "min" else max)(scored, key=lambda r: r[metric]) if scored else {}
        last = reports[-1] if reports else {}
        total = last.get("total_steps", max_t)
        steps = int(max((r.get("step") or 0) for r in reports)) if reports else 0
        sample = dict(trial.config)
        try:
            resolved = apply_sample(_base_for(root, base), sample)
        except Exception:  # noqa: BLE001 - a row must still be written for an odd trial
            resolved = None
        rows.append({
            "trial_id": trial.trial_id,
            "status": "ERROR" if trial.status == "ERROR" else ("DONE" if total and steps >= total else
                                                               "STOPPED" if trial.status == "TERMINATED" else trial.status),
            "eval_loss": best.get(metric),
            "steps": steps,
            "total_steps": int(total) if total else None,
            "stopped_early": bool(trial.status == "TERMINATED" and total and steps < total),
            "learning_rate": resolved.training.learning_rate if resolved else sample.get("training.learning_rate"),
            "lora_r": resolved.lora.r if resolved else None,
            "lora_alpha": resolved.lora.alpha if resolved else None,
            "batch_size": resolved.training.per_device_train_batch_size if resolved else None,
            "grad_accum": resolved.training.gradient_accumulation_steps if resolved else None,
            "samples_per_second": last.get("samples_per_second"),
            "tokens_per_second": last.get("tokens_per_second"),
            "peak_memory_mb": last.get("peak_memory_mb"),
            "wall_time_s": last.get("time_total_s"),
            "best_checkpoint": best.get("checkpoint_path"),
            "sample": sample,
            "history": [{"step": r.get("step"), metric: r.get(metric)} for r in scored],
        })
    missing = float("inf") if mode == "min" else float("-inf")
    rows.sort(key=lambda r: (r["eval_loss"] is None, r["eval_loss"] if r["eval_loss"] is not None else missing)
              if mode == "min" else (r["eval_loss"] is None, -(r["eval_loss"] or 0)))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


_BASE_CACHE: dict[str, object] = {}


def _base_for(root: str, default):
    if root not in _BASE_CACHE:
        from lexiray.config import config_from_dict, read_yaml
        from lexiray.tune import EXPERIMENT_CONFIG

        path = Path(root) / EXPERIMENT_CONFIG
        _BASE_CACHE[root] = config_from_dict(read_yaml(path), str(path)) if path.is_file() else default
    return _BASE_CACHE[root]


def write_leaderboard(rows: list[dict], root: Path) -> Path:
    import csv

    path = root / "leaderboard.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEADERBOARD_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_curves(rows: list[dict], root: Path, metric: str = "eval_loss") -> Path | None:
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
    axis.set_title(f"{root.name}: {metric} per trial")
    axis.legend(fontsize=7)
    path = root / f"{metric}.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def build_report(root: Path, config=None, max_t: int | None = None, wall_time_s: float | None = None) -> dict:
    """leaderboard.csv, summary.json and the eval_loss plot of an experiment folder."""
    from lexiray.tune import resolve_experiment

    root = Path(resolve_experiment(str(root)))
    base = _base_for(str(root), None) if config is None else config
    metric = base.tune.metric if base else "eval_loss"
    mode = base.tune.mode if base else "min"
    rows = _trial_rows(str(root), metric, mode, max_t)
    write_leaderboard(rows, root)
    summary = {
        "experiment": str(root),
        "metric": metric,
        "mode": mode,
        "trials": len(rows),
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "errored": sum(r["status"] == "ERROR" for r in rows),
        "total_steps_trained": sum(r["steps"] for r in rows),
        "wall_time_s": wall_time_s,
        "best": {k: v for k, v in rows[0].items() if k != "history"} if rows else None,
        "leaderboard": [{k: v for k, v in r.items() if k != "history"} for r in rows],
        "tensorboard": str(root / "tensorboard"),
    }
    if base is not None and getattr(base.report, "plots", True):
        plot = plot_curves(rows, root, metric)
        summary["plot"] = str(plot) if plot else None
    (root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def print_leaderboard(summary: dict, console, top: int = 20) -> None:
    from rich.table import Table

    table = Table(title=f"leaderboard — {summary['experiment']} ({summary['metric']}, {summary['mode']})")
    for column in ("#", "trial", "status", summary["metric"], "steps", "lr", "r", "alpha", "batch×accum",
                   "samples/s", "tokens/s", "peak MB", "wall s"):
        table.add_column(column, justify="left" if column in ("trial", "status") else "right")

    def number(value, fmt):
        return "-" if value is None else format(value, fmt)

    for row in summary["leaderboard"][:top]:
        table.add_row(
            str(row["rank"]), row["trial_id"], row["status"].lower(), number(row["eval_loss"], ".4f"),
            f"{row['steps']}/{row['total_steps'] or '?'}", number(row["learning_rate"], ".2e"),
            str(row["lora_r"]), str(row["lora_alpha"]), f"{row['batch_size']}×{row['grad_accum']}",
            number(row["samples_per_second"], ".1f"), number(row["tokens_per_second"], ".0f"),
            number(row["peak_memory_mb"], ".0f"), number(row["wall_time_s"], ".0f"),
        )
    console.print(table)


def export_trial(root: Path, destination: Path | None = None, trial_id: str | None = None) -> Path:
    """Export a trial's best checkpoint (default: the leaderboard's first) to `root/best`."""
    from ray.train import Checkpoint

    from lexiray.errors import LexirayError
    from lexiray.space import apply_sample
    from lexiray.tune import read_summary, resolve_experiment

    root = Path(resolve_experiment(str(root)))
    summary = read_summary(root) if (root / "summary.json").is_file() else build_report(root)
    rows = summary["leaderboard"]
    row = next((r for r in rows if r["trial_id"] == trial_id), None) if trial_id else (rows[0] if rows else None)
    if row is None:
        raise LexirayError(f"{root}: no trial {trial_id!r}" if trial_id else f"{root}: no trials to export")
    if not row.get("best_checkpoint"):
        raise LexirayError(f"{root}: trial {row['trial_id']} kept no checkpoint")
    base = _base_for(str(root), None)
    config = apply_sample(base, row["sample"])
    destination = destination or root / "best"
    export_checkpoint(Checkpoint(row["best_checkpoint"]), destination, config,
                      final_metrics={k: v for k, v in row.items() if k not in ("sample",)},
                      best_metrics={"eval_loss": row["eval_loss"], "trial_id": row["trial_id"]})
    return destination


def finish_experiment(root: str, config, console, wall_time_s: float, max_t: int) -> dict:
    """After `Tuner.fit`: leaderboard, summary, plot, best adapter export, closing lines."""
    from lexiray.tune import is_uri

    if is_uri(root):
        console.print(f"results are in {root} (run `lexiray report` on a local copy for the leaderboard)")
        return {}
    summary = build_report(Path(root), config, max_t=max_t, wall_time_s=wall_time_s)
    print_leaderboard(summary, console, top=config.report.top)
    best = summary.get("best")
    console.print(f"{summary['trials']} trials, {summary['stopped_early']} stopped early by "
                  f"{config.tune.scheduler.upper()}, {summary['errored']} errored, "
                  f"{summary['total_steps_trained']} training steps in {wall_time_s:.0f} s")
    if best and best.get("best_checkpoint"):
        destination = export_trial(Path(root))
        summary["best_adapter"] = str(destination)
        (Path(root) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        console.print(f"best trial {best['trial_id']}: eval_loss {best['eval_loss']:.4f} "
                      f"(lr {best['learning_rate']:.2e}, r {best['lora_r']}, alpha {best['lora_alpha']}, "
                      f"batch {best['batch_size']}×{best['grad_accum']})")
        console.print(f"best adapter: {destination}")
    console.print(f"leaderboard: {Path(root) / 'leaderboard.csv'}")
    console.print(f"tensorboard --logdir {Path(root) / 'tensorboard'}")
    return summary
