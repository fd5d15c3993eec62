# Copyright 2025 the hf-growth authors. Licensed under the Apache License, Version 2.0.
"""ResFormer / SVFormer configuration (value residual learning, Zhou et al., arXiv 2410.17897).

Self-contained on purpose: this file imports only transformers / huggingface_hub, so that
``save_pretrained`` can ship it as remote code (``trust_remote_code=True``).

>>> from hf_growth import ResFormerConfig
>>> config = ResFormerConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
...                          num_attention_heads=4, num_key_value_heads=2, value_residual="learnable")
>>> config.resolved_value_residual_layers(), config.resolved_value_residual_lambda()
([1, 2], (0.5, 0.5))
"""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

VALUE_RESIDUAL_VARIANTS = ("none", "identity", "constant", "learnable", "learnable_plus", "sparse", "svformer")

# (lambda_first, lambda_own) per variant, papers.md section 2. "learnable" / "learnable_plus": initial values.
# learnable_plus: lambda_first = s * softmax(logits)_n over the mixing layers, logits start at 0 and the shared
# scale s starts at lambda_first * (number of mixing layers), so each layer starts at lambda_first (our choice,
# the paper's initialisation is unsure: s = number of layers).
DEFAULT_VALUE_RESIDUAL_LAMBDA: dict[str, tuple[float, float]] = {
    "none": (0.0, 1.0),
    "identity": (0.5, 0.5),
    "constant": (2.0, 1.0),
    "learnable": (0.5, 0.5),
    "learnable_plus": (1.0, 1.0),
    "sparse": (5.0, 1.0),
    "svformer": (1.0, 0.0),
}


