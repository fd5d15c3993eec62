"""``num_layers``: new function-preserving blocks. A new block's output projections (attention ``o`` and MLP
``down``) are zero, so it adds nothing to the residual stream: ``init: random`` draws its other weights as seeded
free values, ``init: copy`` copies its neighbour below (LLaMA-Pro). ``where``: ``interleave`` (spread evenly),
``top``, or the list of the new layers' positions in the grown stack.

>>> step = NumLayersStep(to=6, where=[5, 1])
>>> step.where, layer_sources(step, 4)
([1, 5], [(0, 'keep'), (0, 'new'), (1, 'keep'), (2, 'keep'), (3, 'keep'), (3, 'new')])
>>> [j for j, _ in layer_sources(NumLayersStep(to=6), 4)]
[0, 1, 1, 2, 3, 3]
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from .base import DepthStep, Stage


class NumLayersStep(DepthStep):
    """``num_layers``: new function-preserving blocks (``interleave`` | ``top`` | list of new positions)."""

    kind: Literal["num_layers"] = "num_layers"
    where: Literal["interleave", "top"] | list[int] = "interleave"
    init: Literal["random", "copy"] = "random"

    @field_validator("where")
    @classmethod
    def _distinct(cls, value):
        if isinstance(value, list):
            if len(set(value)) != len(value):
                raise ValueError(f"`where` positions must be distinct, got {value}")
            if any(v < 0 for v in value):
                raise ValueError(f"`where` positions must be >= 0, got {value}")
            return sorted(value)
        return value

    def resize(self, stage: Stage) -> None:
        before = stage.before
        self.no_shrink(before.layers, self.to, "number of layers")
        sources = layer_sources(self, before.layers)
        mode = "new_copy" if self.init == "copy" else "new_random"
        stage.layers = [(j, mode if m == "new" else m) for j, m in sources]
        stage.record["new_layers"] = [i for i, (_, m) in enumerate(sources) if m == "new"]
        stage.after = before.with_(layers=self.to)


def layer_sources(step: NumLayersStep, layers: int) -> list[tuple[int, str]]:
    """Where each layer of the grown stack comes from: ``(old layer, "keep")`` or ``(layer below, "new")``."""
    new = step.to - layers
    if isinstance(step.where, list):
        positions = step.where
        if len(positions) != new:
            raise ValueError(f"`where` lists {len(positions)} positions but {layers} -> {step.to} adds {new} layers")
        if positions and positions[-1] >= step.to:
            raise ValueError(f"`where` position {positions[-1]} is outside the grown stack of {step.to} layers")
        out, old = [], 0
        for i in range(step.to):
            if i in positions:
                out.append((max(old - 1, 0), "new"))
            else:
                out.append((old, "keep"))
                old += 1
        return out
    if step.where == "top":
        return [(j, "keep") for j in range(layers)] + [(layers - 1, "new")] * new
    # interleave: new layers after old layers ceil((k+1) L / n) - 1, spread evenly
    after: dict[int, int] = {}
    for k in range(new):
        j = -(-(k + 1) * layers // new) - 1
        after[j] = after.get(j, 0) + 1
    out = []
    for j in range(layers):
        out.append((j, "keep"))
        out += [(j, "new")] * after.get(j, 0)
    return out
