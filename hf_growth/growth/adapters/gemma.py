"""Gemma 2 and Gemma 3 (text): a Llama layout with sandwich norms, ``(1 + w)`` RMSNorm gains, an embedding scaled by
sqrt(hidden_size), a fixed attention scale (``query_pre_attn_scalar``), soft-capping, sliding / full attention
layers (``layer_types``) and, in Gemma 3, per-head RMSNorms on queries and keys (``q_norm`` / ``k_norm``).

Why each axis is exact (float32: up to round-off):

- ``mlp_width``, ``num_heads``: as Llama (new units and heads add zero through ``down_proj`` / ``o_proj``);
  soft-capping and ``query_pre_attn_scalar`` see the same scores.
- ``hidden_size``: zero-padding as Llama, with the ``(1 + w)`` gains rescaled (``(1 + w') = (1 + w) sqrt(h/h')``,
  ``eps' = eps h/h'``). The model multiplies the embedding by sqrt(hidden_size), which grows: the embedding
  values are scaled by sqrt(h/h'), so the first hidden state is unchanged. With tied embeddings the
  unembedding is that scaled matrix: the last norm keeps its gains, its output is sqrt(h'/h) larger in the old
  entries and the logits are unchanged. Gemma 3's q/k norms share ``rms_norm_eps``: queries and keys are scaled
  by sqrt(h/h') too (RMSNorm(a q; a^2 eps) = RMSNorm(q; eps)).
- ``num_layers``: a new layer's ``o_proj`` and ``down_proj`` are zero and its post-norms turn a zero branch into
  zero, so it adds nothing; its norms start at ``w = 0`` (gain 1, Gemma's initialization). A new layer takes
  the ``layer_types`` entry (sliding or full attention, and with it the RoPE base) of the layer it is inserted
  after, the layer ``init: copy`` copies; the existing layers keep theirs.
- ``head_dim`` (Gemma 2): RoPE by an integer factor as Llama; the attention scale is ``query_pre_attn_scalar**-0.5``,
  not ``head_dim**-0.5``, and stays as it is, so the keys are not rescaled. Gemma 3 refuses it: the q/k norms
  over head_dim stay exact only if the new query and key dimensions both start at zero, a saddle their
  gradients never leave.

bfloat16: the embedding scale sqrt(hidden_size) is rounded to the model dtype by Gemma itself, and the rescaled
embedding and gains are rounded to bfloat16, so a grown bfloat16 model matches its source to bfloat16 round-off
(a few ulps), not bit for bit; float32 to ~1e-6.

>>> from hf_growth.growth.adapters import get_adapter
>>> get_adapter({"model_type": "gemma3_text"}).role("model.layers.2.self_attn.k_norm.weight").role
'k_norm.w'
>>> get_adapter({"model_type": "gemma2"}).role("model.layers.0.post_feedforward_layernorm.weight").role
'norm.w'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .llama import LlamaAdapter

if TYPE_CHECKING:
    from ..steps import Stage


class Gemma2Adapter(LlamaAdapter):
    name = "gemma2"
    config_class_name = "Gemma2Config"
    model_types = ("gemma2",)
    layer_tensors = {
        **{k: v for k, v in LlamaAdapter.layer_tensors.items() if not k.startswith("mlp.") or "bias" not in k},
        "pre_feedforward_layernorm.weight": ("norm.w", False, None),
        "post_feedforward_layernorm.weight": ("norm.w", False, None),
    }
    norm_weight_offset = 1.0
    embed_scaled_by_sqrt_hidden = True
    attention_scale_follows_head_dim = False  # query_pre_attn_scalar
    #: Gemma2Config's defaults (transformers 5) of the keys read here
    config_defaults = {
        "vocab_size": 256000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "query_pre_attn_scalar": 256,
    }
    #: every ``sliding_window_pattern``-th layer is full attention when a config.json has no ``layer_types``
    sliding_window_pattern: ClassVar[int] = 2

    def config_class(self):
        from transformers import Gemma2Config

        return Gemma2Config

    def complete_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """As the base, and ``layer_types`` spelled out when the config.json leaves it to the config class (the
        class would otherwise derive it again from the grown number of layers, moving the existing layers' types)."""
        cfg = super().complete_config(cfg)
        if not cfg.get("layer_types"):
            pattern = cfg.get("sliding_window_pattern") or self.sliding_window_pattern
            cfg["layer_types"] = [
                "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(cfg[self.keys["layers"]])
            ]
        return cfg

    def _check_separate_qk_v(self, stage: Stage) -> None:
        raise ValueError(
            f"{self.name} has one head_dim for q, k and v, so {stage.step.kind} cannot grow alone: "
            f"{self.head_dim_advice}"
        )

    #: what a qk_dim / value_dim refusal suggests instead
    head_dim_advice: ClassVar[str] = "use `head_dim` (both together, exact by an integer factor)"

    def new_layer_init(self, role: str) -> str:
        """Gemma's norms multiply by ``(1 + w)``: a new layer's norms start at ``w = 0`` (gain 1)."""
        if role in ("norm.w", "q_norm.w", "k_norm.w"):
            return "zero"
        return super().new_layer_init(role)


class Gemma3TextAdapter(Gemma2Adapter):
    name = "gemma3_text"
    config_class_name = "Gemma3TextConfig"
    model_types = ("gemma3_text",)
    layer_tensors = {
        **Gemma2Adapter.layer_tensors,
        "self_attn.q_norm.weight": ("q_norm.w", False, None),
        "self_attn.k_norm.weight": ("k_norm.w", False, None),
    }
    qk_norm = True
    config_defaults = {**Gemma2Adapter.config_defaults, "vocab_size": 262208}
    sliding_window_pattern = 6
    head_dim_advice = "grow num_heads instead (head_dim is refused too: q_norm / k_norm are over head_dim)"

    def config_class(self):
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig

    def check_head_dim(self, stage: Stage) -> None:
        raise ValueError(
            "gemma3_text normalizes queries and keys per head (q_norm / k_norm over head_dim): new head dimensions "
            "keep those norms exact only if they start at zero in both queries and keys, a saddle whose gradients "
            "stay zero, so head_dim cannot grow; grow num_heads instead (exact)"
        )
