"""lexiray.model.choose_precision on described hardware, and lexiray.chaos.parse_chaos."""

from __future__ import annotations

import pytest

from lexiray.chaos import ChaosSpec, parse_chaos
from lexiray.errors import ConfigError, ResourceError
from lexiray.model import Hardware, choose_precision

CPU = Hardware(cuda=False)
T4 = Hardware(cuda=True, gpu_name="Tesla T4", compute_capability=(7, 5))
V100 = Hardware(cuda=True, gpu_name="Tesla V100", compute_capability=(7, 0))
A100 = Hardware(cuda=True, gpu_name="NVIDIA A100", compute_capability=(8, 0))
H100 = Hardware(cuda=True, gpu_name="NVIDIA H100", compute_capability=(9, 0))


@pytest.mark.parametrize("hardware, expected", [(CPU, "fp32"), (T4, "fp16"), (V100, "fp16"),
                                                (A100, "bf16"), (H100, "bf16")])
def test_auto_precision(hardware, expected):
    assert choose_precision("auto", hardware) == expected


def test_bf16_capability():
    assert not CPU.bf16
    assert not T4.bf16
    assert A100.bf16 and H100.bf16
    assert not Hardware(cuda=False, compute_capability=(8, 0)).bf16


@pytest.mark.parametrize("requested, hardware", [("fp32", CPU), ("fp32", T4), ("fp16", T4), ("fp16", A100),
                                                 ("bf16", A100), ("fp32", A100)])
def test_explicit_precision_allowed(requested, hardware):
    assert choose_precision(requested, hardware) == requested


@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_half_precision_on_cpu_fails(requested):
    with pytest.raises(ResourceError) as info:
        choose_precision(requested, CPU)
    message = str(info.value)
    assert "\n" not in message
    assert "CUDA" in message
    assert requested in message


def test_bf16_on_t4_fails():
    with pytest.raises(ResourceError) as info:
        choose_precision("bf16", T4)
    message = str(info.value)
    assert "\n" not in message
    assert "Ampere" in message
    assert "Tesla T4" in message and "7.5" in message
    assert "fp16" in message  # the fix


@pytest.mark.parametrize("text, expected", [
    ("kill-worker@step=3", ChaosSpec("kill-worker", 3)),
    ("kill-save@step=12", ChaosSpec("kill-save", 12)),
    ("  kill-worker@step=1\n", ChaosSpec("kill-worker", 1)),
    ("kill-worker@step=9,trial=1", ChaosSpec("kill-worker", 9, trial_index=1)),
    ("oom-above-batch=2", ChaosSpec("oom-above-batch", batch_limit=2)),
    ("oom-above-batch=1,trial=3", ChaosSpec("oom-above-batch", trial_index=3, batch_limit=1)),
])
def test_parse_chaos_good(text, expected):
    assert parse_chaos(text) == expected


@pytest.mark.parametrize("text", ["kill-worker@step=0", "kill-worker", "kill-worker@step=", "kill-worker@step=-1",
                                  "kill-all@step=3", "kill-worker@epoch=3", "kill-worker@step=3x", "",
                                  "KILL-WORKER@step=3", "kill-worker@step=3,trial=", "kill-worker@step=3,trial=x",
                                  "oom-above-batch=0", "oom-above-batch", "oom-above-batch@step=3"])
def test_parse_chaos_bad(text):
    with pytest.raises(ConfigError) as info:
        parse_chaos(text)
    message = str(info.value)
    assert "kill-worker@step=N" in message
    assert "\n" not in message


def test_chaos_bound_to_a_marker_and_its_trial(tmp_path):
    bound = ChaosSpec("kill-save", 4).bound_to(tmp_path)
    assert bound == ChaosSpec("kill-save", 4, 0, str(tmp_path / ".chaos-fired"))
    assert bound.hits_trial("a1b2c_00000") and not bound.hits_trial("a1b2c_00001")
    assert ChaosSpec("kill-worker", 4, trial_index=1).hits_trial("a1b2c_00001")
