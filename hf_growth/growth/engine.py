"""The growth engine: applies a plan to a *tensor source* and yields output tensors one at a time.

The engine never sees a model. It reads tensors by name from a source (:class:`TensorSource`: a state
dict here, lazily opened safetensors shards in the streaming front end) and builds, per step, a lazy
*view* that is itself a tensor source: asking the last view for one output tensor computes just that
tensor from the tensors it needs in the previous view, down to the source. Every free (random) value is
drawn from a generator seeded by ``(seed, step index, output tensor name, tag)``, so the result does not
depend on the order tensors are asked for, and the same code serves the in-memory and the streaming path.

The engine only orchestrates: each step (:mod:`.steps`, one module per step) checks itself against the config
and brings its tensor transforms; the adapter (:mod:`.adapters`) maps names to roles and says what its
architecture refuses; the views are in :mod:`.views`, the seeded free values in :mod:`.free_values`, and which
slices are new in :mod:`.new_slices`.

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                   num_attention_heads=4, num_key_value_heads=2)
>>> model = LlamaForCausalLM(cfg)
>>> engine = GrowthEngine(model.config, [{"mlp_width": 96}], seed=0)
>>> out = dict(engine.run(StateDictSource(model.state_dict())))
>>> tuple(out["model.layers.0.mlp.down_proj.weight"].shape), engine.new_config.intermediate_size
((32, 96), 96)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._lazy import lazy_module
from .adapters import Adapter, get_adapter
from .new_slices import Spec, compose_spec, fold_layers, spec_mask, spec_to_json  # noqa: F401  (re-exported)
from .plan import GrowthPlan
from .steps import Stage
from .views import BLOCK_OUTPUT_ROLES, LayerView, SourceView, View, WidthView  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import torch
else:  # imported on first use: validating a plan, counting parameters and planning copies need no torch
    torch = lazy_module("torch", globals())

#: config keys never carried into a grown config
DROPPED_CONFIG_KEYS = ("quantization_config", "_pre_quantization_dtype")


@runtime_checkable
class TensorSource(Protocol):
    """Where the engine reads tensors from. ``dtype(name)`` and ``shape(name)`` are optional (used, when
    present, to avoid decoding a tensor just to learn its dtype or shape)."""

    def keys(self) -> Iterable[str]: ...

    def get(self, name: str) -> torch.Tensor: ...


class StateDictSource:
    """A tensor source over a mapping name -> tensor (a model's ``state_dict()``). Never modified.

    >>> StateDictSource({"a": torch.zeros(2)}).get("a").shape
    torch.Size([2])
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors.keys())

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def dtype(self, name: str) -> torch.dtype:
        return self._tensors[name].dtype

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    @property
    def device(self) -> torch.device:
        first = next(iter(self._tensors.values()), None)
        return first.device if first is not None else torch.device("cpu")


class MetaSource:
    """Tensors of the right shapes on the ``meta`` device: the engine runs on it to learn output shapes and
    which slices are new without computing anything."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype | None = None):
        self._shapes, self._dtype = dict(shapes), dtype  # dtype None: float32

    def keys(self) -> list[str]:
        return list(self._shapes)

    def get(self, name: str) -> torch.Tensor:
        return torch.empty(self._shapes[name], dtype=self.dtype(name), device="meta")

    def dtype(self, name: str) -> torch.dtype:
        return torch.float32 if self._dtype is None else self._dtype

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    device = "meta"


# ------------------------------------------------------------------------------------------ the engine
def config_to_dict(config: Any) -> dict[str, Any]:
    """A deep-copied plain dict of a config (PreTrainedConfig or dict), without quantisation settings."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data = copy.deepcopy(data)
    for key in DROPPED_CONFIG_KEYS:
        data.pop(key, None)
    return data


