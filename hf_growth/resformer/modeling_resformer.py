# Copyright 2025 the hf-growth authors. Licensed under the Apache License, Version 2.0.
# Modelled after transformers' modeling_llama.py (Apache-2.0, the HuggingFace team).
"""ResFormer / SVFormer: a Llama-style decoder with value residual learning (Zhou et al., arXiv 2410.17897).

Layer ``n`` in ``config.resolved_value_residual_layers()`` attends with
``V'_n = lambda_first * V_0 + lambda_own * V_n`` (per KV head, after the value projection, before attention);
the mixed value is what attention and the KV cache use. SVFormer layers have no value projection and attend to
``V_0`` itself: their cache layers store keys only (a zero-width value tensor), layer 0's cache layer holds V_0 once.

Self-contained on purpose (imports only torch / transformers and ``.configuration_resformer``) so that
``save_pretrained`` ships it as remote code. Works with transformers 5.17 (cache argument ``past_key_values``)
and 5.24+ (``cache``): ``forward`` accepts both names and outputs use the installed version's field name.

>>> import torch
>>> from hf_growth import ResFormerConfig, ResFormerForCausalLM
>>> config = ResFormerConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
...                          num_attention_heads=4, num_key_value_heads=2, value_residual="learnable")
>>> model = ResFormerForCausalLM(config)
>>> model(torch.tensor([[1, 2, 3]])).logits.shape
torch.Size([1, 3, 128])
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_resformer import ResFormerConfig

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache argument / output field `past_key_values` -> `cache`.
_CACHE_NAME = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def _pick_cache(cache, past_key_values):
    return cache if cache is not None else past_key_values


class ResFormerRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class _QKHeadDimConfigView:
    """Read-only view of a config whose ``head_dim`` is ``qk_head_dim``: RoPE acts on queries and keys only."""

    def __init__(self, config: ResFormerConfig) -> None:
        object.__setattr__(self, "_config", config)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_config":
            raise AttributeError(name)
        if name == "head_dim":
            return self._config.qk_head_dim
        return getattr(self._config, name)


class ResFormerRotaryEmbedding(nn.Module):
    def __init__(self, config: ResFormerConfig) -> None:
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = _QKHeadDimConfigView(config)
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(self.config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim  # qk_head_dim through _QKHeadDimConfigView
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
        if device is not None:
            inv_freq = inv_freq.to(device)
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)
        inv_freq = inv_freq.to(dtype=torch.float, device=x.device)
        position_ids_expanded = position_ids[:, None, :].float()
        device_type = x.device.type if isinstance(x.device.type, str) and x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):  # force fp32
            freqs = (inv_freq.float() @ position_ids_expanded.float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class ResFormerMLP(nn.Module):
    def __init__(self, config: ResFormerConfig) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.gate_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(self.hidden_size, self.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _autocast_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``tensor`` computes in: the autocast dtype where autocast is on, else its own."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def _scale(tensor: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    return tensor if isinstance(factor, float) and factor == 1.0 else tensor * factor


class ValueResidualProjection(torch.autograd.Function):
    """``lambda_first * V_0 + lambda_own * (x @ W.T + b)``: the value projection and the value residual in one step.

    ``V_own = x @ W.T + b`` is never materialised: ``lambda_own`` is folded into the weight (one weight-sized
    multiply) and the product is accumulated onto ``lambda_first * V_0`` by one in-place ``addmm``. The backward
    needs no per-layer activation beyond what its neighbours keep alive anyway: ``x`` (saved by ``q_proj`` /
    ``k_proj`` too) and, for a learnable ``lambda_first`` only, ``V_0`` (one tensor shared by every layer). Its
    gradients, with ``g = dL/dV'``:

    - ``dL/dx = g @ (lambda_own * W)`` and ``dL/dW = lambda_own * (g.T @ x)``: the two matmuls of a plain ``Linear``;
    - ``dL/dlambda_own = sum(g * V_own) = sum(W * (g.T @ x)) + sum(b * g.sum(tokens))``: a weight-sized sum over
      the matmul the weight gradient computes anyway, so ``V_own`` is not kept alive;
    - ``dL/dV_0 = lambda_first * g`` and ``dL/dlambda_first = <g, V_0>``.

    Mathematically equal to the plain formula; numerically equal to float32 round-off (the matmul sees
    ``lambda_own * W`` rather than scaling its result). The lambdas are 1-element tensors (learnable) or floats.
    Inputs: ``hidden`` (..., in), ``v_first`` (..., out) with the same leading shape; returns (..., out).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, v_first, lambda_first, lambda_own):
        dtype = _autocast_dtype(hidden)
        x = hidden.to(dtype).reshape(-1, hidden.shape[-1])
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        first = lambda_first.to(dtype) if isinstance(lambda_first, torch.Tensor) else lambda_first
        own = lambda_own.to(dtype) if isinstance(lambda_own, torch.Tensor) else lambda_own
        v0 = v_first.to(dtype)
        mixed = (v0 * first).contiguous()
        if b is not None:
            mixed.add_(_scale(b, own))
        mixed.view(-1, w.shape[0]).addmm_(x, _scale(w, own).t())
        # V_0 only for lambda_first's gradient: fixed weights keep nothing of V_0 alive
        ctx.save_for_backward(
            x,
            w,
            b,
            v0 if ctx.needs_input_grad[4] else None,
            *(t if isinstance(t, torch.Tensor) else None for t in (first, own)),
        )
        ctx.lambdas = tuple(None if isinstance(t, torch.Tensor) else t for t in (first, own))
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype, v_first.dtype)
        ctx.lambda_dtypes = tuple(t.dtype if isinstance(t, torch.Tensor) else None for t in (lambda_first, lambda_own))
        ctx.hidden_shape = hidden.shape
        return mixed

    @staticmethod
    def backward(ctx, grad_mixed):
        x, w, b, v0, first_t, own_t = ctx.saved_tensors
        first = first_t if first_t is not None else ctx.lambdas[0]
        own = own_t if own_t is not None else ctx.lambdas[1]
        hidden_dtype, weight_dtype, bias_dtype, v_first_dtype = ctx.dtypes
        need_x, need_w, need_b, need_v0, need_first, need_own = ctx.needs_input_grad
        g3 = grad_mixed.to(x.dtype)
        g = g3.reshape(-1, w.shape[0])
        grad_x = grad_w = grad_b = grad_v0 = grad_first = grad_own = None
        if need_x:
            grad_x = (g @ _scale(w, own)).view(ctx.hidden_shape).to(hidden_dtype)
        if need_w or need_own:
            grad_w_unscaled = g.t() @ x
            if need_w:
                grad_w = _scale(grad_w_unscaled, own).to(weight_dtype)
        if b is not None and (need_b or need_own):
            grad_b_unscaled = g.sum(0)
            if need_b:
                grad_b = _scale(grad_b_unscaled, own).to(bias_dtype)
        if need_own:
            acc = torch.promote_types(w.dtype, torch.float32)  # a weight-sized sum: accumulate in float32 at least
            total = (grad_w_unscaled.to(acc) * w.to(acc)).sum()
            if b is not None:
                total = total + (grad_b_unscaled.to(acc) * b.to(acc)).sum()
            grad_own = total.reshape(own_t.shape).to(ctx.lambda_dtypes[1])
        if need_v0:
            grad_v0 = (g3 * first).to(v_first_dtype)
        if need_first:
            grad_first = torch.dot(g3.reshape(-1), v0.reshape(-1)).reshape(first_t.shape).to(ctx.lambda_dtypes[0])
        return grad_x, grad_w, grad_b, grad_v0, grad_first, grad_own


