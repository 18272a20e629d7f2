"""The GPU check in one call (`make gpu-check`): everything lexiray wants measured on a GPU,
within 8 minutes, into one summary file.

Parts, in order, each with its own time budget (seconds, `--budget part=s` changes one) and
run in its own process (a part that overruns is killed and marked failed):
  tests     pytest -m gpu with LEXIRAY_REQUIRE_GPU=1 (a gpu test that would skip fails)     150
  gpu_step  benchmarks/gpu_step.py: samples/s, tokens/s, peak GB, MFU at batch 4 and 8,
            bf16/fp16, with and without 4-bit                                                 90
  memory    lexiray.memory's estimate against torch.cuda.max_memory_allocated for the
            training guide's four T4 rows, full-depth Qwen2.5-0.5B / 1.5B shapes with
            random weights, trained (3 steps) and evaluated (a batch of 8) by
            build_hf_trainer as a trial does: measured / estimated per row                   100
  packing   benchmarks/packing.py --gpu: padding_free / group_by_length vs padded
            non-pad tokens/s                                                                  50
  tune      one real `lexiray tune`: the smoke preset, 4 trials, ASHA (a quarter GPU each)   80
The whole check stops starting parts once its 470 s are spent (later parts: skipped).

Each part is recorded as ran (with its figures), skipped (why: no CUDA GPU, not selected,
out of time) or failed (its error line and output tail). Where torch sees no CUDA GPU the
GPU parts are skipped, saying so; `tune` runs on the CPU (it needs no GPU), and `memory`
still records the estimates it would compare against.

The summary: JSON at `--out`, by default $OUT/gpu-check-summary.json, or
./gpu-check-summary.json when OUT is unset. Ends with `gpu_check_parts_ran: <ran>/<selected>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = ("tests", "gpu_step", "memory", "packing", "tune")
BUDGET_S = {"tests": 150, "gpu_step": 90, "memory": 100, "packing": 50, "tune": 80}
TOTAL_S = 470  # make gpu-check's 8 minutes, less start-up and the summary
GPU_ONLY = {"tests", "gpu_step", "memory", "packing"}
# The training guide's T4 rows (../shared/training-guide.md, "Expected Benchmarks (T4 GPU)"):
# model, max_seq_length, batch, and the preset each row's LoRA rank and optimizer come from
# (tests/unit/test_memory.py's GUIDE_ROWS: 0.5B rows with balanced's r 16 and paged_adamw_8bit,
# 1.5B rows with quality's r 32 and paged_adamw_32bit), and the guide's memory column (GB).
GUIDE_ROWS = [
    ("Qwen/Qwen2.5-0.5B-Instruct", 512, 4, 16, "paged_adamw_8bit", "5-6"),
    ("Qwen/Qwen2.5-0.5B-Instruct", 768, 2, 16, "paged_adamw_8bit", "7-8"),
    ("Qwen/Qwen2.5-1.5B-Instruct", 512, 2, 32, "paged_adamw_32bit", "9-10"),
    ("Qwen/Qwen2.5-1.5B-Instruct", 768, 2, 32, "paged_adamw_32bit", "12-13"),
]
EVAL_BATCH = 8


def cuda_device() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def error_line(text: str) -> str:
    """The line that says what went wrong: the last error-looking line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"Error|Exception|FAILED|failed|Traceback|Killed", line):
            return line[:400]
    return lines[-1][:400] if lines else "(no output)"


