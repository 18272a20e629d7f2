"""The OOM back-off ladder in a real `lexiray train` on CPU: `--chaos oom-above-batch=N`
raises the real `torch.OutOfMemoryError` from a forward hook whenever a training pass holds
more than N samples; the trial backs off in place until its micro-batch fits."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

SHORT_RUN = ["--set", "training.max_steps=4", "--set", "training.save_steps=2", "--set", "training.eval_steps=2",
             "--set", "data.max_rows=80", "--set", "tune.max_failures=0"]


def test_trial_backs_off_to_a_micro_batch_that_fits(tmp_path, no_ray_leftovers):
    # smoke: micro-batch 8 x accumulation 1, checkpointing off; padding-free rows (the hook
    # counts the samples in a packed row)
    output = tmp_path / "run"
    result = run_cli(["train", *SHORT_RUN, "--set", "training.optim=paged_adamw_8bit",
                      "--chaos", "oom-above-batch=2", "--output", str(output)], cwd=tmp_path, check=True)
    final = json.loads((output / "metrics.json").read_text())["final"]
    assert final["oom_retries"] == 3
    assert (final["ran_gradient_checkpointing"], final["ran_batch_size"], final["ran_grad_accum"]) == (True, 2, 4)
    assert final["step"] == 4
    # the same effective batch: each optimizer step still took 8 samples
    assert final["samples_per_second"] == pytest.approx(final["steps_per_second"] * 8, rel=1e-6)
    logged = result.stdout + result.stderr
    assert "OOM back-off rung 1/3: gradient_checkpointing on" in logged
    assert "OOM back-off rung 3/3: per_device_train_batch_size 4 → 2, gradient_accumulation_steps 2 → 4" in logged
    assert logged.count("runs without paging on CPU") == 1


def test_trial_that_cannot_fit_fails_with_one_line(tmp_path, no_ray_leftovers):
    result = run_cli(["train", *SHORT_RUN, "--chaos", "oom-above-batch=1", "--output", str(tmp_path / "run")],
                     cwd=tmp_path)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if "out of GPU memory" in line]
    assert error_lines[-1].endswith(
        "training failed: out of GPU memory after 3 back-off rungs: training.per_device_train_batch_size=2 "
        "(training.gradient_accumulation_steps=4), data.max_seq_length=256, lora.r=8, training.optim=adamw_torch, "
        "gradient_checkpointing=on did not fit; raise training.oom_backoff (now 3) or use a smaller model")


def test_tuning_trial_backs_off_and_the_leaderboard_shows_it(tmp_path, no_ray_leftovers):
    # smoke searches lora.r and the micro-batch (4 or 8, effective batch 8): the micro-batch
    # halves down to 1 (same optimization), the searched r is kept
    run_cli(["tune", "--num-samples", "1", *SHORT_RUN, "--set", "training.oom_backoff=5",
             "--chaos", "oom-above-batch=1", "--storage-path", str(tmp_path / "results"), "--name", "oom"],
            cwd=tmp_path, check=True)
    root = tmp_path / "results" / "oom"
    with (root / "leaderboard.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "DONE"
    assert row["ran_with"] == "batch 1×8, checkpointing on"
    # 8 → 4 → 2 → 1 or 4 → 2 → 1, after checkpointing
    assert int(row["oom_retries"]) == {"8": 4, "4": 3}[row["batch_size"]]
    assert int(row["batch_size"]) * int(row["grad_accum"]) == 8  # the trial's own sample, as searched
    sampled_r = json.loads((root / "summary.json").read_text())["leaderboard"][0]["sample"]["lora.r"]
    assert int(row["lora_r"]) == sampled_r
