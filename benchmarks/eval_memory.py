"""Peak memory of one evaluation step: HF's loss from the batch's full logits against lexiray's
chunked one (hf_trainer.answer_token_losses), side by side on a real-width model.

A Qwen2.5-0.5B-shaped model (hidden 896, MLP 4864, 14 heads / 2 KV heads, the 151936-token
vocabulary, tied embeddings) with 2 layers and random weights, built in-process, LoRA r=16
on every projection (the PEFT wrapper a trial evaluates through), fp32 on the CPU. One eval
batch of 8 rows x 384 tokens, the answer (labels != -100) on the last half of each row. Each
path runs in its own fresh process (freed memory stays resident in the allocator, so the
second path in one process would measure the first's), under torch.no_grad as in HF's
evaluation: the step's peak is VmHWM (reset by writing 5 to /proc/self/clear_refs just
before it) minus the resident memory before it. Also printed: lexiray.memory's estimate of
each path at fp32 (the old one's logits x 10 bytes per vocabulary entry, and the new
`eval_step_bytes`), and both losses (they must agree).

Ends with `eval_peak_ratio: <new step peak / old step peak>`. Target: well under 1 (the
estimate says ~0.1 at this shape).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def _build(layers: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                         vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6, num_hidden_layers=layers,
                         max_position_embeddings=32768)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, lora).eval()


def measure(path: str, batch: int, seq: int, layers: int, threads: int) -> dict:
    """One path's step in this process: {loss, step_peak_mb, process_peak_mb, seconds}."""
    import torch

    from lexiray.hf_trainer import answer_token_losses, decoder_and_head

    torch.set_num_threads(threads)
    model = _build(layers)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 151936, (batch, seq), generator=generator)
    labels = ids.clone()
    labels[:, : seq // 2] = -100  # the prompt half
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():  # warm-up on one short row: kernels and lazy buffers, not the measured tensors
        model(input_ids=ids[:1, :8], labels=labels[:1, :8])
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    with torch.no_grad():
        if path == "old":
            loss = model(**inputs).loss.item()  # what HF's compute_loss ran: the logits of every position
        else:
            sums, counts = answer_token_losses(*decoder_and_head(model), inputs)
            loss = (sums.sum() / counts.sum()).item()
    seconds = time.perf_counter() - started
    peak = _status_kb("VmHWM")
    return {"loss": loss, "step_peak_mb": (peak - before) / 1024, "process_peak_mb": peak / 1024,
            "seconds": seconds}


def estimates_mb(batch: int, seq: int, layers: int) -> dict:
    from lexiray.memory import QWEN25_0_5B, eval_step_bytes, logits_bytes_per_token

    shape = QWEN25_0_5B.__class__(**{**QWEN25_0_5B.__dict__, "num_layers": layers})
    tokens = batch * seq
    return {"old": tokens * logits_bytes_per_token(shape, 4, training=False) / 2**20,
            "new": eval_step_bytes(shape, 4, tokens) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(measure(options.child, options.batch, options.seq, options.layers, options.threads)))
        return
    started = time.time()
    runs = {}
    for path in ("new", "old"):
        output = subprocess.run([sys.executable, __file__, "--child", path, "--batch", str(options.batch),
                                 "--seq", str(options.seq), "--layers", str(options.layers),
                                 "--threads", str(options.threads)],
                                check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout
        runs[path] = json.loads(output.strip().splitlines()[-1])
    estimate = estimates_mb(options.batch, options.seq, options.layers)
    print(f"Qwen2.5-0.5B-shaped, {options.layers} layers, random weights + LoRA r=16, fp32 CPU, eval batch "
          f"{options.batch} x {options.seq} (answer: last half), {options.threads} threads, "
          f"{time.time() - started:.0f} s")
    for path, label in (("old", "full logits (HF)"), ("new", "chunked (lexiray)")):
        run = runs[path]
        print(f"  {label:18s} step peak {run['step_peak_mb']:7.0f} MB (estimate {estimate[path]:6.0f} MB)  "
              f"process peak {run['process_peak_mb']:7.0f} MB  {run['seconds']:5.1f} s  loss {run['loss']:.6f}")
    print(f"  loss difference (relative): {abs(runs['new']['loss'] / runs['old']['loss'] - 1):.2e}")
    print(f"  process peak ratio (new/old): {runs['new']['process_peak_mb'] / runs['old']['process_peak_mb']:.3f}")
    print(f"eval_peak_ratio: {runs['new']['step_peak_mb'] / runs['old']['step_peak_mb']:.3f}")


if __name__ == "__main__":
    main()
