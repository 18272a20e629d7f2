"""tests/conftest.py's rules for the suite itself: `gpu` tests skip without CUDA unless
LEXIRAY_REQUIRE_GPU=1 fails them, and a test not marked slow must not start Ray. Checked on a
small suite run by a real pytest with that conftest as its plugin."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, cli_env

SUITE = '''
from pathlib import Path

import pytest
from ray._common.utils import get_default_ray_temp_dir


def start_a_ray_session():  # what ray.init leaves first: a session folder in Ray's temp root
    Path(get_default_ray_temp_dir(), "session_2026-01-01_00-00-00_000000_1").mkdir(parents=True)


@pytest.mark.gpu
def test_on_a_gpu():
    pass


def test_fast_but_starts_ray():
    start_a_ray_session()


@pytest.mark.slow
def test_slow_and_starts_ray():
    start_a_ray_session()


def test_fast():
    pass
'''


def _run_suite(tmp_path, **overrides) -> str:
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: g\n    slow: s\naddopts = --strict-markers\n")
    (tmp_path / "ray").mkdir(exist_ok=True)
    env = {key: value for key, value in cli_env().items() if key != "LEXIRAY_REQUIRE_GPU"}
    # no GPU visible, this checkout's conftest, and Ray's temp root (the slow test writes there) in tmp_path
    env |= {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(tmp_path / "ray"),
            "COLUMNS": "400", **overrides}  # COLUMNS: summary lines in full
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rA",
                             "-q", "test_suite.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-2000:]
    return result.stdout


def test_gpu_tests_skip_without_cuda_and_fast_tests_must_not_start_ray(tmp_path):
    out = _run_suite(tmp_path)
    assert "needs a CUDA GPU (LEXIRAY_REQUIRE_GPU=1 makes this a failure)" in out
    assert ("ERROR test_suite.py::test_fast_but_starts_ray - Failed: a test not marked slow started Ray "
            "(ray/session_2026-01-01_00-00-00_000000_1): mark it @pytest.mark.slow") in out
    assert "PASSED test_suite.py::test_slow_and_starts_ray" in out and "PASSED test_suite.py::test_fast" in out
    assert out.strip().splitlines()[-1].startswith("3 passed, 1 skipped, 1 error")


def test_require_gpu_turns_the_skip_into_a_failure(tmp_path):
    out = _run_suite(tmp_path, LEXIRAY_REQUIRE_GPU="1")
    assert "ERROR test_suite.py::test_on_a_gpu - Failed: LEXIRAY_REQUIRE_GPU=1 but torch sees no CUDA GPU" in out
    assert out.strip().splitlines()[-1].startswith("3 passed, 2 errors")  # the gpu test and the Ray one
