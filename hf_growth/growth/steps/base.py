"""What every growth step is: a pydantic schema (the plan's one-key mapping), a validation that turns the config
before the step into the config after it (with the error messages), and the tensor transforms per role.

A step module defines one :class:`GrowthStep` subclass (registered in ``steps/__init__.py``, or with
:func:`register_step`):

- ``resize(stage)``: check the step against ``stage.before`` (the sizes read from the config) and set
  ``stage.after`` (and, for depth steps, ``stage.layers``; ``stage.record`` for ``growth_history``). Raise
  ``ValueError`` with a one-line reason; the engine prefixes ``plan step <i> (<kind>): ``.
  The adapter's own refusals for the step come next (:meth:`Adapter.check` calls ``check_<kind>(stage)``).
- ``transform(role, t, c)``: for a width step, the grown tensor of one role (canonical ``(out, in)`` layout) and
  its placement, or None when the step leaves the role unchanged. Free values come from ``c``
  (:class:`~hf_growth.growth.free_values.RoleContext`), seeded per output tensor.
- ``view(...)``: the lazy view that applies the step (:class:`~hf_growth.growth.views.WidthView` by default;
  depth steps build a :class:`~hf_growth.growth.views.LayerView`). A step that renames tensors brings its own.
- A step that changes the architecture (``experts``: Llama -> Mixtral) sets ``stage.target`` in ``resize`` to
  the adapter of the architecture after it: its view's names and the config after it are that adapter's, and
  the engine hands it to the next step (and builds the output's config class from the last one).

>>> from hf_growth.growth.adapters import get_adapter
>>> cfg = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
...        "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6}
>>> stage = step_type("mlp_width")(to=96).stage(0, cfg, get_adapter(cfg), std=0.02)
>>> stage.before.mlp, stage.after.mlp, stage.cfg_after["intermediate_size"]
(64, 96, 96)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

    from ..adapters import Adapter, Sizes
    from ..free_values import RoleContext
    from ..views import View

__all__ = ["STEP_TYPES", "DepthStep", "GrowthStep", "Stage", "register_step", "step_type"]

#: step kind -> step class, in registration order (the order ``known steps`` lists them in)
STEP_TYPES: dict[str, type[GrowthStep]] = {}


@dataclass
class Stage:
    """One step checked against a config: the configs and sizes around it and, for depth steps, where each layer
    of the grown stack comes from."""

    index: int
    step: Any  # the GrowthStep (a step may complete its own settings, e.g. hidden_size's default noise)
    adapter: Adapter
    cfg_before: dict[str, Any]
    cfg_after: dict[str, Any]
    before: Sizes
    after: Sizes
    std: float
    #: depth steps: for each new layer (old layer index, mode) with mode keep | copy | new_copy | new_random
    layers: list[tuple[int, str]] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    #: the adapter after the step when the step changes the architecture (None: ``adapter``)
    target: Adapter | None = None

    @property
    def adapter_after(self) -> Adapter:
        """The adapter of the architecture after this step (the next step's ``adapter``)."""
        return self.target if self.target is not None else self.adapter


class GrowthStep(BaseModel):
    """Base class of the plan's steps: ``to`` (the new size) and ``approximate`` (allow a step that cannot be
    exact on this architecture; the error is measured)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = ""
    to: int = Field(gt=0)
    approximate: bool = False

    #: True for steps that change the function by design (stacking): their history records say ``exact: false``
    changes_function: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The step as a plain dict (for ``growth_history``)."""
        return {self.kind: self.model_dump(exclude={"kind"}, exclude_defaults=True) | {"to": self.to}}

    # ---------------------------------------------------------------- config before -> config after
    def stage(self, index: int, cfg: dict[str, Any], adapter: Adapter, *, std: float) -> Stage:
        """Check this step against ``cfg`` (no tensor is read) and return the :class:`Stage` with the config after
        it. ValueError when the step cannot be done (here or by the adapter's ``check_<kind>``)."""
        before = adapter.sizes(cfg)
        stage = Stage(index, self, adapter, cfg, {}, before, before, std)
        self.resize(stage)
        adapter.check(stage)
        stage.cfg_after = stage.step.rewrite_config(stage)
        return stage

    def resize(self, stage: Stage) -> None:  # pragma: no cover - abstract
        """Set ``stage.after`` (and ``layers``, ``record``, ``step``); raise ValueError when the step cannot be done."""
        raise NotImplementedError

    def rewrite_config(self, stage: Stage) -> dict[str, Any]:
        """The config after the step (the adapter writes the new sizes)."""
        return stage.adapter.write_sizes(stage.cfg_before, stage.before, stage.after)

    def exact(self, stage: Stage) -> bool:
        """Whether the step keeps the function (its history record's ``exact``)."""
        return not self.changes_function and not self.approximate

    @staticmethod
    def no_shrink(old: int, new: int, what: str) -> None:
        if new < old:
            raise ValueError(f"cannot shrink the {what} from {old} to {new}; growth steps only grow")

    # ---------------------------------------------------------------- tensors
    def view(
        self, prev: View, stage: Stage, *, seed: int, device: Any, dtype: Callable[[], torch.dtype], meta: bool
    ) -> View:
        """The lazy view applying this step to ``prev`` (``dtype()``: the dtype of brand-new tensors)."""
        from ..views import WidthView

        return WidthView(prev, stage, seed, device, meta)

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        """The grown tensor of ``role`` and its placement (per dim: old index -> new index, None: unchanged), or
        None when the step leaves the role as it is."""
        return None

    def row_local(self, role: str, stage: Stage) -> bool:
        """Whether rows of an ``embed`` / ``pos`` / ``lm_head`` tensor stay independent under this step (then the
        streaming path computes them in row chunks)."""
        return True


class DepthStep(GrowthStep):
    """A step that rebuilds the layer stack: ``resize`` sets ``stage.layers``; per-layer config lists follow."""

    def rewrite_config(self, stage: Stage) -> dict[str, Any]:
        adapter, layers = stage.adapter, stage.layers or []
        cfg = adapter.write_sizes(stage.cfg_before, stage.before, stage.after)
        cfg = adapter.remap_layer_config(
            cfg | {adapter.keys["layers"]: stage.before.layers}, [j for j, _ in layers], [m for _, m in layers]
        )
        cfg[adapter.keys["layers"]] = stage.after.layers
        return cfg

    def view(
        self, prev: View, stage: Stage, *, seed: int, device: Any, dtype: Callable[[], torch.dtype], meta: bool
    ) -> View:
        from ..views import LayerView

        return LayerView(prev, stage, seed, device, dtype, meta)


def register_step(cls: type[GrowthStep]) -> type[GrowthStep]:
    """Register a step class under its ``kind`` (a class decorator; the plan parser and the engine find it)."""
    kind = cls.model_fields["kind"].default
    if not kind or not isinstance(kind, str):
        raise ValueError(f"{cls.__name__} needs a `kind` with a default (the plan's key)")
    STEP_TYPES[kind] = cls
    return cls


def step_type(kind: str) -> type[GrowthStep]:
    """The step class of ``kind``; KeyError when none is registered."""
    return STEP_TYPES[kind]
