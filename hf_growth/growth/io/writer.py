"""Writing safetensors shards: :class:`ShardWriter` and the byte-range copy it uses.

:class:`ShardWriter` writes named tensors (or raw byte ranges of a source file) into
``model-0000i-of-0000N.safetensors`` shards of at most ``max_shard_size`` plus a correct
``model.safetensors.index.json``, or one ``model.safetensors`` when everything fits. Decoded tensors
are spilled to disk at once, so memory stays at about the largest tensor; with the layout planned up
front they go straight into their shard, on a writer thread. Copying a checkpoint's bytes never
imports torch.

>>> import torch, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with ShardWriter(d, max_shard_size=600, quiet=True) as w:
...     w.add_tensor("a", torch.ones(100))
...     w.add_tensor("b", torch.zeros(100))
>>> sorted(p.name for p in d.iterdir())
['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import struct
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .reader import (
    ITEMSIZES,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    TensorInfo,
    _torch_maps,
    dtype_name,
    torch_dtype_of,
)

if TYPE_CHECKING:
    import torch


def parse_size(size: int | str) -> int:
    """``"5GB"`` -> 5_000_000_000, ``"500MiB"`` -> 524_288_000; ints pass through.

    >>> parse_size("500MB"), parse_size("2KiB"), parse_size(10)
    (500000000, 2048, 10)
    """
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", str(size).upper())
    if not match:
        raise ValueError(f"cannot parse size {size!r}: use an integer number of bytes or e.g. '500MB', '5GB', '2GiB'")
    number, prefix, unit = match.groups()
    base = 1024 if unit == "IB" else 1000
    value = int(float(number) * base ** "_KMGT".index(prefix or "_"))
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _write(f: BinaryIO, data: bytes | memoryview) -> None:
    """Every byte the writer emits goes through here (tests monkeypatch it to simulate a full disk)."""
    f.write(data)


#: decoded tensors are written in pieces of this size, so that the page cache takes small folios for them: one
#: write() of a whole tensor (tens of MB) makes the kernel allocate large folios, which is slow where free memory
#: must first be faulted in again (e.g. a virtual machine whose host reclaims the guest's free pages). A few
#: thousand more system calls cost nothing in comparison.
WRITE_CHUNK = 256 << 10


def _write_chunked(f: BinaryIO, data: Any) -> None:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), WRITE_CHUNK):
        _write(f, view[start : start + WRITE_CHUNK])


def copy_byte_range(src: Path, start: int, length: int, dst: BinaryIO, progress: Any = None) -> None:
    """Copy ``length`` bytes at ``start`` of ``src`` to the current position of ``dst``, undecoded.

    Uses ``os.copy_file_range`` (an in-kernel copy) where the platform has it, else 16 MiB reads.
    """
    dst.flush()
    with open(src, "rb", buffering=0) as f:
        done = 0
        if hasattr(os, "copy_file_range") and _copy_file_range_ok:
            out_fd = dst.fileno()
            try:
                while done < length:
                    n = os.copy_file_range(f.fileno(), out_fd, min(length - done, 1 << 30), start + done)
                    if n == 0:
                        raise CheckpointError(f"{src}: truncated while copying bytes {start}..{start + length}")
                    done += n
                    if progress is not None:
                        progress.update(n)
                dst.seek(0, os.SEEK_END)
                return
            except OSError as error:
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                    raise
                dst.seek(0, os.SEEK_END)
        f.seek(start + done)
        while done < length:
            chunk = f.read(min(length - done, 16 << 20))
            if not chunk:
                raise CheckpointError(f"{src}: truncated while copying bytes {start}..{start + length}")
            _write(dst, chunk)
            done += len(chunk)
            if progress is not None:
                progress.update(len(chunk))


_copy_file_range_ok = True  # tests switch it off to force the chunked (monkeypatchable) path


class _NoProgress:
    """What ``quiet=True`` uses instead of a tqdm bar (so that tqdm is not even imported)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _BackgroundWriter:
    """Runs a writer's file operations in order on one thread, so that the caller computes the next tensor
    (or builds the model card) while the previous bytes are written. At most ``max_pending`` bytes of tensors
    wait (one tensor more than that when it is larger on its own). The first error the thread meets (a full
    disk, an interrupt) is raised in the caller at its next call; later operations are skipped."""

    def __init__(self, run: Any, max_pending: int) -> None:
        import collections
        import threading

        self._run, self._max_pending = run, max_pending
        self._ops: collections.deque = collections.deque()
        self._pending = 0
        self._error: BaseException | None = None
        self._cancelled = self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="hf-growth-shard-writer", daemon=True)
        self._thread.start()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, op: tuple, nbytes: int = 0) -> None:
        with self._cond:
            while self._error is None and self._pending and self._pending + nbytes > self._max_pending:
                self._cond.wait()
            self._raise()
            self._ops.append((op, nbytes))
            self._pending += nbytes
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._stopping:
                    self._cond.wait()
                if not self._ops:
                    return
                op, nbytes = self._ops[0]
                skip = self._cancelled or self._error is not None
            try:
                if not skip:
                    self._run(op)
            except BaseException as error:  # noqa: BLE001 - handed to the caller, whatever it is
                with self._cond:
                    self._error = error
            finally:
                with self._cond:
                    self._ops.popleft()
                    self._pending -= nbytes
                    self._cond.notify_all()

    def finish(self) -> None:
        """Wait for every operation and stop the thread; raise the first error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        self._raise()

    def cancel(self) -> None:
        """Skip what is still queued, wait for the running operation, stop the thread (errors are dropped)."""
        with self._cond:
            self._cancelled = self._stopping = True
            self._cond.notify_all()
        self._thread.join()


@dataclass
class _Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    spill_offset: int | None = None  # decoded tensor: where its bytes are in the spill file
    raw: TensorInfo | None = None  # copy-only tensor: where its bytes are in the source
    source_offset: int | None = None  # planned copy: the byte offset of its bytes in their source file


#: the page cache copies a byte range fastest when its offsets in the source and in the output file agree modulo
#: the size of the page cache's folios (an in-kernel copy of whole, aligned folios)
COPY_ALIGNMENT = 1 << 16


def _header_padding(header_len: int, entries: list[_Entry]) -> int:
    """Spaces to append to a shard's JSON header (valid JSON whitespace) so that its data starts 8-byte
    aligned and, where the shard copies byte ranges from source files, so that the most copied bytes sit at
    the same offset modulo :data:`COPY_ALIGNMENT` as in their source (an in-kernel copy of aligned folios)."""
    pad = -(8 + header_len) % 8
    votes: dict[int, int] = {}
    offset = 0
    for e in entries:
        if e.source_offset is not None:
            residue = (e.source_offset - offset) % COPY_ALIGNMENT
            if residue % 8 == 0:
                votes[residue] = votes.get(residue, 0) + e.nbytes
        offset += e.nbytes
    if votes:
        target = max(sorted(votes), key=votes.__getitem__)
        if votes[target] >= 16 * COPY_ALIGNMENT:  # worth up to 64 KiB of spaces (not for tiny checkpoints)
            pad = (target - 8 - header_len) % COPY_ALIGNMENT
    return pad


class ShardWriter:
    """Write named tensors into HF-style safetensors shards in ``directory``.

    Tensors are assigned to shards in the order they arrive; a shard is closed when the next
    tensor would take it over ``max_shard_size`` (a tensor larger than that gets a shard of its
    own, as in ``save_pretrained``). Decoded tensors go to disk at once (memory: one tensor);
    :meth:`add_raw` tensors are copied byte for byte from their source file when the shard is
    written (``durable=True`` also fsyncs each shard). :meth:`close` names the shards
    ``model-0000i-of-0000N.safetensors`` and writes the index, or writes a single ``model.safetensors`` when
    everything fits in one shard.

    With ``planned`` (every tensor's name, dtype and shape, in order, and for copies their source offset) each
    tensor goes straight into its shard, on a thread of its own (``background=True``: the caller computes the
    next tensor meanwhile; at most ``max_pending_bytes`` of tensors wait), decoded bytes in :data:`WRITE_CHUNK`
    pieces, and each shard's header is padded so that copies keep their source alignment (:func:`_header_padding`).

    >>> import torch, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with ShardWriter(d, quiet=True) as w:
    ...     w.add_tensor("x", torch.arange(4.0))
    >>> [p.name for p in d.iterdir()]
    ['model.safetensors']
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_shard_size: int | str = "5GB",
        metadata: Mapping[str, str] | None = None,
        quiet: bool = False,
        total_bytes: int | None = None,
        description: str = "writing",
        durable: bool = False,
        planned: Iterable[tuple] | None = None,
        background: bool = True,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_shard_size = parse_size(max_shard_size)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._shards: list[tuple[Path, list[str]]] = []  # (temporary path, tensor names)
        self._entries: list[_Entry] = []
        self._size = 0
        self._names: set[str] = set()
        self._total = 0
        self._spill_path = self.directory / f".spill-{uuid.uuid4().hex}.tmp"
        self._spill: BinaryIO | None = None
        self.closed = False
        self.durable = durable
        self.files: list[str] = []
        # planned=(name, dtype, shape[, source offset]) of every tensor in order: the shard layout is known up
        # front, so each tensor is written straight into its shard (no spill file: every byte is written once);
        # the source offsets of copies let each shard's header padding align them (_header_padding)
        self._direct: list[tuple[int, _Entry]] | None = None
        self._direct_shards: list[list[_Entry]] = []
        self._direct_pos = 0
        self._current: BinaryIO | None = None
        if planned is not None:
            self._plan_direct(planned)
        if quiet:
            self.progress: Any = _NoProgress()
        else:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=description, leave=False
            )
        # direct mode writes on a thread of its own (background=True): file operations run in order there
        self._background: _BackgroundWriter | None = None
        if self._direct is not None and background:
            self._background = _BackgroundWriter(self._run_op, max_pending_bytes)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def total_size(self) -> int:
        return self._total

    def _plan_direct(self, planned: Iterable[tuple]) -> None:
        size = 0
        self._direct = []
        for item in planned:  # (name, dtype, shape[, source offset of a copy]); dtype: torch or "BF16"
            name, dtype, shape = item[:3]
            dtype = dtype_name(dtype)
            nbytes = ITEMSIZES[dtype] * math.prod(shape)
            entry = _Entry(name, dtype, tuple(shape), nbytes, source_offset=item[3] if len(item) > 3 else None)
            if not self._direct_shards or (self._direct_shards[-1] and size + nbytes > self.max_shard_size):
                self._direct_shards.append([])
                size = 0
            self._direct_shards[-1].append(entry)
            self._direct.append((len(self._direct_shards) - 1, entry))
            size += nbytes

    def _direct_begin(self, name: str, nbytes: int) -> None:
        """Direct mode: check ``name`` is the next planned tensor, open its shard (header first) if needed."""
        if self.closed:
            raise RuntimeError("ShardWriter is closed")
        assert self._direct is not None
        if self._direct_pos >= len(self._direct) or self._direct[self._direct_pos][1].name != name:
            expected = self._direct[self._direct_pos][1].name if self._direct_pos < len(self._direct) else "nothing"
            raise RuntimeError(f"ShardWriter: got tensor {name!r}, planned {expected}")
        shard, entry = self._direct[self._direct_pos]
        if entry.nbytes != nbytes:
            raise RuntimeError(f"tensor {name!r} has {nbytes} bytes, planned {entry.nbytes}")
        if not self._shards or self._shards[-1][0].name != f".shard-{shard + 1:05d}.tmp":
            header: dict[str, Any] = {"__metadata__": self.metadata}
            offset = 0
            for e in self._direct_shards[shard]:
                header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
                offset += e.nbytes
            raw_header = json.dumps(header, separators=(",", ":")).encode("utf-8")
            raw_header += b" " * _header_padding(len(raw_header), self._direct_shards[shard])
            path = self.directory / f".shard-{shard + 1:05d}.tmp"
            self._shards.append((path, [e.name for e in self._direct_shards[shard]]))
            self._submit(("open", path, struct.pack("<Q", len(raw_header)) + raw_header))

    def _direct_end(self, nbytes: int) -> None:
        shard, _ = self._direct[self._direct_pos]
        self._direct_pos += 1
        self._total += nbytes
        if self._direct_pos == len(self._direct) or self._direct[self._direct_pos][0] != shard:
            self._submit(("close",))

    def _submit(self, op: tuple, nbytes: int = 0) -> None:
        """Run a file operation of direct mode now, or queue it for the writer thread."""
        if self._background is not None:
            self._background.submit(op, nbytes)
        else:
            self._run_op(op)

    def _run_op(self, op: tuple) -> None:
        kind = op[0]
        if kind == "open":
            self._close_current()
            self._current = open(op[1], "wb")
            _write(self._current, op[2])
        elif kind == "data":
            _write_chunked(self._current, op[1])
            self.progress.update(op[2])
        elif kind == "raw":
            info = op[1]
            copy_byte_range(info.file, info.start, info.nbytes, self._current, self.progress)
        elif kind == "close":
            self._close_current()
        else:  # pragma: no cover
            raise AssertionError(kind)

    def _close_current(self) -> None:
        if self._current is not None:
            current, self._current = self._current, None
            try:
                current.flush()
                if self.durable:
                    os.fsync(current.fileno())
            finally:
                current.close()

    def _start_entry(self, name: str, nbytes: int) -> None:
        if self.closed:
            raise RuntimeError("ShardWriter is closed")
        if name in self._names:
            raise ValueError(f"tensor {name!r} written twice")
        self._names.add(name)
        if self._entries and self._size + nbytes > self.max_shard_size:
            self._flush_shard()

    def add_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Add a decoded tensor (written to disk now, so it can be freed at once)."""
        import torch

        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if tensor.dtype not in _torch_maps()[1]:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store here")
        nbytes = tensor.numel() * tensor.element_size()
        if self._direct is not None:
            self._direct_begin(name, nbytes)
            if nbytes:  # the bytes (a view, or a contiguous copy) stay alive until the writer thread wrote them
                self._submit(("data", tensor.contiguous().reshape(-1).view(torch.uint8).numpy(), nbytes), nbytes)
            self._direct_end(nbytes)
            return
        self._start_entry(name, nbytes)
        if self._spill is None:
            self._spill = open(self._spill_path, "w+b")
        offset = self._spill.tell()
        if nbytes:
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            _write_chunked(self._spill, data)
        self._entries.append(_Entry(name, dtype_name(tensor.dtype), tuple(tensor.shape), nbytes, spill_offset=offset))
        self._size += nbytes
        self._total += nbytes
        self.progress.update(nbytes)

    def add_tensor_chunks(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: Iterable[torch.Tensor]) -> None:
        """Add a tensor of ``shape`` given as consecutive row chunks (dim 0), each written to disk at once, so
        only one chunk is in memory. The chunks must add up to ``shape`` exactly. ``dtype``: a torch dtype or a
        safetensors name."""
        import torch

        try:
            name_of_dtype = dtype_name(dtype)
        except ValueError:
            raise ValueError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store here") from None
        dtype = torch_dtype_of(name_of_dtype)
        nbytes = ITEMSIZES[name_of_dtype] * math.prod(shape)
        if self._direct is not None:
            self._direct_begin(name, nbytes)
            f = None
        else:
            self._start_entry(name, nbytes)
            if self._spill is None:
                self._spill = open(self._spill_path, "w+b")
            f = self._spill
        offset = f.tell() if f is not None else 0
        rows = 0
        for chunk in chunks:
            chunk = chunk.detach().cpu()
            if chunk.dtype != dtype or tuple(chunk.shape[1:]) != tuple(shape[1:]):
                raise RuntimeError(
                    f"chunk of {name!r} is {tuple(chunk.shape)} {chunk.dtype}, expected rows of {tuple(shape)} {dtype}"
                )
            rows += chunk.shape[0]
            if chunk.numel():
                data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
                if f is None:
                    self._submit(("data", data, data.nbytes), data.nbytes)
                else:
                    _write_chunked(f, data)
                    self.progress.update(data.nbytes)
        if rows != (shape[0] if shape else 1):
            raise RuntimeError(f"chunks of {name!r} hold {rows} rows, expected {shape[0]}")
        if self._direct is not None:
            self._direct_end(nbytes)
            return
        self._entries.append(_Entry(name, name_of_dtype, tuple(shape), nbytes, spill_offset=offset))
        self._size += nbytes
        self._total += nbytes

    def add_raw(self, name: str, info: TensorInfo) -> None:
        """Add a tensor whose bytes are copied unchanged from ``info.file`` when its shard is written."""
        if self._direct is not None:
            self._direct_begin(name, info.nbytes)
            self._submit(("raw", info))
            self._direct_end(info.nbytes)
            return
        self._start_entry(name, info.nbytes)
        self._entries.append(_Entry(name, info.dtype, info.shape, info.nbytes, raw=info))
        self._size += info.nbytes
        self._total += info.nbytes

    def _flush_shard(self) -> None:
        if not self._entries:
            return
        header: dict[str, Any] = {"__metadata__": self.metadata}
        offset = 0
        for e in self._entries:
            header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
            offset += e.nbytes
        raw_header = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw_header += b" " * (-len(raw_header) % 8)  # 8-byte alignment, as safetensors writes it
        path = self.directory / f".shard-{len(self._shards) + 1:05d}.tmp"
        if self._spill is not None:
            self._spill.flush()
        with open(path, "wb") as out:
            _write(out, struct.pack("<Q", len(raw_header)))
            _write(out, raw_header)
            for e in self._entries:
                if e.raw is not None:
                    copy_byte_range(e.raw.file, e.raw.start, e.nbytes, out, self.progress)
                elif e.nbytes:
                    copy_byte_range(self._spill_path, e.spill_offset, e.nbytes, out)
            out.flush()
            if self.durable:  # survive a power cut, at the price of waiting for the disk
                os.fsync(out.fileno())
        self._shards.append((path, [e.name for e in self._entries]))
        self._entries = []
        self._size = 0
        if self._spill is not None:
            self._spill.seek(0)
            self._spill.truncate()

    def close(self) -> list[str]:
        """Write the last shard, name the shards and write the index; return the file names."""
        if self.closed:
            return self.files
        if self._direct is not None and self._direct_pos != len(self._direct):
            raise RuntimeError(
                f"ShardWriter: {len(self._direct) - self._direct_pos} planned tensors were not written, "
                f"e.g. {self._direct[self._direct_pos][1].name!r}"
            )
        if self._background is not None:
            background, self._background = self._background, None
            try:
                background.finish()  # every queued byte written; the writer thread's first error is raised here
            except BaseException:
                self.abort()
                raise
        self._close_current()
        self._flush_shard()
        self._close_spill()
        n = len(self._shards)
        if n == 0:  # no tensors at all: still a valid (empty) checkpoint
            self._flush_empty()
            n = len(self._shards)
        if n == 1:
            os.replace(self._shards[0][0], self.directory / SAFE_WEIGHTS_NAME)
            self.files = [SAFE_WEIGHTS_NAME]
        else:
            weight_map: dict[str, str] = {}
            for i, (path, names) in enumerate(self._shards, start=1):
                final = f"model-{i:05d}-of-{n:05d}.safetensors"
                os.replace(path, self.directory / final)
                self.files.append(final)
                weight_map.update(dict.fromkeys(names, final))
            index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(weight_map.items()))}
            with open(self.directory / SAFE_WEIGHTS_INDEX_NAME, "w") as f:
                _write(f, json.dumps(index, indent=2, sort_keys=True) + "\n")  # type: ignore[arg-type]
            self.files.append(SAFE_WEIGHTS_INDEX_NAME)
        self.closed = True
        self.progress.close()
        return self.files

    def _flush_empty(self) -> None:
        path = self.directory / ".shard-00001.tmp"
        raw_header = json.dumps({"__metadata__": self.metadata}).encode()
        raw_header += b" " * (-len(raw_header) % 8)
        with open(path, "wb") as out:
            _write(out, struct.pack("<Q", len(raw_header)) + raw_header)
        self._shards.append((path, []))

    def _close_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        with contextlib.suppress(FileNotFoundError):
            self._spill_path.unlink()

    def abort(self) -> None:
        """Remove every file this writer made (spill file and shards written so far)."""
        if self._background is not None:
            background, self._background = self._background, None
            background.cancel()
        with contextlib.suppress(OSError):
            self._close_current()
        self._current = None
        self._close_spill()
        for path, _ in self._shards:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._shards = []
        self.closed = True
        self.progress.close()
