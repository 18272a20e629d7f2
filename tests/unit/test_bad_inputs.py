"""The catalogue of user mistakes (issue 13): each is refused before Ray starts, as one line
`error: ...` naming the file:line or the field and the fix, exit code 2, no traceback, and
nothing written where the experiment or the output would go.

Most cases run `lexiray.cli.main` in this process (the real entry point, its parsing and its
error handling: only the interpreter start is saved); the cases that depend on the
environment a process starts with run `python -m lexiray` as a subprocess. The cases that
need a Ray cluster (resources, a multi-node resume) and a real S3 server are in
tests/integration (test_bad_inputs_ray.py, test_object_storage.py, test_cluster_job.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env, free_port, run_cli

GOOD_ROW = {"task": "grammar", "input": "She go to school.", "output": "She goes to school."}
LONG_ROW = {"task": "grammar", "input": "She go to school every day with her friends. " * 4,
            "output": "She goes to school every day with her friends. " * 4}


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def _jsonl(rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def _inputs(folder: Path) -> None:
    """The bad files the cases point at."""
    folder.mkdir()
    (folder / "syntax.yaml").write_text("name: broken\nlora:\n  r: [8, 16\n  alpha: 16\n")
    (folder / "typo.yaml").write_text("name: typo\nlora:\n  rank: 8\n")
    (folder / "empty.jsonl").write_text("")
    (folder / "latin1.jsonl").write_bytes(_jsonl([GOOD_ROW]).encode() + '{"task": "grammar", "input": "caf\u00e9",'
                                          ' "output": "ok"}\n'.encode("latin-1"))
    (folder / "not-json.jsonl").write_text("task: grammar\ninput: hello\n")
    (folder / "no-output.jsonl").write_text(_jsonl([{"task": "grammar", "input": f"row {i}"} for i in range(12)]))
    (folder / "rows.jsonl").write_text(_jsonl([GOOD_ROW] * 20))
    (folder / "one-row.jsonl").write_text(_jsonl([GOOD_ROW]))
    (folder / "long.jsonl").write_text(_jsonl([LONG_ROW] * 20))
    (folder / "a-file").write_text("not a folder")
    (folder / "taken" / "exp").mkdir(parents=True)
    (folder / "taken" / "exp" / "config.yaml").write_text("name: exp\n")


TUNE = ["tune", "--storage-path", "results", "--name", "exp"]
# (case id, arguments, what the one line must say)
CASES = [
    # configs
    ("yaml-syntax", ["tune", "-c", "inputs/syntax.yaml"], "syntax.yaml:4: not valid YAML"),
    ("unknown-key", ["tune", "-c", "inputs/typo.yaml"], "typo.yaml:3: unknown key 'lora.rank'; did you mean 'lora.r'?"),
    ("unknown-key-set", [*TUNE, "--set", "training.learning_rte=1e-3"],
     "unknown key 'training.learning_rte'; did you mean 'training.learning_rate'?"),
    ("wrong-type", [*TUNE, "--set", "lora.r=eight"], "lora.r: Input should be a valid integer"),
    ("r", [*TUNE, "--set", "lora.r=0"], "lora.r: Input should be greater than 0"),
    ("alpha", [*TUNE, "--set", "lora.alpha=-16"], "lora.alpha: Input should be greater than 0"),
    ("dropout", [*TUNE, "--set", "lora.dropout=1.5"], "lora.dropout: Input should be less than 1"),
    ("lr", [*TUNE, "--set", "training.learning_rate=0"], "training.learning_rate: Input should be greater than 0"),
    ("batch", [*TUNE, "--set", "training.per_device_train_batch_size=0"],
     "training.per_device_train_batch_size: Input should be greater than 0"),
    ("accumulation", [*TUNE, "--set", "training.gradient_accumulation_steps=0"],
     "training.gradient_accumulation_steps: Input should be greater than 0"),
    ("epochs", [*TUNE, "--set", "training.num_train_epochs=0"], "training.num_train_epochs: Input should be greater"),
    ("max-seq-length", [*TUNE, "--set", "data.max_seq_length=8"], "data.max_seq_length: Input should be greater"),
    ("num-samples", [*TUNE, "-n", "0"], "tune.num_samples: Input should be greater than 0"),
    ("max-concurrent", [*TUNE, "--max-concurrent", "0"], "tune.max_concurrent_trials: Input should be greater"),
    ("grace-max-t", [*TUNE, "--set", "tune.grace_period=12", "--set", "tune.max_t=12"],
     "grace_period (12) must be below max_t (12)"),
    ("grace-derived-max-t", [*TUNE, "--set", "tune.grace_period=36"],
     "tune.grace_period=36 but a trial has only 36 steps"),
    ("eval-steps", [*TUNE, "--set", "training.eval_steps=4"], "eval_steps (4) must divide save_steps (6)"),
    ("resume-and-overwrite", [*TUNE, "--resume", "--overwrite"], "give one"),
    # search blocks
    ("low-high", [*TUNE, "--set", "search.training.learning_rate={loguniform: [1.0e-2, 1.0e-3]}"],
     "search.training.learning_rate.loguniform: expected [low, high] with low < high"),
    ("empty-choice", [*TUNE, "--set", "search.lora.r={choice: []}"], "search.lora.r.choice: expected a non-empty list"),
    ("derived-not-a-number", [*TUNE, "--set", "search.lora.alpha=2 * model.name"],
     "search.lora.alpha: '2 * model.name' refers to model.name='tiny', which is not a number"),
    ("batch-not-dividing", [*TUNE, "--set", "search.training.per_device_train_batch_size={choice: [3, 8]}"],
     "batch 3 does not divide the effective batch 8"),
    # presets, config paths, models
    ("unknown-preset", ["tune", "-c", "fastest"], "config 'fastest' not found: give a YAML path or a preset"),
    ("missing-config", ["tune", "-c", "inputs/nope.yaml"], "config 'inputs/nope.yaml' not found"),
    ("missing-model-folder", [*TUNE, "--set", "model.name=./models/qwen"], "model.name ./models/qwen: no such model folder"),
    # data
    ("data-missing", [*TUNE, "--set", "data.path=inputs/absent.jsonl"], "data.path inputs/absent.jsonl: no such file"),
    ("data-empty", [*TUNE, "--set", "data.path=inputs/empty.jsonl"], "data.path inputs/empty.jsonl: no rows"),
    ("data-not-utf8", [*TUNE, "--set", "data.path=inputs/latin1.jsonl"],
     "latin1.jsonl:2: not UTF-8 text (byte 0xe9 at column 34): save the file as UTF-8"),
    ("data-not-json", [*TUNE, "--set", "data.path=inputs/not-json.jsonl"],
     "2 of 2 rows unusable (100%, over data.max_bad_fraction=5%): inputs/not-json.jsonl:1: not valid JSON"),
    ("data-missing-fields", [*TUNE, "--set", "data.path=inputs/no-output.jsonl"],
     "12 of 12 rows unusable (100%, over data.max_bad_fraction=5%): inputs/no-output.jsonl:1: missing 'output'; "
     "inputs/no-output.jsonl:2: missing 'output'"),
    ("data-all-too-long-drop", [*TUNE, "--set", "data.path=inputs/long.jsonl", "--set", "data.max_seq_length=64",
                                "--set", "data.overlong=drop"],
     "every row was dropped as longer than data.max_seq_length=64; raise it"),
    ("data-all-too-long-truncate", [*TUNE, "--set", "data.path=inputs/long.jsonl", "--set", "data.max_seq_length=128"],
     "every row was truncated: it is longer than data.max_seq_length=128; raise it"),
    ("eval-path-empty", [*TUNE, "--set", "data.path=inputs/rows.jsonl", "--set", "data.eval_path=inputs/empty.jsonl"],
     "data.eval_path inputs/empty.jsonl: no usable rows to evaluate on"),
    ("eval-split-empty", [*TUNE, "--set", "data.path=inputs/one-row.jsonl"],
     "too few rows to split into train and eval (1 usable); add rows or set data.eval_path"),
    # storage
    ("storage-not-writable", ["tune", "--storage-path", "/proc/lexiray_results", "--name", "exp"],
     "tune.storage_path=/proc/lexiray_results: cannot write in /proc"),
    ("storage-under-a-file", ["tune", "--storage-path", "inputs/a-file/results", "--name", "exp"],
     "a-file is a file, not a folder: choose a folder"),
    ("resume-no-experiment", ["resume", "results/nothing-here"], "results/nothing-here: not a lexiray experiment"),
    ("name-taken", ["tune", "--storage-path", "inputs/taken", "--name", "exp"],
     "exp exists already: `lexiray resume"),
    ("resume-flag-without-experiment", [*TUNE, "--resume"], "--resume: no experiment"),
    ("train-output-not-writable", ["train", "--output", "/proc/lexiray_train"], "--output=/proc/lexiray_train: cannot write"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    _inputs(tmp_path / "inputs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from lexiray import cli

    monkeypatch.setattr(sys, "argv", ["lexiray", *args])
    monkeypatch.setattr(cli._Flags, "debug", False)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return stop.value.code, capsys.readouterr().err


def _assert_refused(code: int, stderr: str, expected: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_before_ray(workdir, monkeypatch, capsys, args, expected):
    import ray

    before = _files(workdir)
    code, stderr = _main(args, monkeypatch, capsys)
    _assert_refused(code, stderr, expected)
    assert _files(workdir) == before  # no experiment folder, no output folder, nothing
    assert not ray.is_initialized()


def test_debug_option_shows_the_traceback(workdir, monkeypatch, capsys):
    code, stderr = _main([*TUNE, "--set", "data.path=inputs/empty.jsonl", "--debug"], monkeypatch, capsys)
    assert code == 2
    assert "Traceback" in stderr and stderr.strip().splitlines()[-1].startswith("error: data.path")


def test_debug_is_read_from_the_option_not_the_arguments(workdir, monkeypatch, capsys):
    # '--debug' as the value of another option is no --debug.
    code, stderr = _main(["tune", "--name", "--debug", "--set", "lora.r=0"], monkeypatch, capsys)
    _assert_refused(code, stderr, "lora.r: Input should be greater than 0")


# ------------------------------------------------------------------ the environment a process starts with


def _refused_in_subprocess(args: list[str], cwd: Path, env: dict, expected: str) -> None:
    before = _files(cwd)
    result = run_cli(args, cwd=cwd, env=env, timeout=120)
    _assert_refused(result.returncode, result.stderr, expected)
    assert _files(cwd) == before


def test_model_not_reachable_offline(tmp_path):
    env = cli_env() | {"HF_HUB_OFFLINE": "1"}
    _refused_in_subprocess([*TUNE, "--set", "model.name=lexiray-test/no-such-model"], tmp_path, env,
                           "model.name lexiray-test/no-such-model: not in the local Hugging Face cache and "
                           "HF_HUB_OFFLINE is set: without network give a local model folder, or warm the Hugging "
                           "Face cache first")


def test_s3_endpoint_unreachable_fails_fast(tmp_path):
    env = cli_env() | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}
    _refused_in_subprocess(["tune", "--storage-path", "s3://lexiray-absent/results", "--name", "exp"], tmp_path, env,
                           "tune.storage_path=s3://lexiray-absent/results: cannot reach bucket 'lexiray-absent'")


@pytest.mark.parametrize("setting", ["model.quantization=4bit", "training.optim=paged_adamw_8bit"])
def test_bitsandbytes_without_a_cpu_backend(tmp_path, setting):
    """A bitsandbytes without backends/cpu (before 0.45) first on the path, as where it is installed."""
    shadow = tmp_path / "old-site" / "bitsandbytes"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("__version__ = '0.41.0'\n")
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env() | {"PYTHONPATH": f"{shadow.parent}:{cli_env().get('PYTHONPATH', '')}".rstrip(":")}
    _refused_in_subprocess([*TUNE, "--set", setting], work, env,
                           f"{setting} on CPU trials (resources.gpus_per_trial=0): this bitsandbytes has no CPU backend")


# ------------------------------------------------------------- half precision no GPU of the trials can serve

HALF_PRECISION_CASES = [
    # (case id, settings, what the one line must say)
    ("fp16-cpu-trials", ["training.precision=fp16"],
     "training.precision=fp16 needs a CUDA GPU but trials get none (resources.gpus_per_trial=0)"),
    ("bf16-cpu-trials", ["training.precision=bf16"],
     "training.precision=bf16 needs a CUDA GPU but trials get none (resources.gpus_per_trial=0)"),
    ("bf16-on-t4", ["resources.gpus_per_trial=1", "resources.accelerator_type=T4", "training.precision=bf16"],
     "training.precision=bf16 needs an Ampere or newer GPU; resources.accelerator_type=T4 (compute capability 7.5)"),
    ("bf16-on-v100", ["resources.gpus_per_trial=0.5", "resources.accelerator_type=V100", "training.precision=bf16"],
     "resources.accelerator_type=V100 (compute capability 7.0) has none: use training.precision=fp16 or auto"),
    ("searched-bf16-on-t4", ["resources.gpus_per_trial=1", "resources.accelerator_type=T4",
                             "search.training.precision={choice: [fp16, bf16]}"],
     "search.training.precision=bf16 needs an Ampere or newer GPU"),
]


@pytest.mark.parametrize("command", [["train", "-c", "smoke", "-o", "out"], [*TUNE, "-c", "smoke"], ["plan"]],
                         ids=["train", "tune", "plan"])
@pytest.mark.parametrize("settings, expected", [case[1:] for case in HALF_PRECISION_CASES],
                         ids=[case[0] for case in HALF_PRECISION_CASES])
def test_half_precision_without_a_gpu_for_it(workdir, monkeypatch, capsys, command, settings, expected):
    import ray

    before = _files(workdir)
    code, stderr = _main([*command, *(arg for setting in settings for arg in ("--set", setting))], monkeypatch, capsys)
    _assert_refused(code, stderr, expected)
    assert _files(workdir) == before  # no output folder, no experiment folder
    assert not ray.is_initialized()


@pytest.mark.parametrize("settings", [
    ["training.precision=fp16", "resources.gpus_per_trial=1"],
    ["training.precision=fp16", "resources.gpus_per_trial=1", "resources.accelerator_type=T4"],
    ["training.precision=bf16", "resources.gpus_per_trial=1", "resources.accelerator_type=A100"],
    ["training.precision=bf16", "resources.gpus_per_trial=1"],  # no type named: the worker's choose_precision decides
    ["training.precision=auto", "resources.gpus_per_trial=1", "resources.accelerator_type=T4"],
    ["training.precision=fp32"],
])
def test_half_precision_a_gpu_can_serve_passes_the_check(settings):
    from lexiray.config import load_config
    from lexiray.model import check_precision

    check_precision(load_config("smoke", settings))
