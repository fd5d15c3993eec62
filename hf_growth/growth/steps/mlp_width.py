"""``mlp_width``: the MLP intermediate size. New rows of the input projections (gate/up, ``c_fc``) are seeded free
values, their biases and the new columns of the output projection are zero: the new units add nothing.

>>> step = MlpWidthStep(to=2048)
>>> step.params()
{'mlp_width': {'to': 2048}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .. import ops
from .base import GrowthStep, Stage

if TYPE_CHECKING:
    import torch

    from ..free_values import RoleContext


class MlpWidthStep(GrowthStep):
    """``mlp_width``: the MLP intermediate size."""

    kind: Literal["mlp_width"] = "mlp_width"

    def resize(self, stage: Stage) -> None:
        stage.after = stage.before.with_(mlp=self.to)
        self.no_shrink(stage.before.mlp, self.to, "MLP width")

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        p, new = c.before.mlp, c.after.mlp
        if role == "mlp_in.w":  # only the new rows are drawn, straight into the output
            out = c.empty((new, t.shape[1]))
            c.free((new - p, t.shape[1]), out=out[p:], alongside=lambda: out[:p].copy_(t))
            return out, [ops.leading(p), None]
        if role == "mlp_in.b":
            return c.placed(t, (new,), [ops.leading(p)]), [ops.leading(p)]
        if role == "mlp_out.w":
            return c.placed(t, (t.shape[0], new), [None, ops.leading(p)]), [None, ops.leading(p)]
        return None
