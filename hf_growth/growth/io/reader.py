"""Reading safetensors checkpoints without pickle and without loading a whole model.

:class:`SafetensorsSource` is a lazy, read-only *tensor source* over a checkpoint directory
(``model.safetensors``, or shards listed by ``model.safetensors.index.json``). Every header is
validated when it is opened, and each error names the file. Tensors are read on demand with
``pread`` (no mmap, so resident memory stays at the tensors in use), and
:meth:`SafetensorsSource.info` gives a tensor's file and byte range so that a writer can copy it
without decoding. torch is imported only when a tensor is decoded.

>>> import torch, tempfile, pathlib
>>> from safetensors.torch import save_file
>>> d = pathlib.Path(tempfile.mkdtemp()); save_file({"w": torch.eye(2)}, d / "model.safetensors")
>>> info = SafetensorsSource(d).info("w")
>>> info.dtype, info.shape, info.nbytes
('F32', (2, 2), 16)
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
                raise CheckpointError(
                    f"{path}: not a safetensors file ({file_size} bytes, shorter than the 8-byte header length)"
                )
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


def conversion_command(directory: str | os.PathLike, destination: str | os.PathLike | None = None) -> str:
    """A shell command that re-saves the pickle (``.bin``) checkpoint in ``directory`` as safetensors (into
    ``<directory>-safetensors`` by default), with transformers, in the checkpoint's own dtype.

    >>> command = conversion_command("old", "new")
    >>> command.startswith("python -c 'from transformers import AutoModelForCausalLM as M; ")
    True
    >>> command.split("; ")[1]
    'M.from_pretrained("old", dtype="auto").save_pretrained("new")\\''
    """
    import shlex

    source = Path(directory)
    if destination is None:
        destination = source.resolve().with_name(source.resolve().name + "-safetensors")
    code = (
        f"from transformers import AutoModelForCausalLM as M; M.from_pretrained({json.dumps(str(source))}, "
        f'dtype="auto").save_pretrained({json.dumps(str(destination))})'
    )
    return f"python -c {shlex.quote(code)}"


def _bin_only_message(directory: Path, files: list[Path]) -> str:
    names = ", ".join(sorted({p.name for p in files})[:4])
    return (
        f"{directory}: only pickle weights ({names}), no safetensors; streaming growth reads safetensors only and "
        f"never unpickles. Convert once, in an environment you trust with this file (transformers loads .bin with "
        f"torch.load(weights_only=True)): `{conversion_command(directory)}`, copy the tokenizer files along and "
        "grow the new directory; or grow in memory (`hf-growth grow --in-memory`), which loads it the same way."
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
        raise CheckpointError(
            f"{directory}: no {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or other .safetensors file"
        )

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
        return self._read_range(
            name, info, start * row_bytes, (stop - start) * row_bytes, (stop - start, *info.shape[1:])
        )

    def _read_range(
        self, name: str, info: TensorInfo, offset: int, nbytes: int, shape: tuple[int, ...]
    ) -> torch.Tensor:
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


class ExpertLayoutSource:
    """A checkpoint of a mixture of experts as the engine reads it: the fused 3-D expert tensors transformers 5
    holds (``mlp.experts.gate_up_proj``...), whichever layout the files use. Per-expert tensors
    (``block_sparse_moe.experts.N.w1.weight``...; what ``save_pretrained`` writes) are read and fused on demand;
    renamed tensors (``block_sparse_moe.gate.weight``) answer under the fused layout's name. ``part_info`` says where
    one expert's part lives in the files (a per-expert tensor, or a byte range of a fused one): the streaming
    writer copies those bytes. ``adapter``: the architecture's (``saved_parts`` / ``fused_name``).
    """

    def __init__(self, source: SafetensorsSource, adapter: Any) -> None:
        self.source, self.adapter = source, adapter
        self.path, self.index_file = source.path, source.index_file
        #: fused name -> {(expert, part): saved name}; renamed name -> saved name
        self._parts: dict[str, dict[tuple[int, int], str]] = {}
        self._renamed: dict[str, str] = {}
        names: list[str] = []
        for saved in source:
            fused = adapter.fused_name(saved)
            if fused is None:
                names.append(saved)
                continue
            name, e, k = fused
            if e is None:
                self._renamed[name] = saved
                names.append(name)
            else:
                if name not in self._parts:
                    names.append(name)
                self._parts.setdefault(name, {})[(e, k)] = saved
        for name, parts in self._parts.items():
            experts = 1 + max(e for e, _ in parts)
            count = 1 + max(k for _, k in parts)
            missing = [(e, k) for e in range(experts) for k in range(count) if (e, k) not in parts]
            if missing:
                raise CheckpointError(
                    f"{source.index_file or source.path}: {name} has no tensor for expert "
                    f"{missing[0][0]} (part {missing[0][1]}): the per-expert tensors are incomplete"
                )
            shapes = {source.shape(s) for s in parts.values()}
            if len({sh[1:] for sh in shapes}) != 1 or len({source.info(s).dtype for s in parts.values()}) != 1:
                raise CheckpointError(
                    f"{source.index_file or source.path}: the per-expert tensors of {name} differ in shape or dtype"
                )
        self._names = names

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._parts or name in self._renamed or name in self.source

    def _real(self, name: str) -> str:
        return self._renamed.get(name, name)

    def info(self, name: str) -> TensorInfo:
        """Where a tensor lives (a renamed one under its saved name); KeyError for a fused per-expert tensor."""
        if name in self._parts:
            raise KeyError(f"tensor {name!r} is stored per expert in {self.path}")
        return self.source.info(self._real(name))

    def _layout(self, name: str) -> tuple[int, int, list[int]]:
        parts = self._parts[name]
        experts, count = 1 + max(e for e, _ in parts), 1 + max(k for _, k in parts)
        rows = [self.source.shape(parts[(0, k)])[0] for k in range(count)]
        return experts, count, rows

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._parts:
            return self.source.shape(self._real(name))
        experts, _, rows = self._layout(name)
        first = self.source.shape(self._parts[name][(0, 0)])
        return (experts, sum(rows), *first[1:])

    def dtype(self, name: str) -> torch.dtype:
        if name in self._parts:
            return self.source.dtype(self._parts[name][(0, 0)])
        return self.source.dtype(self._real(name))

    def get(self, name: str) -> torch.Tensor:
        import torch

        if name not in self._parts:
            return self.source.read(self._real(name))
        experts, count, rows = self._layout(name)
        out = torch.empty(self.shape(name), dtype=self.dtype(name))
        for e in range(experts):
            row = 0
            for k in range(count):
                out[e, row : row + rows[k]] = self.source.read(self._parts[name][(e, k)])
                row += rows[k]
        return out

    read = __getitem__ = get

    def get_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        if name in self._parts:
            return self.get(name)[start:stop]
        return self.source.get_rows(self._real(name), start, stop)

    def part_info(self, name: str, expert: int, part: int, parts: int) -> TensorInfo:
        """Where expert ``expert``'s ``part`` (of ``parts`` equal row blocks along its dim 0) of the fused tensor
        ``name`` lives: its per-expert tensor, or the byte range of a fused tensor's slice."""
        if name in self._parts:
            return self.source.info(self._parts[name][(expert, part)])
        info = self.source.info(self._real(name))
        per_expert = info.nbytes // info.shape[0]
        size = per_expert // parts
        start = info.start + expert * per_expert + part * size
        shape = (info.shape[1] // parts, *info.shape[2:])
        return TensorInfo(f"{name}[{expert}]", info.file, info.dtype, shape, start, start + size)
