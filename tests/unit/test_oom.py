"""lexiray.oom: which rung comes next, what the search varies stays untouched, the
one-line out-of-rungs error, and the injected out-of-memory error on the real tiny model."""

from __future__ import annotations

import logging

import datasets
import pytest
import torch

from lexiray.config import ExperimentConfig, apply_sample, config_from_dict
from lexiray.model import build_peft_model
from lexiray.oom import (OomLadder, OutOfRungsError, free_memory, is_out_of_memory, next_rung, raise_oom_above_batch,
                         shorten_rows)
from lexiray.trial import note_paged_optimizer_on_cpu

SHORT_ROWS = [100] * 95 + [700] * 5  # 95% of the rows fit in 256 tokens


def config(**training) -> ExperimentConfig:
    return config_from_dict({"training": {"gradient_checkpointing": False, "per_device_train_batch_size": 8,
                                          "gradient_accumulation_steps": 1, **training},
                             "data": {"max_seq_length": 512}, "lora": {"r": 16, "alpha": 32}})


def walk(start: ExperimentConfig, searched=frozenset(), lengths=None) -> list[str]:
    """Every rung's change, from `start` until the ladder has none left."""
    changes, current = [], start
    while (rung := next_rung(current, searched, lengths)) is not None:
        changes.append(rung.change)
        current = rung.config
    return changes


def test_rungs_follow_the_checklist_same_optimization_first():
    assert walk(config(), lengths=SHORT_ROWS) == [
        "gradient_checkpointing on",
        "per_device_train_batch_size 8 → 4, gradient_accumulation_steps 1 → 2",
        "per_device_train_batch_size 4 → 2, gradient_accumulation_steps 2 → 4",
        "per_device_train_batch_size 2 → 1, gradient_accumulation_steps 4 → 8",
        "data.max_seq_length 512 → 256",
        "lora.r 16 → 8, lora.alpha 32 → 16",
        "training.optim adamw_torch → paged_adamw_8bit",
    ]


def test_smaller_micro_batch_keeps_the_effective_batch():
    current = config(per_device_train_batch_size=6, gradient_accumulation_steps=2, gradient_checkpointing=True)
    sizes = []
    while (rung := next_rung(current, frozenset({"lora.r", "training.optim"}))) is not None:
        current = rung.config
        assert rung.keeps_optimization
        sizes.append((current.training.per_device_train_batch_size, current.training.gradient_accumulation_steps))
    assert sizes == [(3, 4), (1, 12)]  # an odd micro-batch goes to its largest divisor
    assert all(batch * accumulation == 12 for batch, accumulation in sizes)


def test_searched_settings_are_never_changed():
    base = config_from_dict({
        "training": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
        "lora": {"r": 32, "alpha": 64},
        "search": {"lora.r": {"choice": [16, 32]}, "lora.alpha": "2 * lora.r",
                   "training.optim": {"choice": ["adamw_torch", "paged_adamw_32bit"]},
                   "data.max_seq_length": {"choice": [384, 512]},
                   "training.per_device_train_batch_size": {"choice": [2, 4]}},
    })
    trial = apply_sample(base, {"lora.r": 32, "training.optim": "adamw_torch", "data.max_seq_length": 512,
                                "training.per_device_train_batch_size": 4})
    ladder = OomLadder(trial.model_copy(update={"training": trial.training.model_copy(update={"oom_backoff": 9})}),
                       searched=frozenset(base.search), train_lengths=SHORT_ROWS)
    # the micro-batch is searched, but halving it keeps the optimization: still taken
    assert ladder.back_off("CUDA out of memory").change.startswith("per_device_train_batch_size 4 → 2")
    ladder.back_off("CUDA out of memory")
    with pytest.raises(OutOfRungsError) as info:
        ladder.back_off("CUDA out of memory")
    final = ladder.config
    kept = (final.lora.r, final.lora.alpha, final.training.optim, final.data.max_seq_length)
    assert kept == (32, 64, "adamw_torch", 512)
    assert final.training.effective_batch_size == trial.training.effective_batch_size == 8
    assert "no rung left (settings the search varies are kept)" in str(info.value)


def test_out_of_rungs_is_one_line_naming_the_settings():
    ladder = OomLadder(config(oom_backoff=2))
    ladder.back_off("CUDA out of memory. Tried to allocate 2.00 GiB")
    ladder.back_off("CUDA out of memory. Tried to allocate 1.00 GiB")
    with pytest.raises(OutOfRungsError) as info:
        ladder.back_off("CUDA out of memory. Tried to allocate 1.00 GiB")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("out of GPU memory after 2 back-off rungs: "
                              "training.per_device_train_batch_size=4 (training.gradient_accumulation_steps=2)")
    assert "raise training.oom_backoff (now 2)" in message
    assert ladder.retries == 2


def test_backoff_zero_fails_at_once_and_reports_nothing_changed():
    ladder = OomLadder(config(oom_backoff=0))
    assert ladder.metrics()["oom_retries"] == 0 and ladder.metrics()["ran_with"] == ""
    with pytest.raises(OutOfRungsError, match=r"^out of GPU memory: training.per_device_train_batch_size=8 "):
        ladder.back_off("CUDA out of memory")


