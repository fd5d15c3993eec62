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
from typing import Any

from .plan import GrowthPlan


def grow_model(model: Any, plan: Any, *, seed: int = 0, output_dir: "str | os.PathLike | None" = None,
               **kwargs: Any) -> Any:
    """Grow a model by a plan (:class:`GrowthPlan`, list of one-key steps, or YAML file).

    In memory (a model): returns a new model; the source is untouched; with ``output_dir`` it is also saved
    there with its model card (``max_shard_size=``, ``overwrite=``, ``base_model=`` apply to that save). On disk
    (a checkpoint directory and ``output_dir``): streams shard by shard and returns the output path.
    """
    if isinstance(model, (str, os.PathLike)):
        if output_dir is None:
            raise ValueError("growing a checkpoint on disk needs output_dir=")
        from .streaming import grow_checkpoint

        return grow_checkpoint(model, plan, output_dir, seed=seed, **kwargs)
    from .memory import grow_in_memory, save_grown

    save_kwargs = {k: kwargs.pop(k) for k in ("max_shard_size", "overwrite", "base_model") if k in kwargs}
    grown = grow_in_memory(model, plan, seed=seed, **kwargs)
    if output_dir is not None:  # save_pretrained + the model card
        save_grown(grown, output_dir, source=model, **save_kwargs)
    return grown


__all__ = ["GrowthPlan", "grow_model"]
