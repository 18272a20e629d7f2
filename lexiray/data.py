"""Dataset loading, validation, chat formatting, assistant-only masking and length stats.

Runs once per experiment in the driver, never re-tokenized: a tuning run puts the tokenized
train / eval sets (Arrow tables) in Ray's object store for every trial; `lexiray train` writes
them as Arrow to `DIR/data` (`save_prepared`), memory-mapped by its workers (`load_prepared`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from lexiray.config import DataSettings
from lexiray.errors import DataError
from lexiray.tiny import BUNDLED_DATA

log = logging.getLogger(__name__)

BUNDLED_NAMES = ("lexilingo-sample", "lexiray:sample", "bundled")
LENGTH_CANDIDATES = (256, 384, 512, 768, 1024)
PERCENTILES = (50, 90, 95, 99)
# ShareGPT as LLaMA-Factory writes it: `function_call` is an assistant turn whose text is the
# JSON call, `observation` is the tool's answer.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "function_call": "tool_call", "observation": "tool", "tool": "tool"}
CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
BAD_ROWS_SHOWN = 5


class RowError(ValueError):
    """One row cannot be used; the message says why."""


@dataclass
class Record:
    row: Any
    origin: str  # "file.jsonl:12" or "dataset-id:row 12": where a bad row is reported


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    task: str
    truncated: bool = False


@dataclass
class PreparedData:
    train: Any  # datasets.Dataset with input_ids, labels, task, length
    eval: Any
    shape: str
    bad_rows: list[tuple[str, str]] = field(default_factory=list)
    truncated: int = 0
    dropped_overlong: int = 0
    total_rows: int = 0


# --------------------------------------------------------------------------- loading


def resolve_source(path: str) -> str:
    return str(BUNDLED_DATA) if path.strip().lower() in BUNDLED_NAMES else path


def _not_utf8(path: Path, data: bytes, error: UnicodeDecodeError, line: int) -> DataError:
    """Which line a decoding error is on: a file in another encoding fails as a whole."""
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return DataError(f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at column {column}): "
                     "save the file as UTF-8")


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, data, error, data.count(b"\n", 0, error.start) + 1) from None


def _records_from_jsonl(path: Path) -> Iterable[Record]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise _not_utf8(path, raw, error, number) from None
            if not line.strip():
                continue
            origin = f"{path}:{number}"
            try:
                yield Record(json.loads(line), origin)
            except json.JSONDecodeError as error:
                yield Record(RowError(f"not valid JSON ({error.msg})"), origin)


def _records_from_rows(rows: Iterable[Any], label: str, first: int = 1) -> Iterable[Record]:
    for number, row in enumerate(rows, start=first):
        yield Record(row, f"{label}:row {number}")


DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq", ".arrow")


def _looks_local(path: Path) -> bool:
    """'data/train.jsonl' is a missing file, not a Hub dataset id: it has a data file's suffix,
    or its first folder is here."""
    return path.suffix.lower() in DATA_SUFFIXES or Path(path.parts[0]).is_dir()


def load_records(path: str) -> list[Record]:
    """Read every row of a JSONL / JSON / CSV / parquet / Arrow file, a `save_to_disk`
    folder or a Hugging Face dataset id, keeping where each row came from."""
    source = resolve_source(path)
    local = Path(source).expanduser()
    if local.is_dir():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(local))
        except Exception as error:  # noqa: BLE001 - any failure here is a bad folder
            raise DataError(f"data.path {path}: a folder must be a datasets save_to_disk folder ({error})") from None
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        return list(_records_from_rows(loaded, str(local)))
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            return list(_records_from_jsonl(local))
        if suffix == ".json":
            text = _read_utf8(local)
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                return list(_records_from_jsonl(local))  # JSON Lines saved as .json
            if isinstance(data, dict):
                data = data.get("data") or data.get("train") or [data]
            if not isinstance(data, list):
                raise DataError(f"data.path {path}: a .json file must hold a list of rows")
            return list(_records_from_rows(data, str(local)))
        if suffix == ".csv":
            rows = csv.DictReader(io.StringIO(_read_utf8(local), newline=""))
            return list(_records_from_rows(rows, str(local), first=2))
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(_records_from_rows(pq.read_table(local).to_pylist(), str(local)))
        if suffix == ".arrow":
            import datasets

            return list(_records_from_rows(datasets.Dataset.from_file(str(local)), str(local)))
        raise DataError(
            f"data.path {path}: unsupported file type '{suffix}' "
            "(use .jsonl, .json, .csv, .parquet, .arrow, a save_to_disk folder or a dataset id)"
        )
    if "/" in source and not source.startswith((".", "/", "~")) and not _looks_local(local):
        import datasets

        try:
            loaded = datasets.load_dataset(source, split="train")
        except Exception as error:  # noqa: BLE001 - offline, private or misspelled ids
            raise DataError(f"data.path {path}: not a local file and not a loadable dataset id ({error})") from None
        return list(_records_from_rows(loaded, source))
    raise DataError(f"data.path {path}: no such file or folder")


# --------------------------------------------------------------------------- shapes


def detect_shape(row: Any) -> str:
    """Which of the accepted row shapes a row has: lexilingo, alpaca, chat or sharegpt."""
    if not isinstance(row, dict):
        raise RowError("a row must be a JSON object")
    if "messages" in row:
        return "chat"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        return "alpaca"
    if "task" in row or ("input" in row and "output" in row):
        return "lexilingo"
    raise RowError(
        "unknown row shape: expected {task,input,output}, {instruction,input,output}, "
        "{messages:[...]} or {conversations:[...]}"
    )


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise RowError(f"missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise RowError(f"'{key}' must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise RowError(f"'{key}' is empty")
    return value


def _parse_json_text(value: Any, what: str) -> Any:
    """Tool definitions and tool calls arrive as JSON text (LLaMA-Factory) or as JSON already."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise RowError(f"{what} is not valid JSON ({error.msg})") from None