def test_each_rung_is_one_log_line_and_the_metrics_carry_the_final_settings(caplog):
    ladder = OomLadder(config())
    with caplog.at_level(logging.WARNING, logger="lexiray.oom"):
        ladder.back_off("CUDA out of memory")
        ladder.back_off("CUDA out of memory")
    assert [record.getMessage() for record in caplog.records] == [
        "out of memory (CUDA out of memory): OOM back-off rung 1/3: gradient_checkpointing on",
        "out of memory (CUDA out of memory): OOM back-off rung 2/3: "
        "per_device_train_batch_size 8 → 4, gradient_accumulation_steps 1 → 2",
    ]
    metrics = ladder.metrics()
    assert metrics["oom_retries"] == 2
    assert (metrics["ran_batch_size"], metrics["ran_grad_accum"], metrics["ran_gradient_checkpointing"]) == (4, 2, True)
    assert metrics["ran_with"] == "batch 4×2, checkpointing on"
    assert ladder.keeps_optimization


def test_sequence_length_rung_needs_the_lengths_to_allow_it():
    start = config(per_device_train_batch_size=1, gradient_checkpointing=True)
    assert next_rung(start, train_lengths=[600] * 100).change.startswith("lora.r")  # the rows need 768
    assert next_rung(start, train_lengths=None).change.startswith("lora.r")  # no length analysis: no rung
    rung = next_rung(start, train_lengths=SHORT_ROWS)
    assert rung.config.data.max_seq_length == 256 and not rung.keeps_optimization


def test_shorten_rows_cuts_and_drops_rows_left_without_labels():
    rows = datasets.Dataset.from_dict({
        "input_ids": [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2]],
        "labels": [[-100, -100, 3, 4, 5], [-100, -100, -100, -100, 5], [-100, 2]],
        "length": [5, 5, 2],
    })
    cut = shorten_rows(rows, 3)
    assert cut["input_ids"] == [[1, 2, 3], [1, 2]]
    assert cut["labels"] == [[-100, -100, 3], [-100, 2]]
    assert cut["length"] == [3, 2]


@pytest.fixture(scope="module")
def tiny_model():
    settings = ExperimentConfig()
    return build_peft_model(settings.model, settings.lora, settings.training, "fp32")


def test_injected_oom_counts_padded_and_padding_free_samples(tiny_model):
    handle = raise_oom_above_batch(tiny_model, 2)
    try:
        tiny_model.train()
        tiny_model(input_ids=torch.ones((2, 4), dtype=torch.long))  # 2 samples fit
        with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
            tiny_model(input_ids=torch.ones((3, 4), dtype=torch.long))
        # padding-free: one row, three samples (position_ids restart twice)
        packed = {"input_ids": torch.ones((1, 7), dtype=torch.long),
                  "position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1]])}
        with pytest.raises(torch.OutOfMemoryError):
            tiny_model(**packed)
        tiny_model.eval()  # only training passes are limited
        with torch.no_grad():
            tiny_model(input_ids=torch.ones((3, 4), dtype=torch.long))
    finally:
        handle.remove()


def test_paged_optimizer_note_only_for_paged_on_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="lexiray.trial"):
        assert note_paged_optimizer_on_cpu("paged_adamw_8bit", cuda=False)
        assert not note_paged_optimizer_on_cpu("paged_adamw_8bit", cuda=True)
        assert not note_paged_optimizer_on_cpu("adamw_torch", cuda=False)
    assert [record.getMessage() for record in caplog.records] == [
        "training.optim=paged_adamw_8bit runs without paging on CPU: bitsandbytes keeps the optimizer state "
        "in ordinary CPU memory"]


def test_leaderboard_shows_the_rungs_and_what_the_trial_ran_with():
    from rich.console import Console

    from lexiray.report import TrialRecord, leaderboard_rows, print_leaderboard

    ladder = OomLadder(config())
    for _ in range(3):
        ladder.back_off("CUDA out of memory")
    reports = [{"step": 6, "eval_loss": 2.0, "total_steps": 6, **ladder.metrics()}]
    fitted = {"step": 6, "eval_loss": 2.5, "total_steps": 6, **OomLadder(config()).metrics()}
    rows = leaderboard_rows([TrialRecord("backed-off", "TERMINATED", reports, ladder.start, {}),
                             TrialRecord("fitted", "TERMINATED", [fitted], config(), {})])
    assert (rows[0].value("oom_retries"), rows[0].value("ran_with")) == (3, "batch 2×4, checkpointing on")
    assert (rows[0].batch_size, rows[0].grad_accum) == (8, 1)  # the trial's own settings stay shown
    assert (rows[1].value("oom_retries"), rows[1].value("ran_with")) == (0, None)
    console = Console(record=True, width=250)
    print_leaderboard({"metric": "eval_loss", "mode": "min", "experiment": "x", "leaderboard": rows}, console)
    assert "3: batch 2×4, checkpointing on" in console.export_text()


@pytest.mark.gpu  # CPU: the injected error above
def test_a_real_cuda_oom_is_recognised_and_its_attempt_memory_freed():
    baseline = torch.cuda.memory_allocated()

    def attempt():
        held = torch.ones(2**28, device="cuda")  # 1 GiB the failing attempt holds
        return held + torch.empty(2**50, device="cuda")  # 4 PiB: more than any GPU has

    try:
        attempt()
        pytest.fail("a 4 PiB allocation succeeded")
    except Exception as error:
        assert is_out_of_memory(error)
        message = str(error).splitlines()[0]
    free_memory()  # as the worker does, after the except block
    assert "CUDA out of memory" in message
    assert torch.cuda.memory_allocated() == baseline
