"""lexiray.data with the real tiny offline tokenizer: shapes, masking, loading, splitting, lengths."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter

import pytest

from lexiray.config import DEFAULT_SYSTEM_PROMPT, DEFAULT_SYSTEM_PROMPTS, DataSettings, ModelSettings
from lexiray.data import (
    PadCollator,
    analyze_lengths,
    detect_shape,
    encode_conversation,
    length_stats,
    load_records,
    percentile,
    prepare_data,
    recommend_max_seq_length,
    split_indices,
    to_messages,
)
from lexiray.errors import DataError
from lexiray.model import load_tokenizer
from tests.conftest import labelled_runs

END = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSettings())


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def prompt_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, l in zip(ids, labels) if l == -100])


# Rows of each accepted shape with the assistant turns they must train on.
LEXILINGO = [
    ({"task": "grammar", "input": "She always is late for class.", "output": "She is always late for class."},
     ["She is always late for class."]),
    ({"task": "vocabulary", "input": "scrutiny", "output": "C1"}, ["C1"]),
    ({"task": "fluency", "input": "I like very much football.", "output": "Score: 3/5. Say 'I like football very much'."},
     ["Score: 3/5. Say 'I like football very much'."]),
    ({"task": "dialogue", "input": "Hello, how are you?", "output": "I'm great, thanks! How was your day?"},
     ["I'm great, thanks! How was your day?"]),
    ({"task": "grammar", "input": "I have been to Da Lat last summer.", "output": "I went to Da Lat last summer."},
     ["I went to Da Lat last summer."]),
]
ALPACA = [
    ({"instruction": "Correct the sentence.", "input": "He go to school.", "output": "He goes to school."},
     ["He goes to school."]),
    ({"instruction": "Give a synonym of 'happy'.", "input": "", "output": "Joyful."}, ["Joyful."]),
    ({"instruction": "Translate to English.", "input": "Xin chào", "output": "Hello."}, ["Hello."]),
    ({"instruction": "Name a colour.", "output": "Blue."}, ["Blue."]),
]
CHAT = [
    ({"messages": [{"role": "user", "content": "Hi there"},
                   {"role": "assistant", "content": "Hello! How are you?"},
                   {"role": "user", "content": "Fine, thanks."},
                   {"role": "assistant", "content": "Great to hear. What did you do today?"}]},
     ["Hello! How are you?", "Great to hear. What did you do today?"]),
    ({"messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "What is the past of 'go'?"},
                   {"role": "assistant", "content": "Went."}]},
     ["Went."]),
    ({"messages": [{"role": "user", "content": "Is 'informations' correct?"},
                   {"role": "assistant", "content": "No: 'information' is uncountable."}]},
     ["No: 'information' is uncountable."]),
    ({"messages": [{"role": "user", "content": "Spell 'necessary'."},
                   {"role": "assistant", "content": "n-e-c-e-s-s-a-r-y"}]},
     ["n-e-c-e-s-s-a-r-y"]),
]
SHAREGPT = [
    ({"conversations": [{"from": "human", "value": "Correct: I has a cat."},
                        {"from": "gpt", "value": "I have a cat."}]},
     ["I have a cat."]),
    ({"conversations": [{"from": "system", "value": "You are a tutor."},
                        {"from": "human", "value": "Hi"},
                        {"from": "gpt", "value": "Hello! Ready to practise?"},
                        {"from": "human", "value": "Yes."},
                        {"from": "gpt", "value": "Great, tell me about your weekend."}]},
     ["Hello! Ready to practise?", "Great, tell me about your weekend."]),
    ({"conversations": [{"from": "human", "value": "Level of 'ubiquitous'?"},
                        {"from": "gpt", "value": "C2"}]},
     ["C2"]),
    ({"conversations": [{"from": "human", "value": "Thanks!"},
                        {"from": "gpt", "value": "You're welcome."}]},
     ["You're welcome."]),
]
SHAPES = {"lexilingo": LEXILINGO, "alpaca": ALPACA, "chat": CHAT, "sharegpt": SHAREGPT}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_encode_conversation_labels_only_assistant_text(tokenizer, shape):
    settings = DataSettings()
    for row, answers in SHAPES[shape]:
        assert detect_shape(row) == shape
        messages, _ = to_messages(row, shape, settings)
        ids, labels = encode_conversation(tokenizer, messages)
        assert len(ids) == len(labels)
        assert labelled_runs(tokenizer, ids, labels) == [answer + END for answer in answers]
        # Every non-assistant turn is prompt only.
        prompt = prompt_text(tokenizer, ids, labels)
        for message in messages:
            if message["role"] != "assistant":
                assert message["content"] in prompt
        assert "<|im_start|>assistant\n" in prompt
        # The full sequence is the rendered chat template.
        assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_prepare_data_each_shape(tokenizer, tmp_path, shape):
    rows = SHAPES[shape]
    path = write_jsonl(tmp_path / f"{shape}.jsonl", [row for row, _ in rows])
    prepared = prepare_data(DataSettings(path=str(path), eval_fraction=0.25), tokenizer)
    assert prepared.shape == shape
    assert prepared.total_rows == len(rows)
    assert prepared.bad_rows == []
    assert len(prepared.train) + len(prepared.eval) == len(rows)
    assert len(prepared.eval) >= 1
    got = []
    for dataset in (prepared.train, prepared.eval):
        for example in dataset:
            assert example["length"] == len(example["input_ids"]) == len(example["labels"])
            got.append(tuple(labelled_runs(tokenizer, example["input_ids"], example["labels"])))
    expected = [tuple(answer + END for answer in answers) for _, answers in rows]
    assert sorted(got) == sorted(expected)


def test_lexilingo_task_system_prompt(tokenizer):
    settings = DataSettings()
    messages, task = to_messages(LEXILINGO[0][0], "lexilingo", settings)
    assert task == "grammar"
    assert messages[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPTS["grammar"]}
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    messages, task = to_messages({"input": "x", "output": "y"}, "lexilingo", settings)
    assert task == "" and messages[0]["content"] == DEFAULT_SYSTEM_PROMPT


def test_alpaca_joins_instruction_and_input():
    messages, _ = to_messages(ALPACA[0][0], "alpaca", DataSettings())
    assert messages[1] == {"role": "user", "content": "Correct the sentence.\n\nHe go to school."}
    messages, _ = to_messages(ALPACA[1][0], "alpaca", DataSettings())
    assert messages[1]["content"] == "Give a synonym of 'happy'."


def test_chat_keeps_own_system_prompt():
    messages, _ = to_messages(CHAT[1][0], "chat", DataSettings())
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert sum(m["role"] == "system" for m in messages) == 1
    messages, _ = to_messages(SHAREGPT[0][0], "sharegpt", DataSettings())
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]


# --------------------------------------------------------------------------- file formats


def _lexilingo_rows(n=12):
    tasks = ["grammar", "vocabulary", "fluency"]
    return [{"task": tasks[i % 3], "input": f"Sentence number {i} to check.", "output": f"Answer {i}."}
            for i in range(n)]


def test_json_csv_parquet_load_same_rows_as_jsonl(tmp_path, tokenizer):
    rows = _lexilingo_rows()
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    as_list = tmp_path / "rows.json"
    as_list.write_text(json.dumps(rows))
    as_data = tmp_path / "wrapped.json"
    as_data.write_text(json.dumps({"data": rows}))
    as_csv = tmp_path / "rows.csv"
    with as_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["task", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    as_parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), as_parquet)

    expected = [r.row for r in load_records(str(jsonl))]
    assert expected == rows
    for path in (as_list, as_data, as_csv, as_parquet):
        assert [r.row for r in load_records(str(path))] == rows, path.name

    reference = prepare_data(DataSettings(path=str(jsonl)), tokenizer)
    for path in (as_list, as_csv, as_parquet):
        prepared = prepare_data(DataSettings(path=str(path)), tokenizer)
        assert prepared.train["input_ids"] == reference.train["input_ids"]
        assert prepared.eval["labels"] == reference.eval["labels"]


def test_record_origins(tmp_path):
    rows = _lexilingo_rows(3)
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert [r.origin for r in load_records(str(jsonl))] == [f"{jsonl}:1", f"{jsonl}:3"]
    as_csv = tmp_path / "rows.csv"
    with as_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["task", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    # CSV row numbers count the header, so they are the file's own line numbers.
    assert [r.origin for r in load_records(str(as_csv))] == [f"{as_csv}:row {n}" for n in (2, 3, 4)]


def test_bundled_sample_loads():
    records = load_records("lexilingo-sample")
    assert len(records) > 10
    assert {detect_shape(r.row) for r in records} == {"lexilingo"}


@pytest.mark.parametrize("name", ["nope.jsonl", "rows.txt"])
def test_missing_or_unsupported_file(tmp_path, name):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(DataError) as info:
        load_records(str(tmp_path / name))
    assert name in str(info.value)


# --------------------------------------------------------------------------- bad rows


def _with_bad_rows(tmp_path, good=18):
    rows = [json.dumps(row) for row in _lexilingo_rows(good)]
    rows.insert(2, '{"task": "grammar", "input": "broken"')  # line 3: invalid JSON
    rows.insert(4, json.dumps({"task": "grammar", "input": "no answer here"}))  # line 5: missing output
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_bad_rows_reported_with_origin(tmp_path, tokenizer):
    path = _with_bad_rows(tmp_path)
    prepared = prepare_data(DataSettings(path=str(path), max_bad_fraction=0.2), tokenizer)
    assert prepared.total_rows == 20
    assert len(prepared.train) + len(prepared.eval) == 18
    origins = [origin for origin, _ in prepared.bad_rows]
    assert origins == [f"{path}:3", f"{path}:5"]
    reasons = dict(prepared.bad_rows)
    assert "JSON" in reasons[f"{path}:3"]
    assert "output" in reasons[f"{path}:5"]


def test_too_many_bad_rows_raise(tmp_path, tokenizer):
    path = _with_bad_rows(tmp_path)  # 2 of 20 = 10% > 5%
    with pytest.raises(DataError) as info:
        prepare_data(DataSettings(path=str(path), max_bad_fraction=0.05), tokenizer)
    message = str(info.value)
    assert f"{path}:3" in message
    assert "max_bad_fraction" in message
    assert "\n" not in message


def test_mixed_shapes_are_bad_rows(tmp_path, tokenizer):
    rows = _lexilingo_rows(10) + [CHAT[2][0]]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    prepared = prepare_data(DataSettings(path=str(path), max_bad_fraction=0.5), tokenizer)
    assert prepared.shape == "lexilingo"
    assert [origin for origin, _ in prepared.bad_rows] == [f"{path}:11"]


# --------------------------------------------------------------------------- splitting


def _task_rows():
    counts = {"fluency": 10, "vocabulary": 7, "grammar": 12, "dialogue": 2, "explanation": 5}
    rows = []
    for task, count in counts.items():
        rows += [{"task": task, "input": f"{task} question {i}?", "output": f"{task} answer {i}."} for i in range(count)]
    return rows, counts


def test_stratified_split_keeps_every_task(tmp_path, tokenizer):
    rows, counts = _task_rows()
    path = write_jsonl(tmp_path / "tasks.jsonl", rows)
    prepared = prepare_data(DataSettings(path=str(path), eval_fraction=0.2), tokenizer)
    eval_tasks = Counter(prepared.eval["task"])
    assert set(eval_tasks) == set(counts)
    for task, count in counts.items():
        assert eval_tasks[task] == max(1, round(count * 0.2))
    assert Counter(prepared.train["task"]) + eval_tasks == Counter(counts)
    train_ids = {tuple(ids) for ids in prepared.train["input_ids"]}
    eval_ids = {tuple(ids) for ids in prepared.eval["input_ids"]}
    assert not train_ids & eval_ids


def test_eval_path_is_the_eval_set_and_all_of_path_trains(tmp_path, tokenizer):
    rows, counts = _task_rows()
    train_path = write_jsonl(tmp_path / "train.jsonl", rows)
    held_out = [{"task": "grammar", "input": f"held out {i}", "output": f"Held out {i}."} for i in range(3)]
    eval_path = write_jsonl(tmp_path / "eval.jsonl", held_out)
    prepared = prepare_data(DataSettings(path=str(train_path), eval_path=str(eval_path), eval_fraction=0.5), tokenizer)
    assert len(prepared.train) == sum(counts.values())  # no row of data.path goes to eval
    assert len(prepared.eval) == 3 and set(prepared.eval["task"]) == {"grammar"}
    decoded = [tokenizer.decode(ids) for ids in prepared.eval["input_ids"]]
    assert all(f"held out {i}" in text for i, text in enumerate(decoded))


def test_eval_path_with_bad_rows_names_that_file(tmp_path, tokenizer):
    rows, _ = _task_rows()
    train_path = write_jsonl(tmp_path / "train.jsonl", rows)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [{"task": "grammar", "input": "x"}] * 2)
    with pytest.raises(DataError, match=r"data.eval_path .*eval.jsonl: 2 of 2 rows unusable"):
        prepare_data(DataSettings(path=str(train_path), eval_path=str(eval_path)), tokenizer)


def test_split_reproducible_for_a_seed(tmp_path, tokenizer):
    rows, _ = _task_rows()
    path = write_jsonl(tmp_path / "tasks.jsonl", rows)

    def eval_ids(seed):
        prepared = prepare_data(DataSettings(path=str(path), eval_fraction=0.2, split_seed=seed), tokenizer)
        return prepared.eval["input_ids"]

    assert eval_ids(7) == eval_ids(7)
    assert any(eval_ids(seed) != eval_ids(7) for seed in (1, 2, 3))


def test_split_indices():
    tasks = ["a"] * 10 + ["b"] * 5 + ["c"]
    train, evaluation = split_indices(tasks, 0.2, seed=0)
    assert sorted(train + evaluation) == list(range(len(tasks)))
    assert Counter(tasks[i] for i in evaluation) == Counter({"a": 2, "b": 1})  # a single-row task trains
    assert (train, evaluation) == split_indices(tasks, 0.2, seed=0)


# --------------------------------------------------------------------------- overlong rows


def _lengths(tokenizer, rows, shape="lexilingo"):
    return [len(encode_conversation(tokenizer, to_messages(row, shape, DataSettings())[0])[0]) for row in rows]


def test_overlong_drop(tmp_path, tokenizer):
    short = [{"input": f"Hi {i}", "output": f"Hello {i}."} for i in range(6)]
    long = [{"input": "word " * 200, "output": "Long."} for _ in range(2)]
    limit = max(_lengths(tokenizer, short)) + 2
    assert min(_lengths(tokenizer, long)) > limit
    path = write_jsonl(tmp_path / "long.jsonl", short[:3] + long + short[3:])
    prepared = prepare_data(DataSettings(path=str(path), max_seq_length=limit, overlong="drop"), tokenizer)
    assert prepared.dropped_overlong == 2
    assert prepared.truncated == 0
    assert prepared.bad_rows == []
    assert len(prepared.train) + len(prepared.eval) == 6
    assert max(list(prepared.train["length"]) + list(prepared.eval["length"])) <= limit


def test_overlong_truncate_keeps_max_seq_length_tokens(tmp_path, tokenizer):
    short = [{"input": f"Hi {i}", "output": f"Hello {i}."} for i in range(6)]
    long = {"input": "Tell me a story.", "output": "Once upon a time " * 60}
    limit = max(_lengths(tokenizer, short)) + 10
    full_ids, full_labels = encode_conversation(tokenizer, to_messages(long, "lexilingo", DataSettings())[0])
    assert len(full_ids) > limit
    path = write_jsonl(tmp_path / "long.jsonl", short + [long])
    prepared = prepare_data(DataSettings(path=str(path), max_seq_length=limit), tokenizer)
    assert prepared.truncated == 1
    assert prepared.dropped_overlong == 0
    examples = [e for d in (prepared.train, prepared.eval) for e in d]
    assert len(examples) == 7
    truncated = [e for e in examples if e["length"] == limit]
    assert len(truncated) == 1
    assert truncated[0]["input_ids"] == full_ids[:limit]
    assert truncated[0]["labels"] == full_labels[:limit]
    assert max(e["length"] for e in examples) == limit


def test_truncation_that_leaves_no_answer_is_a_bad_row(tmp_path, tokenizer):
    rows = [{"input": f"Hi {i}", "output": f"Hello {i}."} for i in range(20)]
    rows.append({"input": "word " * 300, "output": "Short."})
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    prepared = prepare_data(DataSettings(path=str(path), max_seq_length=64), tokenizer)
    assert [origin for origin, _ in prepared.bad_rows] == [f"{path}:21"]
    assert prepared.truncated == 0


# --------------------------------------------------------------------------- lengths


def test_percentile_nearest_rank():
    assert percentile([], 50) == 0
    assert percentile([7], 99) == 7
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 51) == 3


def test_length_stats_1_to_100():
    stats = length_stats(list(range(1, 101)))
    assert stats == {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100, "rows": 100}


def test_length_stats_hand_computed():
    # 5 rows sorted [10, 20, 30, 40, 50]: rank = ceil(q/100 * 5)
    # p50 -> ceil(2.5)=3 -> 30; p90 -> ceil(4.5)=5 -> 50; p95, p99 -> 5 -> 50
    assert length_stats([40, 10, 50, 30, 20]) == {"p50": 30, "p90": 50, "p95": 50, "p99": 50, "max": 50, "rows": 5}
    # 20 rows 1..20, unsorted: p50 -> rank 10; p90 -> 18; p95 -> 19; p99 -> ceil(19.8)=20
    lengths = [(i * 7) % 20 + 1 for i in range(20)]
    assert sorted(lengths) == list(range(1, 21))
    assert length_stats(lengths) == {"p50": 10, "p90": 18, "p95": 19, "p99": 20, "max": 20, "rows": 20}


def test_length_stats_empty():
    assert length_stats([]) == {"p50": 0, "p90": 0, "p95": 0, "p99": 0, "max": 0, "rows": 0}


def test_recommend_max_seq_length():
    # 95 of 100 rows fit 300 tokens (> 256), the rest are 2000: p95 = 300 -> 384.
    lengths = [300] * 95 + [2000] * 5
    assert recommend_max_seq_length(lengths, 0.95) == 384
    assert recommend_max_seq_length([100] * 100, 0.95) == 256
    assert recommend_max_seq_length([256] * 100, 0.95) == 256
    assert recommend_max_seq_length([257] * 100, 0.95) == 384
    assert recommend_max_seq_length([600] * 90 + [700] * 10, 0.95) == 768
    assert recommend_max_seq_length([3000] * 10, 0.95) == 1024  # the cap
    # Coverage decides which rows must fit.
    lengths = [200] * 80 + [500] * 20
    assert recommend_max_seq_length(lengths, 0.8) == 256
    assert recommend_max_seq_length(lengths, 0.95) == 512


def test_analyze_lengths_matches_token_counts(tmp_path, tokenizer):
    rows, counts = _task_rows()
    rows.append({"task": "grammar", "input": "x"})  # bad row: no output
    path = write_jsonl(tmp_path / "tasks.jsonl", rows)
    settings = DataSettings(path=str(path))
    report = analyze_lengths(settings, tokenizer)

    by_task: dict[str, list[int]] = {}
    for row in rows[:-1]:
        messages, task = to_messages(row, "lexilingo", settings)
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        by_task.setdefault(task, []).append(len(ids))
    assert set(report.per_task) == set(counts)
    for task, lengths in by_task.items():
        ordered = sorted(lengths)
        stats = report.per_task[task]
        assert stats["rows"] == counts[task]
        assert stats["max"] == max(lengths)
        for q in (50, 90, 95, 99):
            assert stats[f"p{q}"] == ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]
    everything = [n for lengths in by_task.values() for n in lengths]
    assert report.overall["rows"] == len(everything)
    assert report.overall["max"] == max(everything)
    assert report.bad_rows == 1
    assert report.recommended == 256  # short rows
    assert report.truncated_by_candidate == {c: sum(n > c for n in everything) for c in (256, 384, 512, 768, 1024)}
    assert report.coverage == 0.95


# --------------------------------------------------------------------------- batching


def test_pad_collator():
    batch = PadCollator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("answer", ["  two leading spaces", "\nnewline first", "123 go", "Giải thích: thì hiện tại.",
                                    "!!!", "ends with a newline\n"])
def test_mask_boundaries_with_unusual_answers(tokenizer, answer):
    messages, _ = to_messages({"input": "question", "output": answer}, "lexilingo", DataSettings())
    ids, labels = encode_conversation(tokenizer, messages)
    assert labelled_runs(tokenizer, ids, labels) == [answer + END]