def _tool_call(call: Any, where: str) -> dict:
    """One call in OpenAI's shape: {type: function, function: {name, arguments}}, the arguments
    a dict when they are JSON (chat templates render `arguments | tojson`)."""
    if not isinstance(call, dict):
        raise RowError(f"a tool call in {where} must be an object")
    function = call.get("function", call)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise RowError(f"a tool call in {where} has no 'name'")
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # free-text arguments are kept as written
    normalized = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(call.get("id"), str):
        normalized["id"] = call["id"]
    return normalized


def _tool_calls(value: Any, where: str) -> list[dict]:
    calls = _parse_json_text(value, where)
    calls = calls if isinstance(calls, list) else [calls]
    if not calls:
        raise RowError(f"{where} holds no tool call")
    return [_tool_call(call, where) for call in calls]


def _tools(row: dict) -> list | None:
    """The row's tool definitions (`tools`: a JSON string or a list), None when it has none."""
    tools = _parse_json_text(row.get("tools"), "'tools'")
    if tools in (None, "", []):
        return None
    tools = tools if isinstance(tools, list) else [tools]
    if not all(isinstance(tool, dict) for tool in tools):
        raise RowError("'tools' must be a list of objects")
    return tools


def _chat_turn(turn: dict, key: str, text_key: str, role: str) -> dict:
    """One OpenAI-style turn; an assistant turn may carry `tool_calls` instead of text."""
    calls, content = turn.get("tool_calls"), turn.get(text_key)
    if role == "assistant" and calls:
        if content is not None and not isinstance(content, str):
            raise RowError(f"a '{key}' turn has no text '{text_key}'")
        return {"role": "assistant", "content": content or "", "tool_calls": _tool_calls(calls, "'tool_calls'")}
    if not isinstance(content, str):
        raise RowError(f"a '{key}' turn has no text '{text_key}'")
    message = {"role": role, "content": content}
    if role == "tool" and isinstance(turn.get("tool_call_id"), str):
        message["tool_call_id"] = turn["tool_call_id"]
    return message


