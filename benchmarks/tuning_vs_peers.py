"""The bar: 8 configs (4 learning rates x 2 LoRA ranks) x N steps on the tiny model, side by
side, on this machine's cores:

  plain       a sequential HF Trainer loop in one process (both cores)
  hf-optuna   HF `Trainer.hyperparameter_search(backend="optuna")`, grid sampler, no pruning
  hf-ray-asha what HF `Trainer.hyperparameter_search(backend="ray")` runs, with Ray Tune's
              ASHA: a plain HF Trainer per trial process, a checkpoint reported at each
              save step (the method itself cannot pickle the Trainer in transformers 5.24)
  lexiray     `lexiray tune` with ASHA (Ray Tune trials, each a Ray Train TorchTrainer)

All four run the same grid with the same ASHA settings where a scheduler is used (first rung
at the first evaluation, reduction factor 3). Prints every wall time and best eval_loss, and
ends with lexiray's speed-up over the fastest peer (> 1: lexiray is faster than all of them).

ASHA's decisions depend on the order in which trials reach a rung, so the two ASHA tuners
train a different number of steps from run to run and their wall times move with that luck.
Each tuner's seconds per trained step (wall / steps, median over its runs) is printed beside
its wall time: lexiray's against the bare Ray Tune + ASHA peer's (hf-ray-asha) is the
overhead lexiray adds per step, whatever ASHA decided.

The two ASHA tuners are timed alike: each is a command run in a fresh Python process, from
its launch to its exit (imports, tokenizing, Ray's start and shutdown included), the way a
user runs either. (Timed inside this process, the peer would skip the imports this process
had already done, and lexiray would not.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import median, plain_hf_run, run_tune, write_config

from lexiray.config import load_config
from lexiray.config import apply_sample

LEARNING_RATES = [1.0e-3, 1.0e-4, 3.0e-3, 3.0e-4]  # not sorted: a sorted grid arrives best-last, and async ASHA stops nothing
RANKS = [4, 16]
REDUCTION_FACTOR = 3


def run_plain(base) -> tuple[float, float, int]:
    started = time.time()
    losses = [plain_hf_run(apply_sample(base, {"training.learning_rate": lr, "lora.r": r}), threads=2)["eval_loss"]
              for lr in LEARNING_RATES for r in RANKS]
    return time.time() - started, min(losses), len(losses) * base.training.max_steps


def _hf_trainer(base, output: str):
    """A HF Trainer whose model_init builds the LoRA model from the trial's rank."""
    import torch

    from lexiray.data import prepare_data
    from lexiray.hf_trainer import build_hf_trainer
    from lexiray.model import build_peft_model, load_tokenizer

    torch.set_num_threads(2)
    tokenizer = load_tokenizer(base.model)
    prepared = prepare_data(base.data, tokenizer)

    def model_init(trial):
        if trial is None:
            rank = base.lora.r
        elif isinstance(trial, dict):  # Ray Tune hands the config
            rank = trial["lora_r"]
        else:  # an Optuna trial; transformers 5 builds the model before it calls hp_space
            rank = trial.suggest_categorical("lora_r", RANKS)
        config = apply_sample(base, {"lora.r": rank})
        return build_peft_model(config.model, config.lora, config.training, "fp32")

    trainer = build_hf_trainer(base, None, tokenizer, prepared.train, prepared.eval, output, "fp32", cuda=False,
                               model_init=model_init)
    trainer.args.save_strategy = "no"
    return trainer


def run_hf_optuna(base, scratch: Path) -> tuple[float, float, int]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    trainer = _hf_trainer(base, str(scratch / "hf-optuna"))

    def hp_space(trial):
        return {"learning_rate": trial.suggest_categorical("learning_rate", LEARNING_RATES),
                "lora_r": trial.suggest_categorical("lora_r", RANKS)}

    best = trainer.hyperparameter_search(
        hp_space=hp_space, n_trials=len(LEARNING_RATES) * len(RANKS), direction="minimize", backend="optuna",
        compute_objective=lambda metrics: metrics["eval_loss"],
        sampler=optuna.samplers.GridSampler({"learning_rate": LEARNING_RATES, "lora_r": RANKS}))
    configs = len(LEARNING_RATES) * len(RANKS)  # every config to the end: no pruning
    return time.time() - started, best.objective, configs * base.training.max_steps


