"""Nothing lost on Ctrl-C (issue 13): SIGINT or SIGTERM (`ray job stop`, Kubernetes) sent
to a running `lexiray tune` stops the trials with their checkpoints kept, writes the partial
leaderboard and prints the exact `lexiray resume` command; a second signal exits at once.
Either way `lexiray resume` then finishes the experiment.

The SIGINT run also carries an HF_TOKEN and an AWS_SECRET_ACCESS_KEY in its environment:
neither value may appear in any file of the experiment nor in anything printed, and the
weights it saves are safetensors only."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LEXIRAY, cli_env, run_cli

pytestmark = pytest.mark.slow

SECRETS = {"HF_TOKEN": "hf_lexirayTestSecret7d1c", "AWS_SECRET_ACCESS_KEY": "lexirayAwsSecret/9f2e+Q"}
# One short trial: the signal lands once it has saved its first checkpoint (step 3 of 9).
TUNE_ARGS = ["tune", "--storage-path", "results", "--name", "exp", "-n", "1",
             "--set", "data.max_rows=60", "--set", "training.max_steps=9", "--set", "training.save_steps=3",
             "--set", "training.eval_steps=3"]
# Torch's pickles of the training state, read back with weights_only=True; never the weights.
TRAINING_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}
TUNE_STATE = {"tuner.pkl", "params.pkl"}  # Ray Tune's own records of the experiment


def _interrupt(tmp_path: Path, signals: list[int], env: dict) -> subprocess.CompletedProcess:
    """Start `lexiray tune`, send the signals once a trial has reported, wait for the end."""
    out, err = tmp_path / "tune.out", tmp_path / "tune.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen([*LEXIRAY, *TUNE_ARGS], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL)
        deadline = time.time() + 300
        while " step 3/9" not in out.read_text():
            assert process.poll() is None and time.time() < deadline, f"{out.read_text()}\n{err.read_text()}"
            time.sleep(0.2)
        for sent, number in enumerate(signals, start=1):
            process.send_signal(number)
            # The next signal goes once this one has been acted on: two signals sent while
            # the main thread is inside a C call coalesce into one, as the OS allows.
            while err.read_text().count(": stopping the trials") < sent and sent < len(signals):
                assert process.poll() is None and time.time() < deadline, f"{out.read_text()}\n{err.read_text()}"
                time.sleep(0.1)
        returncode = process.wait(timeout=120)
    return subprocess.CompletedProcess(process.args, returncode, out.read_text(), err.read_text())


def _leaderboard(root: Path) -> dict[str, str]:
    with (root / "leaderboard.csv").open() as handle:
        return {row["trial_id"]: row["status"].lower() for row in csv.DictReader(handle)}


def _resume_finishes(tmp_path: Path, root: Path, env: dict) -> subprocess.CompletedProcess:
    result = run_cli(["resume", str(root)], cwd=tmp_path, env=env, timeout=300, check=True)
    statuses = _leaderboard(root)
    assert list(statuses.values()) == ["done"], statuses
    assert (root / "best" / "adapter_model.safetensors").is_file()
    return result


@pytest.fixture(scope="module")
def sigint_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sigint")
    env = cli_env() | SECRETS
    interrupted = _interrupt(tmp_path, [signal.SIGINT], env)
    root = tmp_path / "results" / "exp"
    leaderboard_after_interrupt = _leaderboard(root)
    resumed = _resume_finishes(tmp_path, root, env)
    return tmp_path, root, interrupted, leaderboard_after_interrupt, resumed


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_one_signal_stops_cleanly_and_resume_finishes(tmp_path, sigint_run, no_ray_leftovers, stop):
    if stop == "SIGINT":
        _, root, interrupted, leaderboard, _ = sigint_run
    else:
        env = cli_env()
        interrupted = _interrupt(tmp_path, [signal.SIGTERM], env)
        root = tmp_path / "results" / "exp"
        leaderboard = _leaderboard(root)
        _resume_finishes(tmp_path, root, env)
    assert interrupted.returncode == 130, interrupted.stderr
    assert f"{stop}: stopping the trials, keeping their checkpoints" in interrupted.stderr
    assert interrupted.stdout.strip().splitlines()[-1] == f"resume with: lexiray resume {root}"
    assert "Traceback" not in interrupted.stderr and "Tuner.restore" not in interrupted.stderr
    # The partial leaderboard: the trial that was training is there, unfinished.
    assert len(leaderboard) == 1 and list(leaderboard.values())[0] not in ("done", "stopped"), leaderboard
    # Its checkpoints were kept: resume continued it rather than starting over.
    assert list(root.glob("trial_*/checkpoint_*/checkpoint/adapter_model.safetensors"))
    (folder,) = root.glob("trial_*")
    reports = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
    assert reports[-1]["step"] == 9 and max(report.get("resumed_from_step", 0) for report in reports) >= 3


def test_second_sigint_exits_at_once_and_leaves_it_resumable(tmp_path, no_ray_leftovers):
    env = cli_env()
    interrupted = _interrupt(tmp_path, [signal.SIGINT, signal.SIGINT], env)
    root = tmp_path / "results" / "exp"
    assert interrupted.returncode == 130, interrupted.stderr
    assert interrupted.stderr.strip().splitlines()[-1] == f"interrupted: resume with: lexiray resume {root}"
    assert "Traceback" not in interrupted.stderr
    _resume_finishes(tmp_path, root, env)


def test_no_secret_in_any_file_or_output_and_weights_are_safetensors(sigint_run):
    tmp_path, root, interrupted, _, resumed = sigint_run
    printed = interrupted.stdout + interrupted.stderr + resumed.stdout + resumed.stderr
    files = [path for path in (tmp_path / "results").rglob("*") if path.is_file()]
    names = {path.name for path in files}
    assert {"config.yaml", "params.json", "result.json", "leaderboard.csv", "summary.json"} <= names, names
    assert any(name.startswith("events.out.tfevents") for name in names), names  # TensorBoard
    for name, value in SECRETS.items():
        assert value not in printed, name
        leaked = [str(path) for path in files if value.encode() in path.read_bytes()]
        assert not leaked, f"{name} written to {leaked}"
    weights = {path.name for path in files if path.suffix in (".bin", ".pt", ".pth", ".pkl", ".safetensors")}
    assert "adapter_model.safetensors" in weights
    assert weights - {"adapter_model.safetensors"} <= TRAINING_STATE | TUNE_STATE, weights
    assert not [path for path in (root / "best").iterdir() if path.suffix in (".bin", ".pt", ".pth")]
