"""The pre-flight arithmetic of lexiray.memory: peak memory against the training guide's T4
table, LoRA-aware FLOPs and MFU, model shapes found offline, the GPU budget and skipped
trials, and `lexiray plan`."""

from __future__ import annotations

import json
import re

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from lexiray.config import ALL_PROJECTIONS, load_config
from lexiray.errors import LexirayError
from lexiray.hf_trainer import ThroughputMeter
from lexiray.memory import (QWEN25_0_5B, QWEN25_1_5B, ModelShape, estimate_peak_memory_gb, flops_per_token,
                            gpu_memory_budget_gb, mfu, model_shape, over_budget, peak_flops, plan_samples)
from lexiray.report import TrialRecord, leaderboard_rows
from lexiray.tiny import TINY_SETTINGS
from tests.conftest import run_cli

# The guide's T4 rows (model, max_seq, batch -> its "Memory" column, GB). The guide trains
# with gradient checkpointing, fp16 on the T4 and LoRA on every projection; the 0.5B rows
# with the balanced preset's r 16 and paged_adamw_8bit, the 1.5B rows with the quality
# preset's r 32 and paged_adamw_32bit. Its code loads the base model without a dtype, so
# the frozen weights are fp32 under fp16 autocast (lexiray loads them in fp16 itself).
GUIDE_ROWS = [
    (QWEN25_0_5B, 512, 4, 16, "paged_adamw_8bit", (5, 6)),
    (QWEN25_0_5B, 768, 2, 16, "paged_adamw_8bit", (7, 8)),
    (QWEN25_1_5B, 512, 2, 32, "paged_adamw_32bit", (9, 10)),
    (QWEN25_1_5B, 768, 2, 32, "paged_adamw_32bit", (12, 13)),
]


@pytest.mark.parametrize("shape, seq_len, batch, r, optim, guide_gb", GUIDE_ROWS)
def test_estimates_match_the_guides_t4_table_within_30_percent(shape, seq_len, batch, r, optim, guide_gb):
    estimate = estimate_peak_memory_gb(shape, precision="fp16", weight_precision="fp32", lora_r=r,
                                       target_modules=ALL_PROJECTIONS, batch_size=batch, seq_len=seq_len,
                                       gradient_checkpointing=True, optim=optim)
    midpoint = sum(guide_gb) / 2
    assert estimate.total_gb == pytest.approx(midpoint, rel=0.30)


def test_the_vocabulary_sized_loss_tensors_dominate_a_qwen_step():
    estimate = estimate_peak_memory_gb(QWEN25_0_5B, precision="fp16", lora_r=16, target_modules=ALL_PROJECTIONS,
                                       batch_size=4, seq_len=512)
    # 12 bytes per token per vocabulary entry at the backward's peak
    assert estimate.logits_gb == pytest.approx(12 * 4 * 512 * 151936 / 1e9)
    assert estimate.logits_gb > estimate.weights_gb + estimate.lora_gb + estimate.activations_gb


def test_checkpointing_quantization_and_an_8bit_optimizer_each_save_memory():
    def total(**changes):
        settings = dict(precision="fp16", lora_r=64, target_modules=ALL_PROJECTIONS, batch_size=2, seq_len=768,
                        gradient_checkpointing=True, optim="adamw_torch")
        return estimate_peak_memory_gb(QWEN25_1_5B, **{**settings, **changes})

    base = total()
    assert total(gradient_checkpointing=False).activations_gb > 5 * base.activations_gb
    assert total(quantization="4bit").weights_gb < total(quantization="8bit").weights_gb < base.weights_gb
    assert total(optim="paged_adamw_8bit").lora_gb < base.lora_gb
    # an evaluation batch of 8 full rows holds one chunk of logits, not 8 x 768 positions' worth
    evaluated = total(eval_batch_size=8)
    assert evaluated.total_gb == base.total_gb
    assert 0 < evaluated.eval_logits_gb < 0.5 * (base.activations_gb + base.logits_gb)


