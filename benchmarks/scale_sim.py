"""lexiray's Tune driver at cluster scale, simulated on one machine: 64 T4 slots, 512 trials.

lexiray's own pieces drive the run: the `balanced` preset and its search space
(`config.load_config`, `space.build_param_space`), `tune.total_steps` / `check_schedule`,
`tune.tune_config` (ASHA keyed on the step, the seeded random search capped at the slot
count), `tune.RecordFinishedTrials` and `progress.PrintTrialProgress` (its lines go to a log
file), and `storage.ExperimentLayout` under a temporary folder. One local Ray node advertises
`--slots` fake GPUs and as many `accelerator_type:T4` units; each trial holds one of each.

No model is trained. The stand-in trainable reports {"step", "eval_loss", "total_steps"} at
every `save_steps` and at the last step, as a lexiray trial does, and sleeps the simulated
time of those steps x `--time-scale` between reports:
- step time = effective batch (24) / samples per second on a T4, from the LexiLingo guide's
  table (0.5B seq 512 b4: 15-20; 0.5B/768/b2: 8-10; 1.5B/512/b2: 6-8; 1.5B/768/b2: 4-5;
  midpoints used). Batch sizes the table lacks follow samples/s = S * b / (b + h), a fixed
  cost per micro-batch plus one per sample, fitted for 0.5B to b4 at seq 512 and to b2 at
  seq 768 rescaled to seq 512 by tokens: b2 13.5, b4 17.5, b8 20.5 samples/s (1.78, 1.37,
  1.17 s per optimizer step). Evaluation and checkpoint time are not modelled.
- eval_loss(step) = floor + (2.2 - floor) * exp(-k * step) + N(0, 0.004) seeded by
  (lr, r, batch, step): floor is lowest at lr 3e-4 (+0.4 per decade^2, -0.012 per doubling
  of r); k grows slowly with lr, so the first rung favours high learning rates (ASHA's
  known bias) while the last rungs rank by the floor.

Prints, with targets:
(1) driver overhead per trial: the seconds a slot stands idle between the stand-in's last
    report of one trial and the first simulated step of the next on the same (reused) actor,
    plus the result round trips inside each trial. Measured on the actors' clocks, it holds
    everything the driver does per trial (ASHA's decision, lexiray's callbacks, the search
    algorithm's next sample, Tune's bookkeeping and RPCs) and nothing of process start-up,
    which on 2 cores dominates and on a cluster happens on the node. The driver's CPU time
    per trial is printed too: what the driver can sustain, not what a slot loses.
(2) slot-time busy: simulated busy seconds / (slots x simulated wall). The simulated clock
    starts when every slot holds a live trial actor: new actors wait for each other before
    their first step (64 processes take a minute to start on 2 cores; trials ending meanwhile
    made Tune hand their actors to trials whose own actors were still starting, which Ray
    then killed, over and over: only 23 of 64 slots were ever in use). Also split into the
    part where trials still waited for a slot (what the driver controls) and ASHA's tail.
(3) GPU-hours under ASHA against every trial run to max_t, and ASHA's best eval_loss against
    the best any sampled config reaches when run to the end.
Targets: (1) <= 0.5 s, (2) >= 90 %, (3) <= 30 %. Ends with `scale_sim_gpu_hours_fraction: X`.
Full run (64 slots x 512 trials, --time-scale 0.04): about 8 minutes on 2 cores, 1 of them actor
start-up; about 10 GB of memory (64 trial actors). `--quick`: 8 slots x 32 trials, about 1 minute.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

LR_KEY, R_KEY, BATCH_KEY = "training.learning_rate", "lora.r", "training.per_device_train_batch_size"

# LexiLingo guide, T4: samples/s (low, high) for (model, max_seq_length, per-device batch).
GUIDE_T4 = {("0.5B", 512, 4): (15, 20), ("0.5B", 768, 2): (8, 10), ("1.5B", 512, 2): (6, 8), ("1.5B", 768, 2): (4, 5)}


def batch_half_point() -> float:
    """h in S * b / (b + h): 0.5B's b4 at seq 512 against its b2 at seq 768 rescaled to 512."""
    b4 = sum(GUIDE_T4[("0.5B", 512, 4)]) / 2
    b2 = sum(GUIDE_T4[("0.5B", 768, 2)]) / 2 * 768 / 512  # same tokens/s, shorter sequences
    # b4 (4 + h) / 4 = b2 (2 + h) / 2
    return (b2 - b4) / (b4 / 4 - b2 / 2)


