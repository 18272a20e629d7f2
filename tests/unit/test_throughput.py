"""ThroughputMeter: only training steps are timed; samples, tokens and steps per second;
resumed runs count from where they resumed."""

from __future__ import annotations

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from lexiray.hf_trainer import ThroughputMeter


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _args(tmp_path, batch=4, accumulation=2):
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulation, use_cpu=True, report_to=[])


def _run(meter, state, args, clock, steps, step_seconds, pause_seconds, tokens_per_step):
    control = TrainerControl()
    meter.on_train_begin(args, state, control)
    for _ in range(steps):
        meter.on_step_begin(args, state, control)
        clock.now += step_seconds
        state.global_step += 1
        state.num_input_tokens_seen += tokens_per_step
        meter.on_step_end(args, state, control)
        clock.now += pause_seconds  # an evaluation or a save: not training time


def test_rates_count_training_time_only(tmp_path):
    clock, wall = FakeClock(), FakeClock()
    wall.now = 100.0
    meter = ThroughputMeter(started_at=97.5, clock=clock, wall_clock=wall)
    state = TrainerState(max_steps=10)
    args = _args(tmp_path)
    _run(meter, state, args, clock, steps=10, step_seconds=0.5, pause_seconds=1.0, tokens_per_step=300)
    metrics = meter.metrics(args, state)
    assert metrics["steps_per_second"] == pytest.approx(2.0)
    assert metrics["samples_per_second"] == pytest.approx(2.0 * 4 * 2)  # batch x accumulation x world
    assert metrics["tokens_per_second"] == pytest.approx(600.0)
    # the phase rate includes the pauses between the first and the last step
    assert metrics["phase_steps_per_second"] == pytest.approx(10 / (10 * 0.5 + 9 * 1.0))
    assert metrics["startup_s"] == pytest.approx(2.5)
    assert metrics["total_steps"] == 10 and metrics["world_size"] == 1 and metrics["resumed_from_step"] == 0
    assert metrics["peak_memory_mb"] > 0


def test_a_resumed_run_counts_from_its_restore_point(tmp_path):
    clock = FakeClock()
    meter = ThroughputMeter(clock=clock)
    state = TrainerState(max_steps=12, global_step=6, num_input_tokens_seen=5000)
    args = _args(tmp_path, batch=2, accumulation=1)
    _run(meter, state, args, clock, steps=6, step_seconds=0.25, pause_seconds=0.0, tokens_per_step=100)
    metrics = meter.metrics(args, state)
    assert metrics["resumed_from_step"] == 6
    assert metrics["steps_per_second"] == pytest.approx(4.0)
    assert metrics["tokens_per_second"] == pytest.approx(400.0)  # not the 5000 seen before the restore
    assert "startup_s" not in metrics  # no launch time given


def test_peak_memory_counts_from_the_reset_as_a_reused_trial_actor_needs():
    import torch

    from lexiray.hf_trainer import peak_memory_mb, reset_peak_memory

    if torch.cuda.is_available():  # torch's own peak statistics
        buffer = torch.empty(300 * 2**20, dtype=torch.uint8, device="cuda")
    else:  # the process's peak resident set
        buffer = bytearray(300 * 2**20)
        buffer[:: 4096] = b"x" * len(buffer[:: 4096])  # touch every page: resident
    del buffer
    before = peak_memory_mb()
    reset_peak_memory()
    assert peak_memory_mb() < before - 200


def test_peak_memory_resets_after_a_thread_that_allocated_has_exited():
    """A trial actor's earlier trial allocated in threads that are gone (data loading, Ray's
    own): on Linux every thread's exit folds the peak so far into the process's ru_maxrss for
    good, so the next trial's peak must come from what the reset does reset."""
    import threading

    import torch

    from lexiray.hf_trainer import peak_memory_mb, reset_peak_memory

    def allocate(megabytes: int):
        if torch.cuda.is_available():
            return torch.ones(megabytes * 2**20, dtype=torch.uint8, device="cuda")
        buffer = bytearray(megabytes * 2**20)
        buffer[:: 4096] = b"x" * len(buffer[:: 4096])  # touch every page: resident
        return buffer

    thread = threading.Thread(target=lambda: allocate(300))  # allocates, frees, exits
    thread.start()
    thread.join()
    before = peak_memory_mb()
    reset_peak_memory()
    after = peak_memory_mb()
    assert after < before - 200, (before, after)
    held = allocate(100)  # and what the next trial allocates still counts
    assert peak_memory_mb() > after + 80
    del held


def test_a_process_started_by_a_bigger_one_resets_to_its_own_peak():
    """A trial actor's process is started by a bigger one (Ray's worker pool, a driver): the
    process's ru_maxrss keeps the parent's peak at exec for good, and the reset must not."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    ballast = bytearray(600 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # resident in this process when the child starts
    child = ("import json; from pathlib import Path; from lexiray.hf_trainer import peak_memory_mb, reset_peak_memory; "
             "reset_peak_memory(); "
             "rss = next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines() "
             "if l.startswith('VmRSS:')) / 1024; "
             "print(json.dumps([peak_memory_mb(), rss]))")
    env = cli_env() | {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}  # the CPU measure, this checkout
    result = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    peak, resident = json.loads(result.stdout.strip().splitlines()[-1])
    assert peak < resident + 100, (peak, resident)  # its own, not the 600 MB more of the process that started it
    del ballast
