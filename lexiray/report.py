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
