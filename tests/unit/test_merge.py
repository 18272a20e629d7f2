"""`export --merge` of a QLoRA adapter: merged into the base loaded unquantized at the
compute dtype (not into 4-bit weights), a plain HF folder, and the note says so."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lexiray.config import LoraSettings, ModelSettings, TrainingSettings, load_config
from lexiray.model import build_peft_model, load_tokenizer, merge_adapter, resolve_model_path
from lexiray.report import merge_note
from lexiray.storage import ExperimentLayout


def test_a_qlora_adapter_merges_into_the_unquantized_base(tmp_path):
    qlora = ModelSettings(name="tiny", quantization="4bit")
    no_checkpointing = TrainingSettings(gradient_checkpointing=False)
    model = build_peft_model(qlora, LoraSettings(r=4, alpha=8, dropout=0.0), no_checkpointing, "fp32")
    assert "Linear4bit" in {type(module).__name__ for module in model.modules()}  # it trained on 4-bit layers
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    load_tokenizer(qlora).save_pretrained(adapter)

    merged_dir = tmp_path / "merged"
    merge_adapter(str(adapter), str(merged_dir), qlora, "fp32")
    saved = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in saved
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert {type(module).__name__ for module in merged.modules()}.isdisjoint({"Linear4bit", "LoraLayer"})
    assert all(parameter.dtype == torch.float32 for parameter in merged.parameters())
    full = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny"))
    reference = PeftModel.from_pretrained(full, str(adapter)).eval()  # same adapter, unquantized base
    inputs = AutoTokenizer.from_pretrained(merged_dir)(["The cat sat on the mat."], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, reference(**inputs).logits, atol=1e-4)

    config = load_config("smoke", ["model.quantization=4bit"])
    row = {"trial_id": "t1", "eval_loss": 2.0, "best_checkpoint": "/c", "lora_r": 4, "lora_alpha": 8}
    note = merge_note(ExperimentLayout("/x/exp"), row, config, "fp32", "eval_loss")
    assert "QLoRA" in note and "loaded unquantized at the compute dtype (fp32), not into 4bit weights" in note
