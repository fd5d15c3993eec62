"""Phi-3: a Llama with q, k and v fused in ``qkv_proj`` (stacked along dim 0: role ``qkv.w``) and gate and up
fused in ``gate_up_proj`` (role ``gate_up.w``), RMSNorm, RoPE (default or ``longrope``, with an optional
``partial_rotary_factor``).

Phi3Config has no ``head_dim`` field: the model reads ``config.head_dim`` when it is set and else uses
``hidden_size / num_attention_heads``. The adapter writes ``head_dim`` into the grown config (an extra key
Phi3Config keeps, saves and reloads), so that growing the hidden size or the heads keeps the head size. Head-size
growth is exact for the default RoPE by an integer factor; partial rotary embeddings and ``longrope`` (whose
per-frequency factors are tied to the head size) are refused, like Llama's rotary variants.

>>> from hf_growth.growth.adapters.phi3 import Phi3Adapter
>>> Phi3Adapter().role("model.layers.0.mlp.gate_up_proj.weight").role
'gate_up.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .llama import LlamaAdapter
from .mistral import refuse_separate_head_sizes

if TYPE_CHECKING:
    from ..steps import Stage


class Phi3Adapter(LlamaAdapter):
    name = "phi3"
    model_types = ("phi3",)
    fused_part_seeds = True
    layer_tensors = {
        "self_attn.qkv_proj.weight": ("qkv.w", False, None),
        "self_attn.o_proj.weight": ("o.w", False, None),
        "mlp.gate_up_proj.weight": ("gate_up.w", False, None),
        "mlp.down_proj.weight": ("mlp_out.w", False, None),
        "input_layernorm.weight": ("norm.w", False, None),
        "post_attention_layernorm.weight": ("norm.w", False, None),
    }

    config_class_name = "Phi3Config"
    #: Phi3Config's defaults (transformers 5) of the keys read here: a config.json may leave them out
    config_defaults = {
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }
    hidden_divisible_by_heads = False  # Phi3Config does not ask for it (with head_dim written explicitly)

    def config_class(self):
        from transformers import Phi3Config

        return Phi3Config

    def tiny_config(self) -> Any:
        """The support matrix's tiny config (Phi3Config's default pad / eos ids are outside a tiny vocabulary)."""
        from ..support import TINY_SIZES

        return self.config_class()(
            **{self.keys[r]: v for r, v in TINY_SIZES.items()}, pad_token_id=None, eos_token_id=None, bos_token_id=None
        )

    def _check_separate_qk_v(self, stage: Stage) -> None:
        refuse_separate_head_sizes(self, stage)

    def rope_parameters(self, cfg: dict[str, Any]) -> dict[str, Any]:
        rope = dict(super().rope_parameters(cfg))
        if "partial_rotary_factor" not in rope and "partial_rotary_factor" in cfg:  # a config.json's top-level key
            rope["partial_rotary_factor"] = cfg["partial_rotary_factor"]
        if rope.get("rope_type", rope.get("type")) in ("su", "yarn"):  # Phi3Config's names for longrope
            rope["rope_type"] = "longrope"
        return rope

    def validate_config(self, cfg: dict[str, Any], *, strict: bool = True) -> None:
        self._check_longrope_head_size(cfg)
        super().validate_config(cfg, strict=strict)

    def check_config(self, cfg: dict[str, Any]) -> None:
        """Phi3Config's checks that growth can break, without importing it (no hidden % heads condition)."""
        self.check_sizes_and_layer_lists(cfg)

    def _check_longrope_head_size(self, cfg: dict[str, Any]) -> None:
        rope = self.rope_parameters(cfg)
        if not (rope.get("short_factor") or rope.get("long_factor")):
            return
        sizes = self.sizes(cfg)
        if sizes.hidden != sizes.heads * sizes.qk_dim:
            raise ValueError(
                f"Phi3Config checks longrope's short_factor / long_factor lengths against hidden_size / "
                f"num_attention_heads, not head_dim, so with longrope the grown model needs hidden_size = "
                f"num_attention_heads x head_dim ({sizes.heads} x {sizes.qk_dim} = {sizes.heads * sizes.qk_dim}), "
                f"got {sizes.hidden}: grow hidden_size and num_heads by the same factor"
            )
