"""`lexiray tune` with two Ray Train workers per trial, end to end: the path where a trial is a
full Train worker group (torch.distributed, gloo) whose reports reach Tune through the run's
mailbox actor (lexiray.channel). A worker is SIGKILLed mid-trial and the trial resumes from its
Train checkpoint; the driver is SIGKILLed mid-experiment and `lexiray resume` finishes it; then
the leaderboard, the report, the best adapter and an export of the other trial."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, evaluate_adapter, kill_ray_processes, run_cli

pytestmark = pytest.mark.slow

TOTAL_STEPS = 24
SAVE_STEPS = 4


def _reports(trial_folder: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_folder / "result.json").read_text().splitlines() if line.strip()]


def _reported_steps(root: Path) -> dict[str, int]:
    """Per trial, the newest step it reported (lexiray's history, written as each result
    arrives). A multi-worker trial's Train run persists the checkpoint before the report
    leaves the workers, and resumes from its own storage: a reported step is resumable."""
    steps = {}
    for history in (root / "finished" / "history").glob("*.jsonl"):
        complete = history.read_text().splitlines()[:-1] if not history.read_text().endswith("\n") else \
            history.read_text().splitlines()  # a line being written is read next time
        lines = [json.loads(line) for line in complete if line.strip()]
        steps[history.stem] = max((line.get("step") or 0 for line in lines), default=0)
    return steps


def _train_checkpoints(root: Path, trial_id: str) -> list[str]:
    """The checkpoints a multi-worker trial's Train run persisted (trials/<id>/checkpoint_*)."""
    return sorted(path.name for path in (root / "trials" / trial_id).rglob("checkpoint_*") if path.is_dir())


def test_two_workers_per_trial_tune_survives_a_worker_kill_and_a_driver_kill(tmp_path, no_ray_leftovers):
    root = tmp_path / "results" / "mw"
    args = [sys.executable, "-m", "lexiray", "tune", "--num-samples", "1", "--max-concurrent", "1",
            "--storage-path", str(tmp_path / "results"), "--name", "mw",
            "--set", "resources.num_workers=2", "--set", "resources.cpus_per_trial=1",
            "--set", "tune.scheduler=fifo", "--set", "data.max_rows=200",
            "--set", "search.training.learning_rate={grid: [5.0e-3, 3.0e-3]}", "--set", "search.lora.r={choice: [8]}",
            "--set", f"training.max_steps={TOTAL_STEPS}", "--set", f"training.save_steps={SAVE_STEPS}",
            "--set", f"training.eval_steps={SAVE_STEPS}", "--chaos", "kill-worker@step=6"]
    log = (tmp_path / "tune.log").open("w+")
    process = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    midway: dict[str, int] = {}
    try:
        deadline = time.time() + 480
        while time.time() < deadline:
            finished = {p.stem for p in (root / "finished").glob("*.json")}
            steps = _reported_steps(root)
            midway = {t: s for t, s in steps.items() if t not in finished and 0 < s < TOTAL_STEPS}
            if finished and midway:
                break
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"tune exited early ({process.returncode}): {log.read()[-3000:]}")
            time.sleep(0.3)
        else:
            raise AssertionError("timed out waiting for one trial finished and the other midway")
        done_before = finished
        checkpoints_before = {t: _train_checkpoints(root, t) for t in done_before}
        os.killpg(process.pid, signal.SIGKILL)  # the driver and its local Ray head, at once
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    kill_ray_processes()
    log.seek(0)
    first_run = log.read()
    assert len(done_before) == 1 and len(midway) == 1, (done_before, midway)
    # the worker kill hit the first trial: Tune retried it, Train resumed it from step 4
    assert (root / ".chaos-fired").read_text().startswith("kill-worker@step=6")
    assert "failed (failure 1): restarting it from its last checkpoint" in first_run
    (killed,) = done_before
    assert killed.endswith("_00000")
    killed_reports = _reports(root / f"trial_{killed}")
    assert [r["step"] for r in killed_reports] == list(range(SAVE_STEPS, TOTAL_STEPS + 1, SAVE_STEPS))
    assert killed_reports[-1]["resumed_from_step"] == 4 and killed_reports[-1]["world_size"] == 2
    assert all(r["training_pid"] != r["pid"] for r in killed_reports)  # trained in its workers, not its actor
    assert len(checkpoints_before[killed]) >= 1

    result = run_cli(["resume", str(root)], cwd=tmp_path, check=True, timeout=600)
    with (root / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["status"] == "DONE" for row in rows), rows
    assert _train_checkpoints(root, killed) == checkpoints_before[killed]  # not trained again
    ((interrupted, saved_step),) = midway.items()
    reports = _reports(root / f"trial_{interrupted}")
    assert reports[-1]["step"] == TOTAL_STEPS and reports[-1]["world_size"] == 2
    assert max(r.get("resumed_from_step", 0) for r in reports) >= saved_step > 0

    # what is read afterwards: the report, the best adapter, an export of the other trial
    assert "best adapter:" in result.stdout
    summary = json.loads((root / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["best"]["trial_id"] == rows[0]["trial_id"]
    assert (root / "report" / "README.md").is_file() and (root / "report" / "eval_loss.png").is_file()
    best = json.loads((root / "best" / "metrics.json").read_text())
    assert best["eval_loss_best"] == pytest.approx(float(rows[0]["eval_loss"]))
    # The exported adapter loads and evaluates. (Not to the reported figure: two workers'
    # evaluation reports a different eval_loss than one process recomputes, see ARCHITECTURE.)
    assert 0 < evaluate_adapter(root / "best", root / "config.yaml") < 20
    exported = tmp_path / "other"
    run_cli(["export", str(root), "--trial", rows[1]["trial_id"], "-o", str(exported)], cwd=tmp_path, check=True)
    other = json.loads((exported / "metrics.json").read_text())
    assert other["eval_loss_best"] == pytest.approx(float(rows[1]["eval_loss"]))
