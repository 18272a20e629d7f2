"""ASHA against FIFO (no early stopping): the same search space and seed on the tiny model.

Prints the share of FIFO's training steps that ASHA used, the gap between the two runs' best
eval_loss, the spread of FIFO's final eval_loss across trials (the gap check means something
only when configurations differ by far more than the 1 % margin), and each run's share of
slot-time spent training: trained steps x the plain script's time per step (evaluations
included, measured in the same run) / (wall x slots).
Targets: ASHA <= 30 % of FIFO's steps, best within 1 % of FIFO's, FIFO spread >= 10 x 1 %,
ASHA slot-time share >= 0.5.

Trials are 108 steps with an evaluation every 6 (rungs at 6, 24 and 96 with reduction factor
4): the "few hundred steps" regime ASHA is for. On smoke.yaml's own 36-step trials there are
only two rungs and ASHA cannot go much below half of FIFO's steps.

24 trials by default: async ASHA promotes the first trials to reach a rung with nothing to
compare them against, so its savings grow with trials per slot. Measured here (2 slots):
12 trials kept 39 % of FIFO's steps, 24 trials 27.5 % (best-loss gap +0.43 %). About 15 min.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

from _common import plain_hf_process, run_tune, write_config

from lexiray.config import load_config


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
            leaderboard = list(csv.DictReader((root / "leaderboard.csv").open()))
            # each trial's best eval_loss: under FIFO every trial ran to the end
            summaries[scheduler]["final_losses"] = [float(row["eval_loss"]) for row in leaderboard
                                                    if row["status"] == "DONE"]
        plain = plain_hf_process(path, threads=1)  # same trial settings (the search's base config)
        slots = load_config(path).tune.max_concurrent_trials or 2
    asha, fifo = summaries["asha"], summaries["fifo"]
    fraction = asha["total_steps_trained"] / fifo["total_steps_trained"]
    gap = (asha["best"]["eval_loss"] - fifo["best"]["eval_loss"]) / fifo["best"]["eval_loss"]
    spread = (max(fifo["final_losses"]) - min(fifo["final_losses"])) / fifo["best"]["eval_loss"]
    step_time = 1 / plain["phase_steps_per_second"]
    for name, summary in summaries.items():
        share = summary["total_steps_trained"] * step_time / (summary["wall"] * slots)
        print(f"{name}: {summary['trials']} trials, {summary['stopped_early']} stopped early, "
              f"{summary['total_steps_trained']} steps, best eval_loss {summary['best']['eval_loss']:.4f}, "
              f"{summary['wall']:.0f} s, slot-time share training {share:.2f}")
    print(f"plain script: {plain['phase_steps_per_second']:.2f} steps/s (evaluations included), {slots} slots")
    print(f"fifo eval_loss spread across trials: {spread:.1%} of the best ({min(fifo['final_losses']):.4f} .. "
          f"{max(fifo['final_losses']):.4f}): {'>=' if spread >= 0.10 else '<'} 10 x the 1 % margin")
    print(f"best_eval_loss_gap: {gap:+.2%}")
    asha_share = asha["total_steps_trained"] * step_time / (asha["wall"] * slots)
    print(f"asha_slot_time_share: {asha_share:.2f}")
    print(f"asha_steps_fraction: {fraction:.3f}")


if __name__ == "__main__":
    main()
