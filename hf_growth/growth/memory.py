"""In-memory front end: model -> engine -> new model. The source model (and its config) is never modified.

>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from hf_growth.growth.verify import max_logit_diff
>>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
>>> grown = grow_in_memory(model, [{"mlp_width": 96}, {"num_layers": {"to": 3, "where": "top"}}])
>>> grown.config.num_hidden_layers, max_logit_diff(model, grown) < 1e-5
(3, True)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from .engine import GrowthEngine, StateDictSource


def build_model(like: torch.nn.Module, config: Any, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A new model of ``like``'s class from ``config`` and ``tensors`` (assigned, not copied again)."""
    from accelerate import init_empty_weights

    cls = type(like)
    if type(config) is not type(like.config):  # a step changed the architecture (experts: Llama -> Mixtral)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    dtype = next(iter(tensors.values())).dtype
    config.dtype = dtype
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    tied = (
        set(getattr(model, "all_tied_weights_keys", {}) or {})
        if getattr(config, "tie_word_embeddings", False)
        else set()
    )
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(
            f"grown tensors do not match {cls.__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    device = next(iter(tensors.values())).device
    model.to(device)
    generation_config = getattr(like, "generation_config", None)
    if generation_config is not None:
        model.generation_config = copy.deepcopy(generation_config)
    model.train(like.training)
    return model


def grow_in_memory(model: torch.nn.Module, plan: Any, *, seed: int = 0, verify: bool | None = None) -> torch.nn.Module:
    """Grow ``model`` by ``plan`` into a new model. With approximate steps (or ``verify=True``) the measured
    max |Δlogits| is written into the last history record as ``max_logit_diff``."""
    engine = GrowthEngine(model.config, plan, seed=seed)
    state = model.state_dict()
    source_storages = {t.untyped_storage().data_ptr() for t in state.values()}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in engine.run(StateDictSource(state)):
        if tensor.untyped_storage().data_ptr() in source_storages:
            tensor = tensor.clone()  # never share storage with the source
        tensors[name] = tensor.detach()
    config = engine.final_config(next(iter(tensors.values())).dtype)
    grown = build_model(model, config, tensors)
    approximate = any(
        r.get("step", {}) and next(iter(r["step"].values())).get("approximate") for r in engine.history_records
    )
    if verify or (verify is None and approximate):
        from .verify import max_logit_diff

        diff = max_logit_diff(model, grown)
        grown.config.growth_history[-1]["max_logit_diff"] = diff
        if approximate:
            warnings.warn(f"approximate growth: measured max |Δlogits| = {diff:.3g}", stacklevel=2)
    return grown


def save_grown(
    grown: torch.nn.Module,
    output_dir: Any,
    *,
    source: torch.nn.Module | None = None,
    base_model: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    verification: dict | None = None,
    tokenizer: Any = None,
) -> Any:
    """Save a grown model with ``save_pretrained`` *and* its model card (``README.md``), atomically: into a
    temporary directory next to ``output_dir``, renamed at the end, removed on any failure or interrupt
    (:func:`~hf_growth.growth.io.atomic_output_dir`). An existing output is replaced only with ``overwrite=True``
    and only if it is a model checkpoint or an earlier hf-growth output; anything else is refused with a
    ``FileExistsError`` saying why. ``base_model`` defaults to the source's Hub id when it can be known; a
    ``tokenizer`` is saved alongside. Returns the path.
    """
    from hf_growth.hub import guess_base_model, write_model_card

    from .io import atomic_output_dir

    if base_model is None:
        src_config = getattr(source, "config", None)
        base_model = guess_base_model(getattr(src_config, "_name_or_path", None), src_config)
    diff = (
        (grown.config.growth_history or [{}])[-1].get("max_logit_diff")
        if getattr(grown.config, "growth_history", None)
        else None
    )
    if verification is None and diff is not None:
        verification = {"max_logit_diff": diff}
    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        grown.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_model_card(
            tmp, grown.config, base_model=base_model, num_params=grown.num_parameters(), verification=verification
        )
    return Path(output_dir).expanduser().resolve()