def _checked_turns(turns: Any, key: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise RowError(f"'{key}' must be a non-empty list")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise RowError(f"every turn in '{key}' must be an object")
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise RowError(f"unknown role {turn.get(role_key)!r} in '{key}'")
        if role == "tool_call":  # ShareGPT function_call: the turn's text is the call
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": _tool_calls(turn.get(text_key), f"a {turn[role_key]!r} turn")})
            continue
        messages.append(_chat_turn(turn, key, text_key, role))
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not any(m["content"].strip() or m.get("tool_calls") for m in assistant):
        raise RowError(f"'{key}' has no assistant turn with text")
    return messages


def _history(row: dict) -> list[dict]:
    """Alpaca `history` (LLaMA-Factory): earlier [user, assistant] pairs, trained like the last answer."""
    history = row.get("history")
    if history in (None, ""):
        return []
    pairs_ok = isinstance(history, list) and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(text, str) for text in pair)
        for pair in history
    )
    if not pairs_ok:
        raise RowError("'history' must be a list of [user, assistant] text pairs")
    return [{"role": role, "content": text} for pair in history for role, text in zip(("user", "assistant"), pair)]


def to_messages(row: Any, shape: str, settings: DataSettings) -> tuple[list[dict], str]:
    """A row of the given shape -> (chat messages, task name).

    Messages are OpenAI-style: assistant turns may carry `tool_calls`, `tool` turns hold tool
    results, and the first (system) message carries the row's tool definitions as `tools`."""
    if not isinstance(row, dict):
        raise RowError("a row must be a JSON object")
    if shape == "lexilingo" and "task" in row:
        task = _text(row, "task")  # a LexiLingo task must be text; elsewhere it is optional
    else:
        task = row.get("task") if isinstance(row.get("task"), str) else ""
    own_system = _text(row, "system", required=False) if shape != "lexilingo" else ""
    default_system = settings.system_prompts.get(task, settings.default_system_prompt)
    system = own_system if own_system.strip() else default_system
    if shape == "lexilingo":
        user, answer = _text(row, "input"), _text(row, "output")
        return [{"role": "system", "content": system}, {"role": "user", "content": user},
                {"role": "assistant", "content": answer}], task
    if shape == "alpaca":
        instruction, extra = _text(row, "instruction"), _text(row, "input", required=False)
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        return [{"role": "system", "content": system}, *_history(row), {"role": "user", "content": user},
                {"role": "assistant", "content": _text(row, "output")}], task
    if shape == "chat":
        messages = _checked_turns(row.get("messages"), "messages", "role", "content", CHAT_ROLES)
    elif shape == "sharegpt":
        messages = _checked_turns(row.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    else:
        raise RowError(f"unknown shape {shape}")
    if messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    tools = _tools(row)
    if tools:
        messages[0]["tools"] = tools
    return messages, task


# --------------------------------------------------------------------------- tokenizing


def supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders `tool_calls` itself (Qwen 2.5+, Llama 3.1+,
    Mistral...). Templates that do not would silently drop them."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = " ".join(template.values())
    return "tool_calls" in template


def _tool_call_text(message: dict) -> str:
    """An assistant turn with its tool calls written as text, the way Qwen's template writes them."""
    calls = [json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]},
                        ensure_ascii=False) for call in message.get("tool_calls", [])]
    parts = [message["content"]] if message["content"] else []
    return "\n".join(parts + [f"<tool_call>\n{call}\n</tool_call>" for call in calls])


