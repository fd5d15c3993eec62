"""freeze_original with peft: the effective trainable count, the order with get_peft_model, what actually trains."""

from __future__ import annotations

import pytest
import torch

from hf_growth.growth import grow_model
from hf_growth.growth.freeze import effective_trainable_parameters, freeze_original

peft = pytest.importorskip("peft")


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )


def lora(model):
    return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))


def new_entries(model, grown) -> int:
    """Entries of ``grown`` that are not a copy of an entry of ``model``, counted from the shapes."""
    return sum(p.numel() for p in grown.parameters()) - sum(p.numel() for p in model.parameters())


def test_hidden_size_growth_after_get_peft_model_reports_the_effective_count():
    model = tiny_llama()
    grown = grow_model(model, [{"hidden_size": {"to": 48}}])
    added = new_entries(model, grown)
    peft_model = lora(grown)  # injects the adapters into `grown` itself
    lora_entries = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    summary = freeze_original(peft_model)
    # every tensor has new slices, so peft counts every entry as trainable
    assert peft_model.get_nb_trainable_parameters() == (summary["total_elements"],) * 2
    assert summary["masked"] == 21 and summary["whole"] == summary["frozen"] == 0
    assert summary["trainable_elements"] == added
    assert summary["adapter_elements"] == lora_entries
    assert summary["effective_trainable"] == added + lora_entries
    assert effective_trainable_parameters(peft_model) == (summary["effective_trainable"], summary["total_elements"])
    assert summary["effective_trainable"] < summary["total_elements"] / 2

    # what trains: the LoRA weights and only the new entries of the base weights
    ids = torch.randint(0, 64, (2, 6))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    masks = peft_model._hf_growth_freeze_masks
    assert len(masks) == 21
    for name, param in peft_model.named_parameters():
        if name in masks:
            assert param.grad is not None and param.grad[~masks[name]].abs().max() == 0, name
    assert sum(int((peft_model.get_parameter(n).grad[m] != 0).sum()) for n, m in masks.items()) > 0
    assert any(p.grad is not None and p.grad.abs().max() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_freeze_original_before_get_peft_model_is_undone():
    """peft freezes every base parameter, so only the adapters train; the docstring says to call it after."""
    grown = grow_model(tiny_llama(), [{"mlp_width": {"to": 96}}])
    summary = freeze_original(grown)
    assert effective_trainable_parameters(grown) == (summary["effective_trainable"], summary["total_elements"])
    assert summary["adapter_elements"] == 0 and summary["effective_trainable"] == summary["trainable_elements"]
    peft_model = lora(grown)
    lora_entries = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert effective_trainable_parameters(peft_model)[0] == lora_entries == peft_model.get_nb_trainable_parameters()[0]


def test_effective_count_equals_peft_count_without_masked_tensors():
    """Depth growth adds whole tensors only: peft's count and the effective count agree."""
    model = tiny_llama()
    peft_model = lora(grow_model(model, [{"num_layers": {"to": 3, "where": "top"}}]))
    summary = freeze_original(peft_model)
    assert summary["masked"] == 0
    assert peft_model.get_nb_trainable_parameters() == (summary["effective_trainable"], summary["total_elements"])
