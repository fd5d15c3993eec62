"""The expansion math on plain tensors: pure functions, never in place, no knowledge of names or models.

Weights are in the canonical ``(out_features, in_features)`` layout (adapters transpose GPT-2's Conv1D).
A *placement* for one dimension is a ``LongTensor`` giving, for each old index, its position in the new
dimension (``None``: the dimension is unchanged). The engine composes placements to know which slices
of a tensor are new.

>>> import torch
>>> old = torch.ones(2, 3)
>>> place(old, torch.zeros(3, 4), [torch.tensor([0, 2]), None]).tolist()
[[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_module

if TYPE_CHECKING:
    import torch
else:  # imported on first use: planning a copy-only growth, validating a plan or counting parameters need no torch
    torch = lazy_module("torch", globals())

Placement = "torch.Tensor | None"


def place(old: torch.Tensor, new: torch.Tensor, placements: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Write ``old`` into ``new`` at ``placements`` (per dim; None = leading indices) and return ``new``.

    ``new`` must be a fresh tensor the caller owns (it is filled in place); ``old`` is never modified.
    On the meta device ``new`` is returned as it is (torch's meta index kernels import sympy: seconds).
    """
    if new.is_meta:
        return new
    out = new
    slices: list[Any] = []
    scattered: list[tuple[int, torch.Tensor]] = []
    for dim, positions in enumerate(placements):
        n = old.shape[dim]
        if positions is None:
            slices.append(slice(0, n))
            continue
        positions = positions.to(torch.long)
        start = int(positions[0]) if n else 0
        if n == 0 or torch.equal(positions, torch.arange(start, start + n)):
            slices.append(slice(start, start + n))  # a contiguous run: plain slicing
        else:
            slices.append(slice(None))
            scattered.append((dim, positions))
    source = old.to(out.dtype)
    if not scattered:
        out[tuple(slices)] = source
    elif len(scattered) == 1:
        dim, positions = scattered[0]
        out[tuple(slices)].index_copy_(dim, positions.to(out.device), source)
    else:
        index = []
        for dim, sl in enumerate(slices):
            match = [p for d, p in scattered if d == dim]
            index.append(match[0] if match else torch.arange(sl.start, sl.stop))
        grids = torch.meshgrid(*[i.to(out.device) for i in index], indexing="ij")
        out[tuple(grids)] = source
    return out


def leading(n_old: int) -> torch.Tensor:
    """The placement that keeps old indices first: ``0..n_old-1``."""
    return torch.arange(n_old)


def per_head_placement(
    head_positions: torch.Tensor, new_head_size: int, within: torch.Tensor | None = None, head_size: int | None = None
) -> torch.Tensor:
    """Flatten a head placement (old head -> new head) and an in-head placement into row indices."""
    if within is None:
        within = torch.arange(head_size)
    return (head_positions[:, None] * new_head_size + within[None, :]).reshape(-1)