def render_messages(tokenizer, messages: list[dict]) -> tuple[list[dict], list | None]:
    """Messages and tool definitions as the chat template takes them.

    A template without tool support gets tool calls as JSON text inside the assistant turn
    (trained like any answer), tool results as a user turn in <tool_response> tags (context)
    and the tool definitions appended to the system prompt."""
    tools = messages[0].get("tools") if messages else None
    if supports_tools(tokenizer):
        return [{k: v for k, v in m.items() if k != "tools"} for m in messages], tools
    rendered = []
    for message in messages:
        if message["role"] == "assistant":
            rendered.append({"role": "assistant", "content": _tool_call_text(message)})
        elif message["role"] == "tool":
            rendered.append({"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"})
        else:
            rendered.append({"role": message["role"], "content": message["content"]})
    if tools:
        listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        rendered[0]["content"] += f"\n\n# Tools\n<tools>\n{listed}\n</tools>"
    return rendered, None


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation: only assistant tokens (and the end-of-turn
    token after them) carry labels; every prompt token is -100. Assistant tool calls are
    assistant tokens; tool results are prompt.

    Works with any chat template that renders earlier turns as a prefix of later ones
    (Qwen, Llama, Mistral...): the span of each assistant turn is found in characters
    and mapped onto tokens through the tokenizer's offsets."""
    messages, tools = render_messages(tokenizer, messages)

    from jinja2 import TemplateError

    def render(turns: list[dict], **options) -> str:
        try:
            return tokenizer.apply_chat_template(turns, tools=tools, tokenize=False, **options)
        except TemplateError as error:  # the template's raise_exception(), e.g. roles not alternating
            raise RowError(f"the chat template rejects this conversation ({error})") from None

    full = render(messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:index], add_generation_prompt=True)
        through = render(messages[: index + 1])
        if not (full.startswith(before) and full.startswith(through)):
            raise RowError("the chat template does not render earlier turns as a prefix")
        # The template's whitespace after the end-of-turn token is not the answer.
        spans.append((len(before), len(through.rstrip())))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [-100] * len(ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(span_start <= start < span_end for span_start, span_end in spans):
            labels[position] = ids[position]
    return ids, labels


def build_example(tokenizer, messages: list[dict], task: str, max_length: int | None, overlong: str) -> Example:
    ids, labels = encode_conversation(tokenizer, messages)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        if overlong == "drop":
            raise RowError(f"{len(ids)} tokens is longer than data.max_seq_length={max_length}")
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
        if all(label == -100 for label in labels):
            raise RowError(f"no answer token is left after truncation to {max_length} tokens")
    return Example(ids, labels, task, truncated)


# --------------------------------------------------------------------------- splitting


def split_indices(tasks: list[str], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Reproducible train / eval split, stratified by task so every task is evaluated."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for index, task in enumerate(tasks):
        by_task[task].append(index)
    rng = random.Random(seed)
    train, evaluation = [], []
    for task in sorted(by_task):
        members = by_task[task]
        rng.shuffle(members)
        n_eval = max(1, round(len(members) * eval_fraction)) if len(members) >= 2 else 0
        evaluation.extend(members[:n_eval])
        train.extend(members[n_eval:])
    return sorted(train), sorted(evaluation)


# --------------------------------------------------------------------------- pipeline


def _format_records(records: list[Record], settings: DataSettings) -> tuple[list, list, str]:
    formatted, bad = [], []
    shape = None
    for record in records:
        try:
            if isinstance(record.row, RowError):
                raise record.row
            row_shape = detect_shape(record.row)
            shape = shape or row_shape
            if row_shape != shape:
                raise RowError(f"row has the {row_shape} shape but the file's rows are {shape}")
            formatted.append((record, *to_messages(record.row, shape, settings)))
        except RowError as error:
            bad.append((record.origin, str(error)))
    return formatted, bad, shape or "unknown"


def _check_bad_share(bad: list, total: int, settings: DataSettings, label: str) -> None:
    if not bad:
        return
    shown = "; ".join(f"{origin}: {reason}" for origin, reason in bad[:BAD_ROWS_SHOWN])
    rest = f" (and {len(bad) - BAD_ROWS_SHOWN} more)" if len(bad) > BAD_ROWS_SHOWN else ""
    share = len(bad) / max(total, 1)
    if share > settings.max_bad_fraction:
        raise DataError(
            f"{label}: {len(bad)} of {total} rows unusable ({share:.0%}, over "
            f"data.max_bad_fraction={settings.max_bad_fraction:.0%}): {shown}{rest}"
        )
    log.warning("%s: skipped %d unusable rows: %s%s", label, len(bad), shown, rest)


def _tokenize_all(formatted: list, tokenizer, settings: DataSettings) -> tuple[list[Example], list, int]:
    examples, bad, dropped = [], [], 0
    for record, messages, task in formatted:
        try:
            examples.append(build_example(tokenizer, messages, task, settings.max_seq_length, settings.overlong))
        except RowError as error:
            if "longer than" in str(error):
                dropped += 1
            else:
                bad.append((record.origin, str(error)))
    return examples, bad, dropped


def _to_dataset(examples: list[Example]):
    import datasets

    return datasets.Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "labels": [e.labels for e in examples],
            "task": [e.task for e in examples],
            "length": [len(e.input_ids) for e in examples],
        }
    )


