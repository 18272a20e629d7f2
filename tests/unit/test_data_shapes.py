"""Dataset shapes as people bring them (LLaMA-Factory, Axolotl, FastChat, OpenAI fine-tuning):
Alpaca `history` and `system`, ShareGPT `system` / `tools` / function_call / observation, OpenAI
`tool_calls` and `tool` turns. Checked on the labelled tokens of the real tiny tokenizer, with its
own template (no tool support: calls become JSON text) and with a tool-aware Qwen 2.5 template."""

from __future__ import annotations

import copy
import json

import pytest

from lexiray.config import DEFAULT_SYSTEM_PROMPT, DataSettings, ModelSettings
from lexiray.data import detect_shape, encode_conversation, prepare_data, supports_tools, to_messages
from lexiray.model import load_tokenizer
from tests.conftest import labelled_runs

END = "<|im_end|>"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}}}}
CALL = {"name": "get_weather", "arguments": {"city": "Hanoi"}}
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Hanoi"}}\n</tool_call>'
RESULT = '{"temperature": 31, "sky": "sunny"}'
ANSWER = "It is sunny and 31 degrees in Hanoi."

# Qwen 2.5's tool handling, cut down: the template renders tools, tool_calls and tool turns itself.
QWEN_TOOL_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '\\n\\n# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages[1:] %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + (message.content or '') }}"
    "{%- for call in message.tool_calls or [] %}{%- if message.content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' }}"
    "{{- call.function.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

ALPACA_HISTORY = {
    "instruction": "And the past of 'eat'?", "input": "", "output": "Ate.",
    "system": "You are a terse grammar tutor.",
    "history": [["Past of 'go'?", "Went."], ["Past of 'see'?", "Saw."]],
}
SHAREGPT_TOOLS = {
    "system": "You help travellers.",
    "tools": json.dumps([WEATHER_TOOL["function"]]),  # LLaMA-Factory writes tools as a JSON string
    "conversations": [
        {"from": "human", "value": "What's the weather in Hanoi?"},
        {"from": "function_call", "value": json.dumps(CALL)},
        {"from": "observation", "value": RESULT},
        {"from": "gpt", "value": ANSWER},
    ],
}
OPENAI_TOOLS = {
    "tools": [WEATHER_TOOL],
    "messages": [
        {"role": "user", "content": "What's the weather in Hanoi?"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps(CALL["arguments"])}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
        {"role": "assistant", "content": ANSWER},
    ],
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelSettings())


@pytest.fixture(scope="module")
def tool_tokenizer(tokenizer):
    aware = copy.deepcopy(tokenizer)
    aware.chat_template = QWEN_TOOL_TEMPLATE
    return aware


def encoded(tokenizer, row):
    messages, _ = to_messages(row, detect_shape(row), DataSettings())
    ids, labels = encode_conversation(tokenizer, messages)
    prompt = tokenizer.decode([t for t, l in zip(ids, labels) if l == -100])
    return labelled_runs(tokenizer, ids, labels), prompt


def test_alpaca_history_turns_and_system_are_kept(tokenizer):
    answers, prompt = encoded(tokenizer, ALPACA_HISTORY)
    assert answers == ["Went." + END, "Saw." + END, "Ate." + END]
    assert "You are a terse grammar tutor." in prompt and DEFAULT_SYSTEM_PROMPT not in prompt
    assert prompt.index("Past of 'go'?") < prompt.index("Past of 'see'?") < prompt.index("And the past of 'eat'?")


def test_tiny_template_has_no_tool_support(tokenizer, tool_tokenizer):
    assert not supports_tools(tokenizer)
    assert supports_tools(tool_tokenizer)


