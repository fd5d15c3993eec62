"""Streaming front end: safetensors checkpoint on disk -> growth engine -> sharded safetensors on disk.

The same :class:`~hf_growth.growth.engine.GrowthEngine` as the in-memory path ("the one rule of the
growth code"), so the tensors are bit-identical to ``grow_model(model, plan, seed=seed)``. Tensors are
read one at a time from the source shards and written one at a time, so resident memory stays at
about the largest tensor (times the few float32 temporaries of one transform), independent of the
model's size. Output tensors that are bit-identical copies of a source tensor (untouched layers,
every tensor of a ``stack`` step) are never decoded: their bytes are copied from the source file.

>>> import tempfile, pathlib
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
...     num_attention_heads=4, num_key_value_heads=2)).save_pretrained(d / "src")
>>> out = grow_checkpoint(d / "src", [{"mlp_width": 96}], d / "grown", quiet=True)
>>> sorted(p.name for p in out.iterdir())
['README.md', 'config.json', 'generation_config.json', 'model.safetensors']
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .io import (
    DTYPE_INFO,
    FLOAT_DTYPES,
    ITEMSIZES,
    CheckpointError,
    SafetensorsSource,
    ShardWriter,
    TensorInfo,
    atomic_output_dir,
    check_free_space,
    check_output_dir,
    copy_side_files,
    dtype_name,
    side_files,
    torch_dtype_of,
)

if TYPE_CHECKING:
    import torch

CONFIG_NAME = "config.json"
#: output tensors larger than this whose rows are independent (embeddings, lm_head) are made in row chunks
CHUNK_BYTES = 16 << 20


class _MetaOf:
    """The engine's view of a :class:`SafetensorsSource` on the meta device: shapes and dtypes, no data."""

    device = "meta"

    def __init__(self, source: SafetensorsSource):
        self.source = source

    def keys(self) -> list[str]:
        return list(self.source.keys())

    def get(self, name: str) -> torch.Tensor:
        import torch

        return torch.empty(self.source.shape(name), dtype=self.source.dtype(name), device="meta")

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.source.dtype(name)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. "BF16"
    copy_of: str | None  # source tensor whose bytes are copied unchanged, or None (computed)
    #: where the bytes of a copy are (a per-expert tensor, or a byte range of a fused one); None: ``copy_of``'s
    raw: TensorInfo | None = None
    #: one expert's part of an engine output saved per expert: (engine output, expert, part, parts)
    part: tuple[str, int | None, int | None, int] | None = None

    def source_info(self, source: Any) -> TensorInfo | None:
        """Where the bytes of a copy are (None for a computed tensor)."""
        return self.raw if self.raw is not None else source.info(self.copy_of) if self.copy_of else None

    @property
    def nbytes(self) -> int:
        return ITEMSIZES[self.dtype] * _numel(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype_of(self.dtype)


def load_source_config(src_dir: str | os.PathLike) -> dict[str, Any]:
    """The source's ``config.json`` as a plain dict. transformers' config classes are not imported (they
    cost seconds of start-up): the adapter fills in the defaults of the keys it reads and checks the grown
    config in pure Python (:class:`~hf_growth.growth.engine.GrowthEngine` with a dict)."""
    path = Path(src_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{src_dir}: no {CONFIG_NAME}; streaming growth needs a saved model directory")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def plan_output(engine: Any, source: SafetensorsSource) -> list[PlannedTensor]:
    """Every output tensor with its shape, dtype and (for pure copies) its source tensor, in write
    order. Nothing is read or computed; computed tensors' shapes come from the meta device (torch is
    imported only when the plan computes a tensor: a ``stack`` plan copies every one)."""
    meta_view = engine.view(_MetaOf(source), meta=True)
    real_view = engine.view(source)
    out = []
    sizes = engine.adapter.sizes(engine.new_config_dict)
    for name in meta_view.keys():
        saved = engine.adapter.saved_parts(name, sizes)
        if saved is not None:  # a mixture of experts' tensor, saved per expert as save_pretrained writes it
            out += _plan_parts(name, saved, meta_view, real_view, source)
            continue
        origin = real_view.copy_of(name)
        if origin is not None:
            info = source.info(origin)
            if info.shape == meta_view.shape(name):  # defensive: never copy wrong bytes
                out.append(PlannedTensor(name, info.shape, info.dtype, origin))
                continue
        t = meta_view.get(name)
        out.append(PlannedTensor(name, tuple(t.shape), dtype_name(t.dtype), None))
    return out


def _plan_parts(
    name: str, saved: list[tuple[str, int | None, int | None]], meta_view: Any, real_view: Any, source: Any
) -> list[PlannedTensor]:
    """The per-expert (or renamed) tensors ``name`` is saved as: copies of source bytes where the engine says the
    part is a copy (an upcycled expert is the dense MLP's tensor), else computed from ``name``."""
    shape, dtype = meta_view.shape(name), None
    parts = 1 + max((k or 0) for _, _, k in saved)
    out = []
    for saved_name, expert, k in saved:
        if expert is None:
            part_shape = tuple(shape)
            origin = real_view.copy_of(name)
        else:
            part_shape = (shape[1] // parts, *shape[2:])
            origin = real_view.part_copy_of(name, expert, k)
        info = None
        if origin is not None and expert is None:
            info = source.info(origin)
        elif origin is not None:
            src, src_expert, src_part = origin
            with contextlib.suppress(KeyError):
                info = source.info(src) if src_expert is None else source.part_info(src, src_expert, src_part, parts)
        if info is not None and tuple(info.shape) == part_shape:  # defensive: never copy wrong bytes
            out.append(PlannedTensor(saved_name, part_shape, info.dtype, None, raw=info))
            continue
        if dtype is None:
            dtype = dtype_name(meta_view.get(name).dtype)
        out.append(PlannedTensor(saved_name, part_shape, dtype, None, part=(name, expert, k, parts)))
    return out


def expert_layout_source(source: SafetensorsSource, engine: Any) -> Any:
    """``source`` as the engine reads it: a mixture of experts' checkpoint (either layout) through
    :class:`~hf_growth.growth.io.ExpertLayoutSource` when the source or the output is one, else ``source``."""
    adapters = (engine.source_adapter, engine.adapter)
    adapter = next((a for a in adapters if a.per_expert_names), None)
    if adapter is None:
        return source
    from .io.reader import ExpertLayoutSource

    return ExpertLayoutSource(source, engine.source_adapter if engine.source_adapter.per_expert_names else adapter)


def grown_config(engine: Any, dtype: str) -> dict[str, Any]:
    """The grown config as the streaming path writes it (:meth:`GrowthEngine.final_config_dict`): the
    source's ``config.json`` with the grown sizes, ``growth_history``, ``dtype`` (a safetensors name such as
    ``"BF16"``, or a torch dtype name) and the installed transformers version, as ``save_pretrained`` of the
    in-memory path's config writes it."""
    name = DTYPE_INFO[dtype][0] if dtype in DTYPE_INFO else dtype
    config = engine.final_config_dict(name)
    version = _transformers_version()
    if version:
        config["transformers_version"] = version
    return config


def _transformers_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return None


def write_config(directory: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config.json`` as ``PreTrainedConfig.save_pretrained`` formats it (sorted keys, indent 2)."""
    path = Path(directory) / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def grow_checkpoint(
    src_dir: str | os.PathLike,
    plan: Any,
    output_dir: str | os.PathLike,
    *,
    seed: int = 0,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    quiet: bool = False,
    verify: bool = False,
    base_model: str | None = None,
    verify_options: dict[str, Any] | None = None,
    on_verified: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Grow the safetensors checkpoint in ``src_dir`` by ``plan`` into ``output_dir``, shard by shard.

    Everything is validated before anything is written (plan against the config, every shard header,
    the index, the tensors the architecture needs, the output path, free disk). The output is written
    into a temporary directory next to ``output_dir`` and renamed at the end; on any failure
    (exception, Ctrl-C, disk full) the temporary directory is removed and the error re-raised.
    Tokenizer files, generation config, chat template and ``*.py`` code files are copied along; the
    grown ``config.json`` records ``growth_history`` and ``README.md`` is the model card.
    ``verify=True`` then loads both models, measures max |Δlogits| and greedy text
    (:func:`~hf_growth.growth.verify.verify_checkpoints`, with ``verify_options``) and writes the figures into
    the card (the models must fit in memory), all before the rename: if the output cannot be verified (an
    error), nothing is left behind. The result goes to ``on_verified``, or is printed unless ``quiet``.
    An existing ``output_dir`` is replaced only with ``overwrite=True`` and only if it is recognisably a
    model checkpoint (:func:`~hf_growth.growth.io.check_output_dir`).

    The bytes are written by a thread of their own (:class:`ShardWriter`), so the next tensor is
    computed, and the small files are written, while the previous one goes to disk. Neither torch nor
    transformers' config classes are imported unless a tensor must be computed.

    >>> grow_checkpoint("SmolLM2-135M", [{"stack": {"to": 36, "block_size": 6}}], "grown")  # doctest: +SKIP
    PosixPath('grown')
    """
    from .engine import GrowthEngine

    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: no such checkpoint directory")
    config = load_source_config(src_dir)
    engine = GrowthEngine(config, plan, seed=seed)  # validates the plan against the config
    source = SafetensorsSource(src_dir)  # validates every header, the index and the dtypes
    source = expert_layout_source(source, engine)  # a mixture of experts: fused or per-expert tensors
    out = check_output_dir(output_dir, src_dir, overwrite=overwrite)
    try:
        planned = plan_output(engine, source)
    except ValueError as error:  # e.g. a tensor the architecture needs is not in the checkpoint
        raise CheckpointError(f"{source.index_file or src_dir}: {error}") from error
    dtype = next((p.dtype for p in planned if p.dtype in FLOAT_DTYPES), "F32")
    new_config = grown_config(engine, dtype)
    total = sum(p.nbytes for p in planned)
    extra = sum(p.stat().st_size for p in side_files(src_dir)) + (1 << 20)
    check_free_space(out.parent, total + extra)

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        with _intra_op_threads(planned):
            _write_tensors(
                engine,
                source,
                planned,
                tmp,
                max_shard_size=max_shard_size,
                quiet=quiet,
                total=total,
                description=f"growing into {out.name}",
                src_dir=src_dir,
                new_config=new_config,
                src_config=config,
                base_model=base_model,
            )
        if verify:  # before the rename: an output that cannot be verified (bad input) is not left behind
            from .verify import verify_checkpoints

            try:
                result = verify_checkpoints(src_dir, tmp, **(verify_options or {}))
            except ValueError as error:  # name the output, not its temporary directory
                raise CheckpointError(
                    f"{str(error).replace(str(tmp), str(out))} (verification could not run; nothing was written)"
                ) from error
            result["measured_by"] = "hf-growth grow --verify"
            _write_card(tmp, new_config, src_dir, config, base_model, sum(_numel(p.shape) for p in planned), result)
            if on_verified is not None:
                on_verified(result)
            elif not quiet:
                _print_verification(result)
    return out


def _write_tensors(
    engine: Any,
    source: SafetensorsSource,
    planned: list[PlannedTensor],
    tmp: Path,
    *,
    max_shard_size: int | str,
    quiet: bool,
    total: int,
    description: str,
    src_dir: Path,
    new_config: dict[str, Any],
    src_config: dict[str, Any],
    base_model: str | None,
) -> None:
    view = engine.view(source)
    with ShardWriter(
        tmp,
        max_shard_size=max_shard_size,
        quiet=quiet,
        total_bytes=total,
        description=description,
        planned=[
            (p.name, p.dtype, p.shape, info.start if info is not None else None)
            for p in planned
            for info in [p.source_info(source)]
        ],
    ) as writer:
        fused: tuple[str, Any] | None = None  # the engine output whose per-expert parts are being written
        for p in planned:
            info = p.source_info(source)
            if info is not None:
                writer.add_raw(p.name, info)
            elif p.part is not None:
                name, expert, k, parts = p.part
                if fused is None or fused[0] != name:
                    fused = None  # free the previous one first
                    fused = (name, view.get(name))
                tensor = fused[1] if expert is None else fused[1][expert]
                if expert is not None and parts > 1:
                    rows = tensor.shape[0] // parts
                    tensor = tensor[k * rows : (k + 1) * rows]
                writer.add_tensor(p.name, tensor.contiguous())
                del tensor
            elif p.nbytes > CHUNK_BYTES and len(p.shape) > 1 and view.row_local(p.name):
                # a large embedding / lm_head: computed and written a block of rows at a time
                rows = max(1, CHUNK_BYTES // max(1, p.nbytes // p.shape[0]))
                writer.add_tensor_chunks(
                    p.name,
                    p.shape,
                    p.dtype,
                    (
                        view.get_rows(p.name, a, min(a + rows, p.shape[0]), p.shape[0])
                        for a in range(0, p.shape[0], rows)
                    ),
                )
            else:
                tensor = view.get(p.name)
                if tuple(tensor.shape) != p.shape or dtype_name(tensor.dtype) != p.dtype:  # pragma: no cover
                    raise RuntimeError(
                        f"engine produced {p.name} as {tuple(tensor.shape)} {tensor.dtype}, planned {p.shape} {p.dtype}"
                    )
                writer.add_tensor(p.name, tensor)
                del tensor
        # while the writer thread still writes (all of it, for a copy-only plan), the small files
        copy_side_files(src_dir, tmp)
        write_config(tmp, new_config)
        _write_card(tmp, new_config, src_dir, src_config, base_model, sum(_numel(p.shape) for p in planned))


def _print_verification(result: dict[str, Any]) -> None:
    print(
        f"verify: max |Δlogits| {result['max_logit_diff']:.3g}, greedy text "
        f"{'matches' if result['greedy_match'] else 'DIFFERS'}"
        + ("" if result.get("tokenizer", True) else " (no tokenizer: on seeded random token ids)")
    )


@contextlib.contextmanager
def _intra_op_threads(planned: list[PlannedTensor]) -> Iterator[None]:
    """While tensors are computed, torch's intra-op threads are off: the streaming path runs its own threads
    (the shard writer, the free-value blocks: :data:`~hf_growth.growth.engine.FREE_THREADS`), and OpenMP's
    threads spin between ops, taking the cores those need (measured: a second of CPU on the width benchmark).
    The values do not depend on it. A copy-only plan does not import torch at all."""
    if all(p.copy_of is not None for p in planned):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _as_config(config: Any) -> Any:
    """A config dict as the attribute view the model card reads (``config.growth_history``...)."""
    return SimpleNamespace(**config) if isinstance(config, dict) else config


def _write_card(
    directory: Path,
    config: Any,
    src_dir: Path,
    src_config: Any,
    base_model: str | None,
    num_params: int | None,
    verification: dict | None = None,
) -> None:
    from hf_growth.hub import guess_base_model, model_card_text

    text = model_card_text(  # the text ModelCard.save writes, without importing the Hub client
        _as_config(config),
        base_model=base_model or guess_base_model(src_dir, _as_config(src_config)),
        num_params=num_params,
        verification=verification,
    )
    with open(directory / "README.md", "w", newline="", encoding="utf-8") as f:
        f.write(text)


def verify_and_update_card(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    quiet: bool = False,
    measured_by: str = "hf-growth grow --verify",
    **kwargs: Any,
) -> dict[str, Any]:
    """Compare ``src_dir`` with the grown ``out_dir`` (:func:`~hf_growth.growth.verify.verify_checkpoints`) and
    write the figures into ``out_dir``'s model card, credited to ``measured_by``."""
    from .verify import verify_checkpoints

    result = verify_checkpoints(src_dir, out_dir, **kwargs)
    result["measured_by"] = measured_by
    out_dir = Path(out_dir)
    config = load_source_config(out_dir)
    grown = SafetensorsSource(out_dir)
    num_params = sum(_numel(grown.shape(name)) for name in grown)
    src_config = load_source_config(src_dir)
    _write_card(out_dir, config, Path(src_dir), src_config, base_model, num_params, result)
    if not quiet:
        _print_verification(result)
    return result
