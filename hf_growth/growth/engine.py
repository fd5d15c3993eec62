"""The growth engine: applies a plan to a *tensor source* and yields output tensors one at a time.

The engine never sees a model. It reads tensors by name from a source (:class:`TensorSource`: a state
dict here, lazily opened safetensors shards in the streaming front end) and builds, per step, a lazy
*view* that is itself a tensor source: asking the last view for one output tensor computes just that
tensor from the tensors it needs in the previous view, down to the source. Every free (random) value is
drawn from a generator seeded by ``(seed, step index, output tensor name, tag)``, so the result does not
depend on the order tensors are asked for, and the same code serves the in-memory and the streaming path.

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
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._lazy import lazy_module
from . import ops
from .adapters import Adapter, Sizes, get_adapter
from .plan import GrowthPlan
from .stacking import stack_layer_sources

if TYPE_CHECKING:
    import torch
else:  # imported on first use: validating a plan, counting parameters and planning copies need no torch
    torch = lazy_module("torch", globals())

#: config keys never carried into a grown config
DROPPED_CONFIG_KEYS = ("quantization_config", "_pre_quantization_dtype")
#: layer roles zeroed in a new block so that it is the identity (LLaMA-Pro)
BLOCK_OUTPUT_ROLES = ("o.w", "o.b", "mlp_out.w", "mlp_out.b")


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


# ------------------------------------------------------------------------------------------ new-slice specs
# A spec says which entries of a tensor are new: None (none), "all", or a tuple with one frozenset of new
# indices per dimension (an entry is new if any of its indices is new along its dimension).
Spec = Any


def compose_spec(spec: Spec, placement: Any, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> Spec:
    """The spec after a transform with ``placement`` (per-dim old->new index tensors, None, or "all")."""
    if placement == "all" or spec == "all":
        return "all"
    if placement is None and old_shape == new_shape:
        return spec
    dims = []
    for d, new_size in enumerate(new_shape):
        old_new = spec[d] if spec else frozenset()
        p = placement[d] if placement is not None else None
        if p is None:
            dims.append(frozenset(old_new) | frozenset(range(old_shape[d], new_size)))
        else:
            p = p.tolist()
            dims.append(frozenset(p[i] for i in old_new) | (frozenset(range(new_size)) - frozenset(p)))
    if not any(dims):
        return None
    return tuple(dims)


def spec_to_json(spec: Spec) -> Any:
    """JSON form: ``"all"`` or ``{dim: [[start, stop], ...]}`` (half-open ranges)."""
    if spec == "all" or spec is None:
        return spec
    out = {}
    for d, indices in enumerate(spec):
        if indices:
            ranges, items = [], sorted(indices)
            start = prev = items[0]
            for i in items[1:]:
                if i != prev + 1:
                    ranges.append([start, prev + 1])
                    start = i
                prev = i
            ranges.append([start, prev + 1])
            out[str(d)] = ranges
    return out


def spec_mask(spec_json: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """A bool mask (True = new) from the JSON form of a spec."""
    if spec_json == "all":
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.zeros(shape, dtype=torch.bool)
    for d, ranges in (spec_json or {}).items():
        index = [slice(None)] * len(shape)
        for start, stop in ranges:
            index[int(d)] = slice(start, stop)
            mask[tuple(index)] = True
    return mask


# ------------------------------------------------------------------------------------------ contexts
def _seed_for(seed: int, stage: int, name: str, tag: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{stage}\x00{name}\x00{tag}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


#: free values are drawn in blocks of whole rows (dim 0) of about this many elements, each block from its own
#: generator seeded by (seed, step, tensor name, tag, block index): a block of rows of a large tensor can then
#: be computed alone (row chunks) and gives the same values as the whole tensor.
FREE_BLOCK_ELEMENTS = 1 << 20
#: threads drawing the blocks of one tensor, the calling thread included (torch's normal_ is serial and releases
#: the GIL): the values are the same for any number of threads
FREE_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
_POOL: Any = None  # (pid, threads, ThreadPoolExecutor): made on first use, again in a forked child


def _run_blocks(fn: Callable[[int], None], blocks: range, alongside: Callable[[], None] | None = None) -> None:
    """``fn(b)`` for every block, on :data:`FREE_THREADS` threads (the caller's and ``FREE_THREADS - 1`` of a
    pool) when there are several blocks. ``alongside()`` (work of the caller's own, on other memory) runs in the
    calling thread while the pool's threads start on the blocks."""
    global _POOL
    if FREE_THREADS < 2 or len(blocks) < 2:
        if alongside is not None:
            alongside()
        for b in blocks:
            fn(b)
        return
    import threading

    if _POOL is None or _POOL[:2] != (os.getpid(), FREE_THREADS):
        from concurrent.futures import ThreadPoolExecutor

        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)  # FREE_THREADS changed
        _POOL = (os.getpid(), FREE_THREADS,
                 ThreadPoolExecutor(max_workers=FREE_THREADS - 1, thread_name_prefix="hf-growth-free"))
    todo, lock = iter(blocks), threading.Lock()

    def work() -> None:
        while True:
            with lock:
                b = next(todo, None)
            if b is None:
                return
            fn(b)

    futures = [_POOL[2].submit(work) for _ in range(min(FREE_THREADS - 1, len(blocks)))]
    try:
        if alongside is not None:
            alongside()
        work()
    finally:
        for future in futures:
            future.result()


