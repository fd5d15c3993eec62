"""Shared helpers: batches -> model inputs, eager attention on demand, the value-role table."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-less module)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def iter_batches(batches: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Normalise ``batches`` to dicts with ``input_ids`` and ``attention_mask`` (LongTensors).

    Accepts a single batch or an iterable of batches; a batch is a tensor of ``input_ids`` (1-D or 2-D)
    or a mapping with ``input_ids`` and optionally ``attention_mask`` (a ``BatchEncoding`` works).
    """
    if isinstance(batches, torch.Tensor) or isinstance(batches, Mapping):
        batches = [batches]
    for batch in batches:
        if isinstance(batch, torch.Tensor):
            batch = {"input_ids": batch}
        input_ids = torch.as_tensor(batch["input_ids"])
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask).reshape(input_ids.shape)
        yield {"input_ids": input_ids.long(), "attention_mask": mask.long()}


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Switch ``model`` to eager attention (needed for attention weights) and restore it afterwards."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    switch = previous not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model.eval()`` and ``torch.no_grad()`` for the block; the training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


# --- which module yields a layer's values, and how to take them out of its output -------------------
# One row per architecture family: (regex on the module's qualified name, splitter of its output).
# The growth adapters own tensor roles; this table is the analysis' small mirror of the "value" role.
# Extension point: ResFormer's own value projection is also `v_proj`; a ResFormer that exposes its mixed
# values V'_n through a module can add a row for it here (listed first so it wins).


def _whole(output: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return output


def _gpt2_value_third(output: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    # GPT-2's fused Conv1D c_attn: output [..., 3 * n_embd] = [q | k | v]
    return output.chunk(3, dim=-1)[2]


VALUE_ROLES: list[tuple[str, Callable[[torch.Tensor, torch.nn.Module], torch.Tensor]]] = [
    (r"(^|\.)layers\.(\d+)\.self_attn\.v_proj$", _whole),  # Llama, Mistral, Qwen2, ResFormer, ...
    (r"(^|\.)h\.(\d+)\.attn\.c_attn$", _gpt2_value_third),  # GPT-2
]


def value_modules(model: torch.nn.Module) -> list[tuple[int, torch.nn.Module, Callable]]:
    """``(layer index, module, splitter)`` for each module that produces a layer's values, by layer.

    Raises ``ValueError`` for an architecture the role table does not know.
    """
    for pattern, splitter in VALUE_ROLES:
        regex = re.compile(pattern)
        found = []
        for name, module in model.named_modules():
            match = regex.search(name)
            if match:
                found.append((int(match.group(2)), module, splitter))
        if found:
            return sorted(found, key=lambda item: item[0])
    raise ValueError(
        f"no value projection found in {type(model).__name__}: the analysis knows modules named "
        "`layers.N.self_attn.v_proj` (Llama family, ResFormer) and `h.N.attn.c_attn` (GPT-2); "
        "add a row to hf_growth.analysis._common.VALUE_ROLES for this architecture"
    )


def resformer_attention_modules(model: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
    """``(layer, attention module)`` for ResFormer attention modules (those with ``mix_values``), by layer."""
    found = []
    for name, module in model.named_modules():
        match = re.search(r"(^|\.)layers\.(\d+)\.self_attn$", name)
        if match and callable(getattr(module, "mix_values", None)):
            found.append((int(match.group(2)), module))
    return sorted(found, key=lambda item: item[0])


def resformer_lambdas(model: torch.nn.Module) -> dict[str, list[float]]:
    """ResFormer's value-residual mixing weights: every parameter whose name mentions ``lambda`` or
    ``value_residual``, flattened to floats (empty for models without them)."""
    out: dict[str, list[float]] = {}
    for name, parameter in model.named_parameters():
        lowered = name.lower()
        if "lambda" in lowered or "value_residual" in lowered:
            out[name] = [float(x) for x in parameter.detach().float().flatten().cpu()]
    for name, buffer in model.named_buffers():
        lowered = name.lower()
        if ("lambda" in lowered or "value_residual" in lowered) and name not in out:
            out[name] = [float(x) for x in buffer.detach().float().flatten().cpu()]
    return out
