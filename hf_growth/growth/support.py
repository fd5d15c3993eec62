"""The support matrix: what every registered architecture can grow exactly, measured from the adapters.

For every adapter in :func:`hf_growth.growth.adapters.supported_model_types` and every plan step kind,
:func:`support_matrix` builds a tiny config of that architecture and asks :class:`GrowthEngine` to validate
one-step plans (a few sizes per axis: an integer factor and a non-integer growth, where exactness depends
on it). Validation happens before any tensor is read, so nothing is computed. Each axis is then
classified as exact, exact with conditions (some probes refused), changes the function (``stack``) or
refused, with the refusal messages. ``docs/architectures.md`` is :func:`render_markdown`'s output::

    python -m hf_growth.growth.support > docs/architectures.md

>>> matrix = support_matrix(["gpt2"])
>>> matrix["gpt2"]["mlp_width"].status, matrix["gpt2"]["num_heads"].status
('exact', 'refused')
>>> matrix["gpt2"]["hidden_size"].status
'exact with conditions'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from .adapters import Adapter, Sizes, get_adapter, supported_model_types
from .steps import STEP_TYPES

EXACT = "exact"
CONDITIONS = "exact with conditions"
CHANGES = "changes the function"
CHANGES_WITH_CONDITIONS = "changes the function, with conditions"
REFUSED = "refused"

#: the tiny config every architecture is probed with (sizes by role; the adapter's ``keys`` name them)
TINY_SIZES = {"hidden": 64, "mlp": 128, "heads": 4, "kv_heads": 2, "layers": 4, "vocab": 128}

#: per step kind: (label, step given the sizes before) probes. Every step kind of the plan schema needs an
#: entry (tests/test_docs.py checks it); a kind whose exactness depends on the factor gets an integer factor
#: and a non-integer growth.
PROBES: dict[str, list[tuple[str, Callable[[Sizes], dict[str, Any]]]]] = {
    "mlp_width": [
        ("x2", lambda s: {"to": 2 * s.mlp}),
        ("x1.5", lambda s: {"to": s.mlp + s.mlp // 2}),
    ],
    "num_heads": [
        ("x2 (KV heads kept under GQA)", lambda s: {"to": 2 * s.heads}),
        ("x2 with KV heads x2", lambda s: {"to": 2 * s.heads, "num_key_value_heads": 2 * s.kv_heads}),
        ("x1.5", lambda s: {"to": s.heads + s.heads // 2}),
    ],
    "head_dim": [
        ("x2", lambda s: {"to": 2 * s.qk_dim}),
        ("x1.5", lambda s: {"to": s.qk_dim + s.qk_dim // 2}),
    ],
    "qk_dim": [
        ("x2", lambda s: {"to": 2 * s.qk_dim}),
        ("x1.5", lambda s: {"to": s.qk_dim + s.qk_dim // 2}),
    ],
    "value_dim": [
        ("x2", lambda s: {"to": 2 * s.v_dim}),
        ("x1.5", lambda s: {"to": s.v_dim + s.v_dim // 2}),
    ],
    "hidden_size": [
        ("x2", lambda s: {"to": 2 * s.hidden}),
        ("x1.5", lambda s: {"to": s.hidden + s.hidden // 2}),
    ],
    "num_layers": [
        ("x2, interleave", lambda s: {"to": 2 * s.layers, "where": "interleave"}),
        ("+2, top", lambda s: {"to": s.layers + 2, "where": "top"}),
        ("x2, interleave, init: copy", lambda s: {"to": 2 * s.layers, "where": "interleave", "init": "copy"}),
        ("+1 at position 0", lambda s: {"to": s.layers + 1, "where": [0]}),
    ],
    "stack": [
        ("x2, middle, block_size 1", lambda s: {"to": 2 * s.layers, "where": "middle", "block_size": 1}),
        ("+2, top, block_size 2", lambda s: {"to": s.layers + 2, "where": "top", "block_size": 2}),
        ("x2, top, one block of every layer", lambda s: {"to": 2 * s.layers, "where": "top", "block_size": s.layers}),
    ],
    "experts": [  # dense: upcycling to 8 experts; a mixture of experts: more experts
        (
            "dense: 8, top 2; MoE: experts and top_k x2",
            lambda s: {"to": 2 * s.experts, "top_k": 2 * s.top_k} if s.experts else {"to": 8, "top_k": 2},
        ),
        (
            "dense: 4, top 4; MoE: experts x1.5",
            lambda s: {"to": s.experts + s.experts // 2} if s.experts else {"to": 4, "top_k": 4},
        ),
    ],
}

#: config settings some architectures have that change what is exact: (label, key, value given the config).
#: A variant is probed for every architecture whose config class has the key.
CONFIG_VARIANTS: list[tuple[str, str, Callable[[Any], Any]]] = [
    ("scale_attn_by_inverse_layer_idx: true", "scale_attn_by_inverse_layer_idx", lambda config: True),
    (
        "rope_parameters: yarn",
        "rope_parameters",
        lambda config: {
            **(config.rope_parameters or {}),
            "rope_type": "yarn",
            "factor": 2.0,
            "original_max_position_embeddings": config.max_position_embeddings // 2,
        },
    ),
]


@dataclasses.dataclass(frozen=True)
class Probe:
    """One validated one-step plan: ``error`` is None when it was accepted; ``approximate_error`` is the
    message with ``approximate: true`` (None: accepted), asked only when the exact step was refused."""

    label: str
    variant: str | None
    step: dict[str, Any]
    exact: bool | None
    error: str | None
    approximate_error: str | None = None


@dataclasses.dataclass(frozen=True)
class AxisSupport:
    """What one architecture can do along one step kind."""

    status: str
    probes: tuple[Probe, ...]

    @property
    def refusals(self) -> list[Probe]:
        return [p for p in self.probes if p.error is not None]


def tiny_config(adapter: Adapter) -> Any:
    """A tiny config of the adapter's architecture (:data:`TINY_SIZES`); an adapter may provide its own
    ``tiny_config()``."""
    own = getattr(adapter, "tiny_config", None)
    if callable(own):
        return own()
    config_class = adapter.config_class()
    sizes = {adapter.keys[role]: value for role, value in TINY_SIZES.items() if role in adapter.keys}
    if hasattr(config_class(), "head_dim"):
        sizes["head_dim"] = TINY_SIZES["hidden"] // TINY_SIZES["heads"]
    return config_class(**sizes)


def _variant_config(config: Any, key: str, value: Callable[[Any], Any]) -> Any | None:
    if not hasattr(config, key):
        return None
    data = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "model_type")}
    data[key] = value(config)
    try:
        return type(config)(**data)
    except Exception:  # noqa: BLE001 - the config class refuses this value (not always a ValueError): skip it
        return None


def _validate(config: Any, kind: str, params: dict[str, Any]) -> tuple[bool | None, str | None]:
    from .engine import GrowthEngine

    try:
        engine = GrowthEngine(config, [{kind: params}])
    except ValueError as error:
        return None, str(error).removeprefix(f"plan step 0 ({kind}): ")
    return bool(engine.history_records[0]["exact"]), None


def probe_axis(config: Any, kind: str, variants: Iterable[tuple[str, Any]] = ()) -> AxisSupport:
    """Probe one step kind on ``config`` (and on each ``(label, config)`` variant) and classify it."""
    adapter = get_adapter(config)
    probes = []
    for variant, cfg in [(None, config), *variants]:
        sizes = adapter.sizes(adapter.complete_config(cfg.to_dict()))
        for label, make in PROBES[kind]:
            params = make(sizes)
            exact, error = _validate(cfg, kind, params)
            approximate_error = None
            if error is not None:
                approximate_error = _validate(cfg, kind, {**params, "approximate": True})[1]
            probe = Probe(label, variant, params, exact, error, approximate_error)
            if variant is not None and probe.error is None:
                continue  # a variant only matters where it refuses
            if variant is not None and any(p.error == probe.error for p in probes if p.label == label):
                continue
            probes.append(probe)
    accepted = [p for p in probes if p.error is None]
    if not accepted:
        status = REFUSED
    elif not all(p.exact for p in accepted):
        status = CHANGES if len(accepted) == len(probes) else CHANGES_WITH_CONDITIONS
    elif len(accepted) < len(probes):
        status = CONDITIONS
    else:
        status = EXACT
    return AxisSupport(status, tuple(probes))


def support_matrix(model_types: Iterable[str] | None = None) -> dict[str, dict[str, AxisSupport]]:
    """``{model_type: {step kind: AxisSupport}}`` for every registered adapter (or those named)."""
    from transformers.utils import logging

    matrix = {}
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # tiny configs make transformers warn (token ids outside the vocabulary)
    try:
        for model_type in model_types if model_types is not None else supported_model_types():
            adapter = get_adapter(model_type)
            config = tiny_config(adapter)
            variants = [
                (label, cfg)
                for label, key, value in CONFIG_VARIANTS
                if (cfg := _variant_config(config, key, value)) is not None
            ]
            matrix[model_type] = {kind: probe_axis(config, kind, variants) for kind in STEP_TYPES}
    finally:
        logging.set_verbosity(verbosity)
    return matrix


# ------------------------------------------------------------------------------------------ markdown
_HEADER = """\
# Supported architectures

