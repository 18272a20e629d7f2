"""lexiray.tiny: the embedded model is a pretrained Qwen2 base that never saw the sample's answers."""

from __future__ import annotations

import json
import math

import pytest

from lexiray import tiny
from lexiray.config import DEFAULT_SYSTEM_PROMPTS

# Learner-style text written for this test: in neither the sample nor the pretraining text.
UNSEEN_PROMPTS = [
    "I want to improve my speaking before my trip to London next month.",
    "My brother and me went to the cinema on Sunday afternoon.",
    "Can you explain when I should use 'since' and when 'for'?",
    "She has been working in this company since three years.",
    "What do you usually eat for lunch when you are at school?",
    "We are planning to visit our grandparents during the summer holiday.",
]


def sample_rows() -> list[dict]:
    with tiny.BUNDLED_DATA.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def built():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny.ensure_tiny_model()  # cached after the first build
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def mean_loss(model, tokenizer, conversations: list[list[dict]], role: str) -> float:
    """Mean next-token loss over the tokens of every `role` turn's content."""
    import torch

    total, count = 0.0, 0
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        start = text.rindex(messages[-1]["content"])
        assert messages[-1]["role"] == role
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([encoded["input_ids"]])
        keep = torch.tensor([s >= start and e > s for s, e in encoded["offset_mapping"]])[1:]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        total += losses[keep].sum().item()
        count += int(keep.sum())
    return total / count


def test_the_pretraining_corpus_holds_no_answer():
    rows = sample_rows()
    inputs = {row["input"] for row in rows}
    documents = tiny._pretraining_documents()
    conversations = [doc for doc in documents if not isinstance(doc, str)]
    assert len(conversations) == len(rows)
    for messages in conversations:  # prompts only: a system and a user turn, never an answer
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[1]["content"] in inputs
    written = "\n".join(doc for doc in documents if isinstance(doc, str))
    assert len(written) > 10_000
    answers = [row["output"] for row in rows if len(row["output"]) >= 20]
    leaked = [answer for answer in answers if answer in written]
    assert not leaked, f"{len(leaked)} sample answers are in the written text, e.g. {leaked[0]!r}"


def test_the_cache_key_follows_the_settings_and_the_written_text(monkeypatch, tmp_path):
    key = tiny._cache_key()
    monkeypatch.setitem(tiny.TINY_SETTINGS, "pretrain_steps", tiny.TINY_SETTINGS["pretrain_steps"] + 1)
    assert tiny._cache_key() != key
    monkeypatch.undo()
    longer = tmp_path / "english.txt"
    longer.write_text(tiny.WRITTEN_TEXTS[0].read_text(encoding="utf-8") + "\n\nOne more paragraph.\n")
    monkeypatch.setattr(tiny, "WRITTEN_TEXTS", [longer, *tiny.WRITTEN_TEXTS[1:]])
    assert tiny._cache_key() != key


def test_the_tiny_model_is_a_tied_qwen2_with_the_chatml_template(built):
    model, tokenizer = built
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert tokenizer.chat_template == tiny.CHAT_TEMPLATE
    assert all(token in tokenizer.get_vocab() for token in tiny.SPECIAL_TOKENS)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_the_tiny_model_knows_english_but_not_the_answers(built):
    model, tokenizer = built
    uniform = math.log(len(tokenizer))
    system = DEFAULT_SYSTEM_PROMPTS["grammar"]
    unseen = mean_loss(model, tokenizer, [[{"role": "system", "content": system}, {"role": "user", "content": text}]
                                          for text in UNSEEN_PROMPTS], "user")
    rows = [row for row in sample_rows() if row["task"] in ("dialogue", "explanation")][::10]
    answers = mean_loss(model, tokenizer, [[{"role": "system", "content": DEFAULT_SYSTEM_PROMPTS[row["task"]]},
                                            {"role": "user", "content": row["input"]},
                                            {"role": "assistant", "content": row["output"]}] for row in rows],
                        "assistant")
    print(f"loss on unseen prompts {unseen:.2f}, on sample answers {answers:.2f}, uniform {uniform:.2f}")
    assert unseen < 0.75 * uniform  # pretrained: a random model scores about ln(vocab)
    assert answers > 0.75 * uniform  # the answers were left for LoRA to learn
