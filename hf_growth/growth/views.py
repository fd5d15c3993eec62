"""Lazy views: each growth step turns a tensor source into another tensor source without computing anything.
Asking the last view for one output tensor computes just that tensor from the tensors it needs in the view
before it, down to the source. :class:`SourceView` wraps the source, :class:`WidthView` applies a step's role
transform to every tensor (widths, heads, head sizes), :class:`LayerView` rebuilds the layer stack (new, copied
and kept layers). A step picks its view (:meth:`hf_growth.growth.steps.GrowthStep.view`).

Views also answer, without computing, an output's ``shape``, which slices are new (``spec``, on meta views), the
source tensor an output is a bit-identical copy of (``copy_of``), and whether rows of an output can be computed
in chunks (``row_local`` / ``get_rows``). Code that needs an output's origin walks the chain through ``prev``.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from hf_growth.growth.engine import GrowthEngine, MetaSource
>>> config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...                      num_attention_heads=4, num_key_value_heads=2)
>>> engine = GrowthEngine(config, [{"num_layers": {"to": 3, "where": "top"}}, {"mlp_width": 96}])
>>> view = engine.view(MetaSource(engine.source_shapes()), meta=True)
>>> type(view).__name__, type(view.prev).__name__, type(view.prev.prev).__name__
('WidthView', 'LayerView', 'SourceView')
>>> view.prev.origin("model.layers.2.mlp.up_proj.weight")
(None, 'new_random')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_module
from . import ops
from .free_values import RoleContext
from .new_slices import Spec, compose_spec

if TYPE_CHECKING:
    import torch

    from .engine import TensorSource
    from .steps.base import Stage
else:
    torch = lazy_module("torch", globals())

__all__ = ["BLOCK_OUTPUT_ROLES", "ExpertsView", "LayerView", "SourceView", "View", "WidthView"]

#: layer roles zeroed in a new block so that it is the identity (LLaMA-Pro)
BLOCK_OUTPUT_ROLES = ("o.w", "o.b", "mlp_out.w", "mlp_out.b", "experts_out.w")


def _fused_qkv(fn, role: str, t: torch.Tensor, c: RoleContext):
    """Apply a q/k/v transform to a tensor that holds q, k and v stacked along dim 0 (GPT-2 c_attn, Phi-3
    qkv_proj)."""
    b = c.before
    parts = [("q", "q", b.heads * b.qk_dim), ("k", "k", b.kv_heads * b.qk_dim), ("v", "v", b.kv_heads * b.v_dim)]
    return _fused(fn, role, t, c, parts)


def _fused_gate_up(fn, role: str, t: torch.Tensor, c: RoleContext):
    """Apply the MLP input transform to a tensor that holds gate and up stacked along dim 0 (Phi-3 gate_up_proj):
    each half is an ``mlp_in`` tensor."""
    return _fused(fn, role, t, c, [("gate", "mlp_in", t.shape[0] // 2), ("up", "mlp_in", t.shape[0] // 2)])


def _fused(fn, role: str, t: torch.Tensor, c: RoleContext, parts: list[tuple[str, str, int]]):
    """Split ``t`` along dim 0 into ``parts`` (label, role prefix, rows), transform each as its own role and
    concatenate; the placement of the rows is the parts' placements, offset. Each part draws its free values
    from its own seed (``name[label]``) when the adapter says ``fused_part_seeds``."""
    rows, outs, offset = [], [], 0
    cols = None
    suffix = role.split(".")[1]
    separate = c.stage.adapter.fused_part_seeds
    for (label, part_role, _), part in zip(parts, torch.split(t, [n for _, _, n in parts], dim=0)):
        result = fn(f"{part_role}.{suffix}", part, replace(c, name=f"{c.name}[{label}]") if separate else c)
        if result is None:
            out, placement = part, None
        else:
            out, placement = result
        p0 = placement[0] if placement is not None and placement[0] is not None else ops.leading(part.shape[0])
        rows.append(p0 + offset)
        if placement is not None and len(placement) > 1 and placement[1] is not None:
            cols = placement[1]
        outs.append(out)
        offset += out.shape[0]
    return _cat(outs, 0), [torch.cat(rows)] + ([cols] if t.dim() > 1 else [])


def _per_expert(fn, role: str, t: torch.Tensor, c: RoleContext):
    """Apply an MLP transform to a mixture of experts' fused 3-D tensor, expert by expert: ``experts_in.w``
    ``(experts, 2*mlp, hidden)`` as each expert's gate and up ``mlp_in.w``, ``experts_out.w`` as each expert's
    ``mlp_out.w``. Each part's free values are seeded by its own name (``name[e].gate``, ``name[e].up``,
    ``name[e]``), so experts (and gate and up) get different ones."""
    from dataclasses import replace

    outs, placement = [], None
    for e in range(t.shape[0]):
        if role == "experts_in.w":
            parts = [(f"[{e}].gate", t[e, : t.shape[1] // 2]), (f"[{e}].up", t[e, t.shape[1] // 2 :])]
            sub_role = "mlp_in.w"
        else:
            parts, sub_role = [(f"[{e}]", t[e])], "mlp_out.w"
        results = [fn(sub_role, part, replace(c, name=c.name + suffix)) for suffix, part in parts]
        if all(r is None for r in results):
            if e == 0:
                return None
            raise RuntimeError(f"a step changed some experts of {c.name} but not others")  # pragma: no cover
        grown = [r[0] for r in results]
        if placement is None:
            rows = [
                r[1][0] if r[1] is not None and r[1][0] is not None else ops.leading(p.shape[0])
                for r, (_, p) in zip(results, parts)
            ]
            offsets = [0] + [g.shape[0] for g in grown[:-1]]
            cols = next((r[1][1] for r in results if r[1] is not None and r[1][1] is not None), None)
            placement = [None, torch.cat([r + o for r, o in zip(rows, offsets)]), cols]
        outs.append(_cat(grown, 0) if len(grown) > 1 else grown[0])
    if any(o.is_meta for o in outs):
        return torch.empty((len(outs), *outs[0].shape), dtype=outs[0].dtype, device="meta"), placement
    return torch.stack(outs), placement


#: compound roles a width step transforms through the roles of their parts
EXPERT_ROLES = ("experts_in.w", "experts_out.w")
#: roles a width step transforms as another role: a router reads the hidden state like ``lm_head`` (a row per
#: expert as ``lm_head`` has a row per token)
ROLE_ALIASES = {"router.w": "lm_head"}


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat``, or on the meta device just the result's shape: torch's meta kernels of cat, arithmetic
    and index ops are Python decompositions whose first call imports torch._dynamo and sympy (seconds), so
    the engine's meta passes (shapes, new slices) never run them."""
    if any(t.is_meta for t in tensors):
        shape = list(tensors[0].shape)
        shape[dim] = sum(t.shape[dim] for t in tensors)
        return torch.empty(shape, dtype=tensors[0].dtype, device="meta")
    return torch.cat(tensors, dim)


