"""Per-task eval loss: each evaluation also reports eval_loss/<task> from the same forward
pass, and HF's own eval_loss stays what a plain HF Trainer computes."""

from __future__ import annotations

import random

import pytest
from transformers import Trainer

from lexiray.config import load_config
from lexiray.data import PadCollator, build_example, _to_dataset
from lexiray.hf_trainer import MODEL_COLUMNS, build_hf_trainer, eval_task_names
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
