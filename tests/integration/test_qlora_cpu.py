"""QLoRA for real on the CPU: bitsandbytes 4-bit / 8-bit layers under a LoRA adapter, trained
by the real HF Trainer with the presets' paged 8-bit optimizer (bitsandbytes falls back to
non-paged behaviour on CPU)."""

from __future__ import annotations

import pytest

from lexiray.config import load_config
from lexiray.data import prepare_data
from lexiray.hf_trainer import build_hf_trainer
from lexiray.model import build_peft_model, load_tokenizer

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("quantization, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_qlora_trains_on_cpu(tmp_path, quantization, layer):
    import torch

    config = load_config("smoke", [f"model.quantization={quantization}", "training.optim=paged_adamw_8bit",
                                   "training.max_steps=6", "training.save_steps=6", "training.eval_steps=6",
                                   "training.learning_rate=5e-3", "data.max_rows=120"])
    tokenizer = load_tokenizer(config.model)
    prepared = prepare_data(config.data, tokenizer)
    model = build_peft_model(config.model, config.lora, config.training, "fp32")
    quantized = [type(module).__name__ for module in model.modules() if type(module).__name__ == layer]
    assert quantized, f"no {layer} layers: the base model was not quantized"
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)  # only the adapter learns
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
              if "lora_B" in name}

    trainer = build_hf_trainer(config, model, tokenizer, prepared.train, prepared.eval, str(tmp_path), "fp32",
                               cuda=False)
    result = trainer.train()
    assert trainer.state.global_step == 6
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
                ).__module__.startswith("bitsandbytes")
    changed = [name for name, parameter in model.named_parameters()
               if name in before and not torch.equal(parameter.detach(), before[name])]
    assert changed, "the LoRA B matrices did not move"
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))