def _hf_ray_trial(sample: dict, base_raw: dict, train_set, eval_set) -> None:
    """One Ray Tune trial the way HF's Ray backend runs it: a plain HF Trainer in the trial
    process that, at every evaluation, saves a checkpoint when the step is a save step and
    reports eval_loss with it to Tune (`Trainer._report_to_hp_search`, backend "ray")."""
    from ray import tune
    from transformers import TrainerCallback

    from lexiray.config import config_from_dict
    from lexiray.hf_trainer import build_hf_trainer
    from lexiray.model import build_peft_model, load_tokenizer

    config = apply_sample(config_from_dict(base_raw), sample)
    tokenizer = load_tokenizer(config.model)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")

    class ReportToTune(TrainerCallback):
        trainer = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            with tempfile.TemporaryDirectory() as checkpoint_dir:
                checkpoint = None
                if control.should_save:  # the same checkpoint HF's backend hands to Tune
                    self.trainer._tune_save_checkpoint(checkpoint_dir=checkpoint_dir)
                    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir)
                tune.report({"objective": metrics["eval_loss"], "step": state.global_step}, checkpoint=checkpoint)

    with tempfile.TemporaryDirectory() as output:
        report = ReportToTune()
        trainer = build_hf_trainer(config, model, tokenizer, train_set, eval_set, output, "fp32", cuda=False,
                                   callbacks=[report])
        report.trainer = trainer
        trainer.train()