def samples_per_second(model: str, seq: int, batch: int) -> float:
    """The guide's midpoint for the nearest row of the model, rescaled to `seq` by tokens and
    to `batch` along S * b / (b + h)."""
    rows = {key: sum(value) / 2 for key, value in GUIDE_T4.items() if key[0] == model}
    if not rows:
        raise SystemExit(f"no T4 throughput for model {model!r} in the guide's table (0.5B, 1.5B)")
    (_, row_seq, row_batch), rate = min(rows.items(), key=lambda item: (abs(item[0][1] - seq), item[0][2]))
    h = batch_half_point()
    return rate * row_seq / seq * (batch / (batch + h)) / (row_batch / (row_batch + h))


def model_size(name: str) -> str:
    return "1.5B" if "1.5b" in name.lower() else "0.5B"


# --------------------------------------------------------------------------- the simulated trial

LR_BEST, LOSS_START, NOISE = 3e-4, 2.2, 0.004


def eval_loss(lr: float, r: int, batch: int, step: int, seed: int) -> float:
    x = math.log10(lr / LR_BEST)
    floor = 0.85 + 0.40 * x * x - 0.012 * math.log2(r / 8)
    k = 0.0035 * (lr / LR_BEST) ** 0.15
    loss = floor + (LOSS_START - floor) * math.exp(-k * step)
    digest = hashlib.blake2b(f"{lr:.12e}|{r}|{batch}|{step}|{seed}".encode(), digest_size=8).digest()
    return loss + random.Random(int.from_bytes(digest, "little")).gauss(0.0, NOISE)


@dataclass(frozen=True)
class Simulation:
    model: str
    seq: int
    effective_batch: int
    every: int  # save_steps: a report each
    total_steps: int  # max_t
    scale: float  # real seconds per simulated second
    seed: int
    start_barrier: str  # a folder: each new trial actor adds a file, and waits for `start_count` of them
    start_count: int

    def step_seconds(self, batch: int) -> float:
        return self.effective_batch / samples_per_second(self.model, self.seq, batch)

    def report_steps(self) -> list[int]:
        """lexiray evaluates every save_steps and once more at the last step."""
        steps = list(range(self.every, self.total_steps, self.every))
        return steps + [self.total_steps]


def make_trainable():
    from ray import tune

    class StandInTrial(tune.Trainable):
        """A trial that sleeps instead of training. Reused across trials (reset_config)."""

        def setup(self, config, sim: Simulation):
            self.sim = sim
            self.reset_config(config)
            self.waiting = True

        def wait_for_all_slots(self):
            """The start barrier (see the module's docstring, (2)): process start-up is not measured."""
            folder = Path(self.sim.start_barrier)
            (folder / str(os.getpid())).touch()
            deadline = time.time() + 900
            while len(os.listdir(folder)) < self.sim.start_count and time.time() < deadline:
                time.sleep(0.1)
            self.waiting = False

        def reset_config(self, new_config):
            self.lr, self.r = float(new_config[LR_KEY]), int(new_config[R_KEY])
            self.batch = int(new_config[BATCH_KEY])
            self.step_s = self.sim.step_seconds(self.batch)
            self.at = 0
            return True

        def step(self):
            if self.waiting:
                self.wait_for_all_slots()
            sim = self.sim
            target = min(self.at + sim.every, sim.total_steps)
            simulated = (target - self.at) * self.step_s
            started = time.time()
            time.sleep(simulated * sim.scale)
            ended = time.time()
            self.at = target
            return {"step": target, "total_steps": sim.total_steps, "done": target >= sim.total_steps,
                    "eval_loss": eval_loss(self.lr, self.r, self.batch, target, sim.seed),
                    "sim_s": simulated, "t0": started, "t1": ended, "actor_pid": os.getpid()}

        def save_checkpoint(self, checkpoint_dir):
            return {"at": self.at}

        def load_checkpoint(self, checkpoint):
            self.at = checkpoint["at"]

    return StandInTrial


