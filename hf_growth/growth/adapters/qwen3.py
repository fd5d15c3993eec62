"""Qwen3: a Llama with optional q/k/v/o biases (``attention_bias``) and a per-head RMSNorm of the queries and of
the keys over ``head_dim`` (``q_norm`` / ``k_norm``: one gain of ``head_dim`` entries shared by every head).

Exact on every axis Llama is exact on. Heads (with KV groups): the q/k norms are shared by the heads, a new
head's output columns are zero. Hidden size: the q/k norms are untouched; the rescaled ``rms_norm_eps``, which
they share with the hidden norms, is compensated by scaling the q/k projections
(``steps/hidden_size.py: _qk_norm_compensated``). New layers: q/k norm gains start at ones, the output
projections at zero. Head size, by an integer factor: new q/k dimensions copy old ones so that the norms'
mean of squares is unchanged, and the new ``k_norm`` entries are zero (``steps/qk_dim.py: _grow_normed_qk``).
``layer_types`` (sliding / full attention) follow the layers; without it in the config it is built first by
Qwen3Config's rule (``use_sliding_window``, ``max_window_layers``), so existing layers keep their type.

>>> from hf_growth.growth.adapters.qwen3 import Qwen3Adapter
>>> Qwen3Adapter().role("model.layers.0.self_attn.k_norm.weight").role
'k_norm.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .llama import LlamaAdapter
from .mistral import refuse_separate_head_sizes

if TYPE_CHECKING:
    from ..steps import Stage


class Qwen3Adapter(LlamaAdapter):
    name = "qwen3"
    model_types = ("qwen3",)
    qk_norm = True
    layer_tensors = {
        **{k: v for k, v in LlamaAdapter.layer_tensors.items() if not k.startswith("mlp.") or "bias" not in k},
        "self_attn.q_norm.weight": ("q_norm.w", False, None),
        "self_attn.k_norm.weight": ("k_norm.w", False, None),
    }

    config_class_name = "Qwen3Config"
    #: Qwen3Config's defaults (transformers 5) of the keys read here: a config.json may leave them out
    config_defaults = {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 22016,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "head_dim": 128,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "max_window_layers": 28,
    }
    hidden_divisible_by_heads = False  # Qwen3Config does not ask for it

    def config_class(self):
        from transformers import Qwen3Config

        return Qwen3Config

    def _check_separate_qk_v(self, stage: Stage) -> None:
        refuse_separate_head_sizes(self, stage)

    def remap_layer_config(
        self, cfg: dict[str, Any], sources: list[int], modes: list[str] | None = None
    ) -> dict[str, Any]:
        if not isinstance(cfg.get("layer_types"), list):  # Qwen3Config's rule, for the layers before the step
            window = cfg.get("sliding_window", 4096) if cfg.get("use_sliding_window") else None
            first = cfg.get("max_window_layers", 28)
            cfg = {
                **cfg,
                "layer_types": [
                    "sliding_attention" if window is not None and i >= first else "full_attention"
                    for i in range(self.sizes(cfg).layers)
                ],
            }
        return super().remap_layer_config(cfg, sources, modes)
