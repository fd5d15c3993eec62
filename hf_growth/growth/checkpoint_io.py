"""Safetensors checkpoints on disk, without pickle and without loading a whole model.

* :class:`SafetensorsSource` — a lazy, read-only *tensor source* over a checkpoint directory
  (``model.safetensors`` or shards + ``model.safetensors.index.json``). Every header is
  validated up front; each error names the file. Tensors are read on demand with ``pread``
  (no mmap, so resident memory stays at the tensors in use), and :meth:`SafetensorsSource.info`
  gives a tensor's file and byte range so a writer can copy it without decoding.
* :class:`ShardWriter` — writes named tensors (or raw byte ranges of a source) into
  ``model-0000i-of-0000N.safetensors`` shards of at most ``max_shard_size`` plus a correct
  ``model.safetensors.index.json``, or one ``model.safetensors`` when everything fits.
  Decoded tensors are spilled to disk at once, so memory stays at about the largest tensor;
  with the layout planned up front they go straight into their shard, on a writer thread.

torch is imported only where a tensor is decoded or made: copying a checkpoint's bytes never needs it.
* :func:`atomic_output_dir` — write into a temporary directory next to the output and rename
  at the end; remove it on any failure (exception, Ctrl-C, disk full).

>>> import torch, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_output_dir(d / "out") as tmp:
...     with ShardWriter(tmp, max_shard_size=600, quiet=True) as w:
...         w.add_tensor("a", torch.ones(100))
...         w.add_tensor("b", torch.zeros(100))
>>> sorted(p.name for p in (d / "out").iterdir())
['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']
>>> SafetensorsSource(d / "out")["a"].sum().item()
100.0
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # torch is imported only where tensors are decoded or made: copying bytes never needs it
    import torch

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHT_PATTERNS = ("pytorch_model*.bin", "*.bin", "*.pt", "*.pth", "*.ckpt")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# safetensors dtype string -> (torch dtype attribute, item size in bytes)
DTYPE_INFO: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "U16": ("uint16", 2),
    "U32": ("uint32", 4),
    "U64": ("uint64", 8),
}
ITEMSIZES: dict[str, int] = {k: size for k, (_, size) in DTYPE_INFO.items()}
_TORCH_MAPS: tuple[dict, dict] | None = None


def _torch_maps() -> tuple[dict[str, torch.dtype], dict[torch.dtype, str]]:
    global _TORCH_MAPS
    if _TORCH_MAPS is None:
        import torch

        dtypes = {k: getattr(torch, attr) for k, (attr, _) in DTYPE_INFO.items()}
        _TORCH_MAPS = (dtypes, {v: k for k, v in dtypes.items()})
    return _TORCH_MAPS


def __getattr__(name: str) -> Any:
    """``DTYPES`` (safetensors name -> torch dtype) and ``DTYPE_NAMES`` (the reverse), made on first use."""
    if name == "DTYPES":
        return _torch_maps()[0]
    if name == "DTYPE_NAMES":
        return _torch_maps()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: Any) -> str:
    """The safetensors name (``"BF16"``) of a torch dtype or of a safetensors name; ValueError if unsupported."""
    if isinstance(dtype, str):
        if dtype not in DTYPE_INFO:
            raise ValueError(f"dtype {dtype!r} is not a safetensors dtype hf-growth supports")
        return dtype
    try:
        return _torch_maps()[1][dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors here") from None


def torch_dtype_of(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name (imports torch)."""
    return _torch_maps()[0][name]


FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (the message names the file and what is wrong)."""


class DiskFullError(OSError):
    """The output did not fit on disk; the temporary files were removed."""


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


# --------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives: its file, absolute byte range ``[start, end)``, dtype and shape."""

    name: str
    file: Path
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype_of(self.dtype)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate one ``.safetensors`` file's header; return ``(tensors, metadata)``.

    Checks that the header is complete JSON, every entry has a known dtype, a shape whose size
    matches its byte range, and that every byte range lies inside the file (a truncated
    download fails here, naming the file, the tensor and the sizes).
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({file_size} bytes, shorter than the 8-byte header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file: header length {header_len} does not fit in the "
                    f"file's {file_size} bytes"
                )
            raw = f.read(header_len)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors header ({error})") from error
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_len = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {entry!r}") from error
        if dtype not in DTYPE_INFO:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype!r}, which hf-growth does not support")
        itemsize = ITEMSIZES[dtype]
        if not 0 <= begin <= end or end - begin != _numel(shape) * itemsize:
            raise CheckpointError(
                f"{path}: corrupt safetensors header: tensor {name!r} of shape {list(shape)} {dtype} has byte range "
                f"[{begin}, {end})"
            )
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated or corrupt: tensor {name!r} ends at data byte {end} but the file holds only "
                f"{max(data_len, 0)} data bytes ({file_size} bytes in all); re-download or re-save it"
            )
        tensors[name] = TensorInfo(name, path, dtype, shape, data_start + begin, data_start + end)
    return tensors, metadata


def _bin_only_message(directory: Path, files: list[Path]) -> str:
    names = ", ".join(sorted(p.name for p in files)[:4])
    return (
        f"{directory}: only pickle weights ({names}) and no safetensors; hf-growth never unpickles. Convert once in a "
        "trusted environment: `AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, safe_serialization=True)` "
        "(or `transformers`' `python -m transformers.commands.convert`), then grow `dst`."
    )


