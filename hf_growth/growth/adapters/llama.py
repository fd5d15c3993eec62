"""Llama (and Llama-shaped models: SmolLM2, GGUF-loaded Llamas): RMSNorm, RoPE, GQA, SwiGLU, optional biases.

>>> from hf_growth.growth.adapters.llama import LlamaAdapter
>>> LlamaAdapter().role("model.layers.0.self_attn.k_proj.weight").role
'k.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Adapter, Sizes

if TYPE_CHECKING:
    from ..steps import Stage

EXACT_ROPE_TYPES = ("default", "linear", "llama3")


class LlamaAdapter(Adapter):
    name = "llama"
    config_class_name = "LlamaConfig"
    model_types = ("llama",)
    norm = "rms"
    layer_prefix = "model.layers."
    layer_tensors = {
        "self_attn.q_proj.weight": ("q.w", False, None),
        "self_attn.q_proj.bias": ("q.b", False, "attention_bias"),
        "self_attn.k_proj.weight": ("k.w", False, None),
        "self_attn.k_proj.bias": ("k.b", False, "attention_bias"),
        "self_attn.v_proj.weight": ("v.w", False, None),
        "self_attn.v_proj.bias": ("v.b", False, "attention_bias"),
        "self_attn.o_proj.weight": ("o.w", False, None),
        "self_attn.o_proj.bias": ("o.b", False, "attention_bias"),
        "mlp.gate_proj.weight": ("mlp_in.w", False, None),
        "mlp.gate_proj.bias": ("mlp_in.b", False, "mlp_bias"),
        "mlp.up_proj.weight": ("mlp_in.w", False, None),
        "mlp.up_proj.bias": ("mlp_in.b", False, "mlp_bias"),
        "mlp.down_proj.weight": ("mlp_out.w", False, None),
        "mlp.down_proj.bias": ("mlp_out.b", False, "mlp_bias"),
        "input_layernorm.weight": ("norm.w", False, None),
        "post_attention_layernorm.weight": ("norm.w", False, None),
    }
    global_tensors = {
        "model.embed_tokens.weight": ("embed", False, None),
        "model.norm.weight": ("final_norm.w", False, None),
    }
    keys = {
        "hidden": "hidden_size",
        "mlp": "intermediate_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "layers": "num_hidden_layers",
        "vocab": "vocab_size",
    }
    eps_key = "rms_norm_eps"
    #: LlamaConfig's defaults (transformers 5) of the keys read here: a config.json may leave them out
    config_defaults = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
    }
    #: whether the config class wants hidden_size % num_attention_heads == 0 (LlamaConfig.validate_architecture)
    hidden_divisible_by_heads = True

    def config_class(self):
        from transformers import LlamaConfig

        return LlamaConfig

    def check_config(self, cfg: dict[str, Any]) -> None:
        """LlamaConfig's checks that growth can break, without importing it."""
        self.check_sizes_and_layer_lists(cfg)
        hidden, heads = cfg[self.keys["hidden"]], cfg[self.keys["heads"]]
        if self.hidden_divisible_by_heads and hidden % heads:
            raise ValueError(
                f"the grown config is not a valid {self.config_class_name}: The hidden size "
                f"({hidden}) is not a multiple of the number of attention heads ({heads})."
            )

    def sizes(self, cfg: dict[str, Any]) -> Sizes:
        k = self.keys
        heads = cfg[k["heads"]]
        head_dim = cfg.get("head_dim") or cfg[k["hidden"]] // heads
        return Sizes(
            hidden=cfg[k["hidden"]],
            mlp=cfg[k["mlp"]],
            heads=heads,
            kv_heads=cfg.get(k["kv_heads"]) or heads,
            qk_dim=head_dim,
            v_dim=head_dim,
            layers=cfg[k["layers"]],
            vocab=cfg[k["vocab"]],
            tied=bool(cfg.get("tie_word_embeddings")),
        )

    def write_sizes(self, cfg: dict[str, Any], before: Sizes, after: Sizes) -> dict[str, Any]:
        k = self.keys
        cfg = dict(cfg)
        cfg[k["hidden"]], cfg[k["mlp"]], cfg[k["heads"]] = after.hidden, after.mlp, after.heads
        cfg[k["kv_heads"]], cfg[k["layers"]] = after.kv_heads, after.layers
        cfg["head_dim"] = after.qk_dim
        if after.hidden != before.hidden and self.eps_key:
            from ..ops import rms_eps_rescale

            cfg[self.eps_key] = rms_eps_rescale(cfg[self.eps_key], before.hidden, after.hidden)
        return cfg

    def rope_parameters(self, cfg: dict[str, Any]) -> dict[str, Any]:
        rope = cfg.get("rope_parameters") or {}
        if "rope_type" not in rope and cfg.get("rope_scaling"):
            rope = dict(cfg["rope_scaling"])
        return rope

    # ---------------------------------------------------------------- refusals, per step (Adapter.check)
    def check_head_dim(self, stage: Stage) -> None:
        self._check_rope(stage)

    def check_qk_dim(self, stage: Stage) -> None:
        self._check_separate_qk_v(stage)
        self._check_rope(stage)

    def check_value_dim(self, stage: Stage) -> None:
        self._check_separate_qk_v(stage)

    def _check_separate_qk_v(self, stage: Stage) -> None:
        if not self.separate_qk_v:
            raise ValueError(
                f"stock {self.name} has one head_dim for q, k and v, so {stage.step.kind} cannot grow alone: use "
                "`head_dim` (both together), or convert to ResFormer (hf_growth.convert_llama_to_resformer), "
                "which has separate qk_head_dim / v_head_dim"
            )

    def _check_rope(self, stage: Stage) -> None:
        if self.rope and stage.after.qk_dim != stage.before.qk_dim:
            self.check_rope_growth(stage.step, stage.cfg_before, stage.before.qk_dim, stage.after.qk_dim)

    def check_rope_growth(self, step: Any, cfg: dict[str, Any], old: int, new: int) -> None:
        rope = self.rope_parameters(cfg)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if new % 2:
            raise ValueError(f"RoPE needs an even head size, got {new}")
        if step.approximate:
            return
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(
                "partial rotary embeddings are not supported for head-size growth; "
                "set `approximate: true` to do it anyway and measure the error"
            )
        if rope_type not in EXACT_ROPE_TYPES:
            raise ValueError(
                f"RoPE type {rope_type!r} depends on the head size in a way an index placement cannot keep; "
                f"exact head-size growth supports {', '.join(EXACT_ROPE_TYPES)}. Set `approximate: true` to do it "
                "anyway and measure the error"
            )
        if new % old:
            raise ValueError(
                f"RoPE frequencies theta^(-2i/d) and the rotate-half pairing depend on the head size: growing "
                f"{old} -> {new} is exact only by an integer factor (e.g. {2 * old}); set `approximate: true` to "
                "keep old pairs in place and measure the error"
            )
