"""What Ray imports in every trial's driver and Train controller must stay light: torch and
transformers cost seconds of CPU per process on a small machine (benchmarks/ray_overhead.py)."""

from __future__ import annotations

import subprocess
import sys

from lexiray.trial import backend_config


def _modules_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(output.split())


def test_the_trial_module_imports_neither_torch_nor_transformers():
    loaded = _modules_after("import lexiray.trial")
    assert "ray.train" in loaded  # the check sees what was imported
    assert "torch" not in loaded and "transformers" not in loaded


def test_a_single_worker_run_has_no_distributed_backend():
    from ray.train.backend import BackendConfig

    single = backend_config(num_workers=1, use_gpu=False)
    assert type(single) is BackendConfig  # no torch.distributed, no torch import in the controller
    several = backend_config(num_workers=2, use_gpu=False)
    assert type(several).__name__ == "TorchConfig" and several.backend == "gloo"
    assert backend_config(num_workers=4, use_gpu=True).backend == "nccl"


def test_the_report_and_export_load_no_ray_tune():
    """`lexiray report` / `export` read finished experiments: importing them must not pay for
    Ray Tune (seconds of imports), and the check sees Ray Tune when something loads it."""
    loaded = _modules_after("import lexiray.report")
    assert "lexiray.report" in loaded and "lexiray.storage" in loaded
    assert not {name for name in loaded if name == "ray.tune" or name.startswith("ray.tune.")}
    assert "ray.tune" in _modules_after("import lexiray.report, lexiray.tune")
