"""``qk_dim``: the per-head query/key size alone (architectures with separate sizes, ResFormer). Under RoPE the
old dimensions move to the places that keep their frequencies (an integer factor; ``approximate`` keeps old pairs
in place); keys are scaled by ``sqrt(new / old)`` for the attention's ``1 / sqrt(d)``, their new entries are zero.

>>> QkDimStep(to=96).params()
{'qk_dim': {'to': 96}}
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from ..._lazy import lazy_module
from .. import ops
from .base import GrowthStep, Stage

if TYPE_CHECKING:
    import torch

    from ..free_values import RoleContext
else:
    torch = lazy_module("torch", globals())


class QkDimStep(GrowthStep):
    """``qk_dim``: the per-head query/key size alone (architectures with separate sizes)."""

    kind: Literal["qk_dim"] = "qk_dim"

    def resize(self, stage: Stage) -> None:
        self.no_shrink(stage.before.qk_dim, self.to, "qk dim")
        stage.after = stage.before.with_(qk_dim=self.to)

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        return grow_qk(role, t, c)


def grow_qk(role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
    """Queries and keys (weights and biases) from ``c.before.qk_dim`` to ``c.after.qk_dim`` per head."""
    b, a = c.before, c.after
    normed = c.stage.adapter.qk_norm
    if a.qk_dim == b.qk_dim or role not in ("q.w", "q.b", "k.w", "k.b") + (("q_norm.w", "k_norm.w") if normed else ()):
        return None
    if c.stage.adapter.rope:
        within = ops.rope_placement(b.qk_dim, a.qk_dim, exact=not (c.step.approximate and a.qk_dim % b.qk_dim))
    else:
        within = ops.leading(b.qk_dim)
    if normed:
        return _grow_normed_qk(role, t, c, within)
    heads = b.heads if role[0] == "q" else b.kv_heads
    rows = ops.per_head_placement(torch.arange(heads), a.qk_dim, within=within)
    shape = (heads * a.qk_dim, *t.shape[1:])
    rest = [None] * (t.dim() - 1)
    if role == "q.w":
        return c.free_rows(ops.place(t, c.empty(shape), [rows] + rest), rows), [rows] + rest
    if role == "q.b":
        return c.placed(t, shape, [rows] + rest), [rows] + rest
    # keys: scaled by sqrt(new/old) for the 1/sqrt(d) change (in float32); their new entries are zero
    scaled = t.float() if c.meta else t.float() * math.sqrt(a.qk_dim / b.qk_dim)
    return c.placed(scaled, shape, [rows] + rest), [rows] + rest


def _grow_normed_qk(role: str, t: torch.Tensor, c: RoleContext, within: torch.Tensor):
    """Head-size growth under a per-head RMSNorm of queries and keys (Qwen3), by an integer factor ``m``.

    Zero new dimensions would change the norm's RMS over the head (it averages over ``m`` times as many entries),
    and zero new q *and* k dimensions never learn (a saddle). Instead every new dimension of ``q_proj`` and
    ``k_proj`` (rows, biases) copies an old one, each old dimension ``m - 1`` times (the one below it in its RoPE
    half): the mean of squares over the grown head is the old one, so both norms give the old values with the
    same epsilon. The new entries of ``k_norm``'s gain are zero, so the new key dimensions are zero after the norm
    and add nothing to the scores; its old entries are scaled by ``sqrt(m)`` for the attention's ``1/sqrt(d)``.
    ``q_norm``'s gain is copied like the rows, so that once the new ``k_norm`` entries move (they get gradients
    from the non-zero new query dimensions) the new dimensions attend like their sources."""
    b, a = c.before, c.after
    source = torch.full((a.qk_dim,), -1, dtype=torch.long)
    source[within] = torch.arange(b.qk_dim)
    half = a.qk_dim // 2 if c.stage.adapter.rope else a.qk_dim
    for p in range(a.qk_dim):  # a new dimension copies the one below it in its half
        if source[p] < 0:
            source[p] = source[p - 1] if p % half else 0
    if role == "k_norm.w":
        scaled = t.float() if c.meta else t.float() * math.sqrt(a.qk_dim / b.qk_dim)
        return c.placed(scaled, (a.qk_dim,), [within]), [within]
    if role == "q_norm.w":
        return (c.empty((a.qk_dim,)) if c.meta else t[source].clone()), [within]
    heads = b.heads if role[0] == "q" else b.kv_heads
    rows = ops.per_head_placement(torch.arange(heads), a.qk_dim, within=within)
    rest = [None] * (t.dim() - 1)
    if c.meta:
        return c.empty((heads * a.qk_dim, *t.shape[1:])), [rows] + rest
    index = (torch.arange(heads)[:, None] * b.qk_dim + source[None, :]).flatten()
    return t[index].to(c.device), [rows] + rest
