"""`ray job submit` onto a real two-node Ray on 127.0.0.1: a head that runs the job's driver,
and a second node that alone advertises the T4 stand-in resource. The smoke tuning run
is submitted with the real `ray job submit` CLI, with `resources.accelerator_type=T4` and
shared `file://` storage; every trial must run on the second node.

Setup facts a user trying this on one machine also needs (cluster/README.md): token
authentication needs RAY_AUTH_MODE=token and the same token for both nodes and the
submitter, and each node needs its own --temp-dir (a shared one let one node's runtime-env
cleanup delete the job's working directory)."""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, REPO, cli_env, kill_ray_processes, ray_processes

pytestmark = pytest.mark.slow

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def _run(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head (1 CPU, runs the job driver) and a worker node (2 CPUs + accelerator_type:T4)
    started with `ray start`, stopped by pid afterwards (never `ray stop`, which would stop
    any other Ray of this user on the machine too)."""
    gcs_port, dashboard_port = free_port(), free_port()
    env = cli_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                       "RAY_USAGE_STATS_ENABLED": "0"}
    before = set(ray_processes())
    # Short: Ray's socket paths live under the temp dir and may not exceed 107 bytes.
    temp_root = Path(tempfile.mkdtemp(prefix="lxr-", dir="/tmp"))
    try:
        _run([*RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=1",
              # the job agent's HTTP port: Ray's default (52365) may be taken by another Ray here
              f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp_root / 'head'}"], env)
        _run([*RAY, "start", f"--address=127.0.0.1:{gcs_port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
              '--resources={"accelerator_type:T4": 2}', f"--dashboard-agent-listen-port={free_port()}",
              f"--temp-dir={temp_root / 'worker'}"], env)
        yield {"env": env, "dashboard": f"http://127.0.0.1:{dashboard_port}", "gcs": f"127.0.0.1:{gcs_port}"}
    finally:
        started = [pid for pid in ray_processes() if pid not in before]
        for pid in started:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 15
        while time.time() < deadline and [pid for pid in ray_processes() if pid in started]:
            time.sleep(0.5)
        kill_ray_processes()
        shutil.rmtree(temp_root, ignore_errors=True)


def test_submitted_tuning_job_runs_every_trial_on_the_t4_node(tmp_path, no_ray_leftovers, two_node_cluster):
    # (no_ray_leftovers first: its check runs after the cluster fixture has stopped the nodes)
    env, dashboard = two_node_cluster["env"], two_node_cluster["dashboard"]
    results = tmp_path / "results"
    submission = f"lexiray-test-{secrets.token_hex(3)}"
    entrypoint = [sys.executable, "-m", "lexiray", "tune", "--storage-path", f"file://{results}", "--name", "job",
                  "--num-samples", "1", "--set", "resources.accelerator_type=T4",
                  "--set", "search.training.learning_rate={grid: [5.0e-3, 1.0e-4]}", "--set", "search.lora.r={choice: [8]}",
                  "--set", "data.max_rows=120", "--set", "training.max_steps=12", "--set", "training.save_steps=6",
                  "--set", "training.eval_steps=6"]
    started = time.time()
    for attempt in range(12):  # the head's job agent may still be starting on a busy machine
        submit = subprocess.run([*RAY, "job", "submit", "--address", dashboard, "--submission-id", submission,
                                 "--working-dir", str(REPO), "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"),
                                 "--", *entrypoint], env=env, capture_output=True, text=True, timeout=900,
                                stdin=subprocess.DEVNULL, cwd=tmp_path)
        if "No available agent to submit job" not in submit.stderr:
            break
        time.sleep(5)
    wall = time.time() - started
    assert submit.returncode == 0, f"ray job submit exited {submit.returncode}\n{submit.stdout[-6000:]}\n{submit.stderr[-3000:]}"
    status = _run([*RAY, "job", "status", "--address", dashboard, submission], env).stdout
    assert "succeeded" in status.lower(), f"{status}\n{submit.stdout[-5000:]}\n{submit.stderr[-3000:]}"
    print(f"job {submission} succeeded in {wall:.0f} s (submit to finish)")

    nodes = json.loads(_run([*RAY, "list", "nodes", "--address", dashboard, "--format", "json", "--detail"],
                            env).stdout)
    t4_nodes = {node["node_id"] for node in nodes if "accelerator_type:T4" in node.get("resources_total", {})}
    assert len(nodes) == 2 and len(t4_nodes) == 1, nodes

    root = results / "job"
    with (root / "leaderboard.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["status"] in ("DONE", "STOPPED") for row in rows), rows
    folders = sorted(root.glob("trial_*"))
    assert len(folders) == 2, folders
    for folder in folders:
        reports = [json.loads(line) for line in (folder / "result.json").read_text().splitlines() if line.strip()]
        assert reports and {report["node_id"] for report in reports} <= t4_nodes, (folder.name, reports[-1])
    assert "best adapter:" in submit.stdout and "leaderboard" in submit.stdout
    assert "2 at a time" in submit.stdout  # the T4 node's 2 CPUs, not the head's

    # The same through `lexiray submit`, which validates the options, then runs `ray job submit`.
    result = subprocess.run([sys.executable, "-m", "lexiray", "submit", "--address", dashboard, "--working-dir",
                             str(REPO), "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--python",
                             sys.executable, "--storage-path", f"file://{results}", "--name", "via-submit",
                             "--num-samples", "1", "--set", "resources.accelerator_type=T4",
                             "--set", "search.training.learning_rate={grid: [5.0e-3]}", "--set", "data.max_rows=120",
                             "--set", "training.max_steps=6", "--set", "training.save_steps=3",
                             "--set", "training.eval_steps=3"],
                            env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.startswith("ray job submit --address " + dashboard)
    assert "follow:  ray job logs -f lexiray-via-submit-" in result.stdout
    assert (results / "via-submit" / "leaderboard.csv").is_file()


def test_resume_with_a_local_path_on_two_nodes_is_refused(tmp_path, no_ray_leftovers, two_node_cluster):
    """`lexiray resume` of an experiment in a local folder, on a multi-node cluster: one line,
    exit 2, nothing started (issue 13). The experiment needs only what resume reads first:
    its config and Tune's tuner.pkl."""
    from lexiray.config import load_config
    from lexiray.storage import ExperimentLayout, write_experiment_config

    layout = ExperimentLayout(str(tmp_path / "results" / "exp"))
    write_experiment_config(layout, load_config("smoke"), max_t=36, grace=6, concurrency=1)
    (tmp_path / "results" / "exp" / "tuner.pkl").write_bytes(b"")
    before = sorted(p.name for p in (tmp_path / "results" / "exp").iterdir())
    result = subprocess.run([sys.executable, "-m", "lexiray", "resume", layout.root, "--address",
                             two_node_cluster["gcs"]], cwd=tmp_path, env=two_node_cluster["env"], capture_output=True,
                            text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: tune.storage_path={tmp_path / 'results'} is a local folder but the cluster has 2 nodes: use "
        "s3://..., gs://... or a shared NFS mount written as file:///mnt/shared/...")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "results" / "exp").iterdir()) == before
