"""Pre-flight arithmetic: a model's shape, the peak GPU memory of a LoRA / QLoRA training
run, the FLOPs of one trained token (for MFU), the GPU memory a trial may use, and the
configurations `lexiray plan` checks.

Everything here is arithmetic on a model's config.json numbers: nothing is loaded or
downloaded, so `lexiray plan` and the trial driver's over-budget check run anywhere, offline.
The estimates model Llama / Qwen2-style decoders (q/k/v/o + gated MLP, RMSNorm, SDPA).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from lexiray.config import ALL_PROJECTIONS, ExperimentConfig, apply_sample
from lexiray.cost import hourly_rate, usd
from lexiray.errors import LexirayError
from lexiray.space import describe_sample
from lexiray.tiny import TINY_SETTINGS, is_tiny

log = logging.getLogger(__name__)

GB = 1e9  # decimal, as nvidia-smi and the guide's table count
CUDA_CONTEXT_GB = 0.5  # CUDA runtime, cuBLAS / cuDNN workspaces: memory nvidia-smi shows that torch does not
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
# Answer positions whose logits an evaluation step holds at once (hf_trainer.answer_token_losses):
# 256 x a 151936-token vocabulary = 0.39 GB of logits and loss tensors, less than a training
# step of one 256-token row (12 bytes per vocabulary entry there, 10 here).
EVAL_LOSS_CHUNK_TOKENS = 256


# --------------------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class ModelShape:
    """The config.json numbers the estimates need."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    head_dim: int

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by PEFT module name."""
        hidden, inner = self.hidden_size, self.intermediate_size
        attention, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q_proj": (hidden, attention), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
                "o_proj": (attention, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
                "down_proj": (inner, hidden)}

    @property
    def layer_matmul_parameters(self) -> int:
        return sum(d_in * d_out for d_in, d_out in self.projections().values())

    @property
    def parameters(self) -> int:
        """All weights: embeddings (+ an untied lm_head), projections, q/k/v biases, norms."""
        _, kv = self.projections()["k_proj"]
        attention = self.num_attention_heads * self.head_dim
        per_layer = self.layer_matmul_parameters + attention + 2 * kv + 2 * self.hidden_size
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embeddings + self.hidden_size


def _qwen25(hidden: int, intermediate: int, layers: int, heads: int) -> ModelShape:
    return ModelShape(hidden, intermediate, layers, heads, num_key_value_heads=2, vocab_size=151936,
                      tie_word_embeddings=True, head_dim=hidden // heads)


# The presets' models, from their published config.json (base and Instruct share it), so
# planning them needs no network and no cache.
QWEN25_0_5B = _qwen25(896, 4864, 24, 14)
QWEN25_1_5B = _qwen25(1536, 8960, 28, 12)
QWEN25_3B = _qwen25(2048, 11008, 36, 16)
KNOWN_SHAPES = {f"Qwen/Qwen2.5-{size}{suffix}": shape
                for size, shape in (("0.5B", QWEN25_0_5B), ("1.5B", QWEN25_1_5B), ("3B", QWEN25_3B))
                for suffix in ("", "-Instruct")}


def shape_from_config(values: dict, source: str) -> ModelShape:
    """A ModelShape from config.json's keys (a dict, e.g. a transformers config's to_dict())."""
    try:
        hidden, heads = int(values["hidden_size"]), int(values["num_attention_heads"])
        return ModelShape(
            hidden_size=hidden,
            intermediate_size=int(values["intermediate_size"]),
            num_layers=int(values["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(values.get("num_key_value_heads") or heads),
            vocab_size=int(values["vocab_size"]),
            tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
            head_dim=int(values.get("head_dim") or hidden // heads),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise LexirayError(f"{source}: lacks {error} or it is not a number: lexiray estimates Llama / Qwen2-style "
                           "decoders (hidden_size, intermediate_size, num_hidden_layers, ...)") from None


def _cached_config_json(name: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid repo id (huggingface_hub's validation error is a ValueError)
        return None
    return found if isinstance(found, str) else None


def model_shape(name: str, revision: str | None = None) -> ModelShape:
    """The shape of `model.name`, offline: the tiny model's settings, the presets' models,
    a local folder's config.json, or the Hugging Face cache's copy of it."""
    if is_tiny(name):
        settings = TINY_SETTINGS
        return ModelShape(settings["hidden_size"], settings["intermediate_size"], settings["num_hidden_layers"],
                          settings["num_attention_heads"], settings["num_key_value_heads"], settings["vocab_size"],
                          tie_word_embeddings=True, head_dim=settings["hidden_size"] // settings["num_attention_heads"])
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    local = Path(name).expanduser() / "config.json"
    path = str(local) if local.is_file() else _cached_config_json(name, revision)
    if path is None:
        raise LexirayError(f"model.name {name}: its config.json is neither in a local folder nor in the Hugging Face "
                           "cache; give a local model path, or load the model once online to warm the cache")
    return shape_from_config(json.loads(Path(path).read_text(encoding="utf-8")), path)


def adapted_projections(shape: ModelShape, target_modules) -> dict[str, tuple[int, int]]:
    """The projections LoRA adapts ('all-linear': every one; lm_head is never adapted)."""
    wanted = ALL_PROJECTIONS if target_modules == "all-linear" else list(target_modules)
    return {name: size for name, size in shape.projections().items() if name in wanted}


def lora_parameters(shape: ModelShape, lora_r: int, target_modules) -> int:
    """A (in x r) and B (r x out) of every adapted projection of every layer."""
    return shape.num_layers * sum(lora_r * (d_in + d_out) for d_in, d_out in
                                  adapted_projections(shape, target_modules).values())


# --------------------------------------------------------------------------- peak memory


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one training process, in GB, by what holds it."""

    weights_gb: float  # the frozen base model
    lora_gb: float  # adapter weights, their gradients and the optimizer's state
    activations_gb: float  # what the backward pass keeps of the decoder layers
    logits_gb: float  # the training step's logits and cross-entropy tensors
    eval_logits_gb: float  # an evaluation step: its hidden states and one chunk's logits (no gradients)
    cuda_context_gb: float

    @property
    def total_gb(self) -> float:
        # A training step and an evaluation step never overlap: the larger one sets the peak.
        step = max(self.activations_gb + self.logits_gb, self.eval_logits_gb)
        return self.weights_gb + self.lora_gb + self.cuda_context_gb + step