def prepare_data(settings: DataSettings, tokenizer) -> PreparedData:
    """Load, validate, format, tokenize, mask and split the configured data."""
    records = load_records(settings.path)
    if settings.max_rows:
        records = records[: settings.max_rows]
    if not records:
        raise DataError(f"data.path {settings.path}: no rows (the file is empty): give it training rows")
    formatted, bad, shape = _format_records(records, settings)
    examples, bad_tokenized, dropped = _tokenize_all(formatted, tokenizer, settings)
    bad += bad_tokenized
    _check_bad_share(bad, len(records), settings, f"data.path {settings.path}")
    if not examples or all(example.truncated for example in examples):
        what = "dropped as longer" if not examples else "truncated: it is longer"
        raise DataError(f"data.path {settings.path}: every row was {what} than "
                        f"data.max_seq_length={settings.max_seq_length}; raise it (`lexiray analyze` recommends one)")
    if settings.eval_path:
        eval_records = load_records(settings.eval_path)
        eval_formatted, eval_bad, _ = _format_records(eval_records, settings)
        eval_examples, eval_bad_tok, _ = _tokenize_all(eval_formatted, tokenizer, settings)
        _check_bad_share(eval_bad + eval_bad_tok, len(eval_records), settings, f"data.eval_path {settings.eval_path}")
        if not eval_examples:
            raise DataError(f"data.eval_path {settings.eval_path}: no usable rows to evaluate on; fill it, or "
                            "remove data.eval_path to split the eval rows off data.path")
        train_examples = examples
    else:
        train_idx, eval_idx = split_indices([e.task for e in examples], settings.eval_fraction, settings.split_seed)
        train_examples = [examples[i] for i in train_idx]
        eval_examples = [examples[i] for i in eval_idx]
    if not train_examples or not eval_examples:
        raise DataError(f"data.path {settings.path}: too few rows to split into train and eval "
                        f"({len(examples)} usable); add rows or set data.eval_path")
    return PreparedData(
        train=_to_dataset(train_examples),
        eval=_to_dataset(eval_examples),
        shape=shape,
        bad_rows=bad,
        truncated=sum(e.truncated for e in examples),
        dropped_overlong=dropped,
        total_rows=len(records),
    )


