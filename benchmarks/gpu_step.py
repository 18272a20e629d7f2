"""GPU only: training-step speed of a Qwen2.5-0.5B-shaped LoRA model, the MFU figure of the bar.

A model with random weights built from the published Qwen2.5-0.5B shape (lexiray.memory
knows it: nothing is downloaded), LoRA r=16 on all seven projections, sequences of 512
tokens, micro-batches of 4 and 8, in fp16 and bf16 (where the GPU has it), with and without
4-bit base weights (bitsandbytes). Each case: warm-up steps, then timed optimizer steps
(forward, backward, AdamW) with CUDA synchronised around the timing. Prints samples/s,
tokens/s, peak GB (torch's max_memory_allocated) and MFU (lexiray.memory's LoRA-aware FLOPs
per token over the GPU's dense 16-bit peak), and ends with `gpu_mfu_batch8: <MFU of the best
batch-8 case>`. Target: >= 0.45 on an H100/H200-class GPU.

On a machine without a CUDA GPU it says so and exits 0. `--json PATH` also writes every
case's figures there (benchmarks/gpu_check.py reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN = 512
LORA_R = 16


def build_model(dtype, four_bit: bool, folder: str):
    """The random 0.5B-shaped model (saved once to `folder`, then loaded: 4-bit loading
    quantizes through from_pretrained), with LoRA adapters, on the GPU."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype, "device_map": {"": 0}, "attn_implementation": "sdpa"}
    if four_bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model.config.use_cache = False
    lora = LoraConfig(r=LORA_R, lora_alpha=2 * LORA_R, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    for parameter in model.parameters():  # adapters in fp32, as the HF Trainer keeps trainable weights
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    torch.cuda.synchronize()
    return model


def save_random_model(folder: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from lexiray.memory import QWEN25_0_5B as shape

    config = Qwen2Config(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
                         num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_attention_heads,
                         num_key_value_heads=shape.num_key_value_heads, vocab_size=shape.vocab_size,
                         tie_word_embeddings=shape.tie_word_embeddings, max_position_embeddings=32768)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)


def time_steps(model, batch: int, dtype, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per optimizer step, peak GB) of forward + backward + AdamW at `batch` x SEQ_LEN."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    ids = torch.randint(0, model.config.vocab_size, (batch, SEQ_LEN), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps, torch.cuda.max_memory_allocated() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="also write every case's figures to this file")
    options = parser.parse_args()
    cases = []
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU here: this benchmark measures GPU training steps only (run it where one is)")
        print("gpu_mfu_batch8: n/a")
        sys.exit(0)
    from lexiray.config import ALL_PROJECTIONS
    from lexiray.memory import QWEN25_0_5B, flops_per_token, mfu, peak_flops

    name = torch.cuda.get_device_name(0)
    per_token = flops_per_token(QWEN25_0_5B, LORA_R, ALL_PROJECTIONS, SEQ_LEN)
    precisions = [("bf16", torch.bfloat16)] if torch.cuda.is_bf16_supported() else []
    precisions.append(("fp16", torch.float16))
    print(f"GPU: {name}; Qwen2.5-0.5B shape, LoRA r={LORA_R} on all projections, seq {SEQ_LEN}; "
          f"{per_token / 1e9:.2f} GFLOP per token")
    best_batch8 = None
    with tempfile.TemporaryDirectory() as folder:
        save_random_model(folder)
        for label, dtype in precisions:
            for four_bit in (False, True):
                try:
                    model = build_model(dtype, four_bit, folder)
                except Exception as error:  # e.g. bitsandbytes without this GPU's kernels
                    print(f"{label} {'4-bit' if four_bit else '16-bit'}: skipped ({type(error).__name__}: {error})")
                    cases.append({"precision": label, "four_bit": four_bit,
                                  "skipped": f"{type(error).__name__}: {error}"})
                    continue
                for batch in (4, 8):
                    seconds, peak_gb = time_steps(model, batch, dtype, options.steps, options.warmup)
                    tokens = batch * SEQ_LEN / seconds
                    utilization = mfu(tokens, per_token, peak_flops(name, label))
                    shown = "n/a" if utilization is None else f"{utilization:.1%}"
                    print(f"{label} {'4-bit' if four_bit else '16-bit'} batch {batch}: "
                          f"{batch / seconds:7.1f} samples/s, "
                          f"{tokens:9.0f} tokens/s, peak {peak_gb:5.2f} GB, MFU {shown}")
                    cases.append({"precision": label, "four_bit": four_bit, "batch": batch,
                                  "samples_per_second": batch / seconds, "tokens_per_second": tokens,
                                  "peak_gb": peak_gb, "mfu": utilization})
                    if batch == 8 and utilization is not None and not four_bit:
                        best_batch8 = max(best_batch8 or 0.0, utilization)
                del model
                torch.cuda.empty_cache()
    if options.json:
        Path(options.json).write_text(json.dumps({"gpu": name, "seq_len": SEQ_LEN, "lora_r": LORA_R, "cases": cases,
                                                  "gpu_mfu_batch8": best_batch8}, indent=1))
    print(f"gpu_mfu_batch8: {'n/a' if best_batch8 is None else f'{best_batch8:.3f}'}")


if __name__ == "__main__":
    main()
