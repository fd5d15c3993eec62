"""Llama -> ResFormer, function-preserving.

A ResFormer whose value-residual weights start at ``lambda_first = 0, lambda_own = 1`` computes exactly what the
Llama computes: every weight is copied, and the learnable lambdas are then free to move away from (0, 1) in
training (the gradient of ``lambda_first`` is ``<dL/dV', V_0>``, not zero).

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> from hf_growth import convert_llama_to_resformer
>>> llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
...                                      num_hidden_layers=2, num_attention_heads=4)).eval()
>>> resformer = convert_llama_to_resformer(llama, value_residual="learnable").eval()
>>> ids = torch.tensor([[1, 2, 3]])
>>> float((resformer(ids).logits - llama(ids).logits).abs().max())
0.0

The conversion is a step of the model's lineage: ``config.growth_history`` keeps the Llama's records (a grown
Llama stays grown) and gains a ``convert_to_resformer`` record whose ``new_slices`` are the value-residual
lambdas, so the model card shows it and ``freeze_original`` trains only the lambdas.

>>> resformer.config.growth_history[-1]["step"]
{'convert_to_resformer': {'value_residual': 'learnable'}}
"""

from __future__ import annotations

from typing import Any

import torch

# variants whose lambdas are parameters that can start at (0, 1); the others fix lambda_first != 0
_EXACT_VARIANTS = ("learnable", "learnable_plus", "none")

# LlamaConfig fields carried over unchanged
_CARRIED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "tie_word_embeddings",
    "rope_parameters",
    "attention_bias",
    "attention_dropout",
    "mlp_bias",
)


def resformer_config_from_llama(llama_config: Any, value_residual: str = "learnable", **overrides: Any):
    """A ``ResFormerConfig`` with the Llama config's shapes; learnable lambdas start at (0, 1).

    Drops any ``quantization_config`` (a GGUF-loaded model is de-quantised in memory).

    >>> from transformers import LlamaConfig
    >>> resformer_config_from_llama(LlamaConfig(num_hidden_layers=2)).value_residual_lambda
    [0.0, 1.0]
    """
    from .configuration_resformer import ResFormerConfig

    kwargs: dict[str, Any] = {
        name: getattr(llama_config, name) for name in _CARRIED_FIELDS if hasattr(llama_config, name)
    }
    head_dim = getattr(llama_config, "head_dim", None) or llama_config.hidden_size // llama_config.num_attention_heads
    kwargs.update(head_dim=head_dim, qk_head_dim=head_dim, v_head_dim=head_dim, value_residual=value_residual)
    if value_residual != "none":
        kwargs["value_residual_lambda"] = (0.0, 1.0)
    if getattr(llama_config, "rope_parameters", None) is not None:
        kwargs["rope_parameters"] = dict(llama_config.rope_parameters)
    kwargs.update(overrides)
    config = ResFormerConfig(**kwargs)
    config.architectures = ["ResFormerForCausalLM"]
    return config


def convert_llama_to_resformer(
    model: torch.nn.Module, value_residual: str = "learnable", **config_overrides: Any
) -> torch.nn.Module:
    """Return a new ``ResFormerForCausalLM`` with the same function, weights (copied) and dtype as ``model``.

    ``model`` must be a ``LlamaForCausalLM`` (or subclass); it is not modified. ``value_residual`` must be
    ``"learnable"`` (default) or ``"learnable_plus"`` (lambdas start at lambda_first = 0, lambda_own = 1), or
    ``"none"``;
    the fixed-lambda variants and SVFormer change the function and raise ``ValueError``.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...                                      num_hidden_layers=2, num_attention_heads=4))
    >>> type(convert_llama_to_resformer(llama)).__name__
    'ResFormerForCausalLM'
    """
    from transformers import LlamaForCausalLM

    if not isinstance(model, LlamaForCausalLM):
        raise ValueError(
            f"convert_llama_to_resformer needs a LlamaForCausalLM, got {type(model).__name__} "
            f"(model_type {getattr(getattr(model, 'config', None), 'model_type', None)!r})."
        )
    if value_residual not in _EXACT_VARIANTS:
        raise ValueError(
            f"value_residual={value_residual!r} is not function-preserving: its lambda_first is fixed and non-zero "
            f"(or, for svformer, it drops the value projections). Use 'learnable' or 'learnable_plus', whose "
            f"lambdas start at (0, 1)."
        )
    from transformers.initialization import no_init_weights

    from .modeling_resformer import ResFormerForCausalLM

    config = resformer_config_from_llama(model.config, value_residual=value_residual, **config_overrides)
    config._attn_implementation = getattr(model.config, "_attn_implementation", None)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    config.dtype = dtype
    # every weight is overwritten below; the lambdas are constructed at their initial values (0, 1)
    with torch.device(device), no_init_weights():
        resformer = ResFormerForCausalLM(config)
    resformer.to(dtype=dtype)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    # learnable lambdas are not in the Llama: they keep their (0, 1) initialisation
    missing, unexpected = resformer.load_state_dict(state, strict=False)
    missing = [name for name in missing if ".lambda_" not in name]
    if config.tie_word_embeddings:
        missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"Llama -> ResFormer weight mismatch: missing {missing}, unexpected {unexpected}.")
    if config.tie_word_embeddings:
        resformer.tie_weights()
    resformer.generation_config = model.generation_config.__class__.from_dict(model.generation_config.to_dict())
    resformer.config.growth_history = conversion_history(model, resformer, value_residual)
    resformer.train(model.training)
    return resformer


def conversion_history(llama: torch.nn.Module, resformer: torch.nn.Module, value_residual: str) -> list[dict[str, Any]]:
    """``llama``'s ``growth_history`` (copied) followed by the conversion's record: a run of its own, sizes
    before/after, parameter counts, and the new parameters (the lambdas) as ``new_slices``."""
    import copy

    history = copy.deepcopy(list(getattr(llama.config, "growth_history", None) or []))
    run = 1 + max((r.get("run", -1) for r in history if isinstance(r, dict)), default=-1)
    old = {name for name, _ in llama.named_parameters()}
    new = [name for name, _ in resformer.named_parameters() if name not in old]
    history.append(
        {
            "step": {"convert_to_resformer": {"value_residual": value_residual}},
            "run": run,
            "before": {"model_type": getattr(llama.config, "model_type", "llama"), "value_residual": "none"},
            "after": {"model_type": "resformer", "value_residual": value_residual},
            "exact": True,
            "num_params_before": llama.num_parameters(),
            "num_params_after": resformer.num_parameters(),
            "new_slices": {name: "all" for name in new},
        }
    )
    return history