def progress_callback(total: int, started: float):
    from ray.tune import Callback

    class Heartbeat(Callback):
        """A line per tenth of the trials finished, to the real stdout."""

        def __init__(self):
            self.done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            if self.done % max(1, total // 10) == 0 or self.done == total:
                running = sum(1 for t in trials if t.status == "RUNNING")
                print(f"  [{time.time() - started:5.0f} s] {self.done}/{total} trials done, {running} running",
                      file=sys.__stdout__, flush=True)  # not the redirected stdout

    return Heartbeat()


# --------------------------------------------------------------------------- the run


def run(options, scratch: Path) -> dict:
    import ray
    from ray import tune as ray_tune

    from lexiray import storage
    from lexiray.cluster import RAY_ENV_DEFAULTS
    from lexiray.config import load_config
    from lexiray.space import build_param_space
    from lexiray.storage import ExperimentLayout
    from lexiray.trial import TRIAL_DRIVER_CPUS
    from lexiray.tune import check_schedule, run_config, total_steps, tune_config

    config = load_config("balanced", [f"tune.num_samples={options.trials}",
                                      f"tune.max_concurrent_trials={options.slots}",
                                      f"tune.storage_path={scratch / 'results'}", "tune.name=scale_sim",
                                      f"tune.seed={options.seed}"])
    max_t, grace = check_schedule(config, total_steps(config, options.rows))
    sim = Simulation(model_size(config.model.name), config.data.max_seq_length, config.training.effective_batch_size,
                     config.training.effective_eval_steps, max_t, options.time_scale, options.seed,
                     str(scratch / "start_barrier"), min(options.slots, options.trials))
    Path(sim.start_barrier).mkdir()
    layout = ExperimentLayout.for_new_experiment(config)
    print(f"{options.slots} T4 slots, {options.trials} trials of '{config.name}' ({config.model.name}, seq {sim.seq}, "
          f"effective batch {sim.effective_batch}), {options.rows} rows -> {max_t} steps per trial, a report every "
          f"{sim.every}; ASHA grace {grace}, reduction {config.tune.reduction_factor:g}")
    print("step time from the guide's T4 table: " + ", ".join(
        f"batch {b} {samples_per_second(sim.model, sim.seq, b):.1f} samples/s = {sim.step_seconds(b):.2f} s/step"
        for b in (2, 4, 8)))
    print(f"time scale: 1 simulated s = {options.time_scale:g} real s ({1 / options.time_scale:.0f}x faster)")

    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=os.cpu_count(), num_gpus=options.slots, resources={"accelerator_type:T4": options.slots},
             include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2,
             _temp_dir=str(scratch / "ray"), logging_level="ERROR")
    storage.write_experiment_config(layout, config, max_t, grace, options.slots)
    tuning = tune_config(config, max_t, grace, options.slots)
    assert tuning.reuse_actors  # single-worker trials reuse their warm Tune actors, as lexiray tune does
    trainable = ray_tune.with_resources(ray_tune.with_parameters(make_trainable(), sim=sim),
                                        {"CPU": TRIAL_DRIVER_CPUS, "GPU": 1, "accelerator_type:T4": 1})
    progress_log = scratch / "progress.log"
    started = time.time()
    tuner = ray_tune.Tuner(trainable, param_space=build_param_space(config), tune_config=tuning,
                           run_config=run_config(config, layout, max_t,
                                                 extra_callbacks=(progress_callback(options.trials, started),)))
    cpu_before = time.process_time()
    with open(progress_log, "w") as log, contextlib.redirect_stdout(log):  # PrintTrialProgress's lines
        grid = tuner.fit()
    driver_cpu = time.process_time() - cpu_before
    wall = time.time() - started
    trials = []
    for result in grid:
        if result.error:
            raise SystemExit(f"trial {result.metrics.get('trial_id')} failed: {result.error}")
        trial_id = result.metrics["trial_id"]
        history = storage.read_history(layout, trial_id)
        if history:  # (none: a run interrupted before the trial reported)
            trials.append({"id": trial_id, "config": result.config, "history": history})
    return {"sim": sim, "trials": trials, "fit_started": started, "driver_cpu": driver_cpu, "wall": wall,
            "progress_lines": progress_log.read_text().count("\n"),
            "finished_records": len(storage.finished_trial_ids(layout))}


