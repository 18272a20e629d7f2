"""`lexiray train` on smoke.yaml through a real local Ray: loss falls, the exported adapter
is the checkpoint that scored best, and a 2-worker (DDP) run trains on CPU."""

from __future__ import annotations

import json

import pytest

from tests.conftest import evaluate_adapter, run_cli

pytestmark = pytest.mark.slow


def test_train_smoke_end_to_end(tmp_path, no_ray_leftovers):
    output = tmp_path / "run"
    result = run_cli(["train", "--output", str(output)], cwd=tmp_path, check=True)
    assert "eval_loss:" in result.stdout
    assert f"tensorboard --logdir {output / 'tensorboard'}" in result.stdout

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["eval_loss_at_start"] is not None
    assert metrics["eval_loss_final"] < metrics["eval_loss_at_start"]
    evaluated_steps = [entry["step"] for entry in metrics["history"] if "eval_loss" in entry]
    assert evaluated_steps[0] == 0 and evaluated_steps[-1] == metrics["final"]["total_steps"]
    for key in ("samples_per_second", "tokens_per_second", "peak_memory_mb", "train_loss"):
        assert metrics["final"][key] > 0
    assert metrics["final"]["precision"] == "fp32"  # what the worker chose for the CPU (auto)
    assert metrics["final"]["world_size"] == 1
    assert (output / "config.yaml").is_file()
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))

    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    # the exported adapter is the checkpoint that scored best: its eval_loss, recomputed
    assert evaluate_adapter(output, output / "config.yaml") == pytest.approx(metrics["eval_loss_best"], rel=1e-4)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "I has a cat."}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base_logits = base(**inputs).logits
        model = PeftModel.from_pretrained(base, str(output))
        adapted_logits = model(**inputs).logits
    # the trained LoRA weights change what the model predicts (B matrices start at zero)
    assert (adapted_logits - base_logits).abs().max() > 1e-3


def test_two_workers_train_data_parallel_on_cpu(tmp_path, no_ray_leftovers):
    output = tmp_path / "ddp"
    run_cli(["train", "--set", "resources.num_workers=2", "--set", "resources.cpus_per_trial=1",
             "--set", "training.max_steps=6", "--set", "training.save_steps=3", "--set", "training.eval_steps=3",
             "--output", str(output)], cwd=tmp_path, check=True)
    metrics = json.loads((output / "metrics.json").read_text())
    final = metrics["final"]
    assert final["world_size"] == 2 and final["step"] == 6
    # each optimizer step took a batch on each of the two workers
    assert final["samples_per_second"] == pytest.approx(final["steps_per_second"] * 8 * 2, rel=1e-6)
    assert metrics["eval_loss_final"] < metrics["eval_loss_at_start"]
    assert (output / "adapter_model.safetensors").is_file()


def test_train_refuses_to_overwrite(tmp_path):
    output = tmp_path / "run"
    (output / "ray" / "train").mkdir(parents=True)
    result = run_cli(["train", "--output", str(output)], cwd=tmp_path)
    assert result.returncode == 2
    assert "already holds a training run" in result.stderr