@pytest.mark.parametrize("preset", ["smoke", "balanced", "quality"])
def test_evaluation_is_never_the_peak_of_a_presets_t4_trial(preset):
    """hf_trainer.answer_token_losses: lm_head on EVAL_LOSS_CHUNK_TOKENS answer positions at a
    time, so an eval batch of 8 costs less than the smallest training step of the search."""
    config = load_config(preset, ["resources.accelerator_type=T4", "resources.gpus_per_trial=1"])
    from lexiray.memory import plan_trials

    for trial in plan_trials(config, 16):
        estimate = trial.estimate
        assert estimate.eval_logits_gb <= estimate.activations_gb + estimate.logits_gb
        # the logits of one chunk: 256 positions x vocabulary x (16-bit logits + fp32 copy + log-softmax)
        shape = model_shape(trial.config.model.name)
        assert estimate.eval_logits_gb >= 256 * shape.vocab_size * 10 / 1e9


def test_published_parameter_counts():
    assert QWEN25_0_5B.parameters == 494_032_768
    assert QWEN25_1_5B.parameters == 1_543_714_304


# --------------------------------------------------------------------------- FLOPs and MFU

# hidden 8, MLP 16, 2 layers, 2 heads of 4 (attention width 8), 1 kv head (kv width 4), vocab 32
SMALL = ModelShape(hidden_size=8, intermediate_size=16, num_layers=2, num_attention_heads=2, num_key_value_heads=1,
                   vocab_size=32, tie_word_embeddings=True, head_dim=4)


def test_lora_flops_per_token_by_hand():
    # frozen matmuls per layer: q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate/up/down 3 x 8x16 = 576;
    # 2 layers + lm_head 32x8 = 1408 weights: forward 2 + activation gradients 2 -> 4 x 1408 = 5632
    # attention: 12 x 2 layers x 10 tokens x width 8 = 1920
    # LoRA r=2 on q (2x(8+8)=32) and v (2x(8+4)=24), 2 layers: 112 trained weights x 6 = 672
    assert flops_per_token(SMALL, lora_r=2, target_modules=["q_proj", "v_proj"], seq_len=10) == 5632 + 1920 + 672


def test_mfu_against_the_devices_half_precision_peak():
    assert peak_flops("Tesla T4", "fp16") == 65e12
    assert peak_flops("NVIDIA H200", "bf16") == peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert peak_flops("", "fp32") is None and peak_flops("Tesla T4", "fp32") is None  # CPU, or no tensor-core peak
    assert peak_flops("Some Future GPU", "bf16") is None  # never guessed
    assert mfu(1e9, 8224, 65e12) == pytest.approx(1e9 * 8224 / 65e12)
    assert mfu(1e9, 8224, None) is None


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _metrics_after_ten_steps(tmp_path, **meter_options) -> dict:
    clock = FakeClock()
    meter = ThroughputMeter(clock=clock, **meter_options)
    state, control = TrainerState(max_steps=40), TrainerControl()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, report_to=[])
    meter.on_train_begin(args, state, control)
    for _ in range(10):
        meter.on_step_begin(args, state, control)
        clock.now += 0.5
        state.global_step += 1
        state.num_input_tokens_seen += 300
        meter.on_step_end(args, state, control)
        clock.now += 0.5  # an evaluation or a save
    return meter.metrics(args, state)


def test_throughput_meter_reports_mfu_and_the_projected_wall_time(tmp_path):
    metrics = _metrics_after_ten_steps(tmp_path, flops_per_token=8224, peak_flops=65e12)
    assert metrics["tokens_per_second"] == pytest.approx(600.0)
    assert metrics["mfu"] == pytest.approx(600.0 * 8224 / 65e12)
    # 10 steps took 9.5 s from the first step's start to the last's end: 40 steps at that rate
    assert metrics["projected_wall_s"] == pytest.approx(40 / (10 / 9.5))


def test_throughput_meter_without_a_peak_reports_no_mfu(tmp_path):
    metrics = _metrics_after_ten_steps(tmp_path)
    assert "mfu" not in metrics and metrics["projected_wall_s"] > 0


# --------------------------------------------------------------------------- model shapes


def test_model_shape_of_the_tiny_model_comes_from_its_settings():
    shape = model_shape("tiny")
    assert (shape.hidden_size, shape.num_layers, shape.vocab_size) == (
        TINY_SETTINGS["hidden_size"], TINY_SETTINGS["num_hidden_layers"], TINY_SETTINGS["vocab_size"])
    assert shape.head_dim == TINY_SETTINGS["hidden_size"] // TINY_SETTINGS["num_attention_heads"]


