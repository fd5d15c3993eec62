"""Representation collapse: the matrix entropy of each layer's token representations (Seq-VCR, papers.md §1).

For one sequence with token representations Z ∈ R^{T×d}, K = Z Zᵀ (or Zᵀ Z, whichever is smaller: they share
their non-zero eigenvalues), p_i = λ_i(K) / tr K and S = −Σ p_i log p_i. The normalised entropy is
S / log(min(T, d)), in [0, 1]: 1 when all directions carry equal energy, 0 for a rank-1 (collapsed) sequence.
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import eval_mode, iter_batches, model_device


def matrix_entropy(
    z: torch.Tensor, mask: torch.Tensor | None = None, *, center: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Matrix entropy of each sequence in ``z`` (``(T, d)`` or ``(B, T, d)``): ``(raw, normalised)`` per sequence.

    ``mask`` (``(B, T)``, true = real token) drops padded rows; ``center`` subtracts each sequence's mean token
    first (off by default, as in the paper). Eigenvalues are computed in float64.

    >>> import math
    >>> raw, norm = matrix_entropy(torch.eye(4))
    >>> round(float(raw), 4) == round(math.log(4), 4), float(norm)
    (True, 1.0)
    """
    if z.dim() == 2:
        z = z[None]
        mask = None if mask is None else mask.reshape(1, -1)
    work = torch.float32 if z.device.type == "mps" else torch.float64
    z = z.to(work)
    if mask is None:
        mask = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
    mask = mask.to(device=z.device, dtype=torch.bool)
    weights = mask.to(work)[..., None]
    if center:
        count = weights.sum(1, keepdim=True).clamp_min(1)
        z = z - (z * weights).sum(1, keepdim=True) / count
    z = z * weights  # padded rows become zero: they add only zero eigenvalues
    tokens, dim = z.shape[1], z.shape[2]
    gram = z @ z.transpose(1, 2) if tokens <= dim else z.transpose(1, 2) @ z
    if work == torch.float32:  # MPS: no float64, take the eigenvalues on the CPU
        gram = gram.cpu().double()
    eigenvalues = torch.linalg.eigvalsh(gram).clamp_min(0)
    trace = eigenvalues.sum(-1, keepdim=True)
    p = eigenvalues / trace.clamp_min(torch.finfo(eigenvalues.dtype).tiny)
    raw = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(-1)
    raw = torch.where(trace[..., 0] > 0, raw.clamp_min(0), torch.zeros_like(raw))
    rank_bound = torch.clamp(mask.sum(1).to(raw.device, raw.dtype), max=dim)
    log_bound = torch.log(rank_bound.clamp_min(1))
    normalised = torch.where(log_bound > 0, raw / log_bound.clamp_min(1e-300), torch.zeros_like(raw))
    return raw, normalised


class LayerEntropy(list):
    """Per-layer normalised matrix entropy (a ``list[float]``) with the raw values in ``.raw`` (nats).

    Index 0 is the embedding output, index i the output of block i (for Hugging Face models the last entry
    is taken after the final norm). ``num_sequences`` is how many sequences were averaged.
    """

    raw: list[float]
    num_sequences: int

    def to_dict(self) -> dict[str, Any]:
        return {"normalized": list(self), "raw": list(self.raw), "num_sequences": self.num_sequences}


def layer_entropy(model: torch.nn.Module, batches: Any, *, center: bool = False, skip_tokens: int = 0) -> LayerEntropy:
    """Matrix entropy of the token representations at every layer, averaged over all sequences of ``batches``.

    ``batches``: a tensor of ``input_ids``, a mapping with ``input_ids`` (+ ``attention_mask``), or an iterable
    of those. Runs on the model's device under ``no_grad``; returns normalised values (``.raw`` holds nats).
    ``skip_tokens`` leaves out each sequence's first real tokens (e.g. 1: the attention-sink token, whose
    huge hidden state dominates the Gram matrix of pretrained LLMs); ``center`` as in ``matrix_entropy``.

    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    >>> entropy = layer_entropy(model, torch.randint(0, 64, (3, 10)))
    >>> len(entropy), len(entropy.raw)
    (3, 3)
    """
    device = model_device(model)
    raw_sum: torch.Tensor | None = None
    norm_sum: torch.Tensor | None = None
    count = 0
    with eval_mode(model):
        for batch in iter_batches(batches):
            batch = {key: value.to(device) for key, value in batch.items()}
            output = model(**batch, output_hidden_states=True, use_cache=False)
            hidden = output.hidden_states
            mask = batch["attention_mask"].bool()
            if skip_tokens:
                mask = mask & (mask.long().cumsum(1) > skip_tokens)
            raws, norms = [], []
            for layer in hidden:
                raw, norm = matrix_entropy(layer, mask, center=center)
                raws.append(raw.sum())
                norms.append(norm.sum())
            raws_t, norms_t = torch.stack(raws).cpu(), torch.stack(norms).cpu()
            raw_sum = raws_t if raw_sum is None else raw_sum + raws_t
            norm_sum = norms_t if norm_sum is None else norm_sum + norms_t
            count += batch["input_ids"].shape[0]
    if count == 0:
        raise ValueError("layer_entropy needs at least one sequence")
    result = LayerEntropy(float(x) / count for x in norm_sum)
    result.raw = [float(x) / count for x in raw_sum]
    result.num_sequences = count
    return result


__all__ = ["LayerEntropy", "layer_entropy", "matrix_entropy"]
