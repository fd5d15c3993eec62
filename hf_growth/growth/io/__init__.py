"""Checkpoint I/O without pickle: read safetensors lazily, write shards, own the output directory.

* :mod:`.reader`: :class:`SafetensorsSource` (a lazy tensor source over a checkpoint), header validation,
  the safetensors dtype tables;
* :mod:`.writer`: :class:`ShardWriter` (shards + index, raw byte-range copies, a background writer thread);
* :mod:`.output_dir`: :func:`atomic_output_dir` (a marked temporary directory renamed at the end, removed on
  any failure; a killed run's leftover is removed by the next run), the overwrite policy
  (:func:`why_not_replaceable`), the free-space check and the side files.

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

from typing import Any

from .output_dir import (
    DiskFullError,
    atomic_output_dir,
    check_free_space,
    check_output_dir,
    clean_leftovers,
    copy_side_files,
    side_files,
    why_not_replaceable,
)
from .reader import (
    DTYPE_INFO,
    FLOAT_DTYPES,
    ITEMSIZES,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    SafetensorsSource,
    TensorInfo,
    conversion_command,
    dtype_name,
    read_safetensors_header,
    torch_dtype_of,
)
from .writer import ShardWriter, copy_byte_range, parse_size


def __getattr__(name: str) -> Any:
    """``DTYPES`` and ``DTYPE_NAMES`` (torch dtype maps), made on first use so that importing this needs no torch."""
    if name in ("DTYPES", "DTYPE_NAMES"):
        from . import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DTYPE_INFO",
    "FLOAT_DTYPES",
    "ITEMSIZES",
    "SAFE_WEIGHTS_INDEX_NAME",
    "SAFE_WEIGHTS_NAME",
    "CheckpointError",
    "DiskFullError",
    "SafetensorsSource",
    "ShardWriter",
    "TensorInfo",
    "atomic_output_dir",
    "check_free_space",
    "check_output_dir",
    "clean_leftovers",
    "conversion_command",
    "copy_byte_range",
    "copy_side_files",
    "dtype_name",
    "parse_size",
    "read_safetensors_header",
    "side_files",
    "torch_dtype_of",
    "why_not_replaceable",
]
