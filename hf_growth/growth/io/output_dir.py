"""The output directory: written atomically, replaced only when asked, checked for room first.

:func:`atomic_output_dir` yields a temporary directory next to the output and renames it at the end;
on any failure (exception, Ctrl-C, a full disk) it is removed.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_output_dir(d / "out") as tmp:
...     _ = (tmp / "config.json").write_text("{}")
>>> sorted(p.name for p in d.iterdir())
['out']
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from .reader import SAFE_WEIGHTS_INDEX_NAME


class DiskFullError(OSError):
    """The output did not fit on disk; the temporary files were removed."""


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
