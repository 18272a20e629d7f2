"""data.packing with the real tiny model and HF Trainer: a padding-free row computes what its
samples compute one by one, no label crosses a sample boundary, training sees the same tokens
and loss as padded batches, unsupported attention is refused, group_by_length cuts padding."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lexiray.config import load_config
from lexiray.data import PadCollator, PaddingFreeCollator, prepare_data
from lexiray.errors import ConfigError
from lexiray.hf_trainer import PACKED_SDPA, build_hf_trainer, use_packed_sdpa
from lexiray.model import build_peft_model, load_tokenizer, resolve_model_path

STEPS = 3
BATCH = 4


def smoke_config(*overrides: str):
    return load_config("smoke", ["search={}", f"training.max_steps={STEPS}",
                                 f"training.per_device_train_batch_size={BATCH}", "training.logging_steps=1",
                                 "data.max_rows=160", *overrides])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(smoke_config().model)


@pytest.fixture(scope="module")
def prepared(tokenizer):
    return prepare_data(smoke_config().data, tokenizer)


@pytest.fixture(scope="module")
def features(prepared):
    """Five rows of clearly different lengths, shortest and longest included."""
    rows = sorted(prepared.train, key=lambda row: row["length"])
    picks = [rows[0], rows[len(rows) // 4], rows[-1], rows[len(rows) // 2], rows[3 * len(rows) // 4]]
    assert len({row["length"] for row in picks}) == len(picks)
    return picks


def tiny_model(attn_implementation: str, **load):
    loaded_as = "sdpa" if attn_implementation == PACKED_SDPA else attn_implementation
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny"), attn_implementation=loaded_as, **load)
    model.config.use_cache = False  # as lexiray.model.build_peft_model trains it
    if attn_implementation == PACKED_SDPA:
        use_packed_sdpa(model)
    return model.eval()


def packed_and_single_logits(model, features):
    batch = PaddingFreeCollator()(features)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"].to(model.device),
                       position_ids=batch["position_ids"].to(model.device)).logits[0]
        singles = [model(input_ids=torch.tensor([f["input_ids"]], device=model.device)).logits[0] for f in features]
    pieces = torch.split(packed, [len(f["input_ids"]) for f in features])
    return pieces, singles


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", PACKED_SDPA])
def test_a_packed_row_computes_each_sample_as_if_alone(features, attn_implementation):
    model = tiny_model(attn_implementation)
    assert model.config._attn_implementation == attn_implementation
    pieces, singles = packed_and_single_logits(model, features)
    for piece, single in zip(pieces, singles):
        torch.testing.assert_close(piece, single, atol=1e-4, rtol=1e-4)


def test_lexiray_packed_sdpa_is_plain_sdpa_on_padded_batches(features):
    padded = PadCollator(0)(features)
    with torch.no_grad():
        plain = tiny_model("sdpa")(**padded).logits
        lexiray = tiny_model(PACKED_SDPA)(**padded).logits
    assert torch.equal(plain, lexiray)


def test_without_the_restarting_positions_the_samples_would_mix(features):
    """What the position_ids prevent: one causal sequence lets later samples see earlier ones."""
    model = tiny_model("sdpa")
    batch = PaddingFreeCollator()(features)
    with torch.no_grad():
        mixed = model(input_ids=batch["input_ids"]).logits[0]
        second_alone = model(input_ids=torch.tensor([features[1]["input_ids"]])).logits[0]
    start = len(features[0]["input_ids"])
    second_mixed = mixed[start:start + len(features[1]["input_ids"])]
    assert (second_mixed - second_alone).abs().max() > 1e-2


def test_labels_never_cross_a_sample_boundary(features):
    batch = PaddingFreeCollator()(features)
    ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert "attention_mask" not in batch
    starts = (positions == 0).nonzero().flatten().tolist()
    assert starts == [sum(len(f["input_ids"]) for f in features[:i]) for i in range(len(features))]
    # HF's causal loss trains the token at t to predict labels[t + 1]: every such pair lies in one sample.
    for t in (labels[1:] != -100).nonzero().flatten().tolist():
        assert positions[t + 1] == positions[t] + 1, f"label {t + 1} is predicted from another sample"
    assert all(labels[start] == -100 for start in starts)
    # and nothing else is lost: every label a sample's own shifted loss uses is kept, on its own token
    kept = sum(sum(label != -100 for label in f["labels"][1:]) for f in features)
    assert int((labels != -100).sum()) == kept
    assert torch.equal(labels[labels != -100], ids[labels != -100])


def train_briefly(config, tokenizer, prepared, output_dir):
    torch.manual_seed(0)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    trainer = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, str(output_dir), "fp32",
                               cuda=False)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses


@pytest.mark.parametrize("checkpointing", [False, True])
def test_padding_free_training_sees_the_same_tokens_and_loss_as_padding(tokenizer, prepared, tmp_path,
                                                                         checkpointing):
    # LoRA dropout off: its random masks are drawn over the batch's shape, which packing changes.
    same = ["lora.dropout=0", f"training.gradient_checkpointing={str(checkpointing).lower()}"]
    padded, padded_losses = train_briefly(smoke_config("data.packing=none", *same), tokenizer, prepared,
                                          tmp_path / "none")
    packed, packed_losses = train_briefly(smoke_config("data.packing=padding_free", *same), tokenizer,
                                          prepared, tmp_path / "padding_free")
    assert packed.args.activation_checkpointing is checkpointing
    assert packed.model.config._attn_implementation == PACKED_SDPA  # the model loaded with sdpa
    batch = next(iter(packed.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch  # the training rows were packed
    # Same rows in the same order: the non-pad tokens counted are equal, and real.
    assert packed.state.global_step == padded.state.global_step == STEPS
    assert packed.state.num_input_tokens_seen == padded.state.num_input_tokens_seen
    longest = max(prepared.train["length"])
    assert 0 < padded.state.num_input_tokens_seen < STEPS * BATCH * longest
    # Same labelled tokens and attention: the same loss at every step, and the same weights after.
    assert len(packed_losses) == STEPS
    assert packed_losses == pytest.approx(padded_losses, rel=1e-5)
    # Evaluation is padded in both modes: the same model evaluates the same either way.
    assert "position_ids" not in next(iter(packed.get_eval_dataloader()))
    same_model_padded = build_hf_trainer(smoke_config("data.packing=none"), packed.model, tokenizer,
                                         prepared.train, prepared.eval, str(tmp_path / "eval"), "fp32", cuda=False)
    assert packed.evaluate()["eval_loss"] == same_model_padded.evaluate()["eval_loss"]


def test_an_attention_that_ignores_packed_positions_is_refused(features, tokenizer, prepared, tmp_path):
    # A custom attention registered the way users add kernels: transformers builds it no
    # packed-sequence mask, so a padding-free row attends across its samples.
    AttentionInterface.register("lexiray_test_plain_sdpa", sdpa_attention_forward)
    unaware = tiny_model("sdpa")
    unaware.set_attn_implementation("lexiray_test_plain_sdpa")
    pieces, singles = packed_and_single_logits(unaware, features)
    assert (pieces[1] - singles[1]).abs().max() > 1e-2

    config = smoke_config("data.packing=padding_free")
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    model.set_attn_implementation("lexiray_test_plain_sdpa")
    with pytest.raises(ConfigError, match=r"data\.packing=padding_free .*'lexiray_test_plain_sdpa'"):
        build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, str(tmp_path), "fp32", cuda=False)
    # the same model trains with padded batches
    padded = build_hf_trainer(smoke_config("data.packing=none"), model, tokenizer, prepared.train, prepared.eval,
                              str(tmp_path), "fp32", cuda=False)
    padded.train()
    assert padded.state.global_step == STEPS


def test_padding_free_training_turns_the_kv_cache_off(features, tokenizer, prepared, tmp_path):
    # With a cache transformers skips the packed-sequence mask (masking_utils): samples would mix.
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny")).eval()
    assert model.config.use_cache
    batch = PaddingFreeCollator()(features)
    with torch.no_grad():
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    build_hf_trainer(smoke_config("data.packing=padding_free"), model, tokenizer, prepared.train, prepared.eval,
                     str(tmp_path), "fp32", cuda=False)
    assert not model.config.use_cache
    with torch.no_grad():
        uncached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert (cached - uncached).abs().max() > 1e-2


def test_models_from_model_init_are_prepared_for_padding_free_rows(tokenizer, prepared, tmp_path):
    """HF's hyperparameter_search builds each trial's model with model_init (one argument: the trial)."""
    asked = []

    def model_init(trial):
        asked.append(trial)
        return AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny"))

    trainer = build_hf_trainer(smoke_config("data.packing=padding_free"), None, tokenizer, prepared.train,
                               prepared.eval, str(tmp_path), "fp32", cuda=False, model_init=model_init)
    assert asked == [None]
    assert trainer.model.config._attn_implementation == PACKED_SDPA
    assert not trainer.model.config.use_cache


def test_a_padding_free_run_resumes_where_it_stopped(tokenizer, prepared, tmp_path):
    """HF skips the batches a checkpoint already trained on; the padding-free loader too."""
    config = smoke_config("data.packing=padding_free", "training.max_steps=4", "training.save_steps=2",
                          "training.eval_steps=2")
    whole, whole_losses = train_briefly(config, tokenizer, prepared, tmp_path / "whole")
    torch.manual_seed(0)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    resumed = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, str(tmp_path / "resumed"),
                               "fp32", cuda=False)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    resumed_losses = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    assert resumed.state.num_input_tokens_seen == whole.state.num_input_tokens_seen
    assert resumed_losses[-2:] == pytest.approx(whole_losses[-2:], rel=1e-5)


def padding_share(dataloader) -> float:
    padded = real = 0
    for batch in dataloader:
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
    return 1 - real / padded


def test_group_by_length_batches_rows_of_similar_length(tokenizer, prepared, tmp_path):
    config = smoke_config("training.per_device_train_batch_size=8", "data.packing=none")
    model = tiny_model("sdpa")
    plain = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, str(tmp_path), "fp32",
                             cuda=False)
    grouped_config = smoke_config("training.per_device_train_batch_size=8", "data.packing=group_by_length")
    grouped = build_hf_trainer(grouped_config, model, tokenizer, prepared.train, prepared.eval, str(tmp_path),
                               "fp32", cuda=False)
    lengths = sorted(prepared.train["length"])
    seen = sorted(length for batch in grouped.get_train_dataloader()
                  for length in batch["attention_mask"].sum(dim=1).tolist())
    assert seen == lengths  # every row once per epoch
    assert padding_share(grouped.get_train_dataloader()) < 0.5 * padding_share(plain.get_train_dataloader())


def test_packing_defaults_to_padding_free():
    config = load_config("smoke")
    assert config.data.packing == "padding_free"
    with pytest.raises(ConfigError, match="data.packing"):
        load_config("smoke", ["data.packing=pack"])


@pytest.mark.gpu
@pytest.mark.parametrize("attn_implementation", ["sdpa", PACKED_SDPA, "flash_attention_2"])
def test_a_packed_row_computes_each_sample_as_if_alone_on_gpu(features, attn_implementation):
    flash = attn_implementation == "flash_attention_2"
    if flash:
        pytest.importorskip("flash_attn")
    # flash attention runs in half precision only; its tolerance is bf16's
    model = tiny_model(attn_implementation, dtype=torch.bfloat16 if flash else torch.float32).to("cuda")
    pieces, singles = packed_and_single_logits(model, features)
    tolerance = 5e-2 if flash else 1e-3
    for piece, single in zip(pieces, singles):
        torch.testing.assert_close(piece.float(), single.float(), atol=tolerance, rtol=tolerance)