@strict
class ResFormerConfig(PreTrainedConfig):
    r"""Configuration of a ResFormer: a Llama-style decoder whose layers mix layer 0's values into their own.

    Layer ``n`` in ``value_residual_layers`` attends with ``V'_n = lambda_first * V_0 + lambda_own * V_n``
    (per KV head, after the value projection, before attention); that mixed value is also what the KV cache stores.

    Args:
        vocab_size (`int`, defaults to 32000): vocabulary size.
        hidden_size (`int`, defaults to 4096): width of the residual stream.
        intermediate_size (`int`, defaults to 11008): SwiGLU MLP width.
        num_hidden_layers (`int`, defaults to 32): number of decoder layers.
        num_attention_heads (`int`, defaults to 32): query heads.
        num_key_value_heads (`int`, *optional*): key/value heads (GQA); defaults to `num_attention_heads`.
        head_dim (`int`, *optional*): per-head size; defaults to `hidden_size // num_attention_heads`.
        qk_head_dim (`int`, *optional*): per-head query/key size (RoPE acts on it; must be even); defaults to
            `head_dim`.
        v_head_dim (`int`, *optional*): per-head value/output size; defaults to `head_dim`.
        hidden_act (`str`, defaults to "silu"): MLP activation.
        max_position_embeddings (`int`, defaults to 2048): maximum sequence length (RoPE scaling reference).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.
        rms_norm_eps (`float`, defaults to 1e-6): RMSNorm epsilon.
        use_cache (`bool`, defaults to True): return the KV cache.
        pad_token_id / bos_token_id / eos_token_id: special tokens.
        tie_word_embeddings (`bool`, defaults to False): tie the LM head to the input embeddings.
        rope_parameters (`dict`, *optional*): RoPE settings (`rope_type`, `rope_theta`, ...), as in `LlamaConfig`.
        attention_bias (`bool`, defaults to False): biases in q/k/v/o projections.
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        mlp_bias (`bool`, defaults to False): biases in the MLP projections.
        value_residual (`str`, defaults to "identity"): one of "none" (exactly Llama), "identity" (0.5/0.5),
            "constant" (2/1), "learnable" (learnable scalars, init 0.5/0.5), "learnable_plus" (softmax over layers
            times a shared learnable scale, init 1/1), "sparse" (only `value_residual_layers`, 5/1), "svformer"
            (layers use V_0 only: no value projection, the KV cache holds V_0 once).
        value_residual_layers (`list[int]`, *optional*): 0-indexed layers that mix in layer 0's values; `None` means
            all of 1..L-1 ("sparse" requires it). Layer 0 is the source and is never listed.
        value_residual_lambda (`tuple[float, float]`, *optional*): `(lambda_first, lambda_own)`, overriding the
            variant's default (the initial values for the learnable variants).

    >>> config = ResFormerConfig(value_residual="sparse", num_hidden_layers=8, value_residual_layers=[5, 6, 7])
    >>> config.resolved_value_residual_lambda()
    (5.0, 1.0)
    """

    model_type = "resformer"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    qk_head_dim: int | None = None
    v_head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float | None = 0.0
    mlp_bias: bool = False
    value_residual: str = "identity"
    value_residual_layers: list | tuple | None = None
    value_residual_lambda: list | tuple | None = None

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.qk_head_dim is None:
            self.qk_head_dim = self.head_dim
        if self.v_head_dim is None:
            self.v_head_dim = self.head_dim
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.value_residual_layers is not None:
            self.value_residual_layers = sorted(int(i) for i in self.value_residual_layers)
        if self.value_residual_lambda is not None:
            self.value_residual_lambda = [float(x) for x in self.value_residual_lambda]
        self._check_resformer()
        super().__post_init__(**kwargs)

    # -- validation -------------------------------------------------------------------------------------------
    def _check_resformer(self) -> None:
        variant = self.value_residual
        if variant not in VALUE_RESIDUAL_VARIANTS:
            raise ValueError(
                f"Unknown value_residual {variant!r}: expected one of {', '.join(VALUE_RESIDUAL_VARIANTS)}."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        if self.qk_head_dim % 2 != 0:
            raise ValueError(
                f"qk_head_dim ({self.qk_head_dim}) must be even: RoPE rotates pairs of query/key dimensions."
            )
        layers = self.value_residual_layers
        if variant == "sparse" and not layers:
            raise ValueError("value_residual='sparse' needs value_residual_layers, e.g. [5, 6, 7] for 8 layers.")
        if variant == "none" and layers:
            raise ValueError("value_residual_layers has no effect with value_residual='none'; leave it None.")
        if layers is not None:
            for index in layers:
                if index == 0:
                    raise ValueError(
                        "value_residual_layers must not contain 0: layer 0 is the source of the values it mixes in."
                    )
                if not 0 < index < self.num_hidden_layers:
                    raise ValueError(
                        f"value_residual_layers index {index} is out of range: it must lie in "
                        f"1..{self.num_hidden_layers - 1} (num_hidden_layers={self.num_hidden_layers})."
                    )
            if len(set(layers)) != len(layers):
                raise ValueError(f"value_residual_layers has duplicates: {layers}.")
        lam = self.value_residual_lambda
        if lam is not None:
            if len(lam) != 2:
                raise ValueError(f"value_residual_lambda must be (lambda_first, lambda_own), got {lam}.")
            if variant in ("none", "svformer"):
                raise ValueError(
                    f"value_residual_lambda cannot be set with value_residual={variant!r}: "
                    f"{variant} fixes (lambda_first, lambda_own)."
                )

    def validate_architecture(self):
        """Part of `@strict`-powered validation (also run by `save_pretrained`)."""
        super().validate_architecture()
        self._check_resformer()

    # -- resolved settings ------------------------------------------------------------------------------------
    def resolved_value_residual_layers(self) -> list[int]:
        """The 0-indexed layers that mix in layer 0's values (empty for "none")."""
        if self.value_residual == "none":
            return []
        if self.value_residual_layers is not None:
            return list(self.value_residual_layers)
        return list(range(1, self.num_hidden_layers))

    def resolved_value_residual_lambda(self) -> tuple[float, float]:
        """`(lambda_first, lambda_own)`: fixed values, or initial values for the learnable variants."""
        if self.value_residual_lambda is not None:
            first, own = self.value_residual_lambda
            return float(first), float(own)
        return DEFAULT_VALUE_RESIDUAL_LAMBDA[self.value_residual]


# save_pretrained writes `auto_map` and copies this file for configs with `_auto_class` set (what
# `register_for_auto_class("AutoConfig")` does, without importing transformers.models.auto here)
ResFormerConfig._auto_class = "AutoConfig"

__all__ = ["ResFormerConfig"]