# --------------------------------------------------------------------------- the figures


def busy_share(trials: list[dict], slots: int, start: float, end: float) -> float:
    busy = sum(max(0.0, min(h["t1"], end) - max(h["t0"], start)) for t in trials for h in t["history"])
    return busy / (slots * (end - start)) if end > start else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(options, outcome: dict) -> float:
    sim, trials = outcome["sim"], outcome["trials"]
    n = len(trials)
    scale = sim.scale
    for t in trials:
        t["history"].sort(key=lambda h: h["step"])
        t["first_t0"], t["last_t1"] = t["history"][0]["t0"], t["history"][-1]["t1"]
        t["pid"] = t["history"][0]["actor_pid"]

    # (1) driver overhead: idle gaps on the actors' clocks
    by_actor: dict[int, list[dict]] = {}
    for t in trials:
        by_actor.setdefault(t["pid"], []).append(t)
    handoffs = []
    for runs in by_actor.values():
        runs.sort(key=lambda t: t["first_t0"])
        handoffs += [b["first_t0"] - a["last_t1"] for a, b in zip(runs, runs[1:])]
    round_trips = [b["t0"] - a["t1"] for t in trials for a, b in zip(t["history"], t["history"][1:])]
    per_trial = (statistics.mean(handoffs) if handoffs else float("nan")) + sum(round_trips) / n
    p95 = sorted(handoffs)[int(0.95 * (len(handoffs) - 1))] if handoffs else float("nan")
    print(f"\nreal wall {outcome['wall']:.0f} s; {len(by_actor)} trial actors for {n} trials "
          f"({len(handoffs)} trials started on a reused actor)")
    print(f"(1) driver overhead per trial: {per_trial:.3f} s  [target <= 0.5 s: {verdict(per_trial <= 0.5)}]"
          "\n    = the real seconds a slot idles on the driver (actors' clocks: hand-off + result round trips); "
          "process start-up excluded")
    if handoffs:
        print(f"    hand-off, last report of a trial -> first step of the next on its actor: median "
              f"{statistics.median(handoffs):.3f} s, mean {statistics.mean(handoffs):.3f} s, p95 {p95:.3f} s, "
              f"max {max(handoffs):.3f} s")
    if round_trips:
        print(f"    result round trip inside a trial: median {statistics.median(round_trips) * 1000:.0f} ms over "
              f"{len(round_trips)} results ({len(round_trips) / n:.1f} per trial)")
    print(f"    driver CPU time: {outcome['driver_cpu']:.1f} s = {outcome['driver_cpu'] / n:.3f} CPU-s per trial "
          f"(Tune loop, ASHA, RecordFinishedTrials, PrintTrialProgress: {outcome['progress_lines']} lines)")

    # (2) slot-time busy, from the moment every slot holds a live trial actor
    first_starts = sorted(t["first_t0"] for t in trials)
    clock_start = first_starts[min(options.slots, n) - 1]  # the start barrier's release
    last_start, end = first_starts[-1], max(t["last_t1"] for t in trials)
    whole = busy_share(trials, options.slots, clock_start, end)
    waiting = busy_share(trials, options.slots, clock_start, last_start)
    print(f"(2) slot-time busy: {whole:.1%}  [target >= 90 %: {verdict(whole >= 0.9)}]  (simulated wall "
          f"{(end - clock_start) / scale / 3600:.2f} h, {options.slots} slots)")
    print(f"    while trials still waited for a slot (the driver's part, the first "
          f"{(last_start - clock_start) / scale / 3600:.2f} h): {waiting:.1%}  "
          f"[target >= 90 %: {verdict(waiting >= 0.9)}]")
    print(f"    after the last trial started: {busy_share(trials, options.slots, last_start, end):.1%}: ASHA's tail, "
          "the trials it promoted run on while the other slots have nothing left to run")
    # The cluster files autoscale: a worker idle for idle_timeout_minutes is released, so in
    # ASHA's tail the slots with nothing left to run stop being paid for.
    idle_minutes = yaml.safe_load((REPO / "cluster" / "aws-t4.yaml").read_text())["idle_timeout_minutes"]
    idle_real = idle_minutes * 60 * scale
    held = sum(min(end, max(t["last_t1"] for t in runs) + idle_real) - clock_start for runs in by_actor.values())
    autoscaled = whole * options.slots * (end - clock_start) / held if held > 0 else float("nan")
    print(f"    on the cluster files' autoscaling workers (released after idle_timeout_minutes={idle_minutes}): "
          f"{autoscaled:.1%} of the slot-time held  [target >= 90 %: {verdict(autoscaled >= 0.9)}]")
    print(f"    start-up, excluded: {clock_start - outcome['fit_started']:.0f} real s until all "
          f"{min(options.slots, n)} trial actors were up (the simulated clock starts then)")

    # (3) GPU-hours against every trial to max_t, and the best found
    asha_s = sum(h["sim_s"] for t in trials for h in t["history"])
    full_s = sum(sim.total_steps * sim.step_seconds(int(t["config"][BATCH_KEY])) for t in trials)
    fraction = asha_s / full_s
    stopped = {}
    for t in trials:
        stopped[t["history"][-1]["step"]] = stopped.get(t["history"][-1]["step"], 0) + 1
    print(f"(3) GPU-hours: ASHA {asha_s / 3600:.1f} h against {full_s / 3600:.1f} h for all {n} trials to step "
          f"{sim.total_steps}: {fraction:.1%}  [target <= 30 %: {verdict(fraction <= 0.3)}]")
    print("    trials by last step: " + ", ".join(f"{step}: {count}" for step, count in sorted(stopped.items())))
    asha_best = min(((h["eval_loss"], t) for t in trials for h in t["history"]), key=lambda pair: pair[0])
    steps = sim.report_steps()

    def curve_best(t):
        c = t["config"]
        return min(eval_loss(c[LR_KEY], c[R_KEY], c[BATCH_KEY], s, sim.seed) for s in steps)

    true_loss, true_trial = min(((curve_best(t), t) for t in trials), key=lambda pair: pair[0])
    gap = (asha_best[0] - true_loss) / true_loss
    same = "the true best" if asha_best[1]["id"] == true_trial["id"] else f"not the true best, {gap:+.2%} from it"

    def label(t):
        c = t["config"]
        return f"lr {c[LR_KEY]:.2e} r {c[R_KEY]} batch {c[BATCH_KEY]}"

    print(f"    ASHA's best eval_loss {asha_best[0]:.4f} ({label(asha_best[1])}) is {same}: "
          f"{true_loss:.4f} ({label(true_trial)}) with every trial to the end")
    print(f"    bookkeeping: {outcome['finished_records']}/{n} finished records written")
    return fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=64, help="T4 slots (fake GPUs) on the one Ray node")
    parser.add_argument("--trials", type=int, default=512)
    parser.add_argument("--time-scale", type=float, default=None,
                        help="real seconds per simulated second (default 0.04; 0.01 with --quick)")
    parser.add_argument("--rows", type=int, default=20_000, help="training rows: sets the steps per trial")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke check: 8 slots x 32 trials, faster clock")
    options = parser.parse_args()
    if options.quick:
        options.slots, options.trials = min(options.slots, 8), min(options.trials, 32)
    if options.time_scale is None:
        options.time_scale = 0.01 if options.quick else 0.04
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="lxsim-"))  # short: Ray's socket paths live under it
    try:
        import psutil
        import ray

        try:
            outcome = run(options, scratch)
        finally:
            spawned = psutil.Process().children(recursive=True)  # Ray's processes: all started from here
            ray.shutdown()
            _, alive = psutil.wait_procs(spawned, timeout=15)
            for process in alive:  # ours, by pid
                print(f"killing Ray process {process.pid} left after ray.shutdown()")
                process.kill()
        fraction = report(options, outcome)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
    print(f"total {time.time() - started:.0f} s")
    print(f"scale_sim_gpu_hours_fraction: {fraction:.3f}")


if __name__ == "__main__":
    main()
