"""Ray overhead of a lexiray trial against a plain HF Trainer script, side by side.

(a) trial start: seconds from a free trial slot (the Tune trial function starts) to the
    trial's first training step, one trial at a time (median of 3 trials);
(b) training steps/s over the training phase (evaluations and checkpoints included) inside
    a trial, over the same steps in a plain script with the same thread count (1).
Targets: (a) <= 10 s on 2 cores, (b) >= 0.95.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import median, plain_hf_run, run_tune, trial_results, write_config

from lexiray.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=3)
    options = parser.parse_args()
    changes = {"training.max_steps": options.steps, "training.save_steps": 12, "training.eval_steps": 12,
               "tune.num_samples": options.trials, "tune.scheduler": "fifo", "tune.max_concurrent_trials": 1}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config_path = write_config(scratch, "overhead", changes, search={})
        plain = plain_hf_run(load_config(config_path), threads=1)
        wall, root = run_tune(config_path, scratch / "results", "overhead")
        trials = trial_results(root)
    starts = [reports[0]["startup_s"] for reports in trials.values() if reports]
    ray_rates = [reports[-1]["phase_steps_per_second"] for reports in trials.values() if reports]
    plain_rate = plain["phase_steps_per_second"]
    ratio = median(ray_rates) / plain_rate
    print(f"plain HF script: {plain_rate:.2f} steps/s over {options.steps} steps, startup "
          f"{plain['startup_s']:.1f} s (imports excluded), eval_loss {plain['eval_loss']:.4f}")
    print(f"lexiray trials:  {', '.join(f'{r:.2f}' for r in ray_rates)} steps/s; "
          f"free slot -> first step {', '.join(f'{s:.1f}' for s in starts)} s; tuning run {wall:.0f} s")
    print(f"trial_start_seconds: {median(starts):.1f}")
    print(f"steps_per_second_ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
