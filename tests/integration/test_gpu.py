"""GPU paths: run only where CUDA is present (their CPU counterparts check the clear errors)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_train_on_gpu_uses_mixed_precision(tmp_path, quantization, no_ray_leftovers):
    output = tmp_path / quantization
    run_cli(["train", "--set", "resources.gpus_per_trial=1", "--set", f"model.quantization={quantization}",
             "--set", "training.max_steps=12", "--set", "training.save_steps=6", "--set", "training.eval_steps=6",
             "--output", str(output)], cwd=tmp_path, check=True)
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["eval_loss_final"] < metrics["eval_loss_at_start"]
    assert metrics["final"]["peak_memory_mb"] > 0
