"""Non-pad tokens per second of each `data.packing` mode against plain padding, side by side.

The embedded default (tiny model, bundled LexiLingo sample) trained by the same HF Trainer
(`build_hf_trainer`) for the same steps and batch in each mode: `none` pads every batch to
its longest row, `group_by_length` batches rows of similar length, `padding_free`
concatenates a batch's rows into one unpadded row (attention: lexiray_packed_sdpa, sdpa per
sample). The modes run in alternating order
(none, group_by_length, padding_free, then backwards, ...) so a change in machine load
hits them alike; each mode's rate is its non-pad tokens over its training-step seconds.
Target: padding_free >= 1.5x the non-pad tokens/s of `none`.

`--gpu` trains on the CUDA GPU in its 16-bit precision (lexiray's `auto` choice) instead of
fp32 on the CPU; `--json PATH` also writes the figures there (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from lexiray.config import load_config
from lexiray.data import prepare_data
from lexiray.hf_trainer import ThroughputMeter, build_hf_trainer
from lexiray.model import build_peft_model, load_tokenizer

MODES = ("none", "group_by_length", "padding_free")


def train_once(mode: str, options, tokenizer, prepared) -> dict:
    overrides = ["search={}", f"data.packing={mode}", f"training.max_steps={options.steps}",
                 f"training.per_device_train_batch_size={options.batch}",
                 f"training.save_steps={options.steps}", f"training.eval_steps={options.steps}"]
    config = load_config("smoke", overrides)
    torch.manual_seed(0)
    model = build_peft_model(config.model, config.lora, config.training, options.precision)
    throughput = ThroughputMeter()
    with tempfile.TemporaryDirectory() as output:
        trainer = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, output, options.precision,
                                   cuda=options.gpu, callbacks=[throughput])
        trainer.train()
        eval_loss = trainer.evaluate()["eval_loss"]
    return {"tokens": trainer.state.num_input_tokens_seen, "seconds": throughput.train_seconds,
            "steps": trainer.state.global_step, "eval_loss": eval_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="samples per step (per_device_train_batch_size)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, in alternating order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="train on the CUDA GPU (16-bit) instead of the CPU")
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()
    options.precision = "fp32"
    if options.gpu:
        from lexiray.model import choose_precision, detect_hardware

        hardware = detect_hardware()
        if not hardware.cuda:
            parser.error("--gpu: torch sees no CUDA GPU here")
        options.precision = choose_precision("auto", hardware)
    torch.set_num_threads(options.threads)
    tokenizer = load_tokenizer(load_config("smoke").model)
    prepared = prepare_data(load_config("smoke").data, tokenizer)
    totals = {mode: {"tokens": 0, "seconds": 0.0, "steps": 0} for mode in MODES}
    eval_losses = {}
    started = time.time()
    for round_index in range(options.rounds):
        for mode in MODES if round_index % 2 == 0 else reversed(MODES):
            run = train_once(mode, options, tokenizer, prepared)
            for key in ("tokens", "seconds", "steps"):
                totals[mode][key] += run[key]
            eval_losses[mode] = run["eval_loss"]
    rates = {mode: total["tokens"] / total["seconds"] for mode, total in totals.items()}
    where = f"CUDA GPU, {options.precision}" if options.gpu else f"{options.threads} thread(s)"
    print(f"tiny model, bundled sample, {options.steps} steps x {options.batch} samples, {options.rounds} rounds, "
          f"{where}, {time.time() - started:.0f} s")
    for mode in MODES:
        total = totals[mode]
        print(f"  {mode:16s} {rates[mode]:8.0f} non-pad tokens/s  {total['steps'] / total['seconds']:.2f} steps/s  "
              f"ratio {rates[mode] / rates['none']:.3f}  eval_loss {eval_losses[mode]:.4f}")
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"device": "cuda" if options.gpu else "cpu", "precision": options.precision,
                       "non_pad_tokens_per_second": rates, "eval_loss": eval_losses,
                       "packing_speedup": rates["padding_free"] / rates["none"],
                       "group_by_length_speedup": rates["group_by_length"] / rates["none"]}, file, indent=1)
    print(f"group_by_length_speedup: {rates['group_by_length'] / rates['none']:.3f}")
    print(f"packing_speedup: {rates['padding_free'] / rates['none']:.3f}")


if __name__ == "__main__":
    main()
