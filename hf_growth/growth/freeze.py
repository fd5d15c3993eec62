"""Train only what growth added (LLaMA-Pro's recipe, extended to width growth with gradient masks).

``freeze_original(model)`` reads ``model.config.growth_history`` (the ``new_slices`` of the last growth run):
whole new tensors stay trainable, untouched tensors get ``requires_grad=False``, and tensors with new slices
stay trainable with a gradient hook that zeroes the gradient of their old entries.

With peft, call it **after** ``get_peft_model``: peft freezes every base parameter, so a ``freeze_original`` made
before is undone and only the adapters train. After it, the adapters (``lora_*``, ``modules_to_save``) are left as
peft set them, and the new entries of the base model train with them. peft's ``print_trainable_parameters`` and
``get_nb_trainable_parameters`` then count every tensor with ``requires_grad`` in full, including those of which
only the new slices change: after a ``hidden_size`` step every tensor has new slices and peft reports 100%.
The effective count is ``freeze_original``'s ``"effective_trainable"`` (new entries + adapter entries), or
:func:`effective_trainable_parameters` at any later time.

After upcycling (the ``experts`` step) every expert and the router count as new: the experts start as copies of
the dense MLP but together replace it and are meant to specialise, so ``freeze_original`` trains the experts and
the routers and freezes what the dense model had outside its MLPs (embeddings, attention, norms). After more
experts on a mixture of experts, only the new experts and their router rows are new.

Use an optimizer without decoupled weight decay on the masked tensors (``weight_decay=0``): a zero gradient
does not stop AdamW's decay.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from hf_growth.growth import grow_model
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
>>> grown = grow_model(model, [{"num_layers": {"to": 3, "where": "top"}}])
>>> summary = freeze_original(grown)
>>> summary["whole"], summary["masked"]
(9, 0)
>>> wider = grow_model(model, [{"mlp_width": {"to": 96}}])
>>> summary = freeze_original(wider)
>>> summary["masked"], summary["effective_trainable"], effective_trainable_parameters(wider)
(6, 6144, (6144, 28832))
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .new_slices import spec_mask

_LAYER = re.compile(r"\.(\d+)\.")


def _normalise(name: str) -> str:
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.replace(".base_layer.", ".")


def _lookup(new_slices: dict[str, Any], name: str) -> Any:
    if name in new_slices:
        return new_slices[name]
    pattern = _LAYER.sub(".*.", name, count=1)
    return new_slices.get(pattern)


def new_parameter_masks(model: torch.nn.Module) -> dict[str, Any]:
    """``name -> "all" | bool mask | None`` for every parameter, from the last growth run's ``new_slices``."""
    history = getattr(model.config, "growth_history", None) or []
    if not history or "new_slices" not in history[-1]:
        raise ValueError("this model has no growth_history with new_slices: grow it with hf_growth.grow_model first")
    new_slices = history[-1]["new_slices"]
    out: dict[str, Any] = {}
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        spec = _lookup(new_slices, _normalise(name))
        if spec is None or spec == "all":
            out[name] = spec
        else:
            out[name] = spec_mask(spec, tuple(param.shape))
    return out


def freeze_original(model: torch.nn.Module) -> dict[str, int]:
    """Make only the parameters (and slices) added by the last growth run trainable.

    Returns counts: ``"whole"`` tensors fully new, ``"masked"`` tensors with new slices, ``"frozen"`` old tensors,
    ``"trainable_elements"`` new entries, ``"adapter_elements"`` entries of trainable parameters this function
    leaves alone (peft's ``lora_*`` / ``modules_to_save``), ``"effective_trainable"`` the entries training can
    change (the last two summed) and ``"total_elements"`` every parameter entry. See the module docstring for peft.
    """
    for handle in getattr(model, "_hf_growth_freeze_hooks", []):
        handle.remove()
    handles = []
    masks: dict[str, torch.Tensor] = {}
    counts = {"whole": 0, "masked": 0, "frozen": 0, "trainable_elements": 0}
    params = dict(model.named_parameters())
    specs = new_parameter_masks(model)
    for name, spec in specs.items():
        param = params[name]
        if spec is None:
            param.requires_grad_(False)
            counts["frozen"] += 1
        elif isinstance(spec, str):
            param.requires_grad_(True)
            counts["whole"] += 1
            counts["trainable_elements"] += param.numel()
        else:
            param.requires_grad_(True)
            mask = spec.to(device=param.device, dtype=param.dtype)
            handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))
            masks[name] = spec
            counts["masked"] += 1
            counts["trainable_elements"] += int(spec.sum())
    model._hf_growth_freeze_hooks = handles
    model._hf_growth_freeze_masks = masks
    counts["adapter_elements"] = sum(p.numel() for n, p in params.items() if n not in specs and p.requires_grad)
    counts["effective_trainable"] = counts["trainable_elements"] + counts["adapter_elements"]
    counts["total_elements"] = sum(p.numel() for p in params.values())
    return counts


def effective_trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(entries training can change, all parameter entries)``: like peft's ``get_nb_trainable_parameters``, but a
    tensor masked by :func:`freeze_original` counts only its new entries."""
    masks = getattr(model, "_hf_growth_freeze_masks", {})
    trainable = total = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += int(masks[name].sum()) if name in masks else param.numel()
    return trainable, total