def test_model_shape_of_a_local_folder_reads_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}))
    shape = model_shape(str(tmp_path))
    assert shape == ModelShape(64, 256, 3, 4, 2, 1000, False, 16)
    # per layer: q 64x64 + k, v 64x32 + o 64x64 + MLP 3 x 64x256 = 61440, q/k/v biases 128, norms 128;
    # untied input and output embeddings 2 x 1000x64; the final norm 64
    assert shape.parameters == 3 * (61440 + 128 + 128) + 128000 + 64
    (tmp_path / "config.json").write_text(json.dumps({"n_embd": 64}))
    with pytest.raises(LexirayError, match="config.json: lacks 'hidden_size'"):
        model_shape(str(tmp_path))


@pytest.mark.parametrize("name", ["lexiray-tests/no-such-model", "not a valid repo id!"])
def test_an_unknown_model_offline_is_a_clear_error(name):
    with pytest.raises(LexirayError, match="local model path.*cache"):
        model_shape(name)


# --------------------------------------------------------------------------- budget and skipping


def test_gpu_memory_budget_sources():
    assert gpu_memory_budget_gb(load_config("smoke")) is None  # CPU trials: no GPU budget
    assert gpu_memory_budget_gb(load_config("balanced", ["resources.accelerator_type=T4"])) == 16
    assert gpu_memory_budget_gb(load_config("balanced", ["resources.accelerator_type=T4",
                                                         "resources.gpus_per_trial=0.5"])) == 8
    assert gpu_memory_budget_gb(load_config("balanced", ["resources.gpu_memory_gb=11"])) == 11


def test_over_budget_with_a_tiny_budget_and_not_with_a_large_one():
    over = over_budget(load_config("balanced", ["resources.gpu_memory_gb=2"]))
    assert over is not None
    estimate, budget = over
    assert budget == 2 and estimate > 2
    assert over_budget(load_config("balanced", ["resources.gpu_memory_gb=80"])) is None
    assert over_budget(load_config("smoke")) is None  # no budget, nothing to check


def test_the_leaderboard_lists_a_skipped_trial_with_its_estimate():
    skipped = TrialRecord("big", "TERMINATED", [{"skipped_memory": 1, "estimated_memory_gb": 17.2,
                                                 "memory_budget_gb": 16.0, "eval_loss": float("nan")}])
    trained = TrialRecord("small", "TERMINATED", [{"step": 6, "eval_loss": 2.0, "total_steps": 6}])
    rows = leaderboard_rows([skipped, trained])
    assert [row.trial_id for row in rows] == ["small", "big"]  # unscored: last
    assert rows[1].status == "SKIPPED" and rows[1].value("estimated_memory_gb") == 17.2 and rows[1].steps == 0


# --------------------------------------------------------------------------- `lexiray plan`


def test_plan_samples_lists_a_grid_and_draws_a_seeded_sample_otherwise():
    grid = load_config("balanced", ["search.training.learning_rate={choice: [1.0e-4, 2.0e-4]}"])
    points = plan_samples(grid, count=5)
    assert len(points) == 2 * 3 * 3 and len({tuple(sorted(p.items())) for p in points}) == 18
    mixed = load_config("balanced")
    assert plan_samples(mixed, count=5, seed=1) == plan_samples(mixed, count=5, seed=1)
    assert len(plan_samples(mixed, count=5)) == 5
    assert all(7.5e-5 <= p["training.learning_rate"] <= 1.2e-3 for p in plan_samples(mixed, count=50))


def test_plan_command_prints_one_line_per_configuration(tmp_path):
    result = run_cli(["plan", "-c", "balanced", "--set", "resources.accelerator_type=T4"], cwd=tmp_path,
                     timeout=120, check=True)
    lines = [line for line in result.stdout.splitlines() if re.search(r"peak +\d+\.\d GB", line)]
    assert len(lines) == load_config("balanced").tune.num_samples
    assert all(line.endswith("fits") for line in lines)  # the guide's 0.5B settings fit a 16 GB T4
    assert "GPU memory budget per trial: 16.0 GB" in result.stdout
    assert "at 15–20 samples/s per T4" in result.stdout  # the guide's row for the base config

    tight = run_cli(["plan", "-c", "balanced", "--set", "resources.gpu_memory_gb=8"], cwd=tmp_path, timeout=120,
                    check=True)
    assert "OVER BUDGET" in tight.stdout and "fits" in tight.stdout  # batch 8 does not fit, batch 2 does
    assert "wall time unknown" in tight.stdout  # no T4: no basis for a throughput
