"""The task scorers on hand-written answers whose scores are known (parse failures
included), the eval rows as prompts + references, and choosing by task score."""

from __future__ import annotations

import math

import pytest
from sacrebleu.metrics import CHRF

from lexiray import scoring
from lexiray.results import LeaderboardRow, TrialReport


def test_vocabulary_level_accuracy_and_within_one_level():
    references = ["C1", "B2", "A1", "C2"]
    answers = ["C1", "The word is b1.", "I don't know", "A2"]  # exact, one off, unparseable, far off
    figures = scoring.score_vocabulary(answers, references)
    assert figures["level_accuracy"] == pytest.approx(1 / 4)
    assert figures["within_one_level"] == pytest.approx(2 / 4)
    assert figures["score"] == figures["level_accuracy"]
    assert scoring.parse_level("Level: c2.") == "C2" and scoring.parse_level("C12 B") is None


def test_grammar_exact_match_is_normalised_and_chrf_is_sacrebleus():
    references = ["She is always late for class.", "I went to Da Lat last summer."]
    answers = ["  she IS always   late for class.", "I have gone to Da Lat last summer."]
    figures = scoring.score_task("grammar", answers, references)
    assert figures["exact_match"] == 0.5
    expected = CHRF().corpus_score(answers, [references]).score
    assert figures["chrf"] == pytest.approx(expected)
    assert figures["score"] == pytest.approx((0.5 + expected / 100) / 2)
    perfect = scoring.score_task("grammar", references, references)
    assert perfect["exact_match"] == 1 and perfect["chrf"] == pytest.approx(100)
    assert perfect["score"] == pytest.approx(1)


def test_fluency_mae_parse_share_and_score_counting_failures_as_wrong():
    references = ["Score: 2/5. Fix the verb.", "Score: 5/5. Great.", "Score: 4/5. Good.",
                  "Score: 1/5. Rewrite."]
    answers = ["Score: 3/5. Mostly fine.", "score:5/5 perfect", "It is a nice sentence.", "Score: 5 / 5."]
    figures = scoring.score_fluency(answers, references)
    assert figures["parsed"] == pytest.approx(3 / 4)
    assert figures["mae"] == pytest.approx((1 + 0 + 4) / 3)  # over the parsed answers only
    assert figures["score"] == pytest.approx((0.75 + 1 + 0 + 0) / 4)  # unparseable: 0
    none = scoring.score_fluency(["no score", "nothing"], references[:2])
    assert none["parsed"] == 0 and math.isnan(none["mae"]) and none["score"] == 0


def test_dialogue_and_explanation_chrf_and_vietnamese_share():
    reply = ["That sounds fun! Where did you go?"]
    assert scoring.score_dialogue(reply, reply)["score"] == pytest.approx(1)
    references = ["\"Your\" là tính từ sở hữu, nên nó luôn đi kèm danh từ.",
                  "Ta nói \"an hour\" vì chữ h câm."]
    answers = ["\"Your\" là tính từ sở hữu.", "We say an hour because the h is silent."]
    figures = scoring.score_explanation(answers, references)
    assert figures["vietnamese"] == 0.5
    assert figures["chrf"] == pytest.approx(CHRF().corpus_score(answers, [references]).score)
    assert figures["score"] == pytest.approx(figures["chrf"] / 100)
    assert scoring.is_vietnamese("Việc chọn") and scoring.is_vietnamese("đi")
    assert not scoring.is_vietnamese("café à")


def test_rows_without_a_task_get_exact_match_and_chrf_and_the_task_score_is_the_mean():
    tasks = ["", "", "vocabulary", "vocabulary", "mystery"]
    references = ["hello world", "good bye", "C1", "A2", "forty-two"]
    answers = ["Hello  world", "bye", "C1", "C1", "forty-two"]
    per_task = scoring.score_answers(tasks, answers, references)
    assert sorted(per_task) == ["mystery", scoring.NO_TASK, "vocabulary"]
    assert set(per_task[scoring.NO_TASK]) == {"exact_match", "chrf", "score"}
    assert per_task[scoring.NO_TASK]["exact_match"] == 0.5
    assert per_task["mystery"]["score"] == pytest.approx(1)
    assert per_task["vocabulary"]["score"] == 0.5
    expected = (per_task[scoring.NO_TASK]["score"] + 1 + 0.5) / 3
    assert scoring.task_score(per_task) == pytest.approx(expected)
    assert scoring.task_score({}) is None
    with pytest.raises(ValueError):
        scoring.score_task("grammar", ["a"], ["a", "b"])


