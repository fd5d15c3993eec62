"""``num_heads``: query heads, and for GQA models the KV heads (``num_key_value_heads``; default: kept for GQA,
equal to ``to`` for multi-head attention). Old heads keep their values (regrouped exactly when the number of
queries per KV head changes, copying KV heads where a group splits); new heads' output columns are zero.

>>> NumHeadsStep(to=12, num_key_value_heads=4).params()
{'num_heads': {'to': 12, 'num_key_value_heads': 4}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..._lazy import lazy_module
from .. import ops
from .base import GrowthStep, Stage

if TYPE_CHECKING:
    import torch

    from ..free_values import RoleContext
else:
    torch = lazy_module("torch", globals())


class NumHeadsStep(GrowthStep):
    """``num_heads``: query heads; ``num_key_value_heads`` for GQA (default: kept for GQA, = ``to`` for MHA)."""

    kind: Literal["num_heads"] = "num_heads"
    num_key_value_heads: int | None = Field(default=None, gt=0)

    def resize(self, stage: Stage) -> None:
        before = stage.before
        self.no_shrink(before.heads, self.to, "number of query heads")
        kv = self.num_key_value_heads
        if kv is None:
            kv = self.to if before.kv_heads == before.heads else before.kv_heads
        self.no_shrink(before.kv_heads, kv, "number of KV heads")
        if self.to % kv:
            raise ValueError(f"{self.to} query heads cannot be split into {kv} KV groups (not divisible)")
        ops.gqa_head_map(before.heads, before.kv_heads, self.to, kv)  # raises when not exact
        stage.after = before.with_(heads=self.to, kv_heads=kv)

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        b, a = c.before, c.after
        q_pos, kv_src = ops.gqa_head_map(b.heads, b.kv_heads, a.heads, a.kv_heads)
        if role in ("q.w", "q.b"):
            rows = ops.per_head_placement(q_pos, b.qk_dim, head_size=b.qk_dim)
            shape = (a.heads * b.qk_dim, *t.shape[1:])
            out = ops.place(t, c.empty(shape) if role == "q.w" else c.zeros(shape), [rows] + [None] * (t.dim() - 1))
            if role == "q.w":  # only the new heads' rows are drawn
                c.free_rows(out, rows)
            return out, [rows] + [None] * (t.dim() - 1)
        if role in ("k.w", "k.b", "v.w", "v.b"):
            head = b.qk_dim if role[0] == "k" else b.v_dim
            shape = (a.kv_heads * head, *t.shape[1:])
            out, rows = _kv_expand(t, kv_src, head, c.empty(shape) if role.endswith(".w") else c.zeros(shape))
            if role.endswith(".w"):  # only the new KV heads' rows are drawn (copied heads are copies)
                copied = torch.tensor([slot for slot, src in enumerate(kv_src) if src is not None], dtype=torch.long)
                c.free_rows(out, ops.per_head_placement(copied, head, head_size=head))
            return out, [rows] + [None] * (t.dim() - 1)
        if role == "o.w":
            cols = ops.per_head_placement(q_pos, b.v_dim, head_size=b.v_dim)
            return c.placed(t, (t.shape[0], a.heads * b.v_dim), [None, cols]), [None, cols]
        return None


def _kv_expand(t: torch.Tensor, kv_source: list[int | None], head: int, fill: torch.Tensor):
    """KV heads of ``t`` (rows of ``head`` each) copied into ``fill`` at their new slots (``kv_source``: for every
    new KV head the old one it copies, None = new). Returns the tensor and the old rows' placement."""
    old = t.reshape(-1, head, *t.shape[1:])
    out = fill.reshape(len(kv_source), head, *t.shape[1:])
    first: dict[int, int] = {}
    for slot, src in enumerate(kv_source):
        if src is not None:
            out[slot] = old[src]
            first.setdefault(src, slot)
    positions = torch.tensor([first[g] for g in range(old.shape[0])], dtype=torch.long)
    rows = ops.per_head_placement(positions, head, head_size=head)
    return out.reshape(fill.shape), rows
