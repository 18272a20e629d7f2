"""`lexiray train` on smoke.yaml through a real local Ray: loss falls, adapter loads and generates."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

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
    assert (output / "config.yaml").is_file()
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, str(output))
    tokenizer = AutoTokenizer.from_pretrained(str(output))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "I has a cat."}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = generated[0, inputs["input_ids"].shape[1]:]
    assert len(new_tokens) > 0
    assert isinstance(tokenizer.decode(new_tokens, skip_special_tokens=True), str)
    # the LoRA weights really were trained: B matrices start at zero
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained)


def test_train_refuses_to_overwrite(tmp_path):
    output = tmp_path / "run"
    (output / "ray" / "train").mkdir(parents=True)
    result = run_cli(["train", "--output", str(output)], cwd=tmp_path)
    assert result.returncode == 2
    assert "already holds a training run" in result.stderr
