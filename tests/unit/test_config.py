"""lexiray.config: overrides, unknown keys, validation messages, and the CLI's handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lexiray.config import ExperimentConfig, config_from_dict, load_config, parse_override, valid_keys
from lexiray.errors import ConfigError

LEXIRAY = Path(sys.executable).with_name("lexiray")

# (--set override, the dotted field the error must name)
INVALID = [
    ("lora.r=0", "lora.r"),
    ("training.learning_rate=0", "training.learning_rate"),
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size"),
    ("data.max_seq_length=8", "data.max_seq_length"),
    ("training.num_train_epochs=0", "training.num_train_epochs"),
    ("lora.dropout=1.0", "lora.dropout"),
    ("lora.dropout=-0.1", "lora.dropout"),
]


def _config_error(callable_, *args) -> str:
    with pytest.raises(ConfigError) as info:
        callable_(*args)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- overrides


def test_parse_override_int():
    key, value = parse_override("lora.r=32")
    assert key == "lora.r"
    assert value == 32 and type(value) is int


@pytest.mark.parametrize("text, expected", [
    ("training.learning_rate=1e-4", 1e-4),
    ("training.learning_rate=2.5e-4", 2.5e-4),
    ("training.learning_rate=0.001", 0.001),
    ("lora.dropout=0.1", 0.1),
])
def test_parse_override_float(text, expected):
    key, value = parse_override(text)
    assert key == text.split("=")[0]
    assert type(value) is float, f"{text!r} parsed as {type(value).__name__} {value!r}"
    assert value == pytest.approx(expected)


def test_parse_override_other_types():
    assert parse_override("training.gradient_checkpointing=false") == ("training.gradient_checkpointing", False)
    assert parse_override("model.name=Qwen/Qwen2.5-0.5B-Instruct") == ("model.name", "Qwen/Qwen2.5-0.5B-Instruct")
    assert parse_override("search.lora.r={choice: [4, 8]}") == ("search.lora.r", {"choice": [4, 8]})
    assert parse_override(" lora.r = 4") == ("lora.r", 4)


@pytest.mark.parametrize("text", ["lora.r", "=3"])
def test_parse_override_malformed(text):
    message = _config_error(parse_override, text)
    assert "--set" in message


def test_load_config_applies_override():
    config = load_config("smoke", ["lora.r=32"])
    assert config.lora.r == 32
    assert load_config("smoke").lora.r == 8  # the preset itself is untouched


def test_load_config_float_override():
    config = load_config("smoke", ["training.learning_rate=1e-4"])
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert isinstance(config.training.learning_rate, float)


def test_load_config_search_override_keeps_dotted_key():
    config = load_config("smoke", ["search.lora.r={choice: [2, 4]}"])
    assert config.search["lora.r"] == {"choice": [2, 4]}
    assert "lora" not in config.search


def test_load_config_from_yaml_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"lora": {"r": 4, "alpha": 8}, "training": {"save_steps": 20}}))
    config = load_config(path)
    assert config.name == "mine"  # taken from the file name when not set
    assert (config.lora.r, config.lora.alpha, config.training.save_steps) == (4, 8, 20)


def test_missing_config_names_presets(tmp_path):
    message = _config_error(load_config, str(tmp_path / "nope.yaml"))
    assert "smoke" in message and "speed" in message


def test_valid_keys_lists_dotted_settings():
    keys = valid_keys()
    for key in ("lora.r", "training.learning_rate", "data.max_seq_length", "model.name"):
        assert key in keys


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("lora:\n  rank: 3\n")
    message = _config_error(load_config, path)
    assert "lora.rank" in message
    assert "lora.r'" in message  # the suggestion
    assert str(path) in message


def test_unknown_key_via_set():
    message = _config_error(load_config, "smoke", ["lora.rank=3"])
    assert "lora.rank" in message
    assert "did you mean 'lora.r'" in message


def test_unknown_section():
    message = _config_error(load_config, "smoke", ["trainng.learning_rate=1e-3"])
    assert "trainng" in message


# --------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize("override, field", INVALID)
def test_invalid_value_names_field(override, field):
    message = _config_error(load_config, "smoke", [override])
    assert field in message
    assert "smoke.yaml" in message


@pytest.mark.parametrize("override, field", INVALID)
def test_invalid_value_in_dict(override, field):
    key, value = parse_override(override)
    section, name = key.split(".")
    message = _config_error(config_from_dict, {section: {name: value}}, "cfg.yaml")
    assert message.startswith("cfg.yaml")
    assert field in message


def test_eval_steps_must_divide_save_steps():
    message = _config_error(load_config, "smoke", ["training.save_steps=10", "training.eval_steps=3"])
    assert "eval_steps" in message and "save_steps" in message
    assert "10" in message and "3" in message


def test_eval_steps_dividing_save_steps_is_fine():
    config = load_config("smoke", ["training.save_steps=12", "training.eval_steps=4"])
    assert config.training.effective_eval_steps == 4
    assert ExperimentConfig().training.effective_eval_steps == ExperimentConfig().training.save_steps


def test_max_steps_zero_rejected():
    message = _config_error(load_config, "smoke", ["training.max_steps=0"])
    assert "training.max_steps" in message


@pytest.mark.parametrize("text, line", [
    ("lora:\n  r: 4\n  alpha: [8\n", 4),           # the flow list never closes: found at the end
    ("name: x\nlora:\n  r: 4\n   alpha: 8\n", 4),  # a stray indent on line 4
    ("a: 1\nb: : 2\n", 2),
])
def test_not_valid_yaml_reports_line(tmp_path, text, line):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    message = _config_error(load_config, path)
    assert message.startswith(f"{path}:{line}: not valid YAML"), message


# --------------------------------------------------------------------------- CLI


CLI_CASES = [(o,) + (f,) for o, f in INVALID] + [
    ("lora.rank=3", "lora.rank"),
    ("training.save_steps=10 training.eval_steps=3", "eval_steps"),
]


@pytest.mark.parametrize("overrides, field", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_rejects_bad_setting(tmp_path, overrides, field):
    assert LEXIRAY.is_file(), f"the lexiray entry point is missing at {LEXIRAY}"
    args = [str(LEXIRAY), "train"]
    for override in overrides.split():
        args += ["--set", override]
    args += ["--output", "out"]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    stderr = result.stderr.strip()
    assert "Traceback" not in result.stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error:")
    assert field in stderr
    if field == "lora.rank":
        assert "lora.r'" in stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "runs").exists()