def optimizer_state_bytes(optim: str) -> float:
    """Optimizer state per trainable parameter: AdamW keeps two fp32 moments, the bitsandbytes
    8-bit variants two 8-bit ones. Paged variants hold the same amount, in memory that can
    spill to the CPU when the GPU runs short: counted in full here."""
    if "8bit" in optim:
        return 2.0
    if optim.startswith("sgd"):
        return 0.0
    return 8.0


def frozen_weights_bytes(shape: ModelShape, quantization: str, weight_bytes: int) -> float:
    """Full precision: every weight at `weight_bytes`. 4-/8-bit: bitsandbytes quantizes the
    decoder's projections (nf4 with double quantization: 4 bits + ~0.13 bit of block
    constants; int8: one byte) and PEFT's prepare_model_for_kbit_training casts the rest
    (embeddings / lm_head, norms, biases) to fp32. With Qwen's 151936-token vocabulary that
    fp32 embedding is most of a QLoRA model's weights at 0.5B."""
    if quantization == "none":
        return shape.parameters * weight_bytes
    quantized = shape.num_layers * shape.layer_matmul_parameters
    per_weight = 0.52 if quantization == "4bit" else 1.0
    return quantized * per_weight + (shape.parameters - quantized) * 4


def activation_bytes_per_token(shape: ModelShape, compute_bytes: int, target_modules) -> float:
    """What autograd saves for the backward pass in one decoder layer, per token (SDPA:
    no seq x seq attention matrix is kept):
    - two RMSNorms: each keeps its input upcast to fp32 (4 x hidden),
    - attention: the norm's output, q and k after RoPE, v, the attention output and its
      reshaped copy fed to o_proj (4 x hidden + 2 x kv width, at compute precision),
    - MLP: the norm's output, gate, up, SiLU(gate) and the product fed to down_proj
      (hidden + 4 x intermediate),
    - each LoRA adapter: its own copy of its input (PEFT casts it to the adapter's dtype and
      dropout makes a new tensor)."""
    _, kv = shape.projections()["k_proj"]
    base = compute_bytes * (5 * shape.hidden_size + 2 * kv + 4 * shape.intermediate_size) + 8 * shape.hidden_size
    adapters = compute_bytes * sum(d_in for d_in, _ in adapted_projections(shape, target_modules).values())
    return base + adapters


