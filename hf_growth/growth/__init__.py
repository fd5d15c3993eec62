"""Function-preserving growth of transformers: ``grow_model(model, plan, seed=0)``.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
>>> grown = grow_model(model, [{"hidden_size": 48}], seed=0)
>>> grown.config.hidden_size, model.config.hidden_size
(48, 32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .plan import GrowthPlan

if TYPE_CHECKING:  # pragma: no cover
    import torch


@overload
def grow_model(
    model: torch.nn.Module, plan: Any, *, seed: int = 0, output_dir: str | os.PathLike | None = None, **kwargs: Any
) -> torch.nn.Module: ...


@overload
def grow_model(
    model: str | os.PathLike,
    plan: Any,
    *,
    seed: int = 0,
    output_dir: str | os.PathLike,
    revision: str | None = None,
    token: str | bool | None = None,
    **kwargs: Any,
) -> Path: ...


def grow_model(
    model: Any,
    plan: Any,
    *,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    **kwargs: Any,
) -> Any:
    """Grow a model by a plan (:class:`GrowthPlan`, list of one-key steps, or YAML file).

    A model in, a model out: returns a new model; the source is untouched; with ``output_dir`` it is also saved
    there with its model card (``max_shard_size=``, ``overwrite=``, ``base_model=`` apply to that save).

    A source name in, the output path out (``output_dir`` is required): a checkpoint directory (or a Hub
    repository id, fetched by :func:`~hf_growth.growth.sources.resolve_source`) is streamed shard by shard; a
    ``.gguf`` file or the embedded model's name (``"smollm2"``) is loaded, grown in memory and saved with its
    tokenizer. ``revision`` and ``token`` apply to a Hub id (as ``huggingface_hub.snapshot_download`` takes them).
    """
    if isinstance(model, (str, os.PathLike)):
        if output_dir is None:
            raise ValueError("growing a checkpoint on disk needs output_dir= (or pass a loaded model)")
        from .streaming import grow_checkpoint

        if Path(model).expanduser().is_dir():
            return grow_checkpoint(model, plan, output_dir, seed=seed, **kwargs)
        from .sources import load_model, resolve_source

        source = resolve_source(model, revision=revision, token=token)
        if source.directory is not None:  # a Hub repository's snapshot
            kwargs.setdefault("base_model", source.name)
            return grow_checkpoint(source.directory, plan, output_dir, seed=seed, **kwargs)
        from .io import check_output_dir
        from .memory import grow_in_memory, save_grown

        kwargs.pop("quiet", None)
        save_kwargs = {k: kwargs.pop(k) for k in ("max_shard_size", "overwrite", "base_model") if k in kwargs}
        check_output_dir(output_dir, source.path, overwrite=save_kwargs.get("overwrite", False))
        loaded, tokenizer = load_model(source.path or source.name)
        grown = grow_in_memory(loaded, plan, seed=seed, **kwargs)
        return save_grown(grown, output_dir, source=loaded, tokenizer=tokenizer, **save_kwargs)
    from .memory import grow_in_memory, save_grown

    save_kwargs = {k: kwargs.pop(k) for k in ("max_shard_size", "overwrite", "base_model") if k in kwargs}
    grown = grow_in_memory(model, plan, seed=seed, **kwargs)
    if output_dir is not None:  # save_pretrained + the model card
        save_grown(grown, output_dir, source=model, **save_kwargs)
    return grown


__all__ = ["GrowthPlan", "grow_model"]
