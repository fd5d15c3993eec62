"""What every benchmark (and every script under ``research/``) records and how it writes it: the device, the
versions, the exact command, and the JSON written atomically (a temporary file in the same folder, then a rename),
so a run cut short never leaves half a result behind.

    >>> from _common import command_line
    >>> command_line("grow_memory.py", ["--device", "cpu"])
    'PYTHONPATH=. python benchmarks/grow_memory.py --device cpu'
    >>> command_line("research/midas_stacking_flops/midas_schedule.py", ["--cpu-smoke"])
    'PYTHONPATH=. python research/midas_stacking_flops/midas_schedule.py --cpu-smoke'
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def device_label(device: Any) -> str:
    """``torch.cuda.get_device_name`` for a CUDA ``device`` (a ``torch.device`` or its name), else the CPU with its
    core count."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def device_slug(name: str) -> str:
    """A device name for file names: ``'NVIDIA H100 80GB HBM3'`` -> ``'h100'``; ``'cpu'`` stays ``'cpu'``."""
    match = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", name.lower())
    return match.group(1) if match else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def versions(*extra: str) -> dict[str, str]:
    """Python, torch and transformers versions, and those of the ``extra`` packages (import names)."""
    names = ("torch", "transformers", *extra)
    return {
        "python": platform.python_version(),
        **{name: getattr(importlib.import_module(name), "__version__", "?") for name in names},
    }


def command_line(script: str, argv: Iterable[str] | None = None, pythonpath: str = ".") -> str:
    """The command that reruns ``script`` with ``argv`` (default: this process's arguments): a bare file name is
    under ``benchmarks/``; a path (``research/<question>/<script>``) is taken from the repository root as given."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = script if "/" in script else f"benchmarks/{script}"
    return (
        f"PYTHONPATH={pythonpath} python {path} " + shlex.join(args)
        if args
        else f"PYTHONPATH={pythonpath} python {path}"
    )


def write_json(
    path: str | os.PathLike, data: Any, *, indent: int | None = 1, default: Any = None, announce: bool = False
) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (parents made; a failed write leaves the old file as it was);
    ``default`` as in ``json.dumps``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=indent, default=default) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if announce:
        print(f"wrote {path}")
    return path
