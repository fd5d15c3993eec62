"""``value_dim``: the per-head value/output size alone (architectures with separate sizes, ResFormer). New value
rows are seeded free values, their biases and the output projection's new columns are zero.

>>> ValueDimStep(to=96).params()
{'value_dim': {'to': 96}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ..._lazy import lazy_module
from .. import ops
from .base import GrowthStep, Stage

if TYPE_CHECKING:
    import torch

    from ..free_values import RoleContext
else:
    torch = lazy_module("torch", globals())


class ValueDimStep(GrowthStep):
    """``value_dim``: the per-head value/output size alone (architectures with separate sizes)."""

    kind: Literal["value_dim"] = "value_dim"

    def resize(self, stage: Stage) -> None:
        self.no_shrink(stage.before.v_dim, self.to, "value dim")
        stage.after = stage.before.with_(v_dim=self.to)

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        return grow_value(role, t, c)


def grow_value(role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
    """Values (weights and biases) and the output projection from ``c.before.v_dim`` to ``c.after.v_dim``."""
    b, a = c.before, c.after
    if a.v_dim == b.v_dim:
        return None
    if role in ("v.w", "v.b"):
        rows = ops.per_head_placement(torch.arange(b.kv_heads), a.v_dim, head_size=b.v_dim)
        shape = (b.kv_heads * a.v_dim, *t.shape[1:])
        rest = [None] * (t.dim() - 1)
        if role == "v.w":
            return c.free_rows(ops.place(t, c.empty(shape), [rows] + rest), rows), [rows] + rest
        return c.placed(t, shape, [rows] + rest), [rows] + rest
    if role == "o.w":
        cols = ops.per_head_placement(torch.arange(b.heads), a.v_dim, head_size=b.v_dim)
        return c.placed(t, (t.shape[0], b.heads * a.v_dim), [None, cols]), [None, cols]
    return None