class SafetensorsSource(Mapping[str, "torch.Tensor"]):
    """A lazy, read-only mapping ``name -> torch.Tensor`` over a safetensors checkpoint.

    ``path`` is a checkpoint directory (single ``model.safetensors`` or shards listed by
    ``model.safetensors.index.json``) or one ``.safetensors`` file. Everything is validated
    when it is opened; reading a tensor reads only its bytes.

    >>> import torch, tempfile, pathlib
    >>> from safetensors.torch import save_file
    >>> d = pathlib.Path(tempfile.mkdtemp()); save_file({"w": torch.eye(2)}, d / "model.safetensors")
    >>> src = SafetensorsSource(d)
    >>> list(src), src.shape("w"), src["w"].tolist()
    (['w'], (2, 2), [[1.0, 0.0], [0.0, 1.0]])
    """

    def __init__(self, path: str | os.PathLike, *, check_dtypes: bool = True) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such checkpoint directory or file")
        self.path = path
        self.directory = path if path.is_dir() else path.parent
        self.index_file: Path | None = None
        self.metadata: dict[str, Any] = {}
        self._infos: dict[str, TensorInfo] = {}
        if path.is_file():
            files = [path]
        else:
            files = self._files_of_directory(path)
        headers = {f: read_safetensors_header(f)[0] for f in files}
        if self.index_file is None:
            for f in files:
                for name, info in headers[f].items():
                    if name in self._infos:
                        raise CheckpointError(f"{f}: tensor {name!r} is also in {self._infos[name].file}")
                    self._infos[name] = info
        else:
            for name, file_name in self._weight_map.items():
                f = self.directory / file_name
                if name not in headers[f]:
                    raise CheckpointError(
                        f"{self.index_file}: names tensor {name!r} in {file_name}, but {f} has no such tensor "
                        "(the index and the shards do not match)"
                    )
                self._infos[name] = headers[f][name]
        if check_dtypes:
            self._check_dtypes(headers)

    def _files_of_directory(self, directory: Path) -> list[Path]:
        index = directory / SAFE_WEIGHTS_INDEX_NAME
        single = directory / SAFE_WEIGHTS_NAME
        if index.is_file():
            self.index_file = index
            try:
                data = json.loads(index.read_text())
                weight_map = data["weight_map"]
                if not isinstance(weight_map, dict) or not weight_map:
                    raise ValueError("'weight_map' is empty or not a mapping")
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise CheckpointError(f"{index}: corrupt safetensors index ({error!r})") from error
            self.metadata = dict(data.get("metadata") or {})
            self._weight_map: dict[str, str] = {str(k): str(v) for k, v in weight_map.items()}
            files = []
            for file_name in sorted(set(self._weight_map.values())):
                f = directory / file_name
                if Path(file_name).is_absolute() or ".." in Path(file_name).parts:
                    raise CheckpointError(f"{index}: shard name {file_name!r} points outside the checkpoint")
                if not f.is_file():
                    missing = sorted(k for k, v in self._weight_map.items() if v == file_name)
                    raise CheckpointError(
                        f"{index}: names shard {file_name!r} (for {len(missing)} tensors, e.g. {missing[0]!r}) but "
                        f"{f} does not exist"
                    )
                files.append(f)
            return files
        if single.is_file():
            return [single]
        safetensors = sorted(directory.glob("*.safetensors"))
        if len(safetensors) == 1:
            return safetensors
        if len(safetensors) > 1:
            raise CheckpointError(
                f"{directory}: {len(safetensors)} .safetensors files but no {SAFE_WEIGHTS_INDEX_NAME} saying which "
                "tensor is in which; re-save the checkpoint with save_pretrained"
            )
        pickles = [p for pattern in PICKLE_WEIGHT_PATTERNS for p in directory.glob(pattern)]
        if pickles:
            raise CheckpointError(_bin_only_message(directory, pickles))
        raise CheckpointError(f"{directory}: no {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or other .safetensors file")

    def _check_dtypes(self, headers: dict[Path, dict[str, TensorInfo]]) -> None:
        per_file: dict[Path, set[str]] = {}
        for info in self._infos.values():
            if info.dtype in FLOAT_DTYPES:
                per_file.setdefault(info.file, set()).add(info.dtype)
        kinds = {frozenset(v) for v in per_file.values()}
        if len(kinds) > 1:
            parts = "; ".join(f"{f.name}: {', '.join(sorted(v))}" for f, v in sorted(per_file.items()))
            raise CheckpointError(
                f"{self.directory}: shards hold different floating-point dtypes ({parts}); re-save the checkpoint "
                "in one dtype (load it with torch_dtype=... and save_pretrained)"
            )

    # Mapping interface --------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    # metadata without reading --------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        """File, byte range, dtype and shape of ``name`` (KeyError naming the checkpoint if absent)."""
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in the checkpoint {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self.info(name).torch_dtype

    @property
    def files(self) -> list[Path]:
        return sorted({info.file for info in self._infos.values()})

    @property
    def total_size(self) -> int:
        """Bytes of tensor data (what an index's ``metadata.total_size`` holds)."""
        return sum(info.nbytes for info in self._infos.values())

    def largest_tensor_bytes(self) -> int:
        return max((info.nbytes for info in self._infos.values()), default=0)

    def read(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh, writable CPU tensor; the file is never modified)."""
        info = self.info(name)
        return self._read_range(name, info, 0, info.nbytes, info.shape)

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (dim 0) of a tensor, reading only their bytes."""
        info = self.info(name)
        rows = info.shape[0] if info.shape else 1
        start, stop = max(0, min(start, rows)), max(0, min(stop, rows))
        stop = max(stop, start)
        row_bytes = info.nbytes // rows if rows else 0
        return self._read_range(name, info, start * row_bytes, (stop - start) * row_bytes,
                                (stop - start, *info.shape[1:]))

    def _read_range(self, name: str, info: TensorInfo, offset: int, nbytes: int, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        if nbytes == 0:
            return torch.empty(shape, dtype=info.torch_dtype)
        out = torch.empty(nbytes, dtype=torch.uint8)  # read straight into the tensor (no zero-filled buffer)
        with open(info.file, "rb", buffering=0) as f:
            view = memoryview(out.numpy())
            done = 0
            while done < nbytes:
                n = os.preadv(f.fileno(), [view[done:]], info.start + offset + done)
                if n == 0:
                    raise CheckpointError(f"{info.file}: truncated while reading tensor {name!r}")
                done += n
        return out.view(info.torch_dtype).reshape(shape)


# --------------------------------------------------------------------------------------- writing


def _write(f: BinaryIO, data: bytes | memoryview) -> None:
    """Every byte the writer emits goes through here (tests monkeypatch it to simulate a full disk)."""
    f.write(data)


#: decoded tensors are written in pieces of this size: the page cache then takes small folios for them. One
#: write() of a whole tensor (tens of MB) makes the kernel allocate large folios, which on a VM whose host reclaims
#: the guest's free memory (free page reporting) must be faulted in again: measured 5.1 s instead of 0.5 s for
#: 2.3 GB on this machine. A few thousand more system calls cost nothing in comparison.
WRITE_CHUNK = 256 << 10


def _write_chunked(f: BinaryIO, data: Any) -> None:
    view = memoryview(data).cast("B")
    for start in range(0, len(view), WRITE_CHUNK):
        _write(f, view[start:start + WRITE_CHUNK])


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


#: the page cache copies a byte range fastest when its offsets in the source and the output file agree modulo
#: the size of the page cache's folios (64 KiB on ext4 here: 2.4x faster than offsets 8 bytes apart)
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
    ``model-0000i-of-0000N.safetensors`` and writes the index, or writes a single ``model.safetensors`` when everything fits in one shard.

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

            self.progress = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                                 leave=False)
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

    def add_tensor_chunks(self, name: str, shape: tuple[int, ...], dtype: Any,
                          chunks: Iterable[torch.Tensor]) -> None:
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
                raise RuntimeError(f"chunk of {name!r} is {tuple(chunk.shape)} {chunk.dtype}, expected rows of "
                                   f"{tuple(shape)} {dtype}")
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
            raise RuntimeError(f"ShardWriter: {len(self._direct) - self._direct_pos} planned tensors were not written, "
                               f"e.g. {self._direct[self._direct_pos][1].name!r}")
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


# ----------------------------------------------------------------------------- the output dir


def _is_relative_to(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_output_dir(output_dir: str | os.PathLike, source: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Refuse an output that exists (unless ``overwrite``), is inside the source, or contains it."""
    out = Path(output_dir).expanduser().resolve()
    if source is not None:
        src = Path(source).expanduser().resolve()
        src_dir = src if src.is_dir() else src.parent
        if _is_relative_to(out, src_dir):
            raise ValueError(f"output directory {out} is inside the source checkpoint {src_dir}; choose another place")
        if _is_relative_to(src_dir, out):
            raise ValueError(f"output directory {out} contains the source checkpoint {src_dir}; choose another place")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"output directory {out} exists; pass overwrite=True (--overwrite) to replace it")
        if not out.is_dir():
            raise FileExistsError(f"output path {out} exists and is not a directory")
    return out


def check_free_space(directory: str | os.PathLike, needed_bytes: int, *, margin: float = 0.02) -> None:
    """Raise ``DiskFullError`` (before anything is written) if ``directory``'s disk lacks room."""
    path = Path(directory).resolve()
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    needed = int(needed_bytes * (1 + margin)) + (1 << 20)
    if free < needed:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough free disk for the output: {needed / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free on the "
            f"disk of {path}; nothing was written",
        )


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``output_dir``; rename it to ``output_dir`` on success.

    On any exception (including ``KeyboardInterrupt``) the temporary directory is removed and
    the error re-raised; a full disk (``ENOSPC``) becomes a :class:`DiskFullError` saying so.
    An existing ``output_dir`` is replaced only with ``overwrite=True``, and only at the end.
    """
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # not mkdtemp, which makes it 0700: the output gets the umask's mode, as save_pretrained's does
    try:
        yield tmp
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if error.errno == errno.ENOSPC and not isinstance(error, DiskFullError):
            raise DiskFullError(
                errno.ENOSPC, f"disk full while writing {out}; the partial output was removed ({error})"
            ) from error
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------------------- files copied along

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".pkl")
NOT_COPIED = {"config.json", SAFE_WEIGHTS_INDEX_NAME, "pytorch_model.bin.index.json", "README.md", ".gitattributes"}


def side_files(source_dir: str | os.PathLike) -> list[Path]:
    """Files to copy along with the weights: tokenizer files, generation config, chat template,
    ``*.py`` remote code and other small metadata — everything at the top level except weights,
    ``config.json`` (rewritten), the index and ``README.md`` (a new model card is written)."""
    out = []
    for p in sorted(Path(source_dir).iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in NOT_COPIED:
            continue
        if p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"):
            continue
        out.append(p)
    return out


def copy_side_files(source_dir: str | os.PathLike, output_dir: str | os.PathLike) -> list[str]:
    """Copy :func:`side_files` from ``source_dir`` into ``output_dir``; return their names."""
    names = []
    for p in side_files(source_dir):
        shutil.copyfile(p, Path(output_dir) / p.name)
        names.append(p.name)
    return names