def test_eval_rows_split_the_last_answer_from_its_prompt():
    from lexiray.config import load_config
    from lexiray.data import prepare_data
    from lexiray.model import load_tokenizer

    config = load_config(None, ["data.max_rows=60"])
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_data(config.data, tokenizer)
    rows = scoring.eval_rows(prepared.eval, tokenizer)
    assert len(rows) == len(prepared.eval) and len(rows) >= 5
    for row in rows:
        prompt = tokenizer.decode(row.prompt_ids)
        assert prompt.endswith("<|im_start|>assistant\n"), prompt[-40:]
        assert row.reference and "<|im_end|>" not in row.reference
        assert row.stop_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    vocabulary = [row for row in rows if row.task == "vocabulary"]
    assert len(vocabulary) >= 1 and all(row.reference in scoring.CEFR_LEVELS for row in vocabulary)
    assert scoring.max_new_tokens(vocabulary) <= 8  # a level is a few tokens: generation stays short


def _row(trial_id: str, loss: float, task_score: float | None, status: str = "DONE") -> LeaderboardRow:
    return LeaderboardRow(trial_id, status, "eval_loss", loss, 12, 12, loss, best=TrialReport(eval_loss=loss),
                          task_score=task_score)


def test_select_by_task_score_takes_the_highest_scored_trial():
    from lexiray.report import select_best, selection_note

    rows = [_row("lowloss", 2.0, 0.30), _row("scored", 2.1, 0.45), _row("unscored", 2.2, None),
            _row("nan", 1.0, 0.9, status="DIVERGED")]
    chosen, selection = select_best(rows, "task_score")
    assert chosen.trial_id == "scored" and selection["best_by_metric"] == "lowloss" and selection["disagree"]
    assert "differ" in selection_note(selection, "eval_loss")
    chosen, selection = select_best(rows, "eval_loss")
    assert chosen.trial_id == "lowloss" and selection["best_by_task_score"] == "scored"
    # no trial scored: task_score falls back to the tuned metric, and says so
    chosen, selection = select_best([_row("a", 2.0, None)], "task_score")
    assert chosen.trial_id == "a" and selection["fallback"] and "no trial has a task score" in selection_note(
        selection, "eval_loss")


def test_score_run_round_trips_through_json():
    run = scoring.ScoreRun(3, [scoring.ModelScores("base", 0.1, {"grammar": {"chrf": 10.0, "score": 0.1}}, 0.5),
                               scoring.ModelScores("t1", 0.4, {"grammar": {"chrf": 40.0, "score": 0.4}}, 0.6)],
                           2.0, 40.0, "driver", {"grammar": 3})
    back = scoring.ScoreRun.from_json(run.to_json())
    assert back == run and back.base.name == "base" and [m.name for m in back.trials] == ["t1"]
    line = scoring.score_line(run)
    assert line == "task scores (3 eval rows, 2.0 s = 5% of tuning's 40 s): base 0.100 · trial t1 0.400"
    table = scoring.score_table(run)
    assert len(table) == 3 and table[0] == ["task (rows)", "base", "t1"]
    assert table[1] == ["grammar (3)", "0.100", "0.400"]


def test_mixed_adapter_batches_answer_as_each_model_alone():
    """The base and two adapters answering in one batch (peft's adapter_names) give the
    answers each gives alone: scoring shares the batches, not the models."""
    from peft import LoraConfig, get_peft_model

    from lexiray.config import load_config
    from lexiray.data import prepare_data
    from lexiray.model import load_base_model, load_tokenizer

    config = load_config(None, ["data.max_rows=60"])
    tokenizer = load_tokenizer(config.model)
    rows = [row for row in scoring.eval_rows(prepare_data(config.data, tokenizer).eval, tokenizer)
            if row.task in ("vocabulary", "grammar")]
    assert len(rows) >= 2
    # random, non-zero LoRA weights (init_lora_weights=False): each adapter changes the answers
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = get_peft_model(load_base_model(config.model, "fp32"), lora, adapter_name="one")
    model.add_adapter("two", LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "up_proj"],
                                      init_lora_weights=False))
    together = scoring.generate_answers(model, tokenizer, rows, [None, "one", "two"])
    assert len(together) == 3 and all(len(answers) == len(rows) for answers in together.values())
    with model.disable_adapter():
        assert scoring.generate_answers(model, tokenizer, rows, [None])[None] == together[None]
    for name in ("one", "two"):
        model.set_adapter(name)
        assert scoring.generate_answers(model, tokenizer, rows, [name])[name] == together[name]
    assert together["one"] != together[None] or together["two"] != together[None]
