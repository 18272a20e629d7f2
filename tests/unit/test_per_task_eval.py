"""Per-task eval loss: each evaluation also reports eval_loss/<task> from the same forward
pass, and HF's own eval_loss stays what a plain HF Trainer computes, though evaluation
never holds a batch's full logits (lm_head runs on chunks of answer positions)."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import Trainer

from lexiray.config import load_config
from lexiray.data import PadCollator, build_example, _to_dataset
from lexiray.hf_trainer import (MODEL_COLUMNS, answer_token_losses, build_hf_trainer,
                                decoder_and_head, eval_task_names)
from lexiray.memory import EVAL_LOSS_CHUNK_TOKENS
from lexiray.model import build_peft_model, load_tokenizer

WORDS = ("river", "window", "garden", "yellow", "quickly", "winter", "bread", "music", "teacher", "summer",
         "orange", "bicycle", "mountain", "letter", "friend", "purple", "coffee", "doctor", "pencil", "forest")


def _two_task_data(tokenizer, rows: int, seed: int):
    """Task 'constant' always answers the same; task 'random' answers three random words."""
    rng = random.Random(seed)
    examples = []
    for index in range(rows):
        prompt = " ".join(rng.choices(WORDS, k=4))
        if index % 2:
            task, answer = "constant", "Yes, that is correct."
        else:
            task, answer = "random", " ".join(rng.choices(WORDS, k=3))
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        examples.append(build_example(tokenizer, messages, task, None, "truncate"))
    return _to_dataset(examples)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = load_config("smoke", ["training.max_steps=12", "training.save_steps=12", "training.learning_rate=1e-2",
                                   "training.per_device_train_batch_size=4", "training.logging_steps=12", "search={}"])
    tokenizer = load_tokenizer(config.model)
    train_set, eval_set = _two_task_data(tokenizer, 48, seed=1), _two_task_data(tokenizer, 16, seed=2)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    output = tmp_path_factory.mktemp("per-task")
    trainer = build_hf_trainer(config, model, tokenizer, train_set, eval_set, str(output), "fp32", cuda=False)
    before = trainer.evaluate()
    trainer.train()
    return trainer, tokenizer, eval_set, before, trainer.evaluate()


def test_each_task_gets_its_own_eval_loss_and_the_constant_one_is_learnt(trained):
    trainer, _, eval_set, before, after = trained
    assert eval_task_names(eval_set) == ["constant", "random"]
    for metrics in (before, after):
        assert {"eval_loss/constant", "eval_loss/random"} <= set(metrics)
    # Constant answers are learnt almost perfectly; three random words out of twenty cannot be.
    assert after["eval_loss/constant"] < 0.25 * after["eval_loss/random"]
    assert after["eval_loss/constant"] < 0.5 * before["eval_loss/constant"]
    # the per-task losses went through the log, where Ray's report and TensorBoard read them
    logged = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert all("eval_loss/constant" in entry for entry in logged)


def test_overall_eval_loss_is_hf_own(trained, tmp_path):
    trainer, tokenizer, eval_set, _, after = trained
    plain = Trainer(model=trainer.model, args=trainer.args, eval_dataset=eval_set.select_columns(MODEL_COLUMNS),
                    data_collator=PadCollator(tokenizer.pad_token_id))
    assert after["eval_loss"] == pytest.approx(plain.evaluate()["eval_loss"], rel=1e-6)


def test_data_without_tasks_reports_no_task_losses(trained):
    trainer, _, eval_set, _, _ = trained
    untagged = eval_set.map(lambda row: {"task": ""})
    assert eval_task_names(untagged) == []
    assert eval_task_names(eval_set.remove_columns("task")) == []


def _row_losses_from_full_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed answer-token loss and count from the model's own full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    # (positions, vocabulary) as HF's loss lays them out: the log-softmax's rounding follows the layout
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                               targets.reshape(-1), reduction="none")
    return losses.view(targets.shape).sum(dim=1), (targets != -100).sum(dim=1)


@pytest.mark.parametrize("chunk_tokens", [1, 7, EVAL_LOSS_CHUNK_TOKENS])
def test_chunked_loss_equals_the_models_own_on_padded_batches(trained, chunk_tokens):
    trainer, tokenizer, eval_set, _, _ = trained
    model = trainer.model.eval()  # trained LoRA weights: the adapters must apply through the decoder
    collate = PadCollator(tokenizer.pad_token_id)
    rows = eval_set.select_columns(MODEL_COLUMNS)
    lengths = sorted({len(row["input_ids"]) for row in rows})
    assert len(lengths) > 1  # rows of different lengths: the batches are padded
    for start in range(0, len(rows), 5):  # batches of 5, 5, 5, 1 rows
        batch = collate([rows[index] for index in range(start, min(start + 5, len(rows)))])
        with torch.no_grad():
            plain = model(**batch).loss
            sums, counts = answer_token_losses(*decoder_and_head(model), batch, chunk_tokens=chunk_tokens)
        assert (sums.sum() / counts.sum()).item() == pytest.approx(plain.item(), rel=1e-5)
        full_sums, full_counts = _row_losses_from_full_logits(model, batch)
        assert counts.tolist() == full_counts.tolist()
        assert sums.tolist() == pytest.approx(full_sums.tolist(), rel=1e-5)


def test_evaluation_never_runs_lm_head_on_a_whole_batch(trained):
    """Per-task losses equal the ones from the full logits, and every lm_head call of an
    evaluation saw at most one chunk of answer positions (no rows x length logits)."""
    trainer, tokenizer, eval_set, _, _ = trained
    model = trainer.model
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    try:
        metrics = trainer.evaluate()
    finally:
        hook.remove()
    assert calls and all(len(shape) == 2 and shape[0] <= EVAL_LOSS_CHUNK_TOKENS for shape in calls)
    tasks = eval_task_names(eval_set)
    totals = torch.zeros((len(tasks), 2), dtype=torch.float64)
    for batch in trainer.get_eval_dataloader():  # the same padded batches, through the full logits
        sums, counts = _row_losses_from_full_logits(model.eval(), batch)
        totals.index_add_(0, batch["task_ids"], torch.stack([sums.double(), counts.double()], dim=1))
    for task, (loss, tokens) in zip(tasks, totals.tolist()):
        assert metrics[f"eval_loss/{task}"] == pytest.approx(loss / tokens, rel=1e-5)
