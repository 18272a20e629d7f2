"""What Ray costs a lexiray trial, against a plain HF Trainer script, side by side.

One trial at a time (FIFO, max 1 concurrent), N trials, then the same training as a plain
script in a fresh Python process. Measured:

(a) free slot -> first step: from the previous trial's last report to this trial's first
    training step (the previous trial's tear-down, Tune starting the next trial actor, Ray
    Train's controller, placement group and worker, imports, model and data). Compared with
    the plain script's process launch -> first step, imports included. Target <= 1.5x.
(b) non-training CPU per trial: CPU-seconds of every process that is not the one that
    trains (a single-worker trial trains in its Tune trial actor; a multi-worker one in its
    Ray Train workers, beside a Train controller, placement-group cleaner and
    synchronization actor), with the share of raylet, GCS, dashboard and the driver,
    divided by the trials. And the all-in figure that does not depend on which process
    counts as "training": every process's CPU per trial minus the plain script's whole CPU
    (imports, model, data, training), i.e. what Ray and lexiray add to one trial.
(c) in-trial training steps/s (evaluations and checkpoints included) over the plain
    script's, same steps, same thread count. Target >= 0.95.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import median, plain_hf_process, run_tune, trial_results, write_config
from _processes import ProcessSampler

# The process that trains: the Tune trial actor (single-worker trials train in it) or a
# Ray Train worker (multi-worker trials).
# (/proc shows at most 15 characters of a process's name: "ray::ImplicitFu")
TRAINING_PROCESSES = ("ImplicitFu", "RayTrainWorker")


def is_training(kind: str) -> bool:
    return kind.startswith(TRAINING_PROCESSES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trials", type=int, default=4)
    options = parser.parse_args()
    changes = {"training.max_steps": options.steps, "training.save_steps": 12, "training.eval_steps": 12,
               "tune.num_samples": options.trials, "tune.scheduler": "fifo", "tune.max_concurrent_trials": 1}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config_path = write_config(scratch, "overhead", changes, search={})
        before = plain_hf_process(config_path, threads=1)
        with ProcessSampler() as sampler:
            wall, root = run_tune(config_path, scratch / "results", "overhead")
        after = plain_hf_process(config_path, threads=1)
        trials = sorted(trial_results(root).values(), key=lambda reports: reports[0]["first_step_at"])
    # the plain script before and after the tuning run: its faster launch and steps/s (a busy
    # moment on the machine must not make lexiray look better)
    plain = {"startup_s": min(before["startup_s"], after["startup_s"]), "eval_loss": before["eval_loss"],
             "phase_steps_per_second": max(before["phase_steps_per_second"], after["phase_steps_per_second"])}
    # (a) from the previous trial's last report: the first trial also waits for Ray to start
    gaps = [later[0]["first_step_at"] - earlier[-1]["reported_at"] for earlier, later in zip(trials, trials[1:])]
    starts = [reports[0]["startup_s"] for reports in trials]
    # (b) CPU by process kind
    by_kind = sampler.cpu_by_kind()
    training = sum(cpu for kind, cpu in by_kind.items() if is_training(kind))
    other = {kind: cpu for kind, cpu in by_kind.items() if not is_training(kind)}
    overhead_per_trial = sum(other.values()) / len(trials)
    plain_cpu = min(before["cpu_s"], after["cpu_s"])
    beyond_plain = sum(by_kind.values()) / len(trials) - plain_cpu
    # (c)
    ray_rates = [reports[-1]["phase_steps_per_second"] for reports in trials]
    plain_rate = plain["phase_steps_per_second"]
    print(f"plain HF script: {plain_rate:.2f} steps/s over {options.steps} steps; launch -> first step "
          f"{plain['startup_s']:.1f} s (imports included); eval_loss {plain['eval_loss']:.4f}")
    print(f"lexiray, {len(trials)} trials one at a time, {wall:.0f} s: {', '.join(f'{r:.2f}' for r in ray_rates)} "
          f"steps/s; free slot -> first step {', '.join(f'{g:.1f}' for g in gaps)} s; trial driver start -> "
          f"first step {', '.join(f'{s:.1f}' for s in starts)} s")
    print(f"CPU-seconds per trial by process (the training processes: {training / len(trials):.1f}; "
          f"the plain script, all of it: {plain_cpu:.1f}):")
    for kind, cpu in sorted(other.items(), key=lambda item: -item[1]):
        print(f"  {kind:<28} {cpu / len(trials):6.2f}")
    print(f"non-training CPU-seconds per trial: {overhead_per_trial:.2f}")
    print(f"CPU-seconds per trial beyond the plain script's: {beyond_plain:.2f}")
    print(f"trial_start_seconds: {median(gaps):.1f}")
    print(f"steps_per_second_ratio: {median(ray_rates) / plain_rate:.3f}")
    print(f"trial_start_ratio: {median(gaps) / plain['startup_s']:.2f}")


if __name__ == "__main__":
    main()
