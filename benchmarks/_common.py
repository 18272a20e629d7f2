"""Shared helpers of the benchmarks: a config file for the CLI and the plain HF baseline."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lexiray.config import SEARCH_SPACES_DIR, read_yaml


def write_config(folder: Path, name: str, changes: dict, search: dict | None = None) -> Path:
    """smoke.yaml with dotted-key changes and a replacement search block."""
    raw = read_yaml(SEARCH_SPACES_DIR / "smoke.yaml")
    for key, value in changes.items():
        section, field = key.split(".", 1)
        raw.setdefault(section, {})[field] = value
    if search is not None:
        raw["search"] = search
    # The benchmarks time tuning against tuners that generate nothing: no task scores after it
    # (lexiray.scoring), unless a benchmark asks for them.
    raw.setdefault("tune", {}).setdefault("score_top_k", 0)
    raw["name"] = name
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_tune(config_path: Path, storage: Path, name: str, extra: list[str] | None = None) -> tuple[float, Path]:
    started = time.time()
    subprocess.run([sys.executable, "-m", "lexiray", "tune", "-c", str(config_path), "--storage-path", str(storage),
                    "--name", name, *(extra or [])], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL)
    return time.time() - started, storage / name


def trial_results(root: Path) -> dict[str, list[dict]]:
    results = {}
    for folder in sorted(root.glob("trial_*")):
        lines = (folder / "result.json").read_text().splitlines()
        results[folder.name] = [json.loads(line) for line in lines if line.strip()]
    return results


def plain_hf_run(config, threads: int, started_at: float | None = None) -> dict:
    """The same trial as a plain script: HF Trainer + PEFT in this process, no Ray.
    `started_at`: when the process was launched, so startup_s includes its imports."""
    import torch

    from lexiray.data import prepare_data
    from lexiray.hf_trainer import EvaluateAndSaveAtLastStep, ThroughputMeter, build_hf_trainer
    from lexiray.model import build_peft_model, load_tokenizer

    torch.set_num_threads(threads)
    started = time.time()
    started_at = started if started_at is None else started_at
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_data(config.data, tokenizer)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    throughput = ThroughputMeter(started_at)
    with tempfile.TemporaryDirectory() as output:
        trainer = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, output, "fp32",
                                   cuda=False, callbacks=[throughput, EvaluateAndSaveAtLastStep()])
        trainer.train()
        metrics = throughput.metrics(trainer.args, trainer.state)
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
    metrics["wall_s"] = time.time() - started
    return metrics


def median(values):
    return statistics.median(values) if values else float("nan")


def plain_hf_process(config_path: Path, threads: int) -> dict:
    """plain_hf_run in a fresh Python process: its startup_s counts from the launch, imports included."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.time()
    output = subprocess.run([sys.executable, __file__, str(config_path), str(threads), repr(launched)],
                            check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads(output.strip().splitlines()[-1])
    # the whole process's CPU-seconds: imports, model, data, training, evaluation
    metrics["cpu_s"] = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return metrics


if __name__ == "__main__":  # the plain script of plain_hf_process
    from lexiray.config import load_config

    print(json.dumps(plain_hf_run(load_config(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))))
