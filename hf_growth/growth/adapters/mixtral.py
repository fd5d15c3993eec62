"""Mixtral: a Llama-shaped mixture of experts (no biases). Each layer's MLP is a router ``mlp.gate`` and the
experts' fused 3-D tensors ``mlp.experts.gate_up_proj`` ``(experts, 2*mlp, hidden)`` (gate rows first) and
``mlp.experts.down_proj`` ``(experts, hidden, mlp)``, as transformers 5 holds them; checkpoints saved before
it have one tensor per expert (``block_sparse_moe.experts.N.w1/w2/w3``), which the streaming reader fuses
(:data:`PER_EXPERT_NAMES`). The router's softmax over the chosen ``num_experts_per_tok`` experts is always
renormalised to sum to one, so identical experts compute the MLP whatever the router says.

>>> from hf_growth.growth.adapters.mixtral import MixtralAdapter
>>> MixtralAdapter().role("model.layers.0.mlp.experts.gate_up_proj").role
'experts_in.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .llama import LlamaAdapter

if TYPE_CHECKING:
    from ..steps import Stage

#: per-expert checkpoint names before transformers 5 (inside a layer): fused name -> (per-expert names with
#: ``{e}`` for the expert, concatenated along dim 0 within an expert), and names renamed as they are
PER_EXPERT_NAMES = {
    "mlp.experts.gate_up_proj": ("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe.experts.{e}.w3.weight"),
    "mlp.experts.down_proj": ("block_sparse_moe.experts.{e}.w2.weight",),
}
PER_EXPERT_RENAMES = {"mlp.gate.weight": "block_sparse_moe.gate.weight"}


class MixtralAdapter(LlamaAdapter):
    name = "mixtral"
    config_class_name = "MixtralConfig"
    causal_lm_class_name = "MixtralForCausalLM"
    model_types = ("mixtral",)
    layer_tensors = {
        "self_attn.q_proj.weight": ("q.w", False, None),
        "self_attn.k_proj.weight": ("k.w", False, None),
        "self_attn.v_proj.weight": ("v.w", False, None),
        "self_attn.o_proj.weight": ("o.w", False, None),
        "mlp.gate.weight": ("router.w", False, None),
        "mlp.experts.gate_up_proj": ("experts_in.w", False, None),
        "mlp.experts.down_proj": ("experts_out.w", False, None),
        "input_layernorm.weight": ("norm.w", False, None),
        "post_attention_layernorm.weight": ("norm.w", False, None),
    }
    keys = {**LlamaAdapter.keys, "experts": "num_local_experts", "top_k": "num_experts_per_tok"}
    config_defaults = {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    }
    moe_config_defaults = {
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
    }
    moe_settings = ("router_aux_loss_coef", "output_router_logits", "router_jitter_noise")
    #: LlamaConfig keys MixtralConfig does not have (Mixtral has no biases)
    dense_only_keys = ("attention_bias", "mlp_bias", "pretraining_tp")
    hidden_divisible_by_heads = False  # MixtralConfig does not ask for it
    per_expert_names = PER_EXPERT_NAMES
    per_expert_renames = PER_EXPERT_RENAMES

    def config_class(self):
        from transformers import MixtralConfig

        return MixtralConfig

    def sizes(self, cfg: dict[str, Any]):
        k = self.keys
        return super().sizes(cfg).with_(experts=cfg[k["experts"]], top_k=cfg[k["top_k"]])

    def write_sizes(self, cfg: dict[str, Any], before, after) -> dict[str, Any]:
        cfg = super().write_sizes(cfg, before, after)
        cfg[self.keys["experts"]], cfg[self.keys["top_k"]] = after.experts, after.top_k
        return cfg

    def check_upcycle(self, stage: Stage) -> None:
        cfg = stage.cfg_before
        biases = [flag for flag in ("attention_bias", "mlp_bias") if cfg.get(flag)]
        if biases and not stage.step.approximate:
            raise ValueError(
                f"Mixtral has no biases: a {stage.adapter.name} model with {' and '.join(biases)} cannot become one "
                "exactly; set `approximate: true` to drop them and measure the error"
            )
