"""GPU paths: run only where CUDA is present, or fail with LEXIRAY_REQUIRE_GPU=1 (their CPU
counterparts check the clear errors: tests/unit/test_precision.py, the pre-flight refusals of
tests/unit/test_bad_inputs.py, and test_train's fp32 check)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import run_cli

pytestmark = [pytest.mark.gpu, pytest.mark.slow]  # skipped without CUDA (tests/conftest.py)


def _expected_half_precision() -> str:
    major, _ = torch.cuda.get_device_capability(0)
    return "bf16" if major >= 8 else "fp16"  # T4 (7.5): fp16; Ampere and newer: bf16


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_train_on_gpu_uses_mixed_precision(tmp_path, quantization, no_ray_leftovers):
    output = tmp_path / quantization
    run_cli(["train", "--set", "resources.gpus_per_trial=1", "--set", f"model.quantization={quantization}",
             "--set", "training.max_steps=12", "--set", "training.save_steps=6", "--set", "training.eval_steps=6",
             "--output", str(output)], cwd=tmp_path, check=True)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["final"]["precision"] == _expected_half_precision()
    assert metrics["eval_loss_final"] < metrics["eval_loss_at_start"]
    assert metrics["final"]["peak_memory_mb"] > 0  # torch.cuda.max_memory_allocated on a GPU


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_explicit_half_precision_on_gpu(tmp_path, precision, no_ray_leftovers):
    if precision == "bf16" and torch.cuda.get_device_capability(0)[0] < 8:
        result = run_cli(["train", "--set", "resources.gpus_per_trial=1", "--set", "training.precision=bf16",
                          "--output", str(tmp_path / "bf16")], cwd=tmp_path)
        assert result.returncode == 2 and "Ampere" in result.stderr  # the clear error, on a T4
        return
    output = tmp_path / precision
    run_cli(["train", "--set", "resources.gpus_per_trial=1", "--set", f"training.precision={precision}",
             "--set", "training.max_steps=6", "--set", "training.save_steps=6", "--set", "training.eval_steps=6",
             "--output", str(output)], cwd=tmp_path, check=True)
    assert json.loads((output / "metrics.json").read_text())["final"]["precision"] == precision
