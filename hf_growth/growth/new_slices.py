"""Which slices of a grown tensor are new: *specs*, composed step by step, their JSON form (``new_slices`` in
``growth_history``), and the boolean masks training reads from it.

A spec is None (nothing new), ``"all"``, or a tuple with one frozenset of new indices per dimension (an entry is
new if any of its indices is new along its dimension). A transform's *placement* says, per dimension, where the
old indices went (see :mod:`hf_growth.growth.ops`).

>>> import torch
>>> spec = compose_spec(None, [torch.arange(2), None], (2, 3), (4, 3))
>>> spec_to_json(spec)
{'0': [[2, 4]]}
>>> spec_mask(spec_to_json(spec), (4, 3)).sum().item()
6
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_module

if TYPE_CHECKING:
    import torch

    from .adapters import Adapter
else:
    torch = lazy_module("torch", globals())

__all__ = ["Spec", "compose_spec", "fold_layers", "spec_mask", "spec_to_json"]

# A spec says which entries of a tensor are new: None (none), "all", or a tuple with one frozenset of new
# indices per dimension (an entry is new if any of its indices is new along its dimension).
Spec = Any


def compose_spec(spec: Spec, placement: Any, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> Spec:
    """The spec after a transform with ``placement`` (per-dim old->new index tensors, None, or "all")."""
    if placement == "all" or spec == "all":
        return "all"
    if placement is None and old_shape == new_shape:
        return spec
    dims = []
    for d, new_size in enumerate(new_shape):
        old_new = spec[d] if spec else frozenset()
        p = placement[d] if placement is not None else None
        if p is None:
            dims.append(frozenset(old_new) | frozenset(range(old_shape[d], new_size)))
        else:
            p = p.tolist()
            dims.append(frozenset(p[i] for i in old_new) | (frozenset(range(new_size)) - frozenset(p)))
    if not any(dims):
        return None
    return tuple(dims)


def spec_to_json(spec: Spec) -> Any:
    """JSON form: ``"all"`` or ``{dim: [[start, stop], ...]}`` (half-open ranges)."""
    if spec == "all" or spec is None:
        return spec
    out = {}
    for d, indices in enumerate(spec):
        if indices:
            ranges, items = [], sorted(indices)
            start = prev = items[0]
            for i in items[1:]:
                if i != prev + 1:
                    ranges.append([start, prev + 1])
                    start = i
                prev = i
            ranges.append([start, prev + 1])
            out[str(d)] = ranges
    return out


def spec_mask(spec_json: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A bool mask (True = new) from the JSON form of a spec."""
    if spec_json == "all":
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.zeros(shape, dtype=torch.bool)
    for d, ranges in (spec_json or {}).items():
        index = [slice(None)] * len(shape)
        for start, stop in ranges:
            index[int(d)] = slice(start, stop)
            mask[tuple(index)] = True
    return mask


def fold_layers(specs: dict[str, Any], adapter: Adapter, names: list[str]) -> dict[str, Any]:
    """``specs`` (JSON form) with the entries that are the same in every layer folded into one
    ``prefix.*.suffix`` pattern (``names``: every output tensor, to know a pattern covers all layers)."""

    def pattern_of(name: str) -> str:
        return adapter.rename_layer(name, 0).replace(f"{adapter.layer_prefix}0.", f"{adapter.layer_prefix}*.", 1)

    total: dict[str, int] = {}
    for name in names:
        if adapter.layer_of(name) is not None:
            total[pattern_of(name)] = total.get(pattern_of(name), 0) + 1

    groups: dict[tuple[str, str], list[str]] = {}
    for name, spec in specs.items():
        layer = adapter.layer_of(name)
        if layer is None:
            continue
        pattern = pattern_of(name)
        groups.setdefault((pattern, json.dumps(spec, sort_keys=True)), []).append(name)
    counts: dict[str, int] = {}
    for pattern, _ in groups:
        counts[pattern] = counts.get(pattern, 0) + 1
    out: dict[str, Any] = {}
    folded = set()
    for (pattern, spec), members in groups.items():
        if counts[pattern] == 1 and len(members) == total[pattern]:
            out[pattern] = json.loads(spec)
            folded.update(members)
    for name, spec in specs.items():
        if name not in folded:
            out[name] = spec
    return out