class View:
    """A lazy tensor source: ``get(name)`` computes one tensor; ``spec(name)`` says which slices are new."""

    def keys(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _get(self, name: str) -> tuple[torch.Tensor, Spec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self, name: str) -> torch.Tensor:
        return self._get(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        """The output's shape. Views that know it without computing say it (no torch needed); the others run
        the step: call it on a meta view."""
        return tuple(self._get(name)[0].shape)

    def spec(self, name: str) -> Spec:
        """Which slices of the output are new (see :func:`compose_spec`); as :meth:`shape`, for meta views."""
        return self._get(name)[1]

    def copy_of(self, name: str) -> str | None:
        """The source tensor this output is a bit-identical copy of, or None (streaming copies bytes)."""
        return None

    def part_copy_of(self, name: str, expert: int, part: int) -> tuple[str, int | None, int | None] | None:
        """Expert ``expert``'s ``part`` of a fused expert tensor (see ``Adapter.saved_parts``) as a bit-identical
        copy: ``(source tensor, expert, part)`` of a source's fused tensor, ``(source tensor, None, None)`` for a
        whole source tensor (a dense MLP's), or None (computed)."""
        return None

    def row_local(self, name: str) -> bool:
        """Whether rows ``a:b`` of this output need only rows ``a:b`` of the source (embeddings, ``lm_head``
        under zero-padding steps): then :meth:`get_rows` computes a chunk alone, bit-identical to ``get``."""
        return False

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of output ``name`` whose whole tensor has ``total_rows`` rows."""
        return self.get(name)[start:stop]


class SourceView(View):
    """The source itself (the first view of every chain): every tensor is a copy of itself, nothing is new."""

    def __init__(self, source: TensorSource, names: list[str]):
        self.source, self.names = source, names

    def keys(self) -> list[str]:
        return list(self.names)

    def _get(self, name: str):
        return self.source.get(name), None

    def shape(self, name: str) -> tuple[int, ...]:
        if hasattr(self.source, "shape"):
            return tuple(self.source.shape(name))
        return tuple(self.source.get(name).shape)

    def spec(self, name: str) -> Spec:
        return None

    def copy_of(self, name: str) -> str | None:
        return name

    def part_copy_of(self, name: str, expert: int, part: int) -> tuple[str, int | None, int | None] | None:
        return name, expert, part

    def row_local(self, name: str) -> bool:
        return True

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        if hasattr(self.source, "get_rows"):
            return self.source.get_rows(name, start, stop)
        return self.source.get(name)[start:stop]


class WidthView(View):
    """A width step: the same tensor names, each computed by the step's role transform (``stage.step.transform``)
    from the previous view's tensor, or passed through when the step does not touch its role."""

    def __init__(self, prev: View, stage: Stage, seed: int, device: torch.device, meta: bool):
        self.prev, self.stage, self.seed, self.device, self.meta = prev, stage, seed, device, meta
        self.fn = stage.step.transform  # (role, canonical tensor, RoleContext) -> (tensor, placement) | None
        self._unchanged: dict[str, bool] = {}

    def keys(self) -> list[str]:
        return self.prev.keys()

    def _transform(self, name: str, t: torch.Tensor, row_offset: int = 0, total_rows: int | None = None):
        info = self.stage.adapter.role(name)
        c = RoleContext(
            self.stage,
            name,
            self.seed,
            t.device if not self.meta else self.device,
            self.meta,
            t.dtype,
            row_offset,
            total_rows,
        )
        canon = t.T if info.transposed else t  # computed in its own dtype: the transforms up-cast where they scale
        if info.role in ("qkv.w", "qkv.b"):
            result = _fused_qkv(self.fn, info.role, canon, c)
        elif info.role in ("gate_up.w", "gate_up.b"):
            result = _fused_gate_up(self.fn, info.role, canon, c)
        elif info.role in EXPERT_ROLES:
            result = _per_expert(self.fn, info.role, canon, c)
        else:
            result = self.fn(ROLE_ALIASES.get(info.role, info.role), canon, c)
        if result is None:
            return None
        out, placement = result
        if info.transposed:
            out = out.T.contiguous()
            placement = placement[::-1] if isinstance(placement, list) else placement
        return out.to(t.dtype), placement

    def shape(self, name: str) -> tuple[int, ...]:
        """The grown model's shape of the role (what every transform makes): no tensor is computed."""
        info = self.stage.adapter.role(name)
        shape = tuple(self.stage.adapter.canonical_shape(info.role, self.stage.after))
        return shape[::-1] if info.transposed else shape

    #: roles whose rows may be independent under a width step (the step says: :meth:`GrowthStep.row_local`)
    ROW_LOCAL_ROLES = ("embed", "pos", "lm_head")

    def row_local(self, name: str) -> bool:
        info = self.stage.adapter.role(name)
        if info.transposed or info.role not in self.ROW_LOCAL_ROLES or not self.prev.row_local(name):
            return False
        return self.stage.step.row_local(info.role, self.stage)

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        if not self.row_local(name):
            return super().get_rows(name, start, stop, total_rows)
        t = self.prev.get_rows(name, start, stop, total_rows)
        result = self._transform(name, t, start, total_rows)
        return t if result is None else result[0]

    def _get(self, name: str):
        t, spec = self.prev._get(name)
        result = self._transform(name, t)
        if result is None:
            return t, spec
        out, placement = result
        if not self.meta:  # new slices are asked of meta views only (GrowthEngine.new_slices): skip the sets
            return out, None
        return out, compose_spec(spec, placement, tuple(t.shape), tuple(out.shape))

    def copy_of(self, name: str) -> str | None:
        if name not in self._unchanged:
            role = self.stage.adapter.role(name)
            shape = self.stage.adapter.canonical_shape(role.role, self.stage.before) if role.role != "lambda" else (1,)
            if role.transposed:
                shape = shape[::-1]
            t = torch.empty(shape, device="meta")
            self._unchanged[name] = self._transform_meta(name, t) is None
        return self.prev.copy_of(name) if self._unchanged[name] else None

    def part_copy_of(self, name: str, expert: int, part: int) -> tuple[str, int | None, int | None] | None:
        self.copy_of(name)  # whether the step leaves the tensor unchanged
        return self.prev.part_copy_of(name, expert, part) if self._unchanged[name] else None

    def _transform_meta(self, name: str, t: torch.Tensor):
        meta, self.meta = self.meta, True
        try:
            return self._transform(name, t)
        finally:
            self.meta = meta


class LayerView(View):
    """A depth step: the layer stack rebuilt from ``stage.layers`` (per new layer: the old layer it comes from and
    ``keep`` | ``copy`` | ``new_copy`` | ``new_random``); tensors outside the layers pass through."""

    def __init__(self, prev: View, stage: Stage, seed: int, device: Any, dtype: Callable[[], torch.dtype], meta: bool):
        self.prev, self.stage, self.seed, self.device, self.meta = prev, stage, seed, device, meta
        self._dtype_of, self._dtype = dtype, None  # the dtype of new layers: looked up when one is made
        self.adapter = stage.adapter
        prev_names = prev.keys()
        self._globals = [n for n in prev_names if self.adapter.layer_of(n) is None]
        by_layer: dict[int, list[str]] = {}
        for n in prev_names:
            layer = self.adapter.layer_of(n)
            if layer is not None:
                by_layer.setdefault(layer, []).append(n)
        self._names: list[str] = []
        self._origin: dict[str, tuple[str | None, str]] = {}
        for i, (j, mode) in enumerate(stage.layers or []):
            if mode == "new_random":
                names = self.adapter.layer_tensor_names(i, stage.cfg_after)
                for n in names:
                    self._origin[n] = (None, mode)
            else:
                names = []
                for n in by_layer.get(j, []):
                    new_name = self.adapter.rename_layer(n, i)
                    if not self.adapter.layer_has(i, new_name.rsplit(f".{i}.", 1)[-1], stage.cfg_after):
                        continue
                    names.append(new_name)
                    self._origin[new_name] = (n, mode)
                if mode == "new_copy":  # e.g. ResFormer lambdas a layer 0 copy does not have
                    for n in self.adapter.layer_tensor_names(i, stage.cfg_after):
                        if n not in self._origin:
                            names.append(n)
                            self._origin[n] = (None, "new_random")
            self._names += names
        embeds = [n for n in self._globals if self.adapter.role(n).role in ("embed", "pos")]
        rest = [n for n in self._globals if n not in embeds]
        self._order = embeds + self._names + rest

    def keys(self) -> list[str]:
        return list(self._order)

    def origin(self, name: str) -> tuple[str | None, str]:
        """Where a layer tensor of this view comes from: ``(tensor of the previous view or None, mode)`` with mode
        ``keep`` | ``copy`` | ``new_copy`` | ``new_random``; ``(name, "keep")`` for a tensor outside the layers."""
        if self.adapter.layer_of(name) is None:
            return name, "keep"
        return self._origin[name]

    @property
    def dtype(self) -> torch.dtype:
        if self._dtype is None:
            self._dtype = self._dtype_of()
        return self._dtype

    def shape(self, name: str) -> tuple[int, ...]:
        if self.adapter.layer_of(name) is None:
            return self.prev.shape(name)
        origin, _ = self._origin[name]
        if origin is not None:  # keep, copy, new_copy: the shape of the layer it comes from
            return self.prev.shape(origin)
        info = self.adapter.role(name)  # a new layer's tensor has the grown model's shape
        shape = tuple(self.adapter.canonical_shape(info.role, self.stage.after))
        return shape[::-1] if info.transposed else shape

    def spec(self, name: str) -> Spec:
        if self.adapter.layer_of(name) is None:
            return self.prev.spec(name)
        origin, mode = self._origin[name]
        return self.prev.spec(origin) if mode == "keep" else "all"

    def row_local(self, name: str) -> bool:
        return self.adapter.layer_of(name) is None and self.prev.row_local(name)

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        if self.row_local(name):
            return self.prev.get_rows(name, start, stop, total_rows)
        return super().get_rows(name, start, stop, total_rows)

    def _get(self, name: str):
        if self.adapter.layer_of(name) is None:
            return self.prev._get(name)
        origin, mode = self._origin[name]
        if mode == "keep":
            return self.prev._get(origin)
        if mode == "copy":
            return self.prev._get(origin)[0], "all"
        info = self.adapter.role(name)
        if mode == "new_copy":
            t = self.prev._get(origin)[0]
            if info.role in BLOCK_OUTPUT_ROLES:
                t = torch.zeros(t.shape, dtype=t.dtype, device=t.device)  # (zeros_like on meta imports sympy)
            return t, "all"
        layer = self.adapter.layer_of(name)
        custom = self.adapter.new_layer_tensor(info.role, name, layer, self.stage.cfg_after)
        if custom is not None:
            t = custom.to(device="meta" if self.meta else self.device)
            return (t if t.is_floating_point() and t.dtype == self.dtype else t.to(self.dtype)), "all"
        shape = self.adapter.canonical_shape(info.role, self.stage.after)
        c = RoleContext(self.stage, name, self.seed, self.device, self.meta, self.dtype)
        init = self.adapter.new_layer_init(info.role)
        t = c.free(shape) if init == "free" else c.full(shape, 1.0) if init == "ones" else c.zeros(shape)
        if info.transposed:
            t = t.T.contiguous()
        return t.to(self.dtype), "all"

    def copy_of(self, name: str) -> str | None:
        if self.adapter.layer_of(name) is None:
            return self.prev.copy_of(name)
        origin, mode = self._origin[name]
        return self.prev.copy_of(origin) if mode in ("keep", "copy") and origin is not None else None

    def part_copy_of(self, name: str, expert: int, part: int) -> tuple[str, int | None, int | None] | None:
        if self.adapter.layer_of(name) is None:
            return self.prev.part_copy_of(name, expert, part)
        origin, mode = self._origin[name]
        if mode in ("keep", "copy") and origin is not None:
            return self.prev.part_copy_of(origin, expert, part)
        return None


class ExpertsView(View):
    """The ``experts`` step (:mod:`hf_growth.growth.steps.experts`): the names of the architecture after it
    (``stage.adapter_after``). Upcycling replaces each layer's dense MLP by the router and the fused expert tensors
    (every expert a copy of the MLP); more experts copy the experts and their router rows. Every other tensor
    passes through under its name (the dense and the MoE architecture share them)."""

    def __init__(self, prev: View, stage: Stage, seed: int, device: Any, dtype: Callable[[], torch.dtype], meta: bool):
        self.prev, self.stage, self.seed, self.device, self.meta = prev, stage, seed, device, meta
        self._dtype_of, self._dtype = dtype, None
        self.source, self.target = stage.adapter, stage.adapter_after
        self.upcycle = not stage.before.experts
        available = set(prev.keys())
        self._names = self.target.tensor_names(stage.cfg_after)
        #: output name -> the previous view's tensors it is computed from (None: passed through)
        self._parts: dict[str, list[str] | None] = {}
        mlp: dict[int, dict[str, str]] = {}
        if self.upcycle:
            for n in available:
                layer, role = self.source.layer_of(n), self.source.role(n).role
                if layer is not None and role in ("mlp_in.w", "mlp_out.w"):
                    key = "down" if role == "mlp_out.w" else "gate" if "gate" in n.rsplit(f".{layer}.", 1)[-1] else "up"
                    mlp.setdefault(layer, {})[key] = n
        for n in self._names:
            role = self.target.role(n).role
            if role not in ("router.w", "experts_in.w", "experts_out.w"):
                if n not in available:
                    raise ValueError(
                        f"{self.target.name} tensor {n!r} has no counterpart in the {self.source.name} model"
                    )  # pragma: no cover - adapters share these names
                self._parts[n] = None
            elif not self.upcycle:
                self._parts[n] = [n]
            else:
                layer = mlp.get(self.target.layer_of(n), {})
                self._parts[n] = (
                    []
                    if role == "router.w"
                    else [layer["gate"], layer["up"]]
                    if role == "experts_in.w"
                    else [layer["down"]]
                )

    def keys(self) -> list[str]:
        return list(self._names)

    def computed(self, name: str) -> bool:
        """Whether this step computes ``name`` (a router or an expert tensor) rather than passing it through."""
        return self._parts[name] is not None

    def _dtype_for(self, parts: list[torch.Tensor]) -> torch.dtype:
        if parts:
            return parts[0].dtype
        if self._dtype is None:
            self._dtype = self._dtype_of()
        return self._dtype

    def _get(self, name: str):
        parts = self._parts[name]
        if parts is None:
            return self.prev._get(name)
        tensors = [self.prev.get(p) for p in parts]
        info = self.target.role(name)
        c = RoleContext(
            self.stage,
            name,
            self.seed,
            self.device if not tensors else ("meta" if self.meta else tensors[0].device),
            self.meta,
            self._dtype_for(tensors),
        )
        out, placement = self.stage.step.expert_tensor(info.role, tensors, c)
        if placement is None:
            return out, "all"
        if not self.meta:
            return out, None
        return out, compose_spec(self.prev.spec(parts[0]), placement, tuple(tensors[0].shape), tuple(out.shape))

    def shape(self, name: str) -> tuple[int, ...]:
        if self._parts[name] is None:
            return self.prev.shape(name)
        return tuple(self.target.canonical_shape(self.target.role(name).role, self.stage.after))

    def spec(self, name: str) -> Spec:
        if self._parts[name] is None:
            return self.prev.spec(name)
        return self._get(name)[1]

    def copy_of(self, name: str) -> str | None:
        return self.prev.copy_of(name) if self._parts[name] is None else None

    def part_copy_of(self, name: str, expert: int, part: int) -> tuple[str, int | None, int | None] | None:
        parts = self._parts[name]
        if parts is None:
            return self.prev.part_copy_of(name, expert, part)
        old = self.stage.before.experts
        if self.stage.step.noise and expert >= old:  # noisy copies are computed
            return None
        if self.upcycle:  # every expert's part is the dense MLP's tensor
            origin = self.prev.copy_of(parts[part])
            return (origin, None, None) if origin is not None else None
        return self.prev.part_copy_of(name, expert % old, part)

    def row_local(self, name: str) -> bool:
        return self._parts[name] is None and self.prev.row_local(name)

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        if self.row_local(name):
            return self.prev.get_rows(name, start, stop, total_rows)
        return super().get_rows(name, start, stop, total_rows)