def logits_bytes_per_token(shape: ModelShape, compute_bytes: int, training: bool) -> float:
    """The vocabulary-sized tensors of the loss, per token. transformers' ForCausalLMLoss
    upcasts the logits to fp32 and cross-entropy keeps its fp32 log-softmax for the backward.
    Forward: logits (compute precision) + fp32 copy + log-softmax. Backward (the peak of a
    training step): log-softmax + its gradient + the gradient of the fp32 logits = 12 bytes."""
    if training:
        return 12.0 * shape.vocab_size
    upcast = 4 if compute_bytes < 4 else 0  # .float() of fp32 logits is the same tensor
    return (compute_bytes + upcast + 4) * shape.vocab_size


def eval_step_bytes(shape: ModelShape, compute_bytes: int, eval_tokens: int) -> float:
    """An evaluation step (hf_trainer.answer_token_losses): a forward pass without gradients,
    whose largest moment in a decoder layer holds per token the residual, the norm's output,
    LoRA's dropout copy and the final hidden states (4 x hidden) and the MLP's gate, up, their
    product and a LoRA B output (4 x intermediate); then lm_head and the cross-entropy over
    EVAL_LOSS_CHUNK_TOKENS answer positions at a time (not the batch's logits)."""
    hidden = eval_tokens * compute_bytes * (4 * shape.hidden_size + 4 * shape.intermediate_size)
    chunk = min(eval_tokens, EVAL_LOSS_CHUNK_TOKENS) * logits_bytes_per_token(shape, compute_bytes, training=False)
    return hidden + chunk


def estimate_peak_memory_gb(shape: ModelShape, *, quantization: str = "none", precision: str = "fp16",
                            lora_r: int, target_modules, batch_size: int, seq_len: int,
                            gradient_checkpointing: bool = True, optim: str = "adamw_torch",
                            eval_batch_size: int = 0, weight_precision: str | None = None,
                            on_gpu: bool = True) -> MemoryEstimate:
    """Peak memory of a LoRA / QLoRA training process, for batches of `batch_size` rows of
    `seq_len` tokens (the collator pads to the longest row: full-length rows are the worst
    case). `precision` is the compute precision; the frozen weights are stored in it (as
    lexiray loads them) unless `weight_precision` says otherwise (fp16 autocast over fp32
    weights, transformers 4's default load). `eval_batch_size` > 0 counts evaluation steps."""
    compute_bytes = PRECISION_BYTES[precision]
    weights = frozen_weights_bytes(shape, quantization, PRECISION_BYTES[weight_precision or precision])
    # Adapters train in fp32 (PEFT upcasts them): weight + gradient + optimizer state.
    lora = lora_parameters(shape, lora_r, target_modules) * (4 + 4 + optimizer_state_bytes(optim))
    tokens = batch_size * seq_len
    per_layer = activation_bytes_per_token(shape, compute_bytes, target_modules)
    if gradient_checkpointing:
        # Each layer keeps only its input; the backward recomputes one layer at a time.
        activations = tokens * (shape.num_layers * compute_bytes * shape.hidden_size + per_layer)
    else:
        activations = tokens * shape.num_layers * per_layer
    logits = tokens * logits_bytes_per_token(shape, compute_bytes, training=True)
    eval_logits = eval_step_bytes(shape, compute_bytes, eval_batch_size * seq_len) if eval_batch_size > 0 else 0.0
    return MemoryEstimate(weights / GB, lora / GB, activations / GB, logits / GB, eval_logits / GB,
                          CUDA_CONTEXT_GB if on_gpu else 0.0)


def estimate_for_config(config: ExperimentConfig, shape: ModelShape) -> MemoryEstimate:
    """The estimate for a trial's resolved config. A GPU trial's `auto` precision is fp16 or
    bf16 (2 bytes either way); a CPU trial trains in fp32."""
    on_gpu = config.resources.gpus_per_trial > 0
    precision = config.training.precision
    if precision == "auto":
        precision = "fp16" if on_gpu else "fp32"
    training = config.training
    return estimate_peak_memory_gb(
        shape, quantization=config.model.quantization, precision=precision, lora_r=config.lora.r,
        target_modules=config.lora.target_modules, batch_size=training.per_device_train_batch_size,
        seq_len=config.data.max_seq_length, gradient_checkpointing=training.gradient_checkpointing,
        optim=training.optim, eval_batch_size=training.per_device_eval_batch_size, on_gpu=on_gpu)


