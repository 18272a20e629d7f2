"""Tokenizer, base model (optionally 4-/8-bit), LoRA adapter, precision and device choice."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lexiray.config import ExperimentConfig, LoraSettings, ModelSettings, TrainingSettings
from lexiray.errors import ConfigError, ResourceError
from lexiray.tiny import ensure_tiny_model, is_tiny

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hardware:
    """What a training process sees; plain data so the choice logic is testable anywhere."""

    cuda: bool
    gpu_name: str = ""
    compute_capability: tuple[int, int] = (0, 0)

    @property
    def bf16(self) -> bool:  # Ampere (8.0) and newer; a T4 is 7.5
        return self.cuda and self.compute_capability >= (8, 0)


def detect_hardware() -> Hardware:
    import torch

    if not torch.cuda.is_available():
        return Hardware(cuda=False)
    index = torch.cuda.current_device()
    return Hardware(True, torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))


def choose_precision(requested: str, hardware: Hardware) -> str:
    """fp32 on CPU, fp16 on GPUs without bf16 (T4), bf16 on Ampere and newer."""
    if requested == "auto":
        if not hardware.cuda:
            return "fp32"
        return "bf16" if hardware.bf16 else "fp16"
    if requested in ("fp16", "bf16") and not hardware.cuda:
        raise ResourceError(
            f"training.precision={requested} needs a CUDA GPU and none is visible here; "
            "use training.precision=auto (fp32 on CPU)"
        )
    if requested == "bf16" and not hardware.bf16:
        raise ResourceError(
            f"training.precision=bf16 needs an Ampere or newer GPU; {hardware.gpu_name or 'this GPU'} "
            f"(compute capability {hardware.compute_capability[0]}.{hardware.compute_capability[1]}) "
            "has none: use training.precision=fp16 or auto"
        )
    return requested


# Compute capability by Ray's accelerator type names (resources.accelerator_type); bf16 needs
# 8.0 (Ampere). Never torch.cuda.is_bf16_supported(): it counts a T4's emulated bf16 as support.
ACCELERATOR_COMPUTE_CAPABILITY = {
    "K80": (3, 7), "P100": (6, 0), "P4": (6, 1), "V100": (7, 0), "T4": (7, 5),
    "A100": (8, 0), "A100-40G": (8, 0), "A100-80G": (8, 0), "A10G": (8, 6), "L4": (8, 9), "L40S": (8, 9),
    "H100": (9, 0), "H200": (9, 0), "H20": (9, 0), "B200": (10, 0),
}
PRECISION_KEY = "training.precision"


def check_precision(config: ExperimentConfig) -> None:
    """Pre-flight `choose_precision`: fp16/bf16 (set, or a searched choice) on trials that
    get no GPU, or bf16 on a resources.accelerator_type known to lack it, is refused before
    Ray starts (otherwise every trial fails in its worker)."""
    requested = [(PRECISION_KEY, config.training.precision)]
    space = config.search_space
    if PRECISION_KEY in space.sampled_keys:
        requested += [(f"search.{PRECISION_KEY}", value) for value in space.candidate_values(PRECISION_KEY)]
    resources = config.resources
    capability = ACCELERATOR_COMPUTE_CAPABILITY.get((resources.accelerator_type or "").upper())
    for key, precision in requested:
        if precision in ("fp16", "bf16") and resources.gpus_per_trial <= 0:
            raise ConfigError(f"{key}={precision} needs a CUDA GPU but trials get none (resources.gpus_per_trial=0): "
                              f"set resources.gpus_per_trial=1, or {PRECISION_KEY}=auto (fp32 on CPU)")
        if precision == "bf16" and capability is not None and capability < (8, 0):
            raise ConfigError(f"{key}=bf16 needs an Ampere or newer GPU; resources.accelerator_type="
                              f"{resources.accelerator_type} (compute capability {capability[0]}.{capability[1]}) "
                              f"has none: use {PRECISION_KEY}=fp16 or auto")


def compute_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def resolve_model_path(name: str) -> str:
    """'tiny' -> the cached offline model folder; anything else is a HF id or a local path."""
    return str(ensure_tiny_model()) if is_tiny(name) else name


def check_model_source(settings: ModelSettings) -> None:
    """A local model folder exists; a Hub id is in the local cache or the Hub answers. Fails
    in a second, where transformers would retry an unreachable Hub for about a minute."""
    name = settings.name
    if is_tiny(name):
        return
    local = Path(name).expanduser()
    if local.is_dir():
        return
    if name.startswith(("/", ".", "~")) or local.exists():
        raise ConfigError(f"model.name {name}: no such model folder: give a folder saved with save_pretrained "
                          "or a Hugging Face id such as Qwen/Qwen2.5-0.5B-Instruct")
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json", revision=settings.revision), str):
        return
    offline_fix = (f"without network give a local model folder, or warm the Hugging Face cache first "
                   f"(`hf download {name}` where the Hub is reachable)")
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"model.name {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                          f"{offline_fix}")
    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json", revision=settings.revision), timeout=10)
    except Exception as error:  # noqa: BLE001 - DNS, proxy, 401/404: every one means "cannot load it"
        kind = type(error).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "EntryNotFoundError"):
            raise ConfigError(f"model.name {name}: the Hugging Face Hub has no such model for this account "
                              f"({kind}): check the id and revision, or set HF_TOKEN for a private or gated "
                              "model") from None
        raise ConfigError(f"model.name {name}: the Hugging Face Hub cannot be reached ({kind}) and the model is "
                          f"not in the local cache: {offline_fix}") from None


def load_tokenizer(settings: ModelSettings):
    from transformers import AutoTokenizer

    check_model_source(settings)

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(settings.name), trust_remote_code=settings.trust_remote_code, revision=settings.revision
    )
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        from lexiray.tiny import CHAT_TEMPLATE

        log.warning("%s has no chat template; using lexiray's ChatML template", settings.name)
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def check_bitsandbytes(settings: ModelSettings, training: TrainingSettings, gpus_per_trial: float) -> None:
    """4-/8-bit models and bitsandbytes optimizers (paged_*, *_8bit) on CPU trials need a
    bitsandbytes with a CPU backend (0.45+; STACK-NOTES: 4-bit QLoRA trains on CPU with
    0.50). Found without importing it: the driver stays free of torch."""
    import importlib.util

    needs = [f"model.quantization={settings.quantization}"] if settings.quantization != "none" else []
    if "paged" in training.optim or "8bit" in training.optim or "bnb" in training.optim:
        needs.append(f"training.optim={training.optim}")
    if not needs:
        return
    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or spec.origin is None:
        raise ResourceError(f"{' and '.join(needs)} needs bitsandbytes, which is not installed: pip install "
                            "bitsandbytes, or use model.quantization=none and training.optim=adamw_torch")
    cpu_backend = Path(spec.origin).parent / "backends" / "cpu"
    if gpus_per_trial <= 0 and not cpu_backend.is_dir():
        raise ResourceError(f"{' and '.join(needs)} on CPU trials (resources.gpus_per_trial=0): this bitsandbytes "
                            "has no CPU backend; give trials a CUDA GPU, upgrade bitsandbytes (0.45+), or use "
                            "model.quantization=none and training.optim=adamw_torch")


def quantization_config(settings: ModelSettings, precision: str):
    if settings.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=settings.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(precision),
    )


def load_base_model(settings: ModelSettings, precision: str):
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": settings.trust_remote_code, "revision": settings.revision,
              "dtype": compute_dtype(precision)}
    quant = quantization_config(settings, precision)
    if quant is not None:
        kwargs["quantization_config"] = quant
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(settings.name), **kwargs)


def lora_config(settings: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias=settings.bias,
        task_type="CAUSAL_LM",
    )


def build_peft_model(model_settings: ModelSettings, lora_settings: LoraSettings,
                     training: TrainingSettings, precision: str):
    """Base model (+ k-bit preparation for QLoRA) wrapped with a fresh LoRA adapter."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_base_model(model_settings, precision)
    if model_settings.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model.config.use_cache = False  # the KV cache is useless in training and breaks checkpointing
    return get_peft_model(model, lora_config(lora_settings))


def load_adapter_for_inference(adapter_dir: str, base_name: str | None = None):
    """(model, tokenizer) from an exported adapter folder, for generation or evaluation."""
    import json
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    base = resolve_model_path(base_name) if base_name else adapter_config["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base)
    return PeftModel.from_pretrained(model, adapter_dir), AutoTokenizer.from_pretrained(adapter_dir)


def merge_adapter(adapter_dir: str, output_dir: str, settings: ModelSettings, precision: str) -> None:
    """The adapter merged into its base (PEFT's merge_and_unload), saved as a standard HF
    model folder (safetensors + tokenizer) that loads with AutoModelForCausalLM alone.

    The base is loaded unquantized at `precision`, the dtype the trial trained in: for a
    QLoRA trial that is the 4-bit layers' compute dtype, because folding a LoRA update into
    4-bit weights would round it away (and a 4-bit checkpoint is not a standard folder)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(settings.name), dtype=compute_dtype(precision),
        trust_remote_code=settings.trust_remote_code, revision=settings.revision)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.use_cache = True  # generation wants it; training had turned it off
    merged.save_pretrained(output_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(output_dir)