<!-- generated by `python -m hf_growth.growth.support > docs/architectures.md`; do not edit by hand -->

Every registered architecture adapter, and what each [plan step](plan.md) does to it. The table is
measured, not written: for every adapter the generator builds a tiny config of that architecture
(hidden {hidden}, MLP {mlp}, {heads} query heads, {kv_heads} KV heads where the architecture has GQA,
{layers} layers) and validates one-step plans with `GrowthEngine` (validation happens before any tensor
is read). Where exactness depends on the factor it probes an integer factor and a non-integer growth.
Config settings that change what is exact are probed too, on the architectures whose config has them:
{variants}.

- **exact**: every probe was accepted; the grown model computes the same function (up to float round-off).
- **exact with conditions**: exact where accepted; the notes per architecture say what was refused and why.
- **changes the function**: accepted, by design not function-preserving (`stack`: MIDAS / gradual stacking);
  "with conditions" where some probes were refused.
- **refused**: no probe was accepted; the message says why and what to do instead.

A refused step fails with a `ValueError` (the CLI prints it on one line and exits 2) before anything is
read or written. Where a refusal is about exactness, `approximate: true` on the step does it anyway and
records `exact: false` in `growth_history`; the notes below say whether the architecture accepts that.
"""

_HOW_TO_ADD = """\
## How to add an adapter