# --------------------------------------------------------------------------- FLOPs and MFU


def flops_per_token(shape: ModelShape, lora_r: int, target_modules, seq_len: int) -> float:
    """Model FLOPs of one trained token under LoRA (PaLM's MFU convention: a multiply-add is
    2 FLOPs, recomputation by gradient checkpointing is not counted, attention is counted
    over the whole sequence):
    - frozen matmuls (N = the projections of every layer + lm_head): forward 2N, backward 2N
      for the activation gradients only: frozen weights get no weight gradient (a full
      fine-tune would spend another 2N there, its familiar 6N);
    - attention scores (QK^T and AV, no weights): forward 4 x layers x seq x attention
      width, backward twice that;
    - LoRA adapters (P parameters): trained in full, 6P."""
    frozen = shape.num_layers * shape.layer_matmul_parameters + shape.vocab_size * shape.hidden_size
    attention = 12 * shape.num_layers * seq_len * shape.num_attention_heads * shape.head_dim
    return 4 * frozen + attention + 6 * lora_parameters(shape, lora_r, target_modules)


# Dense fp16 / bf16 tensor-core peaks (FLOP/s), matched by a substring of the CUDA device
# name, e.g. "Tesla T4", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3".
HALF_PRECISION_PEAK_FLOPS = {"T4": 65e12, "A100": 312e12, "H100": 989e12, "H200": 989e12}


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's peak for 16-bit training; None on CPU, in fp32, or for a GPU not in the
    table (MFU is then reported as n/a, never guessed)."""
    if precision not in ("fp16", "bf16"):
        return None
    return next((peak for key, peak in HALF_PRECISION_PEAK_FLOPS.items() if key in (device_name or "")), None)


def mfu(tokens_per_second: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: the FLOPs the tokens needed over what the devices could do."""
    return None if not peak else tokens_per_second * flops_per_token / peak


def mfu_inputs(config: ExperimentConfig, model_config: dict, device_name: str, precision: str) -> dict:
    """`ThroughputMeter`'s flops_per_token and peak_flops for a loaded model (its config
    as a dict); empty when MFU cannot be known (CPU, fp32, an unknown GPU)."""
    peak = peak_flops(device_name, precision)
    if peak is None:
        return {}
    try:
        shape = shape_from_config(model_config, config.model.name)
    except LexirayError as error:  # a metric is never worth failing a training run for
        log.warning("no MFU: %s", error)
        return {}
    return {"flops_per_token": flops_per_token(shape, config.lora.r, config.lora.target_modules,
                                               config.data.max_seq_length), "peak_flops": peak}


# --------------------------------------------------------------------------- the memory budget

