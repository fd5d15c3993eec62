"""The growth plan: an ordered list of one-key steps, validated with pydantic.

A plan is a :class:`GrowthPlan`, a list of one-key mappings, or a YAML file (or YAML text) of that list:

>>> plan = GrowthPlan.parse([{"mlp_width": 2048}, {"num_heads": {"to": 12, "num_key_value_heads": 4}},
...                          {"hidden_size": 768}, {"num_layers": {"to": 36, "where": "interleave"}}])
>>> [step.kind for step in plan.steps]
['mlp_width', 'num_heads', 'hidden_size', 'num_layers']
>>> plan.steps[0].to
2048

Every error is a ``ValueError`` naming the step (``plan step 2 (num_heads): ...``). The step types are the
registry of :mod:`hf_growth.growth.steps` (one module per step). Validation against a model's config (shrinking,
divisibility, what an architecture cannot do exactly) happens in :class:`hf_growth.growth.engine.GrowthEngine`
(each step's ``resize`` and the adapter's ``check_<kind>``), still before any tensor is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from .steps import (  # noqa: F401  (the step classes, defined in steps/, importable from here as before)
    STEP_TYPES,
    GrowthStep,
    HeadDimStep,
    HiddenSizeStep,
    MlpWidthStep,
    NumHeadsStep,
    NumLayersStep,
    QkDimStep,
    StackStep,
    ValueDimStep,
)

#: any step (the base class of every registered step type)
Step = GrowthStep


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        loc = ".".join(str(x) for x in item.get("loc", ()) if x != "kind")
        msg = item.get("msg", "")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_step(item: Any, index: int) -> GrowthStep:
    """Parse one plan item (``{"mlp_width": 2048}`` or ``{"mlp_width": {"to": 2048}}`` or a step object)."""
    if isinstance(item, GrowthStep):
        return item
    if not isinstance(item, dict) or len(item) != 1:
        raise ValueError(
            f"plan step {index}: each step must be a one-key mapping like {{mlp_width: 2048}}, got {item!r}"
        )
    ((kind, value),) = item.items()
    cls = STEP_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"plan step {index}: unknown step {kind!r}; known steps: {', '.join(STEP_TYPES)}")
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ValueError(f"plan step {index} ({kind}): expected an integer or a mapping with `to`, got {value!r}")
    data = {"to": value} if isinstance(value, int) else dict(value)
    try:
        return cls(**data)
    except ValidationError as error:
        raise ValueError(f"plan step {index} ({kind}): {_format_validation_error(error)}") from None


class GrowthPlan(BaseModel):
    """An ordered list of growth steps.

    >>> GrowthPlan.parse("- mlp_width: 128\\n- num_layers: {to: 4, where: top}").steps[1].where
    'top'
    """

    model_config = ConfigDict(frozen=True)
    steps: list[SerializeAsAny[GrowthStep]] = Field(default_factory=list)

    @field_validator("steps", mode="before")
    @classmethod
    def _parse_steps(cls, value: Any) -> Any:
        """Steps given as one-key mappings, ``{"kind": ..., ...}`` dicts or step objects become step objects."""
        if not isinstance(value, (list, tuple)):
            return value
        out = []
        for i, item in enumerate(value):
            if isinstance(item, dict) and "kind" in item and item["kind"] in STEP_TYPES:
                item = {item["kind"]: {k: v for k, v in item.items() if k != "kind"}}
            out.append(parse_step(item, i))
        return out

    @classmethod
    def parse(cls, plan: GrowthPlan | list | dict | str | Path) -> GrowthPlan:
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


def _load_yaml(plan: str | Path) -> Any:
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
