"""The output directory: written atomically, replaced only when asked and only if it is a checkpoint,
checked for room first.

:func:`atomic_output_dir` yields a temporary directory next to the output and renames it at the end;
on any failure (exception, Ctrl-C, a full disk) it is removed. The temporary directory is marked as
hf-growth's, so that the next run into the same place removes what a killed run left behind.

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
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .reader import SAFE_WEIGHTS_INDEX_NAME

logger = logging.getLogger(__name__)


class DiskFullError(OSError):
    """The output did not fit on disk; the temporary files were removed."""


def _is_relative_to(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


# ----------------------------------------------------------------------------- overwrite policy

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx", ".pkl")


def _names(directory: Path, limit: int = 3) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def why_not_replaceable(directory: str | os.PathLike) -> str | None:
    """``None`` if ``directory`` may be replaced by ``overwrite=True``, else why not (a short phrase).

    Replaceable: an empty directory, a model checkpoint (``config.json`` with a ``model_type`` and weight
    files) or an earlier output of hf-growth (a ``config.json`` with ``growth_history``). Anything else is
    left alone, so that a mistyped output path never deletes a user's files.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "notes.txt").write_text("mine")
    >>> why_not_replaceable(d)
    'it holds notes.txt and no config.json'
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return "it is not a directory"
    entries = list(directory.iterdir())
    if not entries:
        return None
    config_path = directory / "config.json"
    if not config_path.is_file():
        return f"it holds {_names(directory)} and no config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return "its config.json is not valid JSON"
    if not isinstance(config, dict):
        return "its config.json is not a JSON object"
    if config.get("growth_history"):
        return None  # an earlier hf-growth output
    if not config.get("model_type"):
        return "its config.json has no model_type"
    if not any(p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json")) for p in entries):
        return f"it has a config.json but no weight files (it holds {_names(directory)})"
    return None


def why_not_replaceable_dataset(directory: str | os.PathLike) -> str | None:
    """Why ``overwrite=True`` must not replace ``directory`` with a dataset, or None when it is empty or a dataset
    that ``save_to_disk`` wrote (``dataset_dict.json``, or ``state.json`` + ``dataset_info.json``).

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "notes.txt").write_text("mine")
    >>> why_not_replaceable_dataset(d)
    'it holds notes.txt and no dataset_dict.json'
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return "it is not a directory"
    if not any(directory.iterdir()):
        return None
    if (directory / "dataset_dict.json").is_file() or (
        (directory / "state.json").is_file() and (directory / "dataset_info.json").is_file()
    ):
        return None
    return f"it holds {_names(directory)} and no dataset_dict.json"


def check_replaceable(
    directory: str | os.PathLike,
    why_not: Callable[[Path], str | None] = why_not_replaceable,
    what: str = "a model checkpoint or an earlier hf-growth output",
) -> None:
    """Raise ``FileExistsError`` (one line, saying why) if ``overwrite=True`` must not replace ``directory``
    (``why_not``: :func:`why_not_replaceable` for checkpoints, :func:`why_not_replaceable_dataset` for datasets)."""
    reason = why_not(Path(directory))
    if reason is not None:
        raise FileExistsError(
            f"output directory {directory} exists and is not {what.split(' or ')[0]} ({reason}); overwrite replaces "
            f"only {what}: choose another output directory or remove it"
        )


def check_output_dir(
    output_dir: str | os.PathLike, source: str | os.PathLike | None = None, *, overwrite: bool = False
) -> Path:
    """Refuse an output that exists (unless ``overwrite`` and it is a checkpoint), is inside the source, or
    contains it. Returns the resolved path."""
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
        check_replaceable(out)
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


# ------------------------------------------------------------------- temporary directories

#: every temporary directory hf-growth makes next to an output holds this file: who made it (pid, host,
#: process start time), so that a later run can tell its own leftovers (a killed run) from anything else
MARKER_NAME = ".hf-growth-partial.json"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _process_running(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    except OSError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):  # a zombie: dead, not yet reaped
            return False
    except (OSError, IndexError):
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


def _mark(directory: Path, output: Path) -> None:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _process_start(os.getpid()),
        "output": str(output),
        "created": time.time(),
    }
    (directory / MARKER_NAME).write_text(json.dumps(owner) + "\n")


def _owner(directory: Path) -> dict | None:
    try:
        owner = json.loads((directory / MARKER_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _remove_ours(directory: Path) -> None:
    """Remove a directory this program made, its marker last (an interrupted removal stays recognisable)."""
    if not directory.exists():
        return
    for entry in directory.iterdir():
        if entry.name == MARKER_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
    with contextlib.suppress(FileNotFoundError):
        (directory / MARKER_NAME).unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def clean_leftovers(output_dir: str | os.PathLike) -> list[str]:
    """Remove what an earlier, killed run into ``output_dir`` left next to it (``.NAME.tmp-*`` / ``.NAME.old-*``
    directories marked as hf-growth's, whose process is gone), and report the rest.

    Returns one line per leftover found (what was removed, or why it was left alone); each is also logged as a
    warning. Never removes a directory without hf-growth's marker, nor one whose process may still run.
    """
    out = Path(output_dir).expanduser().resolve()
    if not out.parent.is_dir():
        return []
    prefixes = (f".{out.name}.tmp-", f".{out.name}.old-")
    host = socket.gethostname()
    notes = []
    for path in sorted(out.parent.iterdir()):
        if not path.name.startswith(prefixes) or path.is_symlink() or not path.is_dir():
            continue
        owner = _owner(path)
        if owner is None:
            notes.append(
                f"{path} looks like the partial output of an interrupted run but is not marked as "
                "hf-growth's; left alone: remove it yourself if it is not needed"
            )
        elif owner.get("host") != host:
            notes.append(
                f"{path} is a partial output of a run on host {owner.get('host')} (pid {owner['pid']}), "
                "which may still run; left alone: remove it yourself once that run is gone"
            )
        elif _process_running(owner["pid"], owner.get("start")):
            continue  # a run that is writing there now
        else:
            _remove_ours(path)
            notes.append(f"removed {path}, the partial output of an interrupted run (pid {owner['pid']}, gone)")
    for note in notes:
        logger.warning(note)
    return notes


@contextlib.contextmanager
def atomic_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    replaceable: Callable[[Path], str | None] = why_not_replaceable,
    what: str = "a model checkpoint or an earlier hf-growth output",
) -> Iterator[Path]:
    """Yield a temporary directory next to ``output_dir``; rename it to ``output_dir`` on success.

    On any exception (including ``KeyboardInterrupt``, or what a signal handler raises) the temporary directory
    is removed and the error re-raised; a full disk (``ENOSPC``) becomes a :class:`DiskFullError` saying so.
    An existing ``output_dir`` is replaced only with ``overwrite=True``, only if it is a model checkpoint or an
    earlier output (``replaceable``: :func:`why_not_replaceable`; a dataset: :func:`why_not_replaceable_dataset`),
    and only at the end. The temporary directory is marked as
    hf-growth's (:data:`MARKER_NAME`), so that when a run is killed outright (SIGKILL, power loss) the next run
    into the same place removes it (:func:`clean_leftovers`).
    """
    out = Path(output_dir).expanduser().resolve()
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"output directory {out} exists; pass overwrite=True (--overwrite) to replace it")
        check_replaceable(out, replaceable, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # not mkdtemp, which makes it 0700: the output gets the umask's mode, as save_pretrained's does
    try:
        _mark(tmp, out)
        yield tmp
        (tmp / MARKER_NAME).unlink()
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, trash)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(trash, out)  # the old output stays where it was
                raise
            _mark(trash, out)
            _remove_ours(trash)
        else:
            os.replace(tmp, out)
    except OSError as error:
        _remove_ours(tmp)
        if error.errno == errno.ENOSPC and not isinstance(error, DiskFullError):
            raise DiskFullError(
                errno.ENOSPC, f"disk full while writing {out}; the partial output was removed ({error})"
            ) from error
        raise
    except BaseException:
        _remove_ours(tmp)
        raise


# ------------------------------------------------------------------------- files copied along

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