class ResFormerAttention(nn.Module):
    """Grouped-query attention whose values may mix in layer 0's values (value residual learning).

    Roles: layer 0 is the source; a *mixing* layer (in ``value_residual_layers``) attends with
    ``lambda_first * V_0 + lambda_own * V_n``; an SVFormer mixing layer has no ``v_proj`` and attends to V_0.
    Learnable variants hold ``lambda_first`` / ``lambda_own`` (``learnable``) or ``lambda_logit`` / ``lambda_own``
    (``learnable_plus``; lambda_first comes from the model) as 1-element ``nn.Parameter``s.
    A mixing layer computes ``v_proj`` and the mixing as one :class:`ValueResidualProjection` (see
    :meth:`fuses_value_projection`; ``fused_value_residual = False`` selects the plain formula, :meth:`mix_values`).
    """

    def __init__(self, config: ResFormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.qk_head_dim = config.qk_head_dim
        self.v_head_dim = config.v_head_dim
        self.head_dim = config.qk_head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.qk_head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.value_residual = config.value_residual
        self.is_source = layer_idx == 0 and config.value_residual != "none"
        self.mixes = layer_idx in set(config.resolved_value_residual_layers())
        self.shares_value = self.mixes and config.value_residual == "svformer"

        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.qk_head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.qk_head_dim, bias=bias)
        if not self.shares_value:
            self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.v_head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.v_head_dim, config.hidden_size, bias=bias)

        self.lambda_init = config.resolved_value_residual_lambda()
        # False: v_proj as a module, then mix_values (the plain formula); see fuses_value_projection
        self.fused_value_residual = True
        if self.mixes and not self.shares_value:
            first, own = self.lambda_init
            if config.value_residual == "learnable":
                self.lambda_first = nn.Parameter(torch.full((1,), first))
                self.lambda_own = nn.Parameter(torch.full((1,), own))
            elif config.value_residual == "learnable_plus":
                self.lambda_logit = nn.Parameter(torch.zeros(1))
                self.lambda_own = nn.Parameter(torch.full((1,), own))

    def value_residual_lambdas(
        self, lambda_first: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(lambda_first, lambda_own)`` of this mixing layer: parameters (learnable variants) or floats."""
        if self.value_residual == "learnable":
            return self.lambda_first, self.lambda_own
        if self.value_residual == "learnable_plus":
            if lambda_first is None:
                raise ValueError("learnable_plus layers need lambda_first from ResFormerModel.")
            return lambda_first, self.lambda_own
        return self.lambda_init

    def fuses_value_projection(self) -> bool:
        """Whether this mixing layer runs ``v_proj`` and the mixing as one :class:`ValueResidualProjection`.

        Only for a plain ``nn.Linear`` with no hooks and no replaced ``forward``: a LoRA / quantised / hooked
        ``v_proj`` (peft, bitsandbytes, accelerate offloading, DeepSpeed ZeRO-3) is called as a module and its
        output mixed by :meth:`mix_values`, which keeps each layer's own values alive for the lambda gradients.
        """
        if not (self.fused_value_residual and self.mixes and not self.shares_value):
            return False
        v_proj = self.v_proj
        return (
            type(v_proj) is nn.Linear
            and not (v_proj._forward_hooks or v_proj._forward_pre_hooks)
            and not (v_proj._backward_hooks or v_proj._backward_pre_hooks)
            and "forward" not in v_proj.__dict__
            and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
            and not nn.modules.module._global_backward_hooks
        )

    def mix_values(
        self, value_states: torch.Tensor, v_first: torch.Tensor, lambda_first: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``lambda_first * v_first + lambda_own * value_states`` for this layer's variant (the plain formula)."""
        first, own = self.value_residual_lambdas(lambda_first)
        if isinstance(first, torch.Tensor) or isinstance(own, torch.Tensor):
            first = first.to(value_states.dtype) if isinstance(first, torch.Tensor) else first
            own = own.to(value_states.dtype) if isinstance(own, torch.Tensor) else own
            return first * v_first + own * value_states
        # fixed weights: one fused kernel where the weights allow it (this runs in every layer)
        if first + own == 1.0:
            return torch.lerp(value_states, v_first, first)
        if own == 1.0:
            return torch.add(value_states, v_first, alpha=first)
        return first * v_first + own * value_states

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        v_first: torch.Tensor | None = None,
        lambda_first: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.qk_head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.qk_head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        v_out = None
        if self.shares_value:
            if v_first is None:
                raise ValueError("SVFormer layers need layer 0's values (v_first).")
            if cache is not None:
                # keys only: a zero-width value tensor keeps the cache's bookkeeping and costs no memory
                no_values = key_states.new_empty((*key_states.shape[:-1], 0))
                key_states, _ = cache.update(key_states, no_values, self.layer_idx)
            value_states = v_first  # V_0 over the whole attended length (see the source layer below)
        elif self.fuses_value_projection():
            if v_first is None:
                raise ValueError("Mixing layers need layer 0's values (v_first).")
            first, own = self.value_residual_lambdas(lambda_first)
            v_first_flat = v_first.transpose(1, 2).reshape(*input_shape, -1)
            value_states = ValueResidualProjection.apply(
                hidden_states, self.v_proj.weight, self.v_proj.bias, v_first_flat, first, own
            )
            value_states = value_states.view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
            if cache is not None:
                key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
        else:
            value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
            if self.mixes:
                value_states = self.mix_values(value_states, v_first, lambda_first)
            if self.is_source and self.value_residual != "svformer":
                v_out = value_states  # V_0 of the new tokens: later layers mix it in before caching
            if cache is not None:
                key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
            if self.is_source and self.value_residual == "svformer":
                v_out = value_states  # V_0 over past + new tokens: SVFormer layers attend to it directly

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights, v_out


class ResFormerDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: ResFormerConfig, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = ResFormerAttention(config=config, layer_idx=layer_idx)
        self.mlp = ResFormerMLP(config)
        self.input_layernorm = ResFormerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = ResFormerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        v_first: torch.Tensor | None = None,
        lambda_first: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # `v_first` / `lambda_first` are positional so that reentrant gradient checkpointing propagates their grads
        cache = _pick_cache(kwargs.pop("cache", None), kwargs.pop("past_key_values", None))
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _, v_out = self.self_attn(
            hidden_states=hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            v_first=v_first,
            lambda_first=lambda_first,
            cache=cache,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states, v_out


class ResFormerPreTrainedModel(PreTrainedModel):
    config: ResFormerConfig
    config_class = ResFormerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["ResFormerDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": ResFormerDecoderLayer,
        "attentions": ResFormerAttention,
    }

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ResFormerAttention):
            first, own = module.lambda_init
            if getattr(module, "lambda_first", None) is not None:
                init.constant_(module.lambda_first, first)
            if getattr(module, "lambda_logit", None) is not None:
                init.zeros_(module.lambda_logit)
            if getattr(module, "lambda_own", None) is not None:
                init.constant_(module.lambda_own, own)
        elif isinstance(module, ResFormerModel) and getattr(module, "lambda_scale", None) is not None:
            init.constant_(module.lambda_scale, module.lambda_scale_init)


class ResFormerModel(ResFormerPreTrainedModel):
    """The bare ResFormer decoder (embeddings, layers, final norm), returning hidden states and the KV cache.

    ``learnable_plus`` adds ``lambda_scale`` (shared s): layer n's lambda_first = s * softmax(lambda_logit)_n.
    """

    def __init__(self, config: ResFormerConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [ResFormerDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = ResFormerRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = ResFormerRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.mixing_layers = config.resolved_value_residual_layers()
        if config.value_residual == "learnable_plus":
            self.lambda_scale_init = config.resolved_value_residual_lambda()[0] * len(self.mixing_layers)
            self.lambda_scale = nn.Parameter(torch.full((1,), self.lambda_scale_init))
        self.post_init()

    def value_residual_lambda_first(self) -> dict[int, torch.Tensor]:
        """learnable_plus only: ``{layer: s * softmax(logits)[layer]}``; empty for the other variants."""
        if self.config.value_residual != "learnable_plus" or not self.mixing_layers:
            return {}
        logits = torch.cat([self.layers[i].self_attn.lambda_logit for i in self.mixing_layers])
        weights = torch.softmax(logits.float(), dim=0).to(logits.dtype) * self.lambda_scale
        return {layer: weights[j : j + 1] for j, layer in enumerate(self.mixing_layers)}

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        cache = _pick_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, cache, position_ids)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        lambdas_first = self.value_residual_lambda_first()

        v_first = None
        for layer_idx, decoder_layer in enumerate(self.layers[: self.config.num_hidden_layers]):
            hidden_states, v_out = decoder_layer(
                hidden_states,
                v_first,
                lambdas_first.get(layer_idx),
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{_CACHE_NAME: cache},
                **kwargs,
            )
            if layer_idx == 0:
                v_first = v_out
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{_CACHE_NAME: cache})


class ResFormerForCausalLM(ResFormerPreTrainedModel, GenerationMixin):
    """ResFormer with a language-modelling head.

    >>> import torch
    >>> from hf_growth import ResFormerConfig, ResFormerForCausalLM
    >>> model = ResFormerForCausalLM(ResFormerConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=2, num_attention_heads=4, value_residual="svformer"))
    >>> model.generate(torch.tensor([[1, 2]]), max_new_tokens=3, do_sample=False).shape
    torch.Size([1, 5])
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: ResFormerConfig) -> None:
        super().__init__(config)
        self.model = ResFormerModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As ``PreTrainedModel.save_pretrained``; ``auto_map`` also names ``AutoModel`` (the bare decoder)."""
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoModel", "modeling_resformer.ResFormerModel")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = _pick_cache(cache, past_key_values)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{_CACHE_NAME: getattr(outputs, _CACHE_NAME, None)},
        )


def kv_cache_bytes(cache: Cache) -> int:
    """Bytes held by the key and value tensors of a ``DynamicCache`` (SVFormer layers hold keys only)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


ResFormerModel.register_for_auto_class("AutoModel")
ResFormerForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["ResFormerPreTrainedModel", "ResFormerModel", "ResFormerForCausalLM", "kv_cache_bytes"]