# Memory of one GPU (GB) by Ray's accelerator type names (resources.accelerator_type).
ACCELERATOR_MEMORY_GB = {"T4": 16, "L4": 24, "A10G": 24, "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141}


def _cluster_gpu_memory_gb() -> float | None:
    """The smallest GPU of a Ray cluster this process is connected to (a trial's driver),
    when every GPU type it reports is in the table. Ray is asked only when already imported
    and initialized: importing it costs `lexiray plan` a second for nothing."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    types = [key.split(":", 1)[1] for key in ray.cluster_resources() if key.startswith("accelerator_type:")]
    sizes = [ACCELERATOR_MEMORY_GB.get(kind.upper()) for kind in types]
    return min(sizes) if sizes and None not in sizes else None


def _local_gpu_memory_gb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())) / GB


def gpu_memory_budget_gb(config: ExperimentConfig) -> float | None:
    """GPU memory one trial may use: resources.gpu_memory_gb when set; else its GPU's memory
    (from resources.accelerator_type, the Ray cluster's GPU types, or the GPUs torch sees
    here), shared when trials split a GPU (gpus_per_trial < 1); None for CPU trials."""
    resources = config.resources
    if resources.gpu_memory_gb is not None:
        return resources.gpu_memory_gb
    if resources.gpus_per_trial <= 0:
        return None
    memory = ACCELERATOR_MEMORY_GB.get((resources.accelerator_type or "").upper())
    memory = memory or _cluster_gpu_memory_gb() or _local_gpu_memory_gb()
    return None if memory is None else memory * min(resources.gpus_per_trial, 1.0)


def over_budget(config: ExperimentConfig) -> tuple[float, float] | None:
    """(estimated peak GB, budget GB) when a trial's config would not fit its GPU; None when
    it fits or cannot be checked (no budget, or the model's shape is not known offline)."""
    budget = gpu_memory_budget_gb(config)
    if budget is None:
        return None
    try:
        shape = model_shape(config.model.name, config.model.revision)
    except LexirayError as error:
        log.warning("no memory pre-flight check: %s", error)
        return None
    estimate = estimate_for_config(config, shape).total_gb
    return (estimate, budget) if estimate > budget else None


# --------------------------------------------------------------------------- `lexiray plan`


def search_is_finite(config: ExperimentConfig) -> bool:
    """True when every searched setting is a choice or a grid (its points can be listed)."""
    return config.search_space.is_finite


def plan_samples(config: ExperimentConfig, count: int, seed: int = 0) -> list[dict]:
    """Every point of the search block when it is all choices (and grids), else `count`
    seeded draws from it; one empty sample when nothing is searched. Both come from the
    config's `search_space`, the object Tune's param_space is built from."""
    space = config.search_space
    return space.grid_points() if space.is_finite else space.seeded_samples(count, seed)


@dataclass(frozen=True)
class PlannedTrial:
    label: str  # the searched settings, e.g. 'batch=4 lr=3.00e-04 r=16'
    config: ExperimentConfig
    estimate: MemoryEstimate


def plan_trials(config: ExperimentConfig, count: int, seed: int = 0) -> list[PlannedTrial]:
    shape = model_shape(config.model.name, config.model.revision)
    trials = []
    for sample in plan_samples(config, count, seed):
        trial_config = apply_sample(config, sample)
        trials.append(PlannedTrial(describe_sample(sample) or "(base config)", trial_config,
                                   estimate_for_config(trial_config, shape)))
    return trials


# The training guide's measured throughput on one T4 (samples/s, low-high), by model shape,
# max_seq_length and batch size: the only throughput lexiray has a basis for.
GUIDE_T4_SAMPLES_PER_SECOND = {
    (QWEN25_0_5B, 512, 4): (15.0, 20.0),
    (QWEN25_0_5B, 768, 2): (8.0, 10.0),
    (QWEN25_1_5B, 512, 2): (6.0, 8.0),
    (QWEN25_1_5B, 768, 2): (4.0, 5.0),
}


def planning_gpu(config: ExperimentConfig) -> str | None:
    """The GPU a trial would get: resources.accelerator_type, else the first one here."""
    if config.resources.gpus_per_trial <= 0:
        return None
    if config.resources.accelerator_type:
        return config.resources.accelerator_type
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def expected_samples_per_second(config: ExperimentConfig, shape: ModelShape) -> tuple[float, float] | None:
    """The guide's T4 row for this model, max_seq_length and batch, on a T4; else None."""
    if "T4" not in (planning_gpu(config) or "").upper():
        return None
    key = (shape, config.data.max_seq_length, config.training.per_device_train_batch_size)
    return GUIDE_T4_SAMPLES_PER_SECOND.get(key)


def projected_wall_s(config: ExperimentConfig, shape: ModelShape, train_rows: int) -> tuple[float, float] | None:
    """A full trial's training time (fastest, slowest) at the guide's T4 throughput, the
    workers scaling ideally; None where the guide has no row for this configuration."""
    rate = expected_samples_per_second(config, shape)
    if rate is None:
        return None
    total, workers = full_run_samples(config, train_rows), config.resources.num_workers
    return total / (rate[1] * workers), total / (rate[0] * workers)


def projected_cost_usd(config: ExperimentConfig, shape: ModelShape, train_rows: int) -> tuple[float, float] | None:
    """`projected_wall_s` priced (lexiray.cost); None without a price or a projection."""
    hourly, wall = hourly_rate(config.resources), projected_wall_s(config, shape, train_rows)
    if hourly is None or wall is None:
        return None
    return usd(wall[0], hourly), usd(wall[1], hourly)


def full_run_samples(config: ExperimentConfig, train_rows: int) -> int:
    """Rows one full trial trains on: max_steps optimizer steps, or its epochs of the data."""
    training = config.training
    if training.max_steps > 0:
        return training.max_steps * training.effective_batch_size * config.resources.num_workers
    return math.ceil(train_rows * training.num_train_epochs)
