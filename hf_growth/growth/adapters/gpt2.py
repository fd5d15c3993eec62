"""GPT-2: LayerNorm with bias, learned positions, fused and transposed ``c_attn`` (Conv1D stores
``(in, out)``), ``head_dim = n_embd / n_head``, optional ``scale_attn_by_inverse_layer_idx``.

Hidden growth is exact only by integer cloning (HyperCloning): the heads multiply with the width.

>>> from hf_growth.growth.adapters.gpt2 import GPT2Adapter
>>> GPT2Adapter().role("transformer.h.0.attn.c_attn.weight")
TensorRole(role='qkv.w', layer=0, transposed=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Adapter, Sizes

if TYPE_CHECKING:
    from ..steps import Stage


class GPT2Adapter(Adapter):
    name = "gpt2"
    model_types = ("gpt2",)
    norm = "layer"
    rope = False
    layer_prefix = "transformer.h."
    layer_tensors = {
        "ln_1.weight": ("norm.w", False, None),
        "ln_1.bias": ("norm.b", False, None),
        "attn.c_attn.weight": ("qkv.w", True, None),
        "attn.c_attn.bias": ("qkv.b", False, None),
        "attn.c_proj.weight": ("o.w", True, None),
        "attn.c_proj.bias": ("o.b", False, None),
        "ln_2.weight": ("norm.w", False, None),
        "ln_2.bias": ("norm.b", False, None),
        "mlp.c_fc.weight": ("mlp_in.w", True, None),
        "mlp.c_fc.bias": ("mlp_in.b", False, None),
        "mlp.c_proj.weight": ("mlp_out.w", True, None),
        "mlp.c_proj.bias": ("mlp_out.b", False, None),
    }
    global_tensors = {
        "transformer.wte.weight": ("embed", False, None),
        "transformer.wpe.weight": ("pos", False, None),
        "transformer.ln_f.weight": ("final_norm.w", False, None),
        "transformer.ln_f.bias": ("final_norm.b", False, None),
    }
    keys = {"hidden": "n_embd", "mlp": "n_inner", "heads": "n_head", "layers": "n_layer", "vocab": "vocab_size"}

    config_class_name = "GPT2Config"
    #: GPT2Config's defaults (transformers 5) of the keys read here: a config.json may leave them out
    config_defaults = {
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }

    def config_class(self):
        from transformers import GPT2Config

        return GPT2Config

    def check_config(self, cfg: dict[str, Any]) -> None:
        """GPT2Config has no architecture checks of its own: sizes and per-layer lists only."""
        self.check_sizes_and_layer_lists(cfg)

    def sizes(self, cfg: dict[str, Any]) -> Sizes:
        hidden, heads = cfg["n_embd"], cfg["n_head"]
        return Sizes(
            hidden=hidden,
            mlp=cfg.get("n_inner") or 4 * hidden,
            heads=heads,
            kv_heads=heads,
            qk_dim=hidden // heads,
            v_dim=hidden // heads,
            layers=cfg["n_layer"],
            vocab=cfg["vocab_size"],
            tied=bool(cfg.get("tie_word_embeddings", True)),
            positions=cfg["n_positions"],
        )

    def write_sizes(self, cfg: dict[str, Any], before: Sizes, after: Sizes) -> dict[str, Any]:
        cfg = dict(cfg)
        cfg.update(n_embd=after.hidden, n_inner=after.mlp, n_head=after.heads, n_layer=after.layers)
        return cfg

    # ---------------------------------------------------------------- refusals, per step (Adapter.check)
    def check_num_heads(self, stage: Stage) -> None:
        raise ValueError(
            "GPT-2's head size is n_embd / n_head, so heads and head size cannot grow on their own: grow "
            "`hidden_size` by an integer factor instead (cloning multiplies n_head by the same factor)"
        )

    check_head_dim = check_qk_dim = check_value_dim = check_num_heads

    def check_hidden_size(self, stage: Stage) -> None:
        step, before = stage.step, stage.before
        if step.approximate and step.to % before.hidden and step.to % before.heads:
            raise ValueError(
                f"approximate hidden growth keeps {before.heads} heads, so {step.to} must be "
                f"divisible by {before.heads}"
            )

    def check_num_layers(self, stage: Stage) -> None:
        if not stage.cfg_before.get("scale_attn_by_inverse_layer_idx"):
            return
        first_new = next((i for i, (_, mode) in enumerate(stage.layers) if mode.startswith("new")), None)
        if first_new is not None and first_new < stage.before.layers:
            raise ValueError(
                "scale_attn_by_inverse_layer_idx divides layer i's attention scores by i + 1, so inserting "
                "layers below existing ones changes their scale; use `where: top`"
            )
