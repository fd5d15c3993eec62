"""The real SmolLM2-135M grown on every function-preserving axis at once."""

from __future__ import annotations

import pytest
import torch

PLAN = [
    {"mlp_width": 2048},
    {"num_heads": {"to": 12, "num_key_value_heads": 4}},
    {"hidden_size": 768},
    {"num_layers": {"to": 36, "where": "interleave"}},
]


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_grown_on_every_axis(smollm2):
    # measured: max |Δlogits| 4.9e-05 (random batch), 3.8e-05 (prompt); 134.5M -> 264.3M parameters
    from hf_growth.growth import grow_model
    from hf_growth.growth.verify import max_logit_diff

    model, tokenizer = smollm2
    grown = grow_model(model, PLAN, seed=0)
    cfg = grown.config
    assert (
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.hidden_size,
        cfg.num_hidden_layers,
    ) == (2048, 12, 4, 768, 36)
    assert getattr(cfg, "quantization_config", None) is None
    assert max_logit_diff(model, grown) <= 1e-4
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert max_logit_diff(model, grown, ids) <= 1e-4
    with torch.no_grad():
        a = model.generate(ids, max_new_tokens=10, do_sample=False)
        b = grown.generate(ids, max_new_tokens=10, do_sample=False)
    assert tokenizer.decode(a[0]) == tokenizer.decode(b[0])


def test_embedded_smollm2_is_trainable(smollm2, tmp_path):
    """The de-quantised GGUF model is a plain model: the Trainer accepts it (it refuses `is_quantized` models)."""
    from transformers import Trainer, TrainingArguments

    model, _ = smollm2
    assert not model.is_quantized and model.hf_quantizer is None
    assert getattr(model.config, "quantization_config", None) is None
    trainer = Trainer(model=model, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    assert trainer.model is model