def run_hf_ray_asha(base, scratch: Path, steps: int, every: int) -> tuple[float, float, int]:
    """Ray Tune + ASHA around a plain HF Trainer, one new process per trial: what
    `Trainer.hyperparameter_search(backend="ray")` does. (That method itself fails in
    transformers 5.24 with Ray 2.60: it pickles the Trainer, which holds a weakref.)
    Returns (best eval_loss, steps trained); the caller times it from its process's launch."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from lexiray.data import prepare_data
    from lexiray.model import load_tokenizer

    prepared = prepare_data(base.data, load_tokenizer(base.model))  # once, as HF's backend does
    trainable = tune.with_parameters(_hf_ray_trial, base_raw=base.model_dump(mode="json"),
                                     train_set=prepared.train.select_columns(["input_ids", "labels"]),
                                     eval_set=prepared.eval.select_columns(["input_ids", "labels"]))
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            # lexiray's key names: Tune orders grid variants by key, and async ASHA's decisions
            # depend on the order trials arrive at a rung, so both runs must see the same order
            param_space={"training.learning_rate": tune.grid_search(LEARNING_RATES),
                         "lora.r": tune.grid_search(RANKS)},
            tune_config=tune.TuneConfig(scheduler=ASHAScheduler(
                metric="objective", mode="min", max_t=steps // every, grace_period=1,
                reduction_factor=REDUCTION_FACTOR)),
            run_config=tune.RunConfig(storage_path=str(scratch / "hf-ray-results"), verbose=0))
        grid = tuner.fit()
        loss = min(result.metrics_dataframe["objective"].min() for result in grid)
        steps = sum(int(result.metrics_dataframe["step"].max()) for result in grid)
    finally:
        ray.shutdown()
    return float(loss), steps


def run_peer_process(config_path: Path, scratch: Path, steps: int, every: int) -> tuple[float, float, int]:
    """hf-ray-asha as its own command (this script with --peer), timed from launch to exit
    like `lexiray tune`. Returns (wall s, best eval_loss, steps trained)."""
    started = time.time()
    done = subprocess.run([sys.executable, __file__, "--peer", str(config_path), "--peer-scratch", str(scratch),
                           "--steps", str(steps), "--every", str(every)],
                          check=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    wall = time.time() - started
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"hf-ray-asha trained {result['steps']} steps", flush=True)
    return wall, result["eval_loss"], result["steps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the two ASHA tuners (median wall time)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["plain", "hf-optuna", "hf-ray-asha"])
    parser.add_argument("--peer", type=Path, help=argparse.SUPPRESS)  # the hf-ray-asha process: its config
    parser.add_argument("--peer-scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--every", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.peer:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        loss, steps = run_hf_ray_asha(load_config(options.peer), options.peer_scratch, options.steps, options.every)
        print(json.dumps({"eval_loss": loss, "steps": steps}))
        return
    every = max(1, options.steps // 12)
    changes = {"training.max_steps": options.steps, "training.save_steps": every, "training.eval_steps": every,
               "training.logging_steps": every, "tune.num_samples": 1, "tune.reduction_factor": REDUCTION_FACTOR}
    search = {"training.learning_rate": {"grid": LEARNING_RATES}, "lora.r": {"grid": RANKS},
              "lora.alpha": "2 * lora.r"}
    runs: dict[str, list[tuple[float, float, int]]] = {}  # per tuner: (wall s, best eval_loss, steps trained)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        path = write_config(scratch, "bar", changes, search=search)
        base = load_config(path)
        # The two sequential peers train every config to the end: their runs hardly vary, and
        # the plain loop's best is the best of all 8 configs, the yardstick of every run.
        if "plain" not in options.skip:
            runs["plain"] = [run_plain(base)]
        if "hf-optuna" not in options.skip:
            runs["hf-optuna"] = [run_hf_optuna(base, scratch)]
        # Async ASHA's decisions depend on which trial reaches a rung first: repeat, interleaved.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        for repeat in range(options.repeats):
            tune_wall, root = run_tune(path, scratch / "results", f"bar{repeat}")
            summary = json.loads((root / "summary.json").read_text())
            runs.setdefault("lexiray", []).append((tune_wall, summary["best"]["eval_loss"],
                                                   summary["total_steps_trained"]))
            print(f"lexiray run {repeat + 1}: {tune_wall:.0f} s, trained {summary['total_steps_trained']} steps "
                  f"({summary['stopped_early']} trials stopped early)", flush=True)
            if "hf-ray-asha" not in options.skip:
                runs.setdefault("hf-ray-asha", []).append(
                    run_peer_process(path, scratch / f"r{repeat}", options.steps, every))
    configs = len(LEARNING_RATES) * len(RANKS)
    best_of_all = runs["plain"][0][1] if "plain" in runs else min(loss for r in runs.values() for _, loss, _ in r)
    print(f"{configs} configs x {options.steps} steps, evaluation every {every} steps; "
          f"best of all configs trained to the end: {best_of_all:.4f}")
    per_step = {name: median([wall / steps for wall, _, steps in results]) for name, results in runs.items()}
    for name, results in runs.items():
        gaps = [(loss - best_of_all) / best_of_all for _, loss, _ in results]
        print(f"{name:12s} wall {', '.join(f'{wall:.0f}' for wall, _, _ in results)} s (median "
              f"{median([wall for wall, _, _ in results]):.0f}); steps {', '.join(str(s) for _, _, s in results)}; "
              f"{per_step[name]:.3f} s per trained step (median); best eval_loss "
              f"{', '.join(f'{loss:.4f}' for _, loss, _ in results)} ({', '.join(f'{g:+.2%}' for g in gaps)})")
    lexiray_gaps = [(loss - best_of_all) / best_of_all for _, loss, _ in runs["lexiray"]]
    print(f"every lexiray run within 1 % of the best of all: {all(gap <= 0.01 for gap in lexiray_gaps)}")
    if "hf-ray-asha" in per_step:  # <= 1: lexiray spends no more per trained step than bare Ray Tune + ASHA
        print(f"lexiray_vs_bare_peer_seconds_per_step: {per_step['lexiray'] / per_step['hf-ray-asha']:.2f}")
    peers = {name: median([wall for wall, _, _ in results]) for name, results in runs.items() if name != "lexiray"}
    fastest = min(peers, key=peers.get)
    tune_wall = median([wall for wall, _, _ in runs["lexiray"]])
    print(f"fastest peer: {fastest}")
    print(f"tune_vs_fastest_peer_speedup: {peers[fastest] / tune_wall:.2f}")


if __name__ == "__main__":
    main()
