"""The embedded default model: a tiny pretrained Qwen2-architecture causal LM, built offline.

Nothing can be downloaded in CI or on an air-gapped laptop, so `model.name: tiny` builds its own
small base model from text the package ships, on first use:

1. a byte-level BPE tokenizer (4096 tokens, Qwen's special tokens and ChatML chat template)
   whose vocabulary is learned from the whole bundled LexiLingo sample;
2. a Qwen2 model (hidden 128, 4 layers, tied embeddings) pretrained from random weights as a
   plain causal LM, full weights, in a short seeded torch loop (a few hundred AdamW steps over
   random 128-token windows), on
   - the sample's *prompts only*: each row's system prompt and user input as a ChatML
     conversation with no assistant turn, and
   - everyday English and Vietnamese paragraphs written for this purpose (resources/tiny_*.txt).

No weight is ever trained on an answer of the sample, so every train / eval split of it stays
honest (any data.split_seed or eval_fraction): the eval loss of a LoRA run measures what LoRA
learned from the training rows. The base
knows both languages and the chat markup but has never seen an assistant turn, which is what
LoRA then has to learn: a good learning rate visibly beats a bad one.

The result is cached on disk, keyed by the settings and the text it is built from, so only the
first use pays for the build (under a minute on 2 CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY_NAMES = ("tiny", "lexiray:tiny")
BUNDLED_DATA = Path(__file__).resolve().parent / "resources" / "lexilingo_sample.jsonl"
# Everyday English and Vietnamese written for the tiny model's pretraining (none of it comes
# from the sample's answers). Paragraphs are separated by blank lines.
WRITTEN_TEXTS = [Path(__file__).resolve().parent / "resources" / name
                 for name in ("tiny_english.txt", "tiny_vietnamese.txt")]

TINY_SETTINGS = {
    "vocab_size": 4096,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "seed": 0,
    # Pretraining: steps x batch x block tokens of AdamW (warmup then cosine decay to zero);
    # the written text is repeated text_repeat times in the corpus next to the sample's prompts.
    "pretrain_steps": 288,
    "pretrain_batch": 16,
    "pretrain_block": 128,
    "pretrain_lr": 5e-3,
    "text_repeat": 2,
    "format": 4,  # bump when the build below changes, so stale caches are not reused
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
    from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS

    digest = hashlib.sha256(json.dumps(TINY_SETTINGS, sort_keys=True).encode())
    digest.update(BUNDLED_DATA.read_bytes())
    # The pretraining corpus also holds the system prompts and the written text below.
    digest.update(json.dumps([DEFAULT_SYSTEM_PROMPTS, DEFAULT_SYSTEM_PROMPT], sort_keys=True).encode())
    for path in WRITTEN_TEXTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _training_texts() -> list[str]:
    """The tokenizer's training text: the whole bundled sample (its vocabulary only)."""
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


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in text.strip().split("\n\n")]


def _pretraining_documents() -> list:
    """The pretraining corpus: every sample row's prompt (system + user turn, no answer) as
    ChatML messages, and the written paragraphs as plain text."""
    from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS

    documents: list = []
    with BUNDLED_DATA.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            system = DEFAULT_SYSTEM_PROMPTS.get(row.get("task", ""), DEFAULT_SYSTEM_PROMPT)
            documents.append([{"role": "system", "content": system}, {"role": "user", "content": str(row["input"])}])
    written = [paragraph for path in WRITTEN_TEXTS for paragraph in _paragraphs(path.read_text(encoding="utf-8"))]
    documents.extend(written * TINY_SETTINGS["text_repeat"])
    return documents


def _token_stream(tokenizer) -> list[int]:
    """The corpus as one token stream, documents shuffled and separated by <|endoftext|>."""
    documents = _pretraining_documents()
    random.Random(TINY_SETTINGS["seed"]).shuffle(documents)
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for document in documents:
        text = document if isinstance(document, str) else tokenizer.apply_chat_template(document, tokenize=False)
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(separator)
    return stream


def _pretrain(model, tokenizer) -> None:
    """Train every weight of `model` as a causal LM on random windows of the corpus."""
    import torch

    settings = TINY_SETTINGS
    steps, batch, block = settings["pretrain_steps"], settings["pretrain_batch"], settings["pretrain_block"]
    data = torch.tensor(_token_stream(tokenizer), dtype=torch.long)
    generator = torch.Generator().manual_seed(settings["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["pretrain_lr"], betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps)))
    )
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block, (batch,), generator=generator).tolist()
        ids = torch.stack([data[start : start + block] for start in starts])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    log.debug("tiny model pretrained: last loss %.3f over %d corpus tokens", loss.item(), len(data))


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
    _pretrain(model, tokenizer)
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
    log.info("building the tiny offline model in %s (first use only, about a minute)", target)
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


# --------------------------------------------------------------------------- written text
