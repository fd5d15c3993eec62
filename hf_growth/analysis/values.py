"""Value-residual statistics per layer (ResFormer's analysis, papers.md §2).

Per layer l (0-indexed): the cosine similarity of the layer's values to layer 0's values (token by token), the
attention concentration (Shannon entropy of token importance: attention averaged over heads, summed over
query rows, normalised to a distribution), the first token's attention share, and the norms of the first
token's value and of the hidden state entering the layer (attention sink / value drain / residual peak), with
the mean over the other tokens for reference; plus a ResFormer's learned λ when it has them.
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import (
    eager_attention,
    eval_mode,
    iter_batches,
    model_device,
    resformer_attention_modules,
    resformer_lambdas,
    value_modules,
)

#: per-layer statistics that ``value_statistics`` returns, in plotting order
STATISTICS = (
    "value_cos_to_first",
    "attention_entropy",
    "first_token_attention",
    "first_token_value_norm",
    "value_norm_rest",
    "first_token_hidden_norm",
    "hidden_norm_rest",
)


def value_statistics(model: torch.nn.Module, batches: Any) -> dict[str, Any]:
    """Per-layer value/attention statistics averaged over every sequence of ``batches`` (a JSON-able dict).

    Values are read with forward hooks on the module that produces them (``v_proj``; the value third of
    GPT-2's fused ``c_attn``); for a ResFormer, mixing layers report the values attention reads
    (``λ1·V_0 + λ2·V_n``; SVFormer layers: V_0). Attention weights use eager attention, switched on only
    for this call.
    Keys: ``layers`` and each name in ``STATISTICS`` (lists with one float per layer), ``lambdas`` (parameter
    name -> values, empty unless the model has value-residual λ) and ``num_sequences``.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2))
    >>> stats = value_statistics(model, torch.randint(0, 64, (2, 8)))
    >>> round(stats["value_cos_to_first"][0], 4), len(stats["attention_entropy"])
    (1.0, 3)
    """
    modules = value_modules(model)
    captured: dict[int, torch.Tensor] = {}
    handles, patched = [], []
    for layer, module, splitter in modules:

        def hook(mod, inputs, output, layer=layer, splitter=splitter):
            captured.setdefault(layer, splitter(output, mod).detach())

        handles.append(module.register_forward_hook(hook))
    # ResFormer extension: the values attention actually reads, V'_n = λ1·V_0 + λ2·V_n (or V_0 for SVFormer)
    mixed: dict[int, torch.Tensor] = {}
    shared: set[int] = set()
    for layer, attention in resformer_attention_modules(model):
        if getattr(attention, "shares_value", False):
            shared.add(layer)
        elif getattr(attention, "mixes", False):
            original = attention.mix_values

            def mix_values(*args, _original=original, _layer=layer, **kwargs):
                out = _original(*args, **kwargs)  # (B, kv_heads, T, head_dim)
                mixed[_layer] = out.detach().transpose(1, 2).flatten(2)
                return out

            attention.mix_values = mix_values
            patched.append(attention)

    num_layers: int | None = None
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    device = model_device(model)
    num_sequences = 0
    try:
        with eval_mode(model), eager_attention(model):
            for batch in iter_batches(batches):
                batch = {key: value.to(device) for key, value in batch.items()}
                captured.clear()
                mixed.clear()
                output = model(**batch, output_hidden_states=True, output_attentions=True, use_cache=False)
                if not output.attentions or any(a is None for a in output.attentions):
                    raise ValueError("the model returned no attention weights")
                if num_layers is None:
                    num_layers = len(output.attentions)
                    sums = {name: torch.zeros(num_layers, dtype=torch.float64) for name in STATISTICS}
                    counts = {name: torch.zeros(num_layers, dtype=torch.float64) for name in STATISTICS}
                values = {**captured, **mixed, **{layer: captured[0] for layer in shared if 0 in captured}}
                mask = batch["attention_mask"].bool()
                _accumulate(sums, counts, values, output, mask, num_layers)
                num_sequences += mask.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        for attention in patched:
            del attention.mix_values  # back to the class's method
    if num_sequences == 0:
        raise ValueError("value_statistics needs at least one sequence")
    result: dict[str, Any] = {"layers": list(range(num_layers))}
    for name in STATISTICS:
        mean = sums[name] / counts[name].clamp_min(1)
        result[name] = [float(x) if c > 0 else float("nan") for x, c in zip(mean, counts[name])]
    result["lambdas"] = resformer_lambdas(model)
    result["num_sequences"] = num_sequences
    return result


def _accumulate(sums, counts, captured, output, mask, num_layers) -> None:
    maskf = mask.double()
    batch, tokens = mask.shape
    rows = torch.arange(batch, device=mask.device)
    first = mask.int().argmax(1)  # first real token (left or right padding)
    rest = mask.clone()
    rest[rows, first] = False
    restf = rest.double()
    v0 = captured[0].double() if 0 in captured else None
    for layer in range(num_layers):
        if layer in captured:
            v = captured[layer].double()
            if v0 is not None and v.shape == v0.shape:
                cos = torch.nn.functional.cosine_similarity(v, v0, dim=-1, eps=1e-12)
                _add(sums, counts, "value_cos_to_first", layer, (cos * maskf).sum(), maskf.sum())
            vnorm = v.norm(dim=-1)
            _add(sums, counts, "first_token_value_norm", layer, vnorm[rows, first].sum(), batch)
            _add(sums, counts, "value_norm_rest", layer, (vnorm * restf).sum(), restf.sum())
        hidden = output.hidden_states[layer].double()  # the residual stream entering block `layer`
        hnorm = hidden.norm(dim=-1)
        _add(sums, counts, "first_token_hidden_norm", layer, hnorm[rows, first].sum(), batch)
        _add(sums, counts, "hidden_norm_rest", layer, (hnorm * restf).sum(), restf.sum())

        attention = output.attentions[layer].double().mean(1)  # (B, Tq, Tk), mean over heads
        attention = attention * maskf[:, :, None] * maskf[:, None, :]
        importance = attention.sum(1)  # summed over query rows -> (B, Tk)
        p = importance / importance.sum(-1, keepdim=True).clamp_min(1e-300)
        entropy = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))).sum(-1)
        _add(sums, counts, "attention_entropy", layer, entropy.sum(), batch)
        share = attention[rows, :, first]  # (B, Tq): attention of each query to the first token
        _add(sums, counts, "first_token_attention", layer, (share * restf).sum(), restf.sum())


def _add(sums, counts, name, layer, value, count) -> None:
    sums[name][layer] += float(value)
    counts[name][layer] += float(count)


__all__ = ["STATISTICS", "value_statistics"]
