"""The embedded default model: a tiny Qwen2-architecture causal LM, built offline.

Nothing can be downloaded in CI or on an air-gapped laptop, so `model.name: tiny` builds a
Qwen2 model with random weights and a byte-level BPE tokenizer trained on the bundled
LexiLingo sample, with a Qwen-style chat template. The result is cached on disk, keyed by
its settings, so only the first use pays the few seconds it takes to build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_NAMES = ("tiny", "lexiray:tiny")
BUNDLED_DATA = Path(__file__).resolve().parent / "resources" / "lexilingo_sample.jsonl"

TINY_SETTINGS = {
    "vocab_size": 4096,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "seed": 0,
    "format": 3,  # bump when the build below changes, so stale caches are not reused
}

# Qwen's ChatML turns. The {% generation %} markers let transformers return an assistant
# mask too; lexiray's own masking does not depend on them (real Qwen templates lack them).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def is_tiny(name: str) -> bool:
    return name.strip().lower() in TINY_NAMES


def cache_root() -> Path:
    explicit = os.environ.get("LEXIRAY_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lexiray"


def _cache_key() -> str:
    digest = hashlib.sha256(json.dumps(TINY_SETTINGS, sort_keys=True).encode())
    digest.update(BUNDLED_DATA.read_bytes())
    return digest.hexdigest()[:16]


def _training_texts() -> list[str]:
    from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS

    texts = list(DEFAULT_SYSTEM_PROMPTS.values()) + [DEFAULT_SYSTEM_PROMPT]
    with BUNDLED_DATA.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.extend(str(value) for value in row.values())
    return texts


def _build_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_SETTINGS["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=TINY_SETTINGS["max_position_embeddings"],
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)


def _build_model(directory: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(directory)
    settings = TINY_SETTINGS
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        max_position_embeddings=settings["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(settings["seed"])
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)


def ensure_tiny_model() -> Path:
    """Return the folder of the tiny model + tokenizer, building it on first use."""
    target = cache_root() / f"tiny-qwen2-{_cache_key()}"
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp folder and rename: concurrent trials or a crash mid-build
    # never leave a half-written model where a reader would take it for a complete one.
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        _build_tokenizer(staging)
        _build_model(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
