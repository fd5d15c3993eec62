"""Seeded free values: every new ("free") entry of a grown tensor is drawn from a generator seeded by
``(seed, step index, output tensor name, tag#block)``, so the values do not depend on the order tensors are
computed in, on row chunks, on threads, or on the path (in memory or streaming). :class:`RoleContext` is what a
step's role transform gets: the sizes around the step and these seeded fills for one output tensor.

>>> seed_for(0, 1, "model.embed_tokens.weight", "#0") == seed_for(0, 1, "model.embed_tokens.weight", "#0")
True
>>> seed_for(0, 1, "model.embed_tokens.weight", "#0") == seed_for(0, 2, "model.embed_tokens.weight", "#0")
False
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_module
from . import ops

if TYPE_CHECKING:
    import torch

    from .adapters import Sizes
    from .steps.base import Stage
else:
    torch = lazy_module("torch", globals())

__all__ = ["FREE_BLOCK_ELEMENTS", "FREE_THREADS", "RoleContext", "is_leading", "run_blocks", "seed_for"]


def seed_for(seed: int, stage: int, name: str, tag: str) -> int:
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


def run_blocks(fn: Callable[[int], None], blocks: range, alongside: Callable[[], None] | None = None) -> None:
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
        _POOL = (
            os.getpid(),
            FREE_THREADS,
            ThreadPoolExecutor(max_workers=FREE_THREADS - 1, thread_name_prefix="hf-growth-free"),
        )
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
class RoleContext:
    """What a role transform knows: the step, sizes before/after, and seeded fills for one output tensor.

    Fills are made in ``dtype`` (the tensor's own: zero-padding and copying are exact in any dtype; the
    transforms that rescale compute in float32 themselves). ``row_offset`` is the first row of the output
    tensor this call computes (row chunks of embeddings and ``lm_head``; 0 for a whole tensor)."""

    stage: Stage
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

    def free(
        self,
        shape: tuple[int, ...],
        tag: str = "",
        std: float | None = None,
        dtype: torch.dtype | None = None,
        out: torch.Tensor | None = None,
        alongside: Callable[[], None] | None = None,
    ) -> torch.Tensor:
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
            generator = torch.Generator().manual_seed(seed_for(self.seed, self.stage.index, self.name, f"{tag}#{b}"))
            values = torch.empty((min((b + 1) * block, total) - b * block, row))
            values.normal_(0.0, std, generator=generator)
            flat[a - first : z - first] = values[a - b * block : z - b * block]

        run_blocks(draw, range(first // block, -(-stop // block)), alongside)
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
        if self.meta or len(placements) != len(shape) or not all(p is None or is_leading(p) for p in placements):
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


def is_leading(positions: torch.Tensor) -> bool:
    """Whether a placement keeps the old indices first (``0 .. n-1``, :func:`ops.leading`)."""
    return positions.numel() == 0 or bool(torch.equal(positions, torch.arange(positions.numel())))
