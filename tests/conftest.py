"""Shared fixtures: run the real `lexiray` command, and leave no Ray process behind.

Which Ray processes are "ours": this pytest process makes itself a child subreaper
(prctl PR_SET_CHILD_SUBREAPER), so every process a test starts stays its descendant even
after the parent that spawned it (a `lexiray` run, a raylet) exits. A Ray process is ours
when it descends from this pytest process; nothing else on the machine is ever touched.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LEXIRAY = [sys.executable, "-m", "lexiray"]
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "dashboard.py", "default_worker.py", "ray.dashboard",
                       "runtime_env/agent", "log_monitor.py", "monitor.py --logs-dir", "ray/_private/")
PR_SET_CHILD_SUBREAPER = 36
SHUTDOWN_GRACE_S = 20  # a driver's own Ray shutdown takes a few seconds
REQUIRE_GPU = "LEXIRAY_REQUIRE_GPU"  # =1: a `gpu` test where torch sees no CUDA GPU fails instead of skipping


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("RAY_ADDRESS", None)
    return env


# Two trials at a time (explicitly, never the core count), 16 steps on 200 rows, a checkpoint and
# an evaluation every 4: short trials in which a good learning rate learns something.
SIXTEEN_STEP_TRIALS = ["--num-samples", "1", "--max-concurrent", "2", "--set", "data.max_rows=200",
                       "--set", "training.max_steps=16", "--set", "training.save_steps=4",
                       "--set", "training.eval_steps=4"]
# A tune run of a few seconds a trial: 120 rows, 8 steps, an evaluation every 4, FIFO, 2 at once.
QUICK_TUNE = ["--max-concurrent", "2", "--set", "data.max_rows=120", "--set", "training.max_steps=8",
              "--set", "training.save_steps=4", "--set", "training.eval_steps=4", "--set", "tune.scheduler=fifo"]


def read_leaderboard(root: Path) -> list[dict]:
    """An experiment's leaderboard.csv rows, in rank order."""
    import csv

    with (root / "leaderboard.csv").open() as handle:
        return list(csv.DictReader(handle))


def run_cli(args: list[str], cwd: Path, timeout: float = 600, check: bool = False,
            env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*LEXIRAY, *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"lexiray {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state


def _descends_from_us(pid: int) -> bool:
    me, seen = os.getpid(), set()
    while pid and pid not in seen:
        seen.add(pid)
        parent = _parent_pid(pid)
        if parent == me:
            return True
        pid = parent
    return False


def ray_processes() -> list[int]:
    """PIDs of the Ray processes that this test session started (its descendants)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":  # exited, waiting to be reaped by us: not running
            continue
        if any(marker in command for marker in RAY_PROCESS_MARKERS) and _descends_from_us(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _reap_children() -> None:
    """As subreaper we inherit orphans: collect the exited ones so they leave /proc."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_ray_processes() -> list[int]:
    """SIGKILL our Ray processes, by pid (a test that kills a driver on purpose uses this)."""
    pids = ray_processes()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    _reap_children()
    return pids


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


@pytest.fixture
def no_ray_leftovers():
    """A test that starts Ray ends with none of its Ray processes alive: they get a grace
    period to exit on their own, then are killed, and the test fails naming them."""
    yield
    check_no_ray_leftovers()


def check_no_ray_leftovers() -> None:
    """no_ray_leftovers' check, for module-scoped fixtures that start Ray once."""
    deadline = time.time() + SHUTDOWN_GRACE_S
    while time.time() < deadline:
        _reap_children()
        if not ray_processes():
            return
        time.sleep(0.5)
    leftovers = {pid: _command_line(pid) for pid in ray_processes()}
    kill_ray_processes()
    if leftovers:
        pytest.fail(f"{len(leftovers)} Ray processes outlived the test by {SHUTDOWN_GRACE_S} s: {leftovers}")


@functools.cache
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_runtest_setup(item):
    """`gpu` tests skip where torch sees no CUDA GPU, or fail there with LEXIRAY_REQUIRE_GPU=1
    (a GPU machine's CI: a lost driver or a CPU build of torch must not pass as skips)."""
    if item.get_closest_marker("gpu") is None or cuda_available():
        return
    if os.environ.get(REQUIRE_GPU) == "1":
        pytest.fail(f"{REQUIRE_GPU}=1 but torch sees no CUDA GPU (torch.cuda.is_available() is False): "
                    "this gpu test would have been skipped", pytrace=False)
    pytest.skip(f"needs a CUDA GPU ({REQUIRE_GPU}=1 makes this a failure)")


@pytest.fixture(autouse=True)
def _fast_tests_start_no_ray(request, tmp_path_factory, monkeypatch):
    """`make test-fast` (-m "not slow") starts no Ray: a test not marked slow runs with its own
    RAY_TMPDIR (inherited by the processes it starts) and fails if a Ray session appeared there."""
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    ray_tmp = tmp_path_factory.mktemp("ray-tmp")
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    yield
    sessions = [str(path.relative_to(ray_tmp)) for path in ray_tmp.rglob("session_*")]
    if sessions:
        pytest.fail(f"a test not marked slow started Ray ({', '.join(sessions)}): mark it @pytest.mark.slow",
                    pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _adopt_orphans_and_clean_up_at_the_end():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    yield
    kill_ray_processes()


def evaluate_adapter(adapter_dir: Path, config_path: Path) -> float:
    """eval_loss of an exported adapter on its experiment's eval split, recomputed from
    scratch with the same HF Trainer builder the workers use."""
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lexiray.config import config_from_dict, read_yaml
    from lexiray.data import prepare_data
    from lexiray.hf_trainer import build_hf_trainer
    from lexiray.model import load_tokenizer

    config = config_from_dict(read_yaml(config_path))
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_data(config.data, tokenizer)
    base_name = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), str(adapter_dir))
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, scratch, "fp32",
                                   cuda=False)
        return trainer.evaluate()["eval_loss"]


def labelled_runs(tokenizer, ids, labels) -> list[str]:
    """Decoded text of each contiguous run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def registered_checkpoint_steps(experiment_state_text: str | None) -> dict[str, int]:
    """Per trial, the step of its newest checkpoint registered in Tune's experiment state
    (`experiment_state-*.json`): what a restore resumes from. A checkpoint folder appears in
    storage while the trial uploads it, and Tune registers it a moment later, when the
    driver takes the result; a kill in between resumes from the one before."""
    from ray import cloudpickle

    try:
        state = json.loads(experiment_state_text or "{}")
    except ValueError:  # caught mid-write
        return {}
    steps = {}
    for trial_json, metadata_json in state.get("trial_data", []):
        trial_id = json.loads(trial_json)["trial_id"]
        manager = json.loads(metadata_json)["checkpoint_manager"]
        latest = cloudpickle.loads(bytes.fromhex(manager["value"]))._latest_checkpoint_result
        steps[trial_id] = int(latest.metrics.get("step") or 0) if latest else 0
    return steps


def newest_experiment_state(root: Path) -> str | None:
    states = sorted(root.glob("experiment_state-*.json"))
    try:
        return states[-1].read_text() if states else None
    except OSError:
        return None
