"""The three guide presets keep the LexiLingo training-guide values exactly."""

from __future__ import annotations

import pytest

from lexiray.config import load_config

# preset: (model, max_seq, r, alpha, dropout, epochs, batch, accumulation, lr, optim, save_steps)
GUIDE = {
    "speed": ("Qwen/Qwen2.5-0.5B-Instruct", 384, 8, 16, 0.0, 2, 8, 3, 5e-4, "paged_adamw_8bit", 200),
    "balanced": ("Qwen/Qwen2.5-0.5B-Instruct", 512, 16, 32, 0.1, 4, 4, 6, 3e-4, "paged_adamw_8bit", 150),
    "quality": ("Qwen/Qwen2.5-1.5B-Instruct", 768, 32, 64, 0.05, 6, 2, 12, 2e-4, "paged_adamw_32bit", 100),
}
PRESETS = sorted(GUIDE)


@pytest.fixture(scope="module")
def configs():
    return {name: load_config(name) for name in [*PRESETS, "smoke"]}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_guide_table(configs, name):
    model, max_seq, r, alpha, dropout, epochs, batch, accumulation, lr, optim, save_steps = GUIDE[name]
    config = configs[name]
    assert config.name == name
    assert config.model.name == model
    assert config.data.max_seq_length == max_seq
    assert config.lora.r == r
    assert config.lora.alpha == alpha
    assert config.lora.dropout == dropout
    assert config.training.num_train_epochs == epochs
    assert config.training.per_device_train_batch_size == batch
    assert config.training.gradient_accumulation_steps == accumulation
    assert config.training.effective_batch_size == batch * accumulation
    assert config.training.learning_rate == pytest.approx(lr, rel=1e-12)
    assert config.training.optim == optim
    assert config.training.save_steps == save_steps


@pytest.mark.parametrize("name", PRESETS)
def test_shared_guide_defaults(configs, name):
    training = configs[name].training
    assert training.logging_steps == 10
    assert training.gradient_checkpointing is True
    assert training.dataloader_prefetch_factor == 2
    # Evaluation happens at every checkpoint so each report carries a fresh eval_loss.
    assert training.effective_eval_steps == training.save_steps


def test_smoke_preset_uses_the_tiny_offline_model(configs):
    assert configs["smoke"].model.name == "tiny"


@pytest.mark.parametrize("name", PRESETS)
def test_search_block_centres_on_preset(configs, name):
    config = configs[name]
    search = config.search
    lr = config.training.learning_rate
    low, high = search["training.learning_rate"]["loguniform"]
    assert low == pytest.approx(lr / 4, rel=1e-9)
    assert high == pytest.approx(lr * 4, rel=1e-9)

    r = config.lora.r
    assert search["lora.r"] == {"choice": [r // 2, r, 2 * r]}
    assert search["lora.alpha"].replace(" ", "") == "2*lora.r"

    effective = config.training.effective_batch_size
    batches = search["training.per_device_train_batch_size"]["choice"]
    assert config.training.per_device_train_batch_size in batches
    for batch in batches:
        assert isinstance(batch, int) and batch > 0
        assert effective % batch == 0, f"{name}: batch {batch} does not divide {effective}"
    # The accumulation is derived, never searched, so the effective batch is constant.
    assert "training.gradient_accumulation_steps" not in search


@pytest.mark.parametrize("name", PRESETS)
def test_preset_alpha_is_twice_r(configs, name):
    config = configs[name]
    assert config.lora.alpha == 2 * config.lora.r