def gqa_head_map(heads: int, kv_heads: int, new_heads: int, new_kv_heads: int) -> tuple[torch.Tensor, list[int | None]]:
    """Map query heads and KV heads for a GQA change, exactly.

    Query head ``j`` reads KV head ``j // rep``. Each old KV head becomes ``c = ceil(rep / new_rep)`` copies
    (its query group is split across them), the remaining new KV heads are new groups. Returns
    ``(q_positions, kv_source)``: new position of every old query head, and for every new KV head the old
    KV head it copies (``None`` = new).

    >>> q, kv = gqa_head_map(4, 2, 6, 2)   # regroup: rep 2 -> 3
    >>> q.tolist(), kv
    ([0, 1, 3, 4], [0, 1])
    >>> gqa_head_map(9, 3, 12, 4)[1]       # add a whole group
    [0, 1, 2, None]
    """
    rep, new_rep = heads // kv_heads, new_heads // new_kv_heads
    copies = -(-rep // new_rep)
    if kv_heads * copies > new_kv_heads:
        raise ValueError(
            f"cannot regroup {heads} query / {kv_heads} KV heads into {new_heads} / {new_kv_heads} exactly: "
            f"each KV head's {rep} query heads need {copies} KV head(s) of {new_rep} queries "
            f"({kv_heads * copies} > {new_kv_heads}); use at least {kv_heads * copies} KV heads or "
            f"{kv_heads * rep // new_kv_heads if new_kv_heads else 0}+ queries per group"
        )
    q_positions = torch.empty(heads, dtype=torch.long)
    for j in range(heads):
        group, i = divmod(j, rep)
        slot = group * copies + i // new_rep
        q_positions[j] = slot * new_rep + i % new_rep
    kv_source: list[int | None] = [g for g in range(kv_heads) for _ in range(copies)]
    kv_source += [None] * (new_kv_heads - len(kv_source))
    return q_positions, kv_source


def rope_placement(head_dim: int, new_head_dim: int, *, exact: bool = True) -> torch.Tensor:
    """Where RoPE dimensions of one head go when the head size grows.

    Rotate-half pairs index ``i`` with ``i + d/2`` at frequency ``theta^(-2i/d)``. For an integer factor
    ``m = new/old`` old ``i -> m*i`` and ``i + d/2 -> m*i + new/2`` keep every frequency (exact). With
    ``exact=False`` old pairs stay at ``i`` and ``i + new/2`` (frequencies change: approximate).

    >>> rope_placement(4, 8).tolist()
    [0, 2, 4, 6]
    """
    half, new_half = head_dim // 2, new_head_dim // 2
    if exact:
        if new_head_dim % head_dim:
            raise ValueError(f"RoPE head size {head_dim} -> {new_head_dim} is not an integer factor")
        m = new_head_dim // head_dim
        first = torch.arange(half) * m
    else:
        first = torch.arange(half)
    return torch.cat([first, first + new_half])


def rms_gain_rescale(
    gain: torch.Tensor, hidden: int, new_hidden: int, *, offset: float = 0.0, scale: float | None = None
) -> torch.Tensor:
    """RMSNorm gain for zero-padded hidden growth: old gains x sqrt(h/h'), new entries their mean.

    Exact together with ``eps' = eps * h/h'`` (:func:`rms_eps_rescale`). ``offset``: the norm multiplies by
    ``offset + w`` (Gemma's ``(1 + w)``: 1), and that is what is rescaled. ``scale``: the factor on the old gains
    instead of sqrt(h/h') (1: the old weights are kept as they are, only the new entries are filled).

    >>> rms_gain_rescale(torch.tensor([1.0, 3.0]), 2, 8).tolist()
    [0.5, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    >>> rms_gain_rescale(torch.tensor([1.0, 3.0]), 2, 8, offset=1.0).tolist()  # (1 + w) = 2, 4 -> 1, 2
    [0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    """
    if gain.is_meta:
        return torch.empty((new_hidden,), dtype=torch.float32, device="meta")
    if not offset and scale is None:
        scaled = gain.float() * math.sqrt(hidden / new_hidden)
        fill = scaled.mean().expand(new_hidden).clone()
        return place(scaled, fill, [None])
    scale = math.sqrt(hidden / new_hidden) if scale is None else scale
    gains = (gain.float() + offset) * scale  # what the norm multiplies by
    old = gain.float() if scale == 1.0 else gains - offset
    fill = (gains.mean() - offset).expand(new_hidden).clone()
    return place(old, fill, [None])


def rms_eps_rescale(eps: float, hidden: int, new_hidden: int) -> float:
    """RMSNorm epsilon for zero-padded hidden growth: ``eps * h / h'`` (mean over more, zero, entries)."""
    return eps * hidden / new_hidden


def zero_sum_noise(shape: Sequence[int], copies: int, noise: torch.Tensor) -> torch.Tensor:
    """Noise for ``copies`` input blocks that sums to exactly zero over the blocks.

    ``noise`` has shape ``(copies - 1, *shape)``; block ``k`` gets ``noise[k] - noise[k-1]`` (with
    ``noise[-1] = noise[copies-1] = 0``), a telescoping sum.
    """
    zeros = torch.zeros(1, *shape, dtype=noise.dtype, device=noise.device)
    padded = torch.cat([zeros, noise, zeros])
    return padded[1:] - padded[:-1]


def clone_linear(
    weight: torch.Tensor, out_copies: int, in_copies: int, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """HyperCloning of a linear map ``(out, in)`` whose input is repeated ``in_copies`` times and whose
    output must be repeated ``out_copies`` times: ``W`` tiled, divided by ``in_copies``, plus noise that sums
    to zero over the input copies (shape ``(out_copies, in_copies - 1, out, in)`` or None).

    >>> w = torch.arange(4.).reshape(2, 2)
    >>> x = torch.tensor([1., 2.])
    >>> (clone_linear(w, 2, 2) @ torch.cat([x, x])).tolist() == torch.cat([w @ x, w @ x]).tolist()
    True
    """
    out_f, in_f = weight.shape
    if weight.is_meta:  # the shape only (meta arithmetic imports torch._dynamo)
        return torch.empty((out_f * out_copies, in_f * in_copies), dtype=torch.float32, device="meta")
    base = weight.float() / in_copies
    rows = []
    for i in range(out_copies):
        blocks = [base] * in_copies
        if noise is not None and in_copies > 1:
            deltas = zero_sum_noise((out_f, in_f), in_copies, noise[i].float())
            blocks = [base + deltas[j] for j in range(in_copies)]
        rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows, dim=0)


def repeat_along(tensor: torch.Tensor, copies: int, dim: int = 0) -> torch.Tensor:
    """``[t, t, ..., t]`` along ``dim`` (embeddings, positions, biases and norms under cloning)."""
    if tensor.is_meta:  # the shape only (meta cat imports torch._dynamo)
        shape = list(tensor.shape)
        shape[dim] *= copies
        return torch.empty(shape, dtype=tensor.dtype, device="meta")
    return torch.cat([tensor] * copies, dim=dim)
