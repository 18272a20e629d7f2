"""benchmarks/gpu_check.py (`make gpu-check`) on a machine without a GPU: the summary file
names every part, marks the GPU parts skipped with the reason, and still holds the memory
estimates the GPU run would compare against."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, cuda_available

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def test_cpu_run_writes_a_summary_with_each_part_and_why_it_was_skipped(tmp_path):
    if cuda_available():
        pytest.skip("a CUDA GPU is here: these parts would run (make gpu-check)")
    env = {**cli_env(), "OUT": str(tmp_path)}  # the summary goes to $OUT by default
    result = subprocess.run([sys.executable, str(SCRIPT), "--only", "memory,packing"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "gpu_check_parts_ran: 0/2"
    summary = json.loads((tmp_path / "gpu-check-summary.json").read_text())
    parts = summary["parts"]
    assert list(parts) == ["tests", "gpu_step", "memory", "packing", "tune"]
    assert summary["gpu"] is None and summary["versions"]["torch"]
    for name in ("tests", "gpu_step", "tune"):
        assert parts[name]["status"] == "skipped" and parts[name]["reason"] == "not selected (--only)"
    for name in ("memory", "packing"):
        assert parts[name]["status"] == "skipped"
        assert parts[name]["reason"].startswith("no CUDA GPU: torch.cuda.is_available() is False")
        assert parts[name]["budget_s"] > 0
    rows = parts["memory"]["estimates"]
    assert [(row["seq_len"], row["batch"]) for row in rows] == [(512, 4), (768, 2), (512, 2), (768, 2)]
    for row in rows:  # the chunked evaluation is never the estimated peak
        assert 0 < row["estimate_eval_step_gb"] < row["estimate_train_step_gb"] < row["estimate_gb"]


def test_unknown_part_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--only", "memory,speed", "--out", str(tmp_path / "s.json")],
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "unknown part(s) speed" in result.stderr
    assert not (tmp_path / "s.json").exists()
