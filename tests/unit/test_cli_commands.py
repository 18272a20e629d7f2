"""The read-only commands through the real entry point (no Ray involved)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _lexiray(*args, cwd):
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "lexiray", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, env=env)


def test_presets_table_lists_the_guide_values(tmp_path):
    result = _lexiray("presets", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in ("speed", "balanced", "quality", "smoke", "Qwen/Qwen2.5-1.5B-Instruct", "8 × 3", "4 × 6",
                     "2 × 12", "paged_adamw_32bit"):
        assert expected in result.stdout


def test_analyze_recommends_a_max_seq_length(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"task": "grammar", "input": "She go to school.", "output": "She goes to school."}\n' * 20)
    result = _lexiray("analyze", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "grammar" in result.stdout and "recommended data.max_seq_length: 256" in result.stdout


def test_analyze_missing_file_is_a_one_line_error(tmp_path):
    result = _lexiray("analyze", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: data.path") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_submit_dry_run_prints_the_ray_job_submit_call(tmp_path):
    result = _lexiray("submit", "--address", "http://127.0.0.1:8265", "--working-dir", str(tmp_path),
                      "--runtime-env", "", "--dry-run", "-c", "balanced", "--storage-path", "s3://bucket/lexiray",
                      "--name", "b1", "--set", "lora.r=8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("ray job submit --address http://127.0.0.1:8265 --submission-id lexiray-b1-")
    assert line.endswith(f"--working-dir {tmp_path} -- python -m lexiray tune -c balanced --storage-path "
                         "s3://bucket/lexiray --name b1 --set lora.r=8")
    assert "note:" not in result.stdout  # the storage is shared: no warning


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "-c", "balanced"], "give --address"),
    (["--address", "127.0.0.1:6379", "--dry-run"], "dashboard's HTTP address"),
    (["--address", "http://h:8265", "--dry-run", "--set", "lora.rr=3"], "unknown key 'lora.rr'"),
    (["--address", "http://h:8265", "--dry-run", "--bogus", "3"], "No such option: --bogus"),
    (["--address", "http://h:8265", "--dry-run", "--runtime-env", "missing.yaml"], "missing.yaml: no such file"),
])
def test_submit_refuses_bad_input_in_one_line(tmp_path, args, message):
    result = _lexiray("submit", "--working-dir", str(tmp_path), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