def run_part_process(command: list[str], budget: float, env: dict | None = None) -> tuple[int | None, str]:
    """(exit status or None when it ran past `budget` and was killed, output tail)."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
        try:
            code = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the part and every process it started (Ray's too)
            process.wait()
            code = None
        log.seek(0)
        return code, log.read()[-3000:]


# --------------------------------------------------------------------------- the parts


def part_tests(scratch: Path, budget: float) -> dict:
    code, tail = run_part_process([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                   "tests"], budget, env={"LEXIRAY_REQUIRE_GPU": "1"})
    summary = next((line for line in reversed(tail.splitlines()) if re.search(r"\d+ (passed|failed|error)", line)),
                   None)
    return {"exit_code": code, "pytest": summary, "output_tail": tail[-1500:]}


def _benchmark_with_json(script: str, options: list[str], figures: Path, budget: float) -> dict:
    """A benchmark script that writes its figures to `--json FILE`: its exit code, output
    tail and figures."""
    code, tail = run_part_process([sys.executable, script, *options, "--json", str(figures)], budget)
    result = {"exit_code": code, "output_tail": tail[-1500:]}
    if figures.exists():
        result.update(json.loads(figures.read_text()))
    return result


def part_gpu_step(scratch: Path, budget: float) -> dict:
    return _benchmark_with_json("benchmarks/gpu_step.py", ["--steps", "10", "--warmup", "3"],
                                scratch / "gpu_step.json", budget)


def part_packing(scratch: Path, budget: float) -> dict:
    return _benchmark_with_json("benchmarks/packing.py", ["--gpu", "--rounds", "2"], scratch / "packing.json", budget)


def part_tune(scratch: Path, budget: float) -> dict:
    storage = scratch / "tune"
    gpu = ["--set", "resources.gpus_per_trial=0.25"] if cuda_device() else []  # 4 trials side by side on one GPU
    code, tail = run_part_process([sys.executable, "-m", "lexiray", "tune", "-c", "smoke", "-n", "4",
                                   "--set", "tune.scheduler=asha", *gpu, "--storage-path", str(storage),
                                   "--name", "gpu-check"], budget)
    results = list(storage.glob("gpu-check/**/result.json"))
    said = [line.strip() for line in tail.splitlines() if re.match(r"\s*(\d+ trials,|best trial )", line)]
    return {"exit_code": code, "device": "cuda (0.25 GPU per trial)" if gpu else "cpu", "trials_with_results":
            len(results), "outcome": said, "output_tail": tail[-1500:]}


def memory_estimates() -> list[dict]:
    """The four rows' settings and lexiray.memory's estimate of what torch allocates (no CUDA context)."""
    from lexiray.config import ALL_PROJECTIONS
    from lexiray.memory import estimate_peak_memory_gb, model_shape

    rows = []
    for name, seq_len, batch, r, optim, guide in GUIDE_ROWS:
        estimate = estimate_peak_memory_gb(model_shape(name), precision="fp16", lora_r=r,
                                           target_modules=ALL_PROJECTIONS, batch_size=batch, seq_len=seq_len,
                                           gradient_checkpointing=True, optim=optim, eval_batch_size=EVAL_BATCH)
        rows.append({"model": name, "seq_len": seq_len, "batch": batch, "lora_r": r, "optim": optim,
                     "eval_batch": EVAL_BATCH, "guide_gb": guide,  # the guide loaded fp32 weights, lexiray 16-bit
                     "estimate_gb": round(estimate.total_gb - estimate.cuda_context_gb, 3),
                     "estimate_train_step_gb": round(estimate.activations_gb + estimate.logits_gb, 3),
                     "estimate_eval_step_gb": round(estimate.eval_logits_gb, 3)})
    return rows


def measure_memory_row(row: dict) -> dict:
    """One guide row on the GPU: a random-weight model of the row's full shape, LoRA as the
    preset sets it, 3 training steps and one evaluation by build_hf_trainer (what a trial
    runs), peak torch.cuda.max_memory_allocated of the training steps and of the evaluation."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, TrainerCallback

    from lexiray.config import load_config
    from lexiray.hf_trainer import build_hf_trainer
    from lexiray.memory import model_shape
    from lexiray.model import choose_precision, compute_dtype, detect_hardware, load_tokenizer, lora_config

    precision = choose_precision("auto", detect_hardware())
    optim = row["optim"]
    try:
        import bitsandbytes  # noqa: F401  (the paged / 8-bit optimizers)
    except ImportError:
        optim = "adamw_torch"
    preset = "balanced" if "0.5B" in row["model"] else "quality"
    config = load_config(preset, ["search={}", "data.packing=none", f"data.max_seq_length={row['seq_len']}",
                                  f"lora.r={row['lora_r']}", f"lora.alpha={2 * row['lora_r']}",
                                  "lora.target_modules=all-linear", f"training.optim={optim}",
                                  f"training.per_device_train_batch_size={row['batch']}",
                                  f"training.per_device_eval_batch_size={row['eval_batch']}",
                                  "training.gradient_accumulation_steps=1", "training.gradient_checkpointing=true",
                                  "training.max_steps=3", "training.save_steps=3", "training.eval_steps=3",
                                  "training.dataloader_num_workers=0", "resources.gpus_per_trial=1"])
    shape = model_shape(row["model"])
    model_config = Qwen2Config(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                               num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_attention_heads,
                               num_key_value_heads=shape.num_key_value_heads, vocab_size=shape.vocab_size,
                               tie_word_embeddings=shape.tie_word_embeddings, rope_theta=1e6,
                               max_position_embeddings=32768)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # CPU: only a smoke test of this code
        base = AutoModelForCausalLM.from_config(model_config, dtype=compute_dtype(precision),
                                                attn_implementation="sdpa")
    base.config.use_cache = False
    model = get_peft_model(base, lora_config(config.lora))  # model.build_peft_model, minus the download
    generator = torch.Generator().manual_seed(0)

    def rows(count: int) -> Dataset:
        ids = torch.randint(0, shape.vocab_size, (count, row["seq_len"]), generator=generator).tolist()
        answer_from = row["seq_len"] // 2  # full-length rows (the estimate's worst case), answer on the second half
        return Dataset.from_dict({"input_ids": ids, "labels": [[-100] * answer_from + r[answer_from:] for r in ids]})

    peaks = {}

    class SplitPeaks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # before HF's evaluation of that step
            peaks["train"] = max(peaks.get("train", 0), peak())

        def on_evaluate(self, args, state, control, **kwargs):
            peaks["eval"] = max(peaks.get("eval", 0), peak())

    def peak() -> int:
        """The peak since the last call."""
        if not torch.cuda.is_available():
            return 1
        found = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return found

    tokenizer = load_tokenizer(load_config("smoke").model)  # only its pad id is used: the rows are token ids
    with tempfile.TemporaryDirectory() as output:
        trainer = build_hf_trainer(config, model, tokenizer, rows(3 * row["batch"]), rows(row["eval_batch"]), output,
                                   precision, cuda=torch.cuda.is_available(), callbacks=[SplitPeaks()])
        torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
        trainer.train()
    measured = max(peaks.values()) / 1e9
    return {"precision": precision, "optim_used": optim, "measured_train_gb": round(peaks["train"] / 1e9, 3),
            "measured_eval_gb": round(peaks["eval"] / 1e9, 3), "measured_gb": round(measured, 3),
            "ratio_measured_to_estimate": round(measured / row["estimate_gb"], 3),
            "eval_not_the_peak": peaks["eval"] <= peaks["train"]}