@dataclass
class _Ctx:
    """What a role transform knows: the step, sizes before/after, and seeded fills for one output tensor.

    Fills are made in ``dtype`` (the tensor's own: zero-padding and copying are exact in any dtype; the
    transforms that rescale compute in float32 themselves). ``row_offset`` is the first row of the output
    tensor this call computes (row chunks of embeddings and ``lm_head``; 0 for a whole tensor)."""

    stage: "Stage"
    name: str
    seed: int
    device: Any  # a torch.device or its name
    meta: bool
    dtype: Any = None  # torch dtype of the tensor (None: float32)
    row_offset: int = 0
    #: rows (dim 0) of the whole output tensor when this call computes a chunk of them (None: all of them)
    total_rows: int | None = None

    @property
    def before(self) -> Sizes:
        return self.stage.before

    @property
    def after(self) -> Sizes:
        return self.stage.after

    @property
    def step(self) -> Any:
        return self.stage.step

    def free(self, shape: tuple[int, ...], tag: str = "", std: float | None = None,
             dtype: torch.dtype | None = None, out: torch.Tensor | None = None,
             alongside: Callable[[], None] | None = None) -> torch.Tensor:
        """Seeded normal(0, std) values (std: the config's ``initializer_range``), drawn in float32 and
        returned in ``dtype`` (default: the tensor's). Rows ``row_offset .. row_offset + shape[0]`` of the
        tensor's free field of that tag: drawn block by block (:data:`FREE_BLOCK_ELEMENTS`), the blocks on
        :data:`FREE_THREADS` threads (each block has its own generator: the values do not depend on it).
        ``out``: a tensor of ``shape`` to fill instead of a new one (a slice of the output: no extra copy);
        ``alongside()``: the caller's other work on the output (copying the old values), run meanwhile."""
        if out is not None:
            dtype = out.dtype
        dtype = self.dtype if dtype is None else dtype
        if self.meta:
            if alongside is not None:
                alongside()
            return out if out is not None else torch.empty(shape, device="meta", dtype=dtype)
        std = self.stage.std if std is None else std
        shape = tuple(shape)
        row = math.prod(shape[1:]) if len(shape) > 1 else 1
        block = max(1, FREE_BLOCK_ELEMENTS // max(row, 1)) if len(shape) > 1 else FREE_BLOCK_ELEMENTS
        first, stop = self.row_offset, self.row_offset + (shape[0] if shape else 1)
        total = stop if self.total_rows is None else self.total_rows
        if out is None:
            out = torch.empty(shape, dtype=dtype)
        elif tuple(out.shape) != shape:  # pragma: no cover - engine bug
            raise RuntimeError(f"free values of shape {shape} asked into a tensor of shape {tuple(out.shape)}")
        if out.numel() == 0:
            if alongside is not None:
                alongside()
            return out.to(self.device)
        # rows of the free field (a strided 2-D slice of the output works as it is)
        flat = out if out.dim() == 2 else out.unsqueeze(1) if out.dim() == 1 else out.view(stop - first, -1)

        def draw(b: int) -> None:
            a, z = max(b * block, first), min((b + 1) * block, stop)
            # a block is always drawn whole (its size depends only on the tensor), then cut to this call's rows
            generator = torch.Generator().manual_seed(_seed_for(self.seed, self.stage.index, self.name, f"{tag}#{b}"))
            values = torch.empty((min((b + 1) * block, total) - b * block, row))
            values.normal_(0.0, std, generator=generator)
            flat[a - first: z - first] = values[a - b * block: z - b * block]

        _run_blocks(draw, range(first // block, -(-stop // block)), alongside)
        return out.to(self.device)

    def free_rows(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Fill the rows of ``out`` (dim 0) that ``rows`` (old row -> new row) does not name with free values;
        only those rows are drawn, in order. Returns ``out``."""
        if self.meta:
            return out
        taken = torch.zeros(out.shape[0], dtype=torch.bool)
        taken[rows] = True
        new = (~taken).nonzero().flatten()
        if len(new):
            out[new] = self.free((len(new), *out.shape[1:]))
        return out

    def placed(self, t: torch.Tensor, shape: tuple[int, ...], placements: list, value: float = 0.0) -> torch.Tensor:
        """``ops.place(t, full(shape, value), placements)``; when ``t`` lands on the leading indices of every
        dimension only the rest is filled (the bytes ``t`` covers are written once)."""
        if self.meta or len(placements) != len(shape) or not all(p is None or _leading(p) for p in placements):
            return ops.place(t, self.full(shape, value), placements)
        out = self.empty(shape)
        out[tuple(slice(0, n) for n in t.shape)] = t
        for d in range(len(shape)):  # the rest, as disjoint slabs: dims < d inside t, dim d past it
            if t.shape[d] < shape[d]:
                out[tuple([slice(0, n) for n in t.shape[:d]] + [slice(t.shape[d], None)])] = value
        return out

    def empty(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=self.dtype, device="meta" if self.meta else self.device)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype, device="meta" if self.meta else self.device)

    def full(self, shape: tuple[int, ...], value: float) -> torch.Tensor:
        return torch.full(shape, value, dtype=self.dtype, device="meta" if self.meta else self.device)


def _leading(positions: torch.Tensor) -> bool:
    """Whether a placement keeps the old indices first (``0 .. n-1``, :func:`ops.leading`)."""
    return positions.numel() == 0 or bool(torch.equal(positions, torch.arange(positions.numel())))


@dataclass
class Stage:
    """One validated step: the configs and sizes around it and, for depth steps, where layers come from."""

    index: int
    step: Any
    adapter: Adapter
    cfg_before: dict[str, Any]
    cfg_after: dict[str, Any]
    before: Sizes
    after: Sizes
    std: float
    #: depth steps: for each new layer (old layer index, mode) with mode keep | copy | new_copy | new_random
    layers: list[tuple[int, str]] | None = None
    record: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ role transforms
# Each returns (canonical tensor float32, placement) or None when the tensor is unchanged by the step.
Result = "tuple[torch.Tensor, Any] | None"


def _mlp_width(role: str, t: torch.Tensor, c: _Ctx):
    p, new = c.before.mlp, c.after.mlp
    if role == "mlp_in.w":  # only the new rows are drawn, straight into the output
        out = c.empty((new, t.shape[1]))
        c.free((new - p, t.shape[1]), out=out[p:], alongside=lambda: out[:p].copy_(t))
        return out, [ops.leading(p), None]
    if role == "mlp_in.b":
        return c.placed(t, (new,), [ops.leading(p)]), [ops.leading(p)]
    if role == "mlp_out.w":
        return c.placed(t, (t.shape[0], new), [None, ops.leading(p)]), [None, ops.leading(p)]
    return None


def _kv_expand(t: torch.Tensor, kv_source: list[int | None], head: int, fill: torch.Tensor):
    old = t.reshape(-1, head, *t.shape[1:])
    out = fill.reshape(len(kv_source), head, *t.shape[1:])
    first: dict[int, int] = {}
    for slot, src in enumerate(kv_source):
        if src is not None:
            out[slot] = old[src]
            first.setdefault(src, slot)
    positions = torch.tensor([first[g] for g in range(old.shape[0])], dtype=torch.long)
    rows = ops.per_head_placement(positions, head, head_size=head)
    return out.reshape(fill.shape), rows


def _num_heads(role: str, t: torch.Tensor, c: _Ctx):
    b, a = c.before, c.after
    q_pos, kv_src = ops.gqa_head_map(b.heads, b.kv_heads, a.heads, a.kv_heads)
    if role in ("q.w", "q.b"):
        rows = ops.per_head_placement(q_pos, b.qk_dim, head_size=b.qk_dim)
        shape = (a.heads * b.qk_dim, *t.shape[1:])
        out = ops.place(t, c.empty(shape) if role == "q.w" else c.zeros(shape), [rows] + [None] * (t.dim() - 1))
        if role == "q.w":  # only the new heads' rows are drawn
            c.free_rows(out, rows)
        return out, [rows] + [None] * (t.dim() - 1)
    if role in ("k.w", "k.b", "v.w", "v.b"):
        head = b.qk_dim if role[0] == "k" else b.v_dim
        shape = (a.kv_heads * head, *t.shape[1:])
        out, rows = _kv_expand(t, kv_src, head, c.empty(shape) if role.endswith(".w") else c.zeros(shape))
        if role.endswith(".w"):  # only the new KV heads' rows are drawn (copied heads are copies)
            copied = torch.tensor([slot for slot, src in enumerate(kv_src) if src is not None], dtype=torch.long)
            c.free_rows(out, ops.per_head_placement(copied, head, head_size=head))
        return out, [rows] + [None] * (t.dim() - 1)
    if role == "o.w":
        cols = ops.per_head_placement(q_pos, b.v_dim, head_size=b.v_dim)
        return c.placed(t, (t.shape[0], a.heads * b.v_dim), [None, cols]), [None, cols]
    return None


def _qk_dim(role: str, t: torch.Tensor, c: _Ctx):
    b, a = c.before, c.after
    if a.qk_dim == b.qk_dim or role not in ("q.w", "q.b", "k.w", "k.b"):
        return None
    if c.stage.adapter.rope:
        within = ops.rope_placement(b.qk_dim, a.qk_dim, exact=not (c.step.approximate and a.qk_dim % b.qk_dim))
    else:
        within = ops.leading(b.qk_dim)
    heads = b.heads if role[0] == "q" else b.kv_heads
    rows = ops.per_head_placement(torch.arange(heads), a.qk_dim, within=within)
    shape = (heads * a.qk_dim, *t.shape[1:])
    rest = [None] * (t.dim() - 1)
    if role == "q.w":
        return c.free_rows(ops.place(t, c.empty(shape), [rows] + rest), rows), [rows] + rest
    if role == "q.b":
        return c.placed(t, shape, [rows] + rest), [rows] + rest
    # keys: scaled by sqrt(new/old) for the 1/sqrt(d) change (in float32); their new entries are zero
    scaled = t.float() if c.meta else t.float() * math.sqrt(a.qk_dim / b.qk_dim)
    return c.placed(scaled, shape, [rows] + rest), [rows] + rest


def _value_dim(role: str, t: torch.Tensor, c: _Ctx):
    b, a = c.before, c.after
    if a.v_dim == b.v_dim:
        return None
    if role in ("v.w", "v.b"):
        rows = ops.per_head_placement(torch.arange(b.kv_heads), a.v_dim, head_size=b.v_dim)
        shape = (b.kv_heads * a.v_dim, *t.shape[1:])
        rest = [None] * (t.dim() - 1)
        if role == "v.w":
            return c.free_rows(ops.place(t, c.empty(shape), [rows] + rest), rows), [rows] + rest
        return c.placed(t, shape, [rows] + rest), [rows] + rest
    if role == "o.w":
        cols = ops.per_head_placement(torch.arange(b.heads), a.v_dim, head_size=b.v_dim)
        return c.placed(t, (t.shape[0], b.heads * a.v_dim), [None, cols]), [None, cols]
    return None


def _head_dim(role: str, t: torch.Tensor, c: _Ctx):
    result = _qk_dim(role, t, c)
    return result if result is not None else _value_dim(role, t, c)


_HIDDEN_IN = ("q.w", "k.w", "v.w", "mlp_in.w", "lm_head")  # hidden is their input (columns)
_HIDDEN_OUT_W = ("o.w", "mlp_out.w")  # hidden is their output (rows)
_HIDDEN_VEC = ("o.b", "mlp_out.b", "norm.w", "norm.b", "final_norm.w", "final_norm.b")


def _hidden_zero_pad(role: str, t: torch.Tensor, c: _Ctx):
    h, new = c.before.hidden, c.after.hidden
    lead = ops.leading(h)
    if role in ("embed", "pos"):
        return c.placed(t, (t.shape[0], new), [None, lead]), [None, lead]
    if role in _HIDDEN_IN:  # only the new columns are drawn, straight into the output
        out = c.empty((t.shape[0], new))
        c.free((t.shape[0], new - h), out=out[:, h:], alongside=lambda: out[:, :h].copy_(t))
        return out, [None, lead]
    if role in _HIDDEN_OUT_W:
        return c.placed(t, (new, t.shape[1]), [lead, None]), [lead, None]
    if role in ("norm.w", "final_norm.w"):
        if c.stage.adapter.norm == "rms":
            return ops.rms_gain_rescale(t, h, new), [lead]
        return c.placed(t, (new,), [lead], 1.0), [lead]  # LayerNorm, approximate
    if role in _HIDDEN_VEC:
        return c.placed(t, (new,), [lead]), [lead]
    return None


def _hidden_clone(role: str, t: torch.Tensor, c: _Ctx):
    h, new = c.before.hidden, c.after.hidden
    m = new // h
    std = c.step.noise
    noise = (lambda out_copies, in_copies, shape: None if in_copies < 2 or std == 0 else
             c.free((out_copies, in_copies - 1, *shape), tag=f"noise{out_copies}", std=std, dtype=torch.float32))
    lead = lambda n: ops.leading(n)  # noqa: E731
    if role in ("embed", "pos"):
        return ops.repeat_along(t, m, dim=1), [None, lead(h)]
    if role == "lm_head":
        return ops.clone_linear(t, 1, m, noise(1, m, t.shape)), [None, lead(h)]
    if role in ("q.w", "k.w", "v.w", "o.w"):
        return ops.clone_linear(t, m, m, noise(m, m, t.shape)), [lead(t.shape[0]), lead(t.shape[1])]
    if role == "mlp_in.w":
        return ops.clone_linear(t, 1, m, noise(1, m, t.shape)), [None, lead(h)]
    if role == "mlp_out.w":
        return ops.clone_linear(t, m, 1), [lead(h), None]
    if role in ("q.b", "k.b", "v.b"):
        return ops.repeat_along(t, m), [lead(t.shape[0])]
    if role in ("final_norm.w", "final_norm.b") and c.before.tied:
        # the tied unembedding repeats the embedding columns: divide the last norm instead
        repeated = ops.repeat_along(t.float(), m)
        return (repeated if c.meta else repeated / m), [lead(h)]
    if role in _HIDDEN_VEC:
        return ops.repeat_along(t, m), [lead(h)]
    return None


def _chain_placements(p1: Any, p2: Any, old_shape: tuple[int, ...]) -> Any:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    out = []
    for d in range(len(old_shape)):
        a = p1[d] if p1[d] is not None else None
        b = p2[d] if p2[d] is not None else None
        if a is None:
            out.append(b[: old_shape[d]] if b is not None else None)
        else:
            out.append(b[a] if b is not None else a)
    return out


def _hidden(role: str, t: torch.Tensor, c: _Ctx):
    if c.stage.adapter.norm == "layer" and not c.stage.record.get("zero_pad"):
        return _hidden_clone(role, t, c)
    b, a = c.before, c.after
    if a.qk_dim == b.qk_dim:
        return _hidden_zero_pad(role, t, c)
    # approximate GPT-2 zero padding: the head size grows with the hidden size, in two sub-steps
    from dataclasses import replace

    mid = b.with_(hidden=a.hidden)
    c1 = replace(c, stage=replace(c.stage, after=mid))
    c2 = replace(c, stage=replace(c.stage, before=mid))
    r1 = _hidden_zero_pad(role, t, c1)
    t1, p1 = r1 if r1 is not None else (t, None)
    r2 = _head_dim(role, t1, c2)
    if r2 is None:
        return r1
    return r2[0], _chain_placements(p1, r2[1], tuple(t.shape))


WIDTH_TRANSFORMS: dict[str, Callable[[str, torch.Tensor, _Ctx], Any]] = {
    "mlp_width": _mlp_width, "num_heads": _num_heads, "head_dim": _head_dim, "qk_dim": _qk_dim,
    "value_dim": _value_dim, "hidden_size": _hidden,
}


def _fused_qkv(fn, role: str, t: torch.Tensor, c: _Ctx):
    """Apply a q/k/v transform to a tensor that holds q, k and v stacked along dim 0 (GPT-2 c_attn)."""
    b, a = c.before, c.after
    sizes = [b.heads * b.qk_dim, b.kv_heads * b.qk_dim, b.kv_heads * b.v_dim]
    parts, rows, offset = [], [], 0
    cols = None
    suffix = role.split(".")[1]
    for part_role, part in zip("qkv", torch.split(t, sizes, dim=0)):
        result = fn(f"{part_role}.{suffix}", part, c)
        if result is None:
            out, placement = part, None
        else:
            out, placement = result
        p0 = placement[0] if placement is not None and placement[0] is not None else ops.leading(part.shape[0])
        rows.append(p0 + offset)
        if placement is not None and len(placement) > 1 and placement[1] is not None:
            cols = placement[1]
        parts.append(out)
        offset += out.shape[0]
    return _cat(parts, 0), [torch.cat(rows)] + ([cols] if t.dim() > 1 else [])


def _cat(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat``, or on the meta device just the result's shape: torch's meta kernels of cat, arithmetic
    and index ops are Python decompositions whose first call imports torch._dynamo and sympy (seconds), so
    the engine's meta passes (shapes, new slices) never run them."""
    if any(t.is_meta for t in tensors):
        shape = list(tensors[0].shape)
        shape[dim] = sum(t.shape[dim] for t in tensors)
        return torch.empty(shape, dtype=tensors[0].dtype, device="meta")
    return torch.cat(tensors, dim)


# ------------------------------------------------------------------------------------------ views
class _View:
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

    def row_local(self, name: str) -> bool:
        """Whether rows ``a:b`` of this output need only rows ``a:b`` of the source (embeddings, ``lm_head``
        under zero-padding steps): then :meth:`get_rows` computes a chunk alone, bit-identical to ``get``."""
        return False

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of output ``name`` whose whole tensor has ``total_rows`` rows."""
        return self.get(name)[start:stop]


class _SourceView(_View):
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

    def row_local(self, name: str) -> bool:
        return True

    def get_rows(self, name: str, start: int, stop: int, total_rows: int) -> torch.Tensor:
        if hasattr(self.source, "get_rows"):
            return self.source.get_rows(name, start, stop)
        return self.source.get(name)[start:stop]


class _WidthView(_View):
    def __init__(self, prev: _View, stage: Stage, seed: int, device: torch.device, meta: bool):
        self.prev, self.stage, self.seed, self.device, self.meta = prev, stage, seed, device, meta
        self.fn = WIDTH_TRANSFORMS[stage.step.kind]
        self._unchanged: dict[str, bool] = {}

    def keys(self) -> list[str]:
        return self.prev.keys()

    def _transform(self, name: str, t: torch.Tensor, row_offset: int = 0, total_rows: int | None = None):
        info = self.stage.adapter.role(name)
        c = _Ctx(self.stage, name, self.seed, t.device if not self.meta else self.device, self.meta, t.dtype,
                 row_offset, total_rows)
        canon = t.T if info.transposed else t  # computed in its own dtype: the transforms up-cast where they scale
        if info.role in ("qkv.w", "qkv.b"):
            result = _fused_qkv(self.fn, info.role, canon, c)
        else:
            result = self.fn(info.role, canon, c)
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

    #: roles whose rows are independent under every width step but HyperCloning's noisy lm_head
    ROW_LOCAL_ROLES = ("embed", "pos", "lm_head")

    def row_local(self, name: str) -> bool:
        info = self.stage.adapter.role(name)
        if info.transposed or info.role not in self.ROW_LOCAL_ROLES or not self.prev.row_local(name):
            return False
        clone = self.fn is _hidden and self.stage.adapter.norm == "layer" and not self.stage.record.get("zero_pad")
        return not (clone and info.role == "lm_head")

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

    def _transform_meta(self, name: str, t: torch.Tensor):
        meta, self.meta = self.meta, True
        try:
            return self._transform(name, t)
        finally:
            self.meta = meta


class _LayerView(_View):
    def __init__(self, prev: _View, stage: Stage, seed: int, device: Any, dtype: Callable[[], torch.dtype],
                 meta: bool):
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

    @property
    def dtype(self) -> torch.dtype:
        if self._dtype is None:
            self._dtype = self._dtype_of()
        return self._dtype

    def shape(self, name: str) -> tuple[int, ...]:
        if self.adapter.layer_of(name) is None:
            return self.prev.shape(name)
        origin, mode = self._origin[name]
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
        c = _Ctx(self.stage, name, self.seed, self.device, self.meta, self.dtype)
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


# ------------------------------------------------------------------------------------------ the engine
def config_to_dict(config: Any) -> dict[str, Any]:
    """A deep-copied plain dict of a config (PreTrainedConfig or dict), without quantisation settings."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data = copy.deepcopy(data)
    for key in DROPPED_CONFIG_KEYS:
        data.pop(key, None)
    return data


def _layer_sources_for(step: Any, layers: int, adapter: Adapter) -> list[tuple[int, str]]:
    """Where each layer of a ``num_layers`` step comes from."""
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


class GrowthEngine:
    """Validate a plan against a config (before any tensor is read), then grow tensors from a source.

    ``run(source)`` yields ``(name, tensor)`` for every output tensor (the tied ``lm_head`` is left out:
    the model ties it). ``new_config`` is the grown config with ``growth_history``; ``output_shapes()``
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
        self.adapter = adapter or get_adapter(cfg)
        if from_dict:
            cfg = self.adapter.complete_config(cfg)
        self.source_config_dict = copy.deepcopy(cfg)
        self.stages: list[Stage] = []
        std = float(cfg.get("initializer_range", 0.02))
        run_id = 1 + max((r.get("run", -1) for r in cfg.get("growth_history") or []), default=-1)
        for index, step in enumerate(self.plan.steps):
            try:
                stage = self._validate(index, step, cfg, std)
            except ValueError as error:
                raise ValueError(f"plan step {index} ({step.kind}): {error}") from None
            self.stages.append(stage)
            cfg = stage.cfg_after
        if not self.stages:
            raise ValueError("the growth plan has no steps")
        try:
            self.adapter.validate_config(cfg, strict=not from_dict)
        except ValueError as error:
            raise ValueError(f"plan step {len(self.stages) - 1} ({self.stages[-1].step.kind}): {error}") from None
        self.history_records = []
        for stage in self.stages:
            record = {"step": stage.step.params(), "seed": self.seed, "run": run_id,
                      "before": stage.before.as_dict(), "after": stage.after.as_dict(),
                      "exact": stage.step.kind != "stack" and not stage.step.approximate}
            record.update({k: v for k, v in stage.record.items() if not k.startswith("zero_pad")})
            self.history_records.append(record)
        self.new_config_dict = dict(cfg)
        self.new_config_dict["growth_history"] = list(self.source_config_dict.get("growth_history") or []) + \
            self.history_records
        self._meta_specs: dict[str, Any] | None = None
        for record, (before_n, after_n) in zip(self.history_records, self.param_counts()):
            record["num_params_before"], record["num_params_after"] = before_n, after_n

    # ---------------------------------------------------------------- validation
    def _validate(self, index: int, step: Any, cfg: dict[str, Any], std: float) -> Stage:
        adapter = self.adapter
        before = adapter.sizes(cfg)
        record: dict[str, Any] = {}
        layers = None
        kind = step.kind
        if kind == "mlp_width":
            after = before.with_(mlp=step.to)
            self._no_shrink(before.mlp, step.to, "MLP width")
        elif kind == "num_heads":
            self._no_shrink(before.heads, step.to, "number of query heads")
            kv = step.num_key_value_heads
            if kv is None:
                kv = step.to if before.kv_heads == before.heads else before.kv_heads
            self._no_shrink(before.kv_heads, kv, "number of KV heads")
            if step.to % kv:
                raise ValueError(f"{step.to} query heads cannot be split into {kv} KV groups (not divisible)")
            ops.gqa_head_map(before.heads, before.kv_heads, step.to, kv)  # raises when not exact
            after = before.with_(heads=step.to, kv_heads=kv)
        elif kind in ("head_dim", "qk_dim", "value_dim"):
            current = before.v_dim if kind == "value_dim" else before.qk_dim
            self._no_shrink(current, step.to, kind.replace("_", " "))
            if kind == "head_dim" and before.qk_dim != before.v_dim:
                raise ValueError(f"q/k ({before.qk_dim}) and v ({before.v_dim}) head sizes differ: use qk_dim and "
                                 "value_dim")
            after = before.with_(
                qk_dim=step.to if kind != "value_dim" else before.qk_dim,
                v_dim=step.to if kind != "qk_dim" else before.v_dim,
            )
        elif kind == "hidden_size":
            self._no_shrink(before.hidden, step.to, "hidden size")
            after = before.with_(hidden=step.to)
            if adapter.norm == "layer":
                if step.to % before.hidden:
                    if not step.approximate:
                        raise ValueError(
                            f"LayerNorm subtracts the mean, so zero-padding {before.hidden} -> {step.to} is not "
                            f"exact; {adapter.name} grows exactly only by integer cloning (HyperCloning): use a "
                            f"multiple of {before.hidden} (e.g. {2 * before.hidden}), or set `approximate: true`"
                        )
                    record["zero_pad"] = True
                    if before.qk_dim * before.heads == before.hidden and step.to % before.heads == 0:
                        # head size is hidden / heads (GPT-2): it grows with the hidden size
                        after = after.with_(qk_dim=step.to // before.heads, v_dim=step.to // before.heads)
                else:
                    m = step.to // before.hidden
                    after = after.with_(heads=before.heads * m, kv_heads=before.kv_heads * m)
            if step.noise is None and adapter.norm == "layer":
                step = step.model_copy(update={"noise": std})
        elif kind == "num_layers":
            self._no_shrink(before.layers, step.to, "number of layers")
            sources = _layer_sources_for(step, before.layers, adapter)
            adapter.check_layer_positions(step, sources, before, cfg)
            mode = "new_copy" if step.init == "copy" else "new_random"
            layers = [(j, mode if m == "new" else m) for j, m in sources]
            record["new_layers"] = [i for i, (_, m) in enumerate(sources) if m == "new"]
            after = before.with_(layers=step.to)
        elif kind == "stack":
            self._no_shrink(before.layers, step.to, "number of layers")
            layers, copies = stack_layer_sources(before.layers, step.to, step.block_size, step.where)
            record["copied_blocks"] = copies
            after = before.with_(layers=step.to)
        else:  # pragma: no cover - the plan schema rejects unknown steps
            raise ValueError(f"unknown step {kind!r}")
        adapter.check_step(step, cfg, before, after)
        cfg_after = adapter.write_sizes(cfg, before, after)
        if layers is not None:
            cfg_after = adapter.remap_layer_config(cfg_after | {adapter.keys["layers"]: before.layers},
                                                   [j for j, _ in layers], [m for _, m in layers])
            cfg_after[adapter.keys["layers"]] = after.layers
        return Stage(index, step, adapter, cfg, cfg_after, before, after, std, layers, record)

    @staticmethod
    def _no_shrink(old: int, new: int, what: str) -> None:
        if new < old:
            raise ValueError(f"cannot shrink the {what} from {old} to {new}; growth steps only grow")

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
        def count(view: _View) -> int:
            return sum(math.prod(view.shape(name)) for name in view.keys())

        views = self._views(MetaSource(self.source_shapes()), meta=True)
        counts = [sum(math.prod(s) for s in self.source_shapes().values())] + [count(v) for v in views[1:]]
        return list(zip(counts[:-1], counts[1:]))

    # ---------------------------------------------------------------- tensors
    def source_names(self) -> list[str]:
        """The tensors the engine reads (without a tied ``lm_head``)."""
        return self.adapter.tensor_names(self.source_config_dict)

    def source_shapes(self) -> dict[str, tuple[int, ...]]:
        sizes = self.adapter.sizes(self.source_config_dict)
        shapes = {}
        for name in self.source_names():
            role = self.adapter.role(name)
            shape = self.adapter.canonical_shape(role.role, sizes)
            shapes[name] = tuple(shape[::-1]) if role.transposed else tuple(shape)
        return shapes

    def view(self, source: TensorSource, *, meta: bool = False) -> _View:
        """The lazy output view of ``source`` (a tensor source itself)."""
        names = self.source_names()
        available = set(source.keys())
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(
                f"the source has no tensor {missing[0]!r} that a {self.adapter.name} model with this config "
                f"needs ({len(missing)} missing)"
            )
        if hasattr(source, "shape"):
            expected = self.source_shapes()
            for n in names:
                if tuple(source.shape(n)) != expected[n]:
                    raise ValueError(f"tensor {n!r} has shape {tuple(source.shape(n))}, the config says {expected[n]}")
        return self._views(source, meta=meta)[-1]

    def _views(self, source: TensorSource, *, meta: bool = False) -> list[_View]:
        """The source view and the view after each stage (unchecked: :meth:`view` checks the source)."""
        names = self.source_names()
        device = getattr(source, "device", "cpu")
        embed = next(n for n in names if self.adapter.role(n).role == "embed")

        def dtype() -> torch.dtype:  # of new layers: the embedding's (asked only when a new layer is made)
            return source.dtype(embed) if hasattr(source, "dtype") else source.get(embed).dtype

        views: list[_View] = [_SourceView(source, names)]
        for stage in self.stages:
            if stage.layers is not None:
                views.append(_LayerView(views[-1], stage, self.seed, device, dtype, meta))
            else:
                views.append(_WidthView(views[-1], stage, self.seed, device, meta))
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
        return _fold_layers(specs, self.adapter, list(all_specs))

    def copy_of(self, name: str) -> str | None:
        view = self.view(MetaSource(self.source_shapes()), meta=True)
        return view.copy_of(name)


def _fold_layers(specs: dict[str, Any], adapter: Adapter, names: list[str]) -> dict[str, Any]:
    import json

    def pattern_of(name: str) -> str:
        return adapter.rename_layer(name, 0).replace(f"{adapter.layer_prefix}0.", f"{adapter.layer_prefix}*.", 1)

    total: dict[str, int] = {}
    for name in names:
        if adapter.layer_of(name) is not None:
            total[pattern_of(name)] = total.get(pattern_of(name), 0) + 1

    groups: dict[tuple[str, str], list[str]] = {}
    for name, spec in specs.items():
        layer = adapter.layer_of(name)
        if layer is None:
            continue
        pattern = pattern_of(name)
        groups.setdefault((pattern, json.dumps(spec, sort_keys=True)), []).append(name)
    counts: dict[str, int] = {}
    for (pattern, _), names in groups.items():
        counts[pattern] = counts.get(pattern, 0) + 1
    out: dict[str, Any] = {}
    folded = set()
    for (pattern, spec), names in groups.items():
        if counts[pattern] == 1 and len(names) == total[pattern]:
            out[pattern] = json.loads(spec)
            folded.update(names)
    for name, spec in specs.items():
        if name not in folded:
            out[name] = spec
    return out
