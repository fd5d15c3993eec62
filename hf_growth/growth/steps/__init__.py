"""The growth steps, one module each: its plan schema (a pydantic model), its validation (config before ->
config after, with the error messages) and its tensor transforms per role. :mod:`.base` says what a step
provides; what an architecture cannot do exactly is the adapters' business (``Adapter.check_<kind>``).

:data:`STEP_TYPES` is the registry the plan parser and the engine read: the built-in steps below, in the
order error messages list them, and any step registered with :func:`register_step`. Adding a step is one
module here and its line below, plus the roles and checks it needs in the adapters.

>>> list(STEP_TYPES)
['mlp_width', 'num_heads', 'head_dim', 'qk_dim', 'value_dim', 'hidden_size', 'num_layers', 'stack', 'experts']
>>> step_type("num_layers")(to=36).where
'interleave'
"""

from __future__ import annotations

from .base import STEP_TYPES, DepthStep, GrowthStep, Stage, register_step, step_type
from .experts import ExpertsStep
from .head_dim import HeadDimStep
from .hidden_size import HiddenSizeStep
from .mlp_width import MlpWidthStep
from .num_heads import NumHeadsStep
from .num_layers import NumLayersStep
from .qk_dim import QkDimStep
from .stack import StackStep
from .value_dim import ValueDimStep

for _step in (
    MlpWidthStep,
    NumHeadsStep,
    HeadDimStep,
    QkDimStep,
    ValueDimStep,
    HiddenSizeStep,
    NumLayersStep,
    StackStep,
    ExpertsStep,
):
    register_step(_step)
del _step

__all__ = [
    "STEP_TYPES",
    "DepthStep",
    "ExpertsStep",
    "GrowthStep",
    "HeadDimStep",
    "HiddenSizeStep",
    "MlpWidthStep",
    "NumHeadsStep",
    "NumLayersStep",
    "QkDimStep",
    "StackStep",
    "Stage",
    "ValueDimStep",
    "register_step",
    "step_type",
]
