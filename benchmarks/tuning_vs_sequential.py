"""The bar: 8 configs x N steps as a plain sequential HF loop (one process, both cores)
against `lexiray tune` with ASHA over the same 8 configs (grid), side by side.

Prints both wall times and the speed-up of lexiray over the plain loop (> 1 = faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import plain_hf_run, run_tune, write_config

from lexiray.config import load_config
from lexiray.space import apply_sample

LEARNING_RATES = [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]
RANKS = [4, 16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    options = parser.parse_args()
    every = max(1, options.steps // 12)
    changes = {"training.max_steps": options.steps, "training.save_steps": every, "training.eval_steps": every,
               "tune.num_samples": 1}
    search = {"training.learning_rate": {"grid": LEARNING_RATES}, "lora.r": {"grid": RANKS},
              "lora.alpha": "2 * lora.r"}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        path = write_config(scratch, "bar", changes, search=search)
        base = load_config(path)
        started = time.time()
        plain_losses = []
        for lr in LEARNING_RATES:
            for r in RANKS:
                config = apply_sample(base, {"training.learning_rate": lr, "lora.r": r})
                plain_losses.append(plain_hf_run(config, threads=2)["eval_loss"])
        plain_wall = time.time() - started
        tune_wall, root = run_tune(path, scratch / "results", "bar")
        import json

        summary = json.loads((root / "summary.json").read_text())
    print(f"plain sequential loop: {plain_wall:.0f} s, best eval_loss {min(plain_losses):.4f}")
    print(f"lexiray tune + ASHA:   {tune_wall:.0f} s, best eval_loss {summary['best']['eval_loss']:.4f}, "
          f"{summary['total_steps_trained']} of {8 * options.steps} steps")
    print(f"tune_vs_sequential_speedup: {plain_wall / tune_wall:.2f}")


if __name__ == "__main__":
    main()
