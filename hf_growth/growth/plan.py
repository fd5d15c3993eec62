"""The growth plan: an ordered list of one-key steps, validated with pydantic.

A plan is a :class:`GrowthPlan`, a list of one-key mappings, or a YAML file (or YAML text) of that list:

>>> plan = GrowthPlan.parse([{"mlp_width": 2048}, {"num_heads": {"to": 12, "num_key_value_heads": 4}},
...                          {"hidden_size": 768}, {"num_layers": {"to": 36, "where": "interleave"}}])
>>> [step.kind for step in plan.steps]
['mlp_width', 'num_heads', 'hidden_size', 'num_layers']
>>> plan.steps[0].to
2048

Every error is a ``ValueError`` naming the step (``plan step 2 (num_heads): ...``). Validation against a
model's config (shrinking, divisibility, what an architecture cannot do exactly) happens in
:class:`hf_growth.growth.engine.GrowthEngine`, still before any tensor is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = ""
    to: int = Field(gt=0)
    approximate: bool = False

    def params(self) -> dict[str, Any]:
        """The step as a plain dict (for ``growth_history``)."""
        return {self.kind: self.model_dump(exclude={"kind"}, exclude_defaults=True) | {"to": self.to}}


class MlpWidthStep(_Step):
    """``mlp_width``: the MLP intermediate size."""

    kind: Literal["mlp_width"] = "mlp_width"


class NumHeadsStep(_Step):
    """``num_heads``: query heads; ``num_key_value_heads`` for GQA (default: kept for GQA, = ``to`` for MHA)."""

    kind: Literal["num_heads"] = "num_heads"
    num_key_value_heads: int | None = Field(default=None, gt=0)


class HeadDimStep(_Step):
    """``head_dim``: the per-head size of q, k and v together (stock Llama)."""

    kind: Literal["head_dim"] = "head_dim"


class QkDimStep(_Step):
    """``qk_dim``: the per-head query/key size alone (architectures with separate sizes)."""

    kind: Literal["qk_dim"] = "qk_dim"


class ValueDimStep(_Step):
    """``value_dim``: the per-head value/output size alone (architectures with separate sizes)."""

    kind: Literal["value_dim"] = "value_dim"


class HiddenSizeStep(_Step):
    """``hidden_size``: the residual width. ``noise``: std of the symmetry-breaking noise of integer cloning
    (LayerNorm models; default ``initializer_range``, 0 disables)."""

    kind: Literal["hidden_size"] = "hidden_size"
    noise: float | None = Field(default=None, ge=0)


class NumLayersStep(_Step):
    """``num_layers``: new function-preserving blocks (``interleave`` | ``top`` | list of new positions)."""

    kind: Literal["num_layers"] = "num_layers"
    where: Union[Literal["interleave", "top"], list[int]] = "interleave"
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


class StackStep(_Step):
    """``stack``: MIDAS (``middle``) or gradual (``top``) stacking of ``block_size``-layer blocks. Changes the
    function by design."""

    kind: Literal["stack"] = "stack"
    block_size: int = Field(default=1, gt=0)
    where: Literal["middle", "top"] = "middle"


STEP_TYPES: dict[str, type[_Step]] = {
    cls.model_fields["kind"].default: cls
    for cls in (MlpWidthStep, NumHeadsStep, HeadDimStep, QkDimStep, ValueDimStep, HiddenSizeStep, NumLayersStep,
                StackStep)
}
Step = Union[MlpWidthStep, NumHeadsStep, HeadDimStep, QkDimStep, ValueDimStep, HiddenSizeStep, NumLayersStep, StackStep]


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        loc = ".".join(str(x) for x in item.get("loc", ()) if x != "kind")
        msg = item.get("msg", "")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_step(item: Any, index: int) -> Step:
    """Parse one plan item (``{"mlp_width": 2048}`` or ``{"mlp_width": {"to": 2048}}`` or a step object)."""
    if isinstance(item, _Step):
        return item  # type: ignore[return-value]
    if not isinstance(item, dict) or len(item) != 1:
        raise ValueError(
            f"plan step {index}: each step must be a one-key mapping like {{mlp_width: 2048}}, got {item!r}"
        )
    (kind, value), = item.items()
    cls = STEP_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"plan step {index}: unknown step {kind!r}; known steps: {', '.join(STEP_TYPES)}")
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ValueError(f"plan step {index} ({kind}): expected an integer or a mapping with `to`, got {value!r}")
    data = {"to": value} if isinstance(value, int) else dict(value)
    try:
        return cls(**data)  # type: ignore[return-value]
    except ValidationError as error:
        raise ValueError(f"plan step {index} ({kind}): {_format_validation_error(error)}") from None


class GrowthPlan(BaseModel):
    """An ordered list of growth steps.

    >>> GrowthPlan.parse("- mlp_width: 128\\n- num_layers: {to: 4, where: top}").steps[1].where
    'top'
    """

    model_config = ConfigDict(frozen=True)
    steps: list[Step] = Field(default_factory=list)

    @classmethod
    def parse(cls, plan: "GrowthPlan | list | dict | str | Path") -> "GrowthPlan":
        """Accept a GrowthPlan, a list of one-key steps, ``{"steps": [...]}``, a YAML file path or YAML text."""
        if isinstance(plan, GrowthPlan):
            return plan
        if isinstance(plan, (str, Path)):
            plan = _load_yaml(plan)
        if isinstance(plan, dict) and set(plan) == {"steps"}:
            plan = plan["steps"]
        if not isinstance(plan, (list, tuple)):
            raise ValueError(f"a growth plan must be a list of one-key steps, got {type(plan).__name__}")
        return cls(steps=[parse_step(item, i) for i, item in enumerate(plan)])

    def to_list(self) -> list[dict[str, Any]]:
        """The plan as a list of one-key mappings (round-trips through :meth:`parse`)."""
        return [step.params() for step in self.steps]


def _load_yaml(plan: "str | Path") -> Any:
    import yaml

    text: str
    source = "plan"
    path = Path(plan) if isinstance(plan, Path) or "\n" not in str(plan) else None
    if path is not None and path.suffix in (".yaml", ".yml", ".json") or (path is not None and path.is_file()):
        if not path.is_file():
            raise FileNotFoundError(f"growth plan file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        text = str(plan)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"growth plan {source} is not valid YAML: {error}") from None
