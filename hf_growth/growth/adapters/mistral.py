"""Mistral: Llama's layout without biases, ``head_dim`` in the config and a sliding attention window.

The window (``sliding_window``) is a number of positions: growth changes no position, so it is kept as it
is and every step is exact where it is for Llama. ``head_dim`` is written explicitly (MistralConfig derives
it from ``hidden_size / num_attention_heads`` only when it is None), so hidden growth keeps the head size.

>>> from hf_growth.growth.adapters.mistral import MistralAdapter
>>> MistralAdapter().role("model.layers.2.mlp.gate_proj.weight").role
'mlp_in.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .llama import LlamaAdapter

if TYPE_CHECKING:
    from ..steps import Stage


def refuse_separate_head_sizes(adapter: LlamaAdapter, stage: Stage) -> None:
    """``qk_dim`` / ``value_dim`` on an architecture with one head size (no ResFormer conversion for it)."""
    raise ValueError(
        f"stock {adapter.name} has one head_dim for q, k and v, so {stage.step.kind} cannot grow alone: use "
        "`head_dim` (both together)"
    )


class MistralAdapter(LlamaAdapter):
    name = "mistral"
    model_types = ("mistral",)
    layer_tensors = {k: v for k, v in LlamaAdapter.layer_tensors.items() if not k.endswith(".bias")}

    config_class_name = "MistralConfig"
    #: MistralConfig's defaults (transformers 5) of the keys read here: a config.json may leave them out
    config_defaults = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }
    hidden_divisible_by_heads = False  # MistralConfig does not ask for it

    def _check_separate_qk_v(self, stage: Stage) -> None:
        refuse_separate_head_sizes(self, stage)

    def config_class(self):
        from transformers import MistralConfig

        return MistralConfig
