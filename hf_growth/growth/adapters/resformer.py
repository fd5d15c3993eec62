"""ResFormer (hf_growth.resformer): a Llama with separate ``qk_head_dim`` / ``v_head_dim`` and value residual
learning (layer n attends with ``lambda_first * V_0 + lambda_own * V_n``).

What growth must respect: layer 0 is the value source (nothing is ever inserted before it, and stacking never
copies it); SVFormer mixing layers have no ``v_proj``; new layers get their variant's initial lambdas. For
``learnable_plus`` (a softmax over the mixing layers) new layers do not mix, so the old layers' weights are kept;
for ``sparse`` new layers do not mix either; otherwise new layers mix like every layer >= 1.

>>> from hf_growth.growth.adapters.resformer import ResFormerAdapter
>>> ResFormerAdapter().role("model.layers.2.self_attn.lambda_own").role
'lambda'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Sizes
from .llama import LlamaAdapter

if TYPE_CHECKING:
    import torch

    from ..steps import Stage

_LAMBDA = ("self_attn.lambda_first", "self_attn.lambda_own", "self_attn.lambda_logit")


class ResFormerAdapter(LlamaAdapter):
    name = "resformer"
    model_types = ("resformer",)
    separate_qk_v = True
    layer_tensors = {
        **LlamaAdapter.layer_tensors,
        "self_attn.lambda_first": ("lambda", False, None),
        "self_attn.lambda_own": ("lambda", False, None),
        "self_attn.lambda_logit": ("lambda", False, None),
    }
    global_tensors = {
        "model.embed_tokens.weight": ("embed", False, None),
        "model.lambda_scale": ("global_lambda", False, None),
        "model.norm.weight": ("final_norm.w", False, None),
    }

    config_class_name = "ResFormerConfig"
    config_defaults = {**LlamaAdapter.config_defaults, "value_residual": "identity"}

    def config_class(self):
        from hf_growth.resformer.configuration_resformer import ResFormerConfig

        return ResFormerConfig

    def check_config(self, cfg: dict[str, Any]) -> None:
        """ResFormerConfig checks the value residual's settings in many ways: validate with the class itself."""
        self._validate_with_config_class(cfg)

    def sizes(self, cfg: dict[str, Any]) -> Sizes:
        base = super().sizes(cfg)
        qk = cfg.get("qk_head_dim") or base.qk_dim
        v = cfg.get("v_head_dim") or base.v_dim
        return base.with_(qk_dim=qk, v_dim=v)

    def write_sizes(self, cfg: dict[str, Any], before: Sizes, after: Sizes) -> dict[str, Any]:
        cfg = super().write_sizes(cfg, before, after)
        cfg["qk_head_dim"], cfg["v_head_dim"] = after.qk_dim, after.v_dim
        return cfg

    @staticmethod
    def mixing_layers(cfg: dict[str, Any]) -> set[int]:
        variant = cfg.get("value_residual", "identity")
        if variant == "none":
            return set()
        layers = cfg.get("value_residual_layers")
        return set(layers) if layers is not None else set(range(1, cfg["num_hidden_layers"]))

    def tensor_names(self, cfg: dict[str, Any]) -> list[str]:
        names = super().tensor_names(cfg)
        if cfg.get("value_residual") != "learnable_plus":
            names = [n for n in names if n != "model.lambda_scale"]
        return names

    def layer_has(self, layer: int, suffix: str, cfg: dict[str, Any]) -> bool:
        variant = cfg.get("value_residual", "identity")
        mixes = layer in self.mixing_layers(cfg)
        if suffix == "self_attn.v_proj.weight" or suffix == "self_attn.v_proj.bias":
            return not (mixes and variant == "svformer")
        if suffix == "self_attn.lambda_first":
            return mixes and variant == "learnable"
        if suffix == "self_attn.lambda_logit":
            return mixes and variant == "learnable_plus"
        if suffix == "self_attn.lambda_own":
            return mixes and variant in ("learnable", "learnable_plus")
        return True

    def canonical_shape(self, role: str, s: Sizes) -> tuple[int, ...]:
        if role in ("lambda", "global_lambda"):
            return (1,)
        return super().canonical_shape(role, s)

    def new_layer_tensor(self, role: str, name: str, layer: int, cfg: dict[str, Any]) -> torch.Tensor | None:
        if role != "lambda":
            return None
        import torch

        from hf_growth.resformer.configuration_resformer import DEFAULT_VALUE_RESIDUAL_LAMBDA

        lam = cfg.get("value_residual_lambda")
        first, own = lam if lam is not None else DEFAULT_VALUE_RESIDUAL_LAMBDA[cfg["value_residual"]]
        if name.endswith("lambda_first"):
            return torch.full((1,), float(first))
        if name.endswith("lambda_own"):
            return torch.full((1,), float(own))
        return torch.zeros(1)  # lambda_logit (never reached: new learnable_plus layers do not mix)

    # ---------------------------------------------------------------- refusals, per step (Adapter.check)
    def check_stack(self, stage: Stage) -> None:
        if stage.cfg_before.get("value_residual", "identity") != "none" and any(
            0 in copy["layers"] for copy in stage.record["copied_blocks"]
        ):
            raise ValueError(
                "stacking would copy layer 0, the value source of the value residual; use a "
                "smaller block_size or where: middle"
            )

    def check_num_layers(self, stage: Stage) -> None:
        if stage.layers and stage.layers[0][1].startswith("new"):
            raise ValueError(
                "a new layer cannot go before layer 0: layer 0 is the source of the values every "
                "other layer mixes in; start `where` at 1"
            )

    def remap_layer_config(
        self, cfg: dict[str, Any], sources: list[int], modes: list[str] | None = None
    ) -> dict[str, Any]:
        cfg = super().remap_layer_config(cfg, sources)
        variant = cfg.get("value_residual", "identity")
        if variant == "none":
            return cfg
        modes = modes or ["keep"] * len(sources)
        old_mixing = self.mixing_layers(cfg)
        explicit = cfg.get("value_residual_layers") is not None or variant == "learnable_plus"
        if not explicit:
            return cfg  # every layer >= 1 mixes, the new ones too
        cfg["value_residual_layers"] = [
            i
            for i, (j, mode) in enumerate(zip(sources, modes))
            if not mode.startswith("new") and j in old_mixing and i > 0
        ]
        return cfg
