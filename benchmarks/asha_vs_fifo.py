"""ASHA against FIFO (no early stopping): the same search space and seed on the tiny model.

Prints the share of FIFO's training steps that ASHA used and the gap between the two
runs' best eval_loss. Target: ASHA <= 35 % of FIFO's steps, best-loss gap <= 2 %.

Trials are 108 steps with an evaluation every 6 (rungs at 6, 24 and 96 with reduction factor
4): the "few hundred steps" regime ASHA is for. On smoke.yaml's own 36-step trials there are
only two rungs and ASHA cannot go much below half of FIFO's steps.

24 trials by default: async ASHA promotes the first trials to reach a rung with nothing to
compare them against, so its savings grow with trials per slot. Measured here (2 slots):
12 trials kept 39 % of FIFO's steps, 24 trials 27.5 % (best-loss gap +0.43 %). About 15 min.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import run_tune, write_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--steps", type=int, default=108)
    # 4: keep the best quarter at each rung (with 12 trials, 3 kept 57 % of FIFO's steps, 4 kept 39 %)
    parser.add_argument("--reduction-factor", type=float, default=4)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        summaries = {}
        for scheduler in ("asha", "fifo"):
            path = write_config(scratch, scheduler, {"tune.scheduler": scheduler, "tune.num_samples": options.trials,
                                                     "tune.seed": 0, "training.max_steps": options.steps,
                                                     "tune.reduction_factor": options.reduction_factor})
            wall, root = run_tune(path, scratch / "results", scheduler)
            summaries[scheduler] = json.loads((root / "summary.json").read_text()) | {"wall": wall}
    asha, fifo = summaries["asha"], summaries["fifo"]
    fraction = asha["total_steps_trained"] / fifo["total_steps_trained"]
    gap = (asha["best"]["eval_loss"] - fifo["best"]["eval_loss"]) / fifo["best"]["eval_loss"]
    for name, summary in summaries.items():
        print(f"{name}: {summary['trials']} trials, {summary['stopped_early']} stopped early, "
              f"{summary['total_steps_trained']} steps, best eval_loss {summary['best']['eval_loss']:.4f}, "
              f"{summary['wall']:.0f} s")
    print(f"best_eval_loss_gap: {gap:+.2%}")
    print(f"asha_steps_fraction: {fraction:.3f}")


if __name__ == "__main__":
    main()