def save_prepared(prepared: PreparedData, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prepared.train.save_to_disk(str(folder / "train"))
    prepared.eval.save_to_disk(str(folder / "eval"))
    summary = {
        "shape": prepared.shape, "total_rows": prepared.total_rows, "train_rows": len(prepared.train),
        "eval_rows": len(prepared.eval), "bad_rows": len(prepared.bad_rows),
        "truncated": prepared.truncated, "dropped_overlong": prepared.dropped_overlong,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return folder


def load_prepared(folder: str | Path):
    """The tokenized (train, eval) datasets, memory-mapped from a `lexiray train` run's data folder."""
    import datasets

    folder = Path(folder)
    return datasets.load_from_disk(str(folder / "train")), datasets.load_from_disk(str(folder / "eval"))


# --------------------------------------------------------------------------- lengths


def percentile(sorted_lengths: list[int], q: float) -> int:
    """Nearest-rank percentile: the smallest length that covers q% of the rows."""
    if not sorted_lengths:
        return 0
    rank = max(1, math.ceil(round(q / 100 * len(sorted_lengths), 9)))  # round: 0.999*1000
    return sorted_lengths[rank - 1]


def length_stats(lengths: list[int]) -> dict[str, int]:
    ordered = sorted(lengths)
    stats = {f"p{q}": percentile(ordered, q) for q in PERCENTILES}
    stats["max"] = ordered[-1] if ordered else 0
    stats["rows"] = len(ordered)
    return stats


def recommend_max_seq_length(lengths: list[int], coverage: float = 0.95) -> int:
    """The smallest of 256/384/512/768/1024 that covers `coverage` of the rows (guide rule)."""
    needed = percentile(sorted(lengths), coverage * 100)
    for candidate in LENGTH_CANDIDATES:
        if candidate >= needed:
            return candidate
    return LENGTH_CANDIDATES[-1]


@dataclass
class LengthReport:
    per_task: dict[str, dict[str, int]]
    overall: dict[str, int]
    recommended: int
    truncated_by_candidate: dict[int, int]
    bad_rows: int
    coverage: float


def analyze_lengths(settings: DataSettings, tokenizer) -> LengthReport:
    records = load_records(settings.path)
    formatted, bad, _ = _format_records(records, settings)
    lengths_by_task: dict[str, list[int]] = defaultdict(list)
    lengths = []
    for record, messages, task in formatted:
        try:
            ids, _ = encode_conversation(tokenizer, messages)
        except RowError:
            continue
        lengths_by_task[task or "(none)"].append(len(ids))
        lengths.append(len(ids))
    if not lengths:
        raise DataError(f"data.path {settings.path}: no usable rows to analyze")
    counts = Counter()
    for candidate in LENGTH_CANDIDATES:
        counts[candidate] = sum(length > candidate for length in lengths)
    return LengthReport(
        per_task={task: length_stats(values) for task, values in sorted(lengths_by_task.items())},
        overall=length_stats(lengths),
        recommended=recommend_max_seq_length(lengths, settings.length_coverage),
        truncated_by_candidate=dict(counts),
        bad_rows=len(bad),
        coverage=settings.length_coverage,
    )


# --------------------------------------------------------------------------- batching


class PadCollator:
    """Pads a batch to its longest row: ids with the pad token, labels with -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(feature["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


class PaddingFreeCollator:
    """`data.packing: padding_free`: a batch's rows concatenated into one row (batch dim 1),
    with no padding and no attention mask.

    `position_ids` restart at 0 at each row's first token; transformers reads a restart as a
    sequence boundary and lets each row attend only to itself (sdpa / eager / flex build a
    block-diagonal causal mask, flash attention runs its variable-length kernel).

    HF causal LMs shift labels by one inside the loss: the token at position t is trained to
    predict label t + 1. So the label of each row's first token is set to -100: otherwise the
    previous row's last token would be trained to predict it. Unpadded, that label is never
    predicted either (nothing comes before position 0), so the labelled tokens, and the loss,
    are the same as with `PadCollator`."""

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids, labels, positions = [], [], []
        for feature in features:
            ids.extend(feature["input_ids"])
            labels.append(-100)
            labels.extend(feature["labels"][1:])
            positions.extend(range(len(feature["input_ids"])))
        return {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
        }
