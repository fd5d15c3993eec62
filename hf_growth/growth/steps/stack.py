"""``stack``: MIDAS (``where: middle``) or gradual (``where: top``) stacking of ``block_size``-layer blocks
(Saunshi et al. 2409.19044; :mod:`hf_growth.growth.stacking`). Copies layers as they are: it changes the
function by design (its history record says ``exact: false``).

>>> StackStep(to=36, block_size=2).params()
{'stack': {'to': 36, 'block_size': 2}}
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..stacking import stack_layer_sources
from .base import DepthStep, Stage


class StackStep(DepthStep):
    """``stack``: MIDAS (``middle``) or gradual (``top``) stacking of ``block_size``-layer blocks. Changes the
    function by design."""

    kind: Literal["stack"] = "stack"
    block_size: int = Field(default=1, gt=0)
    where: Literal["middle", "top"] = "middle"

    changes_function: ClassVar[bool] = True

    def resize(self, stage: Stage) -> None:
        self.no_shrink(stage.before.layers, self.to, "number of layers")
        stage.layers, stage.record["copied_blocks"] = stack_layer_sources(
            stage.before.layers, self.to, self.block_size, self.where
        )
        stage.after = stage.before.with_(layers=self.to)