class GrowthEngine:
    """Validate a plan against a config (before any tensor is read), then grow tensors from a source.

    ``run(source)`` yields ``(name, tensor)`` for every output tensor (the tied ``lm_head`` is left out:
    the model ties it). ``source_adapter`` is the source architecture's adapter, ``adapter`` the output's (they
    differ after a step that changes the architecture). ``new_config`` is the grown config with
    ``growth_history``; ``output_shapes()``
    and ``new_slices()`` need no tensors; ``copy_of(name)`` names the source tensor an output is a
    bit-identical copy of (the streaming writer copies those bytes).
    """

    def __init__(self, config: Any, plan: Any, *, seed: int = 0, adapter: Adapter | None = None):
        self.seed = int(seed)
        self.plan = GrowthPlan.parse(plan)
        # a transformers config is validated by its class; a plain dict (config.json as the streaming path reads
        # it, without importing transformers) gets the adapter's defaults and its pure-Python checks
        from_dict = isinstance(config, Mapping)
        cfg = config_to_dict(config)
        #: the source's adapter; a step that changes the architecture (``experts``) hands the next steps another
        #: one (``Stage.target``), and :attr:`adapter` is the output's
        self.source_adapter = adapter or get_adapter(cfg)
        if from_dict:
            cfg = self.source_adapter.complete_config(cfg)
        self.source_config_dict = copy.deepcopy(cfg)
        self.stages: list[Stage] = []
        std = float(cfg.get("initializer_range", 0.02))
        run_id = 1 + max((r.get("run", -1) for r in cfg.get("growth_history") or []), default=-1)
        current = self.source_adapter
        for index, step in enumerate(self.plan.steps):
            try:
                stage = step.stage(index, cfg, current, std=std)
            except ValueError as error:
                raise ValueError(f"plan step {index} ({step.kind}): {error}") from None
            self.stages.append(stage)
            cfg, current = stage.cfg_after, stage.adapter_after
        self.adapter = current
        if not self.stages:
            raise ValueError("the growth plan has no steps")
        try:
            self.adapter.validate_config(cfg, strict=not from_dict)
        except ValueError as error:
            raise ValueError(f"plan step {len(self.stages) - 1} ({self.stages[-1].step.kind}): {error}") from None
        self.history_records = []
        for stage in self.stages:
            record = {
                "step": stage.step.params(),
                "seed": self.seed,
                "run": run_id,
                "before": stage.before.as_dict(),
                "after": stage.after.as_dict(),
                "exact": stage.step.exact(stage),
            }
            record.update({k: v for k, v in stage.record.items() if not k.startswith("zero_pad")})
            self.history_records.append(record)
        self.new_config_dict = dict(cfg)
        self.new_config_dict["growth_history"] = (
            list(self.source_config_dict.get("growth_history") or []) + self.history_records
        )
        self._meta_specs: dict[str, Any] | None = None
        for record, (before_n, after_n) in zip(self.history_records, self.param_counts()):
            record["num_params_before"], record["num_params_after"] = before_n, after_n

    # ---------------------------------------------------------------- configs
    @property
    def new_config(self) -> Any:
        """The grown config as the architecture's config class (with ``growth_history``)."""
        config_class = self.adapter.config_class()
        data = {k: v for k, v in self.new_config_dict.items() if k not in ("transformers_version", "model_type")}
        return config_class(**data)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.new_config_dict["growth_history"]

    def final_config(self, dtype: torch.dtype | None = None) -> Any:
        """The grown config as every front end saves it: :attr:`new_config` with a deep copy of the
        history whose last record also says which slices are new (``new_slices``), and ``dtype``."""
        config = self.new_config
        history = copy.deepcopy(self.history)
        history[-1]["new_slices"] = self.new_slices()
        config.growth_history = history
        if dtype is not None:
            config.dtype = dtype
        return config

    def final_config_dict(self, dtype: str | None = None) -> dict[str, Any]:
        """The grown config as a plain dict, without transformers: :attr:`new_config_dict` with a deep copy of the
        history whose last record says which slices are new, and ``dtype`` (a torch dtype name, ``"bfloat16"``).
        For a config read from a ``config.json`` that this transformers version saved, its JSON is the same as
        that of :meth:`final_config` saved with ``save_pretrained`` (the streaming path writes it)."""
        data = copy.deepcopy(self.new_config_dict)
        data["growth_history"][-1]["new_slices"] = self.new_slices()
        if dtype is not None:
            data.pop("torch_dtype", None)  # the key before transformers 5
            data["dtype"] = dtype
        return data

    def param_counts(self) -> list[tuple[int, int]]:
        """``(parameters before, parameters after)`` of each step, from shapes alone (on the meta device;
        nothing is read; a tied ``lm_head`` is counted once, as ``num_parameters()`` counts it)."""

        def count(view: View) -> int:
            return sum(math.prod(view.shape(name)) for name in view.keys())

        views = self._views(MetaSource(self.source_shapes()), meta=True)
        counts = [sum(math.prod(s) for s in self.source_shapes().values())] + [count(v) for v in views[1:]]
        return list(zip(counts[:-1], counts[1:]))

    # ---------------------------------------------------------------- tensors
    def source_names(self) -> list[str]:
        """The tensors the engine reads (without a tied ``lm_head``)."""
        return self.source_adapter.tensor_names(self.source_config_dict)

    def source_shapes(self) -> dict[str, tuple[int, ...]]:
        sizes = self.source_adapter.sizes(self.source_config_dict)
        shapes = {}
        for name in self.source_names():
            role = self.source_adapter.role(name)
            shape = self.source_adapter.canonical_shape(role.role, sizes)
            shapes[name] = tuple(shape[::-1]) if role.transposed else tuple(shape)
        return shapes

    def view(self, source: TensorSource, *, meta: bool = False) -> View:
        """The lazy output view of ``source`` (a tensor source itself)."""
        names = self.source_names()
        available = set(source.keys())
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(
                f"the source has no tensor {missing[0]!r} that a {self.source_adapter.name} model with this config "
                f"needs ({len(missing)} missing)"
            )
        if hasattr(source, "shape"):
            expected = self.source_shapes()
            for n in names:
                if tuple(source.shape(n)) != expected[n]:
                    raise ValueError(f"tensor {n!r} has shape {tuple(source.shape(n))}, the config says {expected[n]}")
        return self._views(source, meta=meta)[-1]

    def _views(self, source: TensorSource, *, meta: bool = False) -> list[View]:
        """The source view and the view after each stage (unchecked: :meth:`view` checks the source)."""
        names = self.source_names()
        device = getattr(source, "device", "cpu")
        embed = next(n for n in names if self.source_adapter.role(n).role == "embed")

        def dtype() -> torch.dtype:  # of new layers: the embedding's (asked only when a new layer is made)
            return source.dtype(embed) if hasattr(source, "dtype") else source.get(embed).dtype

        views: list[View] = [SourceView(source, names)]
        for stage in self.stages:  # each step brings its view (WidthView, LayerView, or its own)
            views.append(stage.step.view(views[-1], stage, seed=self.seed, device=device, dtype=dtype, meta=meta))
        return views

    def run(self, source: TensorSource) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every output tensor, one at a time."""
        view = self.view(source)
        for name in view.keys():
            yield name, view.get(name)

    def output_names(self) -> list[str]:
        return list(self._specs().keys())

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Output tensor shapes, computed on the meta device (no tensor is read)."""
        view = self.view(MetaSource(self.source_shapes()), meta=True)
        return {name: view.shape(name) for name in view.keys()}

    def _specs(self) -> dict[str, Any]:
        if self._meta_specs is None:
            view = self.view(MetaSource(self.source_shapes()), meta=True)
            self._meta_specs = {name: view.spec(name) for name in view.keys()}
        return self._meta_specs

    def new_slices(self) -> dict[str, Any]:
        """Which slices of each output tensor are new (JSON form, see :func:`spec_to_json`); layer-wise
        identical entries are folded into ``prefix.*.suffix`` patterns."""
        all_specs = self._specs()
        specs = {n: spec_to_json(s) for n, s in all_specs.items() if s is not None}
        return fold_layers(specs, self.adapter, list(all_specs))

    def copy_of(self, name: str) -> str | None:
        view = self.view(MetaSource(self.source_shapes()), meta=True)
        return view.copy_of(name)

    def part_origins(self, name: str) -> list[tuple[int, int, int, Any]] | None:
        """For an output tensor that holds experts (``Adapter.saved_parts``): ``(expert, part, parts, origin)`` for
        each expert's part, ``origin`` as :meth:`View.part_copy_of` says (``(source tensor, None, None)``: a whole
        source tensor, e.g. the dense MLP's; ``(source tensor, expert, part)``: a part of a source's expert tensor;
        None: new). None for any other tensor. Growth during training copies Adam moments along these."""
        saved = self.adapter.saved_parts(name, self.adapter.sizes(self.new_config_dict))
        if not saved or saved[0][1] is None:
            return None
        view = self.view(MetaSource(self.source_shapes()), meta=True)
        parts = 1 + max(k for _, _, k in saved)
        return [(e, k, parts, view.part_copy_of(name, e, k)) for _, e, k in saved]
