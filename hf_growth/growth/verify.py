"""Measure how far two causal LMs are apart: ``max_logit_diff`` (max |logits_a - logits_b|)."""

from __future__ import annotations

import torch


def random_input_ids(vocab_size: int, *, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    """A seeded random batch of token ids, the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)


@torch.no_grad()
def max_logit_diff(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    input_ids: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 2,
    seq_len: int = 16,
) -> float:
    """Return ``max |logits_a - logits_b|`` over a batch, computed in float32.

    Both models must share a vocabulary. Without ``input_ids`` a seeded random batch of
    ``batch_size x seq_len`` tokens is used, so the number is reproducible.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> model = LlamaForCausalLM(cfg)
    >>> max_logit_diff(model, model)
    0.0
    """
    vocab_a = model_a.get_output_embeddings().weight.shape[0]
    vocab_b = model_b.get_output_embeddings().weight.shape[0]
    if vocab_a != vocab_b:
        raise ValueError(f"max_logit_diff needs the same vocabulary: {vocab_a} vs {vocab_b} output rows.")
    if input_ids is None:
        input_ids = random_input_ids(vocab_a, batch_size=batch_size, seq_len=seq_len, seed=seed)
    logits = []
    for model in (model_a, model_b):
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = model(
            input_ids=input_ids.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            use_cache=False,
        )
        logits.append(out.logits.float().cpu())
        model.train(was_training)
    diff = (logits[0] - logits[1]).abs()
    if attention_mask is not None:
        diff = diff[attention_mask.bool().cpu()]
    return diff.max().item()