@pytest.mark.parametrize("row", [SHAREGPT_TOOLS, OPENAI_TOOLS], ids=["sharegpt", "openai"])
def test_tool_calls_as_json_text_without_template_support(tokenizer, row):
    answers, prompt = encoded(tokenizer, row)
    # The call is trained like assistant text; the tool's result is context only.
    assert answers == [CALL_TEXT + END, ANSWER + END]
    assert f"<|im_start|>user\n<tool_response>\n{RESULT}\n</tool_response>{END}" in prompt
    assert '"name": "get_weather", "description": "Weather of a city"' in prompt  # the tool definitions
    assert "get_weather" not in "".join(answers[1:])


@pytest.mark.parametrize("row", [SHAREGPT_TOOLS, OPENAI_TOOLS], ids=["sharegpt", "openai"])
def test_tool_calls_through_a_tool_aware_template(tool_tokenizer, row):
    answers, prompt = encoded(tool_tokenizer, row)
    assert answers == [CALL_TEXT + END, ANSWER + END]
    assert f"<tool_response>\n{RESULT}\n</tool_response>" in prompt
    assert "# Tools\n<tools>\n" in prompt and '"name": "get_weather"' in prompt


def test_sharegpt_system_field_replaces_the_default_prompt(tokenizer):
    _, prompt = encoded(tokenizer, SHAREGPT_TOOLS)
    assert prompt.startswith("<|im_start|>system\nYou help travellers.")
    assert DEFAULT_SYSTEM_PROMPT not in prompt


def test_sharegpt_tools_given_as_a_list(tokenizer):
    row = dict(SHAREGPT_TOOLS, tools=[WEATHER_TOOL["function"]])
    assert encoded(tokenizer, row) == encoded(tokenizer, SHAREGPT_TOOLS)


def test_several_calls_in_one_function_call_turn(tokenizer):
    second = {"name": "get_weather", "arguments": {"city": "Hue"}}
    turns = copy.deepcopy(SHAREGPT_TOOLS["conversations"])
    turns[1]["value"] = json.dumps([CALL, second])
    answers, _ = encoded(tokenizer, dict(SHAREGPT_TOOLS, conversations=turns))
    assert answers[0] == CALL_TEXT + "\n" + CALL_TEXT.replace("Hanoi", "Hue") + END


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_unusable_tool_rows_are_reported_per_row(tmp_path, tokenizer):
    broken_call = copy.deepcopy(SHAREGPT_TOOLS)
    broken_call["conversations"][1]["value"] = "get_weather(Hanoi"
    broken_tools = dict(SHAREGPT_TOOLS, tools="[{not json")
    nameless = copy.deepcopy(SHAREGPT_TOOLS)
    nameless["conversations"][1]["value"] = json.dumps({"arguments": {}})
    rows = [SHAREGPT_TOOLS] * 20 + [broken_call, broken_tools, nameless]
    prepared = prepare_data(DataSettings(path=_write(tmp_path / "tools.jsonl", rows), max_bad_fraction=0.5),
                            tokenizer)
    assert prepared.shape == "sharegpt"
    assert len(prepared.train) + len(prepared.eval) == 20
    reasons = dict(prepared.bad_rows)
    assert reasons[f"{tmp_path}/tools.jsonl:21"].startswith("a 'function_call' turn is not valid JSON")
    assert reasons[f"{tmp_path}/tools.jsonl:22"].startswith("'tools' is not valid JSON")
    assert reasons[f"{tmp_path}/tools.jsonl:23"] == "a tool call in a 'function_call' turn has no 'name'"


def test_alpaca_history_that_is_not_pairs_is_a_bad_row(tmp_path, tokenizer):
    rows = [ALPACA_HISTORY] * 20 + [dict(ALPACA_HISTORY, history=[["only the question"]])]
    prepared = prepare_data(DataSettings(path=_write(tmp_path / "a.jsonl", rows), max_bad_fraction=0.5), tokenizer)
    assert prepared.bad_rows == [(f"{tmp_path}/a.jsonl:21", "'history' must be a list of [user, assistant] text pairs")]
    first = prepared.train[0]
    assert sum(label != -100 for label in first["labels"]) == len(
        tokenizer("Went.<|im_end|>Saw.<|im_end|>Ate.<|im_end|>", add_special_tokens=False)["input_ids"])