An adapter (`hf_growth/growth/adapters/<name>.py`) maps an architecture onto the growth engine; it holds
no tensor code (the math is shared by every architecture and by the in-memory and streaming paths).

1. **Roles.** `layer_tensors` maps every tensor name inside a layer (after `layer_prefix`, e.g.
   `self_attn.q_proj.weight`) to `(role, transposed, config flag)`; `global_tensors` does the same for the
   tensors outside the layers. Roles are listed in `hf_growth/growth/adapters/base.py` (`q.w`, `k.w`,
   `v.w`, `qkv.w`, `o.w`, `mlp_in.w`, `mlp_out.w`, `norm.w`, `embed`, ...); `transposed` marks Conv1D
   storage `(in, out)`; the flag names a config key that must be true for the tensor to exist
   (`attention_bias`). Subclass the closest adapter (`LlamaAdapter` for RMSNorm + RoPE + SwiGLU,
   `GPT2Adapter` for LayerNorm + learned positions).
2. **Config keys.** `keys` maps the sizes (`hidden`, `mlp`, `heads`, `kv_heads`, `layers`, `vocab`) to
   the config's names; `sizes()` / `write_sizes()` read and write them; `config_defaults` holds the config
   class's defaults of the keys it reads (a `config.json` may leave them out); `norm` is `"rms"`
   (zero-padded hidden growth with gain and epsilon rescaled) or `"layer"` (integer cloning only).
3. **Refusals.** Define `check_<step>(stage)` (e.g. `check_head_dim`, `check_num_layers`) to raise a
   `ValueError` saying why a step cannot be exact and what can do it instead (an integer factor, another step,
   `approximate: true`); `stage` holds the step, the config and sizes before it and the sizes after it.
4. **Register** it in `_REGISTRY` in `hf_growth/growth/adapters/__init__.py` (or at run time with
   `register_adapter(model_type, "package.module:Class")`), regenerate this file, and test every step on a
   tiny random model (`max_logit_diff` against the source) and streaming against in-memory growth.

