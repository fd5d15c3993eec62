"""Qwen3-MoE: Qwen3's attention (per-head q/k RMSNorms, optional biases) with a mixture of experts in every layer:
a router ``mlp.gate`` and the experts' fused 3-D tensors ``mlp.experts.gate_up_proj`` / ``mlp.experts.down_proj``
(``moe_intermediate_size`` per expert), saved per expert (``mlp.experts.N.gate_proj.weight``...). The chosen
experts' routing weights are renormalised only with ``norm_topk_prob: true``, which upcycling sets. Models with
dense layers (``mlp_only_layers``, ``decoder_sparse_step`` > 1) are not supported.

>>> from hf_growth.growth.adapters.qwen3_moe import Qwen3MoeAdapter
>>> Qwen3MoeAdapter().role("model.layers.0.mlp.experts.down_proj").role
'experts_out.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Adapter
from .qwen3 import Qwen3Adapter

if TYPE_CHECKING:
    from ..steps import Stage


class Qwen3MoeAdapter(Qwen3Adapter):
    name = "qwen3_moe"
    config_class_name = "Qwen3MoeConfig"
    causal_lm_class_name = "Qwen3MoeForCausalLM"
    model_types = ("qwen3_moe",)
    layer_tensors = {
        **{k: v for k, v in Qwen3Adapter.layer_tensors.items() if not k.startswith("mlp.")},
        "mlp.gate.weight": ("router.w", False, None),
        "mlp.experts.gate_up_proj": ("experts_in.w", False, None),
        "mlp.experts.down_proj": ("experts_out.w", False, None),
    }
    keys = {
        **Qwen3Adapter.keys,
        "mlp": "moe_intermediate_size",
        "experts": "num_local_experts",
        "top_k": "num_experts_per_tok",
    }
    config_defaults = {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "moe_intermediate_size": 768,
        "num_local_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
    layer_list_keys = ()
    moe_settings = ("router_aux_loss_coef", "output_router_logits", "norm_topk_prob")
    upcycle_defaults = {"norm_topk_prob": True}
    moe_config_defaults = {
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
    }
    #: Qwen3Config keys Qwen3MoeConfig does not have (its layers all attend alike)
    dense_only_keys = ("layer_types", "max_window_layers")
    per_expert_names = {
        "mlp.experts.gate_up_proj": ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight"),
        "mlp.experts.down_proj": ("mlp.experts.{e}.down_proj.weight",),
    }
    per_expert_renames = {"mlp.gate.weight": "mlp.gate.weight"}

    def config_class(self):
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig

    def sizes(self, cfg: dict[str, Any]):
        k = self.keys
        experts = cfg.get(k["experts"], cfg.get("num_experts"))
        return super().sizes(cfg).with_(experts=experts, top_k=cfg[k["top_k"]])

    def write_sizes(self, cfg: dict[str, Any], before, after) -> dict[str, Any]:
        cfg = super().write_sizes(cfg, before, after)
        cfg.pop("num_experts", None)  # an alias of num_local_experts
        cfg[self.keys["experts"]], cfg[self.keys["top_k"]] = after.experts, after.top_k
        return cfg

    def renormalises(self, cfg: dict[str, Any]) -> bool:
        return bool(cfg.get("norm_topk_prob"))

    def remap_layer_config(
        self, cfg: dict[str, Any], sources: list[int], modes: list[str] | None = None
    ) -> dict[str, Any]:
        return Adapter.remap_layer_config(self, cfg, sources, modes)  # no per-layer lists

    def check(self, stage: Stage) -> None:
        cfg = stage.cfg_before if stage.adapter is self else {}
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            raise ValueError(
                "Qwen3-MoE models with dense layers (mlp_only_layers, decoder_sparse_step > 1) are not "
                "supported: every layer must be a mixture of experts"
            )
        super().check(stage)

    def check_upcycle(self, stage: Stage) -> None:
        if stage.cfg_before.get("use_sliding_window") and not stage.step.approximate:
            raise ValueError(
                "Qwen3-MoE gives every layer the same attention window, while this Qwen3 slides only "
                "from layer max_window_layers on: set `approximate: true` to do it anyway and measure "
                "the error"
            )

    def from_dense_config(self, cfg: dict[str, Any], dense: Adapter) -> dict[str, Any]:
        cfg = super().from_dense_config(cfg, dense)
        cfg[self.keys["mlp"]] = cfg["intermediate_size"]
        if not cfg.get("use_sliding_window"):
            cfg["sliding_window"] = None  # as Qwen3MoeConfig sets it
        return cfg
