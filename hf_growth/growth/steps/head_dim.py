"""``head_dim``: the per-head size of queries, keys and values together (stock Llama): ``qk_dim`` and
``value_dim`` in one step.

>>> HeadDimStep(to=128).params()
{'head_dim': {'to': 128}}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .base import GrowthStep, Stage
from .qk_dim import grow_qk
from .value_dim import grow_value

if TYPE_CHECKING:
    import torch

    from ..free_values import RoleContext


class HeadDimStep(GrowthStep):
    """``head_dim``: the per-head size of q, k and v together (stock Llama)."""

    kind: Literal["head_dim"] = "head_dim"

    def resize(self, stage: Stage) -> None:
        before = stage.before
        self.no_shrink(before.qk_dim, self.to, "head dim")
        if before.qk_dim != before.v_dim:
            raise ValueError(
                f"q/k ({before.qk_dim}) and v ({before.v_dim}) head sizes differ: use qk_dim and value_dim"
            )
        stage.after = before.with_(qk_dim=self.to, v_dim=self.to)

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        return grow_head(role, t, c)


def grow_head(role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
    """Queries/keys, then values and the output projection, to the new head sizes of ``c.after``."""
    result = grow_qk(role, t, c)
    return result if result is not None else grow_value(role, t, c)
