"""Architecture adapters, looked up by ``model_type``.

>>> from hf_growth.growth.adapters import get_adapter, supported_model_types
>>> get_adapter({"model_type": "gpt2"}).name
'gpt2'
"""

from __future__ import annotations

from typing import Any

from ..._lazy import import_object
from .base import Adapter, Sizes, TensorRole

# model_type -> "module:Class" (imported on first use)
_REGISTRY: dict[str, str] = {
    "llama": "hf_growth.growth.adapters.llama:LlamaAdapter",
    "qwen2": "hf_growth.growth.adapters.qwen2:Qwen2Adapter",
    "mistral": "hf_growth.growth.adapters.mistral:MistralAdapter",
    "qwen3": "hf_growth.growth.adapters.qwen3:Qwen3Adapter",
    "phi3": "hf_growth.growth.adapters.phi3:Phi3Adapter",
    "gpt2": "hf_growth.growth.adapters.gpt2:GPT2Adapter",
    "resformer": "hf_growth.growth.adapters.resformer:ResFormerAdapter",
    "gemma2": "hf_growth.growth.adapters.gemma:Gemma2Adapter",
    "gemma3_text": "hf_growth.growth.adapters.gemma:Gemma3TextAdapter",
    "mixtral": "hf_growth.growth.adapters.mixtral:MixtralAdapter",
    "qwen3_moe": "hf_growth.growth.adapters.qwen3_moe:Qwen3MoeAdapter",
}

_WHY_NOT = {}


def register_adapter(model_type: str, target: str) -> None:
    """Register an adapter class (``"package.module:Class"``) for a ``model_type``."""
    _REGISTRY[model_type] = target


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(config: Any) -> Adapter:
    """The adapter for a config, a config dict or a model_type string; ValueError naming the supported ones."""
    if isinstance(config, str):
        model_type = config
    elif isinstance(config, dict):
        model_type = config.get("model_type")
    else:
        model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        why = f" ({_WHY_NOT[model_type]})" if model_type in _WHY_NOT else ""
        raise ValueError(
            f"hf-growth cannot grow model_type {model_type!r}{why}; supported: {', '.join(supported_model_types())}"
        )
    return import_object(_REGISTRY[model_type])()


__all__ = ["Adapter", "Sizes", "TensorRole", "get_adapter", "register_adapter", "supported_model_types"]
