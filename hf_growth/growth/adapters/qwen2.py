"""Qwen2: a Llama with q/k/v biases (always on) and no o_proj bias. The whole adapter is this file.

>>> from hf_growth.growth.adapters.qwen2 import Qwen2Adapter
>>> Qwen2Adapter().role("model.layers.1.self_attn.q_proj.bias").role
'q.b'
"""

from __future__ import annotations

from .llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    name = "qwen2"
    model_types = ("qwen2",)
    layer_tensors = {
        **{k: v for k, v in LlamaAdapter.layer_tensors.items() if "_proj.bias" not in k},
        "self_attn.q_proj.bias": ("q.b", False, None),
        "self_attn.k_proj.bias": ("k.b", False, None),
        "self_attn.v_proj.bias": ("v.b", False, None),
    }

    config_class_name = "Qwen2Config"
    config_defaults = {
        "vocab_size": 151936,
        "hidden_size": 4096,
        "intermediate_size": 22016,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }
    hidden_divisible_by_heads = False  # Qwen2Config does not ask for it

    def config_class(self):
        from transformers import Qwen2Config

        return Qwen2Config