def part_memory(scratch: Path, budget: float) -> dict:
    """Each row in its own process (a fresh allocator; a row that fails leaves the others)."""
    rows = memory_estimates()
    deadline = time.time() + budget
    for index, row in enumerate(rows):
        left = deadline - time.time()
        if left < 10:
            row["skipped"] = "out of the part's time"
            continue
        result_file = scratch / f"memory-{index}.json"
        code, tail = run_part_process([sys.executable, __file__, "--memory-row", str(index),
                                       "--result", str(result_file)], left)
        if code == 0 and result_file.exists():
            row.update(json.loads(result_file.read_text()))
        else:
            row["failed"] = "timed out" if code is None else error_line(tail)
    failed = [row for row in rows if "failed" in row]
    return {"rows": rows, **({"error": f"{len(failed)} of {len(rows)} rows failed: {failed[0]['failed']}"}
                             if failed else {})}


RUNNERS = {"tests": part_tests, "gpu_step": part_gpu_step, "memory": part_memory, "packing": part_packing,
           "tune": part_tune}


def run_check(selected: list[str], budgets: dict, out: Path) -> dict:
    started = time.time()
    device = cuda_device()
    summary = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "gpu": device,
               "python": platform.python_version(), "versions": versions(), "total_budget_s": TOTAL_S, "parts": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for part in PARTS:
            entry = {"budget_s": budgets[part]}
            left = TOTAL_S - (time.time() - started)
            if part not in selected:
                entry.update(status="skipped", reason="not selected (--only)")
            elif part in GPU_ONLY and device is None:
                entry.update(status="skipped", reason="no CUDA GPU: torch.cuda.is_available() is False here "
                             f"(torch {summary['versions'].get('torch')}); this part measures the GPU")
                if part == "memory":
                    entry["estimates"] = memory_estimates()
                if part == "tests":
                    entry["reason"] += (": with LEXIRAY_REQUIRE_GPU=1 every gpu test would fail by design "
                                        "(without it they skip, as in make test)")
            elif left < 15:
                entry.update(status="skipped", reason=f"out of time: {TOTAL_S} s for the whole check were spent")
            else:
                began = time.time()
                try:
                    details = RUNNERS[part](Path(scratch), min(budgets[part], left))
                except Exception as error:  # a broken part never takes the summary down with it
                    details = {"error": f"{type(error).__name__}: {error}"}
                entry["seconds"] = round(time.time() - began, 1)
                code = details.get("exit_code", 0)
                if code is None:
                    entry.update(status="failed", error=f"timed out after {entry['budget_s']} s (killed)")
                elif code != 0:
                    entry.update(status="failed", error=error_line(details.get("output_tail", "")))
                elif "error" in details:
                    entry.update(status="failed", error=details.pop("error"))
                else:
                    entry["status"] = "ran"
                entry.update(details)
            summary["parts"][part] = entry
            out.write_text(json.dumps(summary, indent=1))  # a check killed later still leaves what it had
            print(f"{part:9s} {entry['status']:8s} {entry.get('reason') or entry.get('error') or ''}".rstrip(),
                  flush=True)
    summary["seconds"] = round(time.time() - started, 1)
    out.write_text(json.dumps(summary, indent=1))
    return summary


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "ray", "datasets", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def default_out() -> Path:
    name = "gpu-check-summary.json"
    return Path(os.environ["OUT"]) / name if os.environ.get("OUT") else Path(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="summary file (default: $OUT/gpu-check-summary.json, "
                        "else ./gpu-check-summary.json)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    parser.add_argument("--budget", action="append", default=[], metavar="PART=S", help="a part's time budget")
    parser.add_argument("--memory-row", type=int, help=argparse.SUPPRESS)  # the memory part's child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.memory_row is not None:
        row = memory_estimates()[options.memory_row]
        options.result.write_text(json.dumps(measure_memory_row(row)))
        return
    selected = [part.strip() for part in options.only.split(",") if part.strip()]
    unknown = sorted(set(selected) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    budgets = dict(BUDGET_S)
    for item in options.budget:
        part, _, seconds = item.partition("=")
        if part not in PARTS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--budget {item}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        budgets[part] = float(seconds)
    out = options.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = run_check(selected, budgets, out)
    ran = sum(entry["status"] == "ran" for entry in summary["parts"].values())
    print(f"summary: {out}")
    print(f"gpu_check_parts_ran: {ran}/{len(selected)}")


if __name__ == "__main__":
    main()