`CONTRIBUTING.md` walks through a whole adapter.
"""


def _step_yaml(kind: str, params: dict[str, Any]) -> str:
    inner = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items())
    return f"`{kind}: {{{inner}}}`"


def _sentence(message: str) -> str:
    """A refusal message on one line with one final period."""
    return " ".join(message.split()).rstrip(".") + "."


def _anchor(model_type: str) -> str:
    return model_type.lower()  # GitHub keeps underscores in heading anchors


def _adapter_summary(adapter: Adapter) -> list[str]:
    lines = [
        f"- config class `{adapter.config_class().__name__}`; sizes read from "
        + ", ".join(f"`{key}` ({role})" for role, key in adapter.keys.items()),
        (
            f"- norm: {'RMSNorm' if adapter.norm == 'rms' else 'LayerNorm'}; "
            f"positions: {'RoPE' if adapter.rope else 'learned'}; "
            f"separate q/k and v head sizes: {'yes' if adapter.separate_qk_v else 'no'}"
        ),
        "- tensors (inside layer `i`, under `"
        + adapter.layer_prefix
        + "i.`): "
        + ", ".join(
            f"`{suffix}` {role}{' (transposed)' if t else ''}{f' if `{flag}`' if flag else ''}"
            for suffix, (role, t, flag) in adapter.layer_tensors.items()
        ),
        "- tensors outside the layers: "
        + ", ".join(f"`{name}` {role}" for name, (role, _, _) in adapter.global_tensors.items())
        + f", `{adapter.lm_head}` lm_head (absent when tied)",
    ]
    return lines


def render_markdown(matrix: dict[str, dict[str, AxisSupport]] | None = None) -> str:
    """``docs/architectures.md``: the support table, the reasons for every condition and refusal, each
    adapter's tensor names and config keys, and how to add an adapter."""
    matrix = support_matrix() if matrix is None else matrix
    kinds = list(STEP_TYPES)
    out = [_HEADER.format(**TINY_SIZES, variants=", ".join(f"`{label}`" for label, _, _ in CONFIG_VARIANTS))]
    out.append("| architecture | " + " | ".join(f"`{k}`" for k in kinds) + " |")
    out.append("|---|" + "---|" * len(kinds))
    for model_type, axes in matrix.items():
        out.append(f"| [{model_type}](#{_anchor(model_type)}) | " + " | ".join(axes[k].status for k in kinds) + " |")
    out += ["", "Probes per step (sizes from the tiny config above):", ""]
    for kind in kinds:
        out.append(f"- `{kind}`: " + "; ".join(label for label, _ in PROBES[kind]))
    out.append("")
    for model_type, axes in matrix.items():
        adapter = get_adapter(model_type)
        out += [f"## {model_type}", ""]
        out += _adapter_summary(adapter)
        out.append("")
        notes = []
        for kind in kinds:
            axis = axes[kind]
            if axis.status.startswith(CHANGES):
                notes.append(f"- `{kind}`: {CHANGES} by design (copies blocks of layers; see [plan.md](plan.md)).")
            groups: dict[tuple[str | None, str, str | None], list[Probe]] = {}
            for probe in axis.refusals:
                groups.setdefault((probe.variant, probe.error, probe.approximate_error), []).append(probe)
            for (variant, error, approximate_error), probes in groups.items():
                where = f" with `{variant}`" if variant else ""
                if len(probes) == len(PROBES[kind]):
                    which = "every probe"
                else:
                    which = ", ".join(f"{p.label} ({_step_yaml(kind, p.step)})" for p in probes)
                approx = (
                    "accepted"
                    if approximate_error is None
                    else "refused too"
                    if approximate_error == error
                    else f"refused: {_sentence(approximate_error)}"
                )
                notes.append(
                    f"- `{kind}`{where}, refused for {which}: {_sentence(error)} With `approximate: true`: {approx}."
                )
        out += notes or ["Every probe was accepted and exact."]
        out.append("")
    out.append(_HOW_TO_ADD)
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    import sys

    sys.stdout.write(render_markdown())


if __name__ == "__main__":
    main()
