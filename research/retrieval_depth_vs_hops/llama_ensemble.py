"""Train many small Llama models of one shape at once: one module whose weights carry a leading *member* axis.

Sweeps of tiny models (the retrieval sweep: depth x hop count x curriculum x seed) are bound by kernel launches and the
Trainer's per-step host work, not by arithmetic: a width-128 Llama step is a few milliseconds of GPU work and
~30 ms of everything else. :class:`LlamaEnsemble` stacks ``M`` models into batched matrix products, so one step
trains all of them for the launch cost of one. Members may have different depths (``depths``): a member of depth
``L`` skips layers ``L..`` exactly (their residual updates are multiplied by a zero gate, so they get no gradient).

It is exact, not an approximation of the models it holds: :meth:`LlamaEnsemble.from_models` stacks
``LlamaForCausalLM`` instances (so members start from transformers' own initialisation), member ``m``'s logits equal
``models[m]``'s (to float32 round-off; truncated to its depth), and :meth:`LlamaEnsemble.to_models` gives every
member back as a ``LlamaForCausalLM`` of its own depth that loads, saves and analyses like any other.

Training helpers treat members independently: :func:`member_losses` (one mean cross-entropy per member; their sum
gives each member its own gradient), :func:`clip_grad_norm_per_member`, and :class:`MemberAdamW` (AdamW with one
learning-rate factor per member; factor 0 freezes a member exactly, moments included).

>>> import torch
>>> from transformers import LlamaConfig
>>> from llama_ensemble import LlamaEnsemble
>>> config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
...                      num_attention_heads=4, num_key_value_heads=2)
>>> ens = LlamaEnsemble.from_config(config, seeds=[0, 1, 2], depths=[1, 2, 3])
>>> ens(torch.randint(0, 32, (3, 5, 7))).shape      # (members, batch, positions, vocab)
torch.Size([3, 5, 7, 32])
>>> [m.config.num_hidden_layers for m in ens.to_models()]
[1, 2, 3]
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LlamaEnsemble", "MemberAdamW", "clip_grad_norm_per_member", "member_losses"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' ``LlamaRMSNorm``: float32 statistics, back to the input dtype, then the gain. ``weight``
    ``(M, d)``, ``x`` ``(M, N, d)``."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight[:, None, :] * h.to(dtype)


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` ``(M, N, in)`` times ``weight`` ``(M, out, in)`` (transformers' layout) -> ``(M, N, out)``."""
    return torch.bmm(x, weight.transpose(1, 2))


class _Layer(nn.Module):
    """One decoder layer of every member: q/k/v fused as ``qkv`` and gate/up as ``gate_up`` (rows in that order)."""

    def __init__(self, members: int, hidden: int, q_rows: int, kv_rows: int, mlp: int) -> None:
        super().__init__()
        self.input_norm = nn.Parameter(torch.ones(members, hidden))
        self.qkv = nn.Parameter(torch.empty(members, q_rows + 2 * kv_rows, hidden))
        self.o = nn.Parameter(torch.empty(members, hidden, q_rows))
        self.post_norm = nn.Parameter(torch.ones(members, hidden))
        self.gate_up = nn.Parameter(torch.empty(members, 2 * mlp, hidden))
        self.down = nn.Parameter(torch.empty(members, hidden, mlp))


_MODEL_METADATA = ("_name_or_path", "growth_history")  # per model, not part of its shape: from_models ignores them


class LlamaEnsemble(nn.Module):
    """``M`` Llama causal LMs of one shape (``config``) as one module; member ``m`` uses ``depths[m]`` layers.

    Supported: transformers' ``LlamaConfig`` with SiLU gated MLP, no biases, no attention dropout, grouped-query
    attention, default RoPE, tied or untied embeddings. Anything else raises ``ValueError`` (it would not be the same model).
    """

    def __init__(
        self, config, num_members: int, depths: Sequence[int] | None = None, inv_freq: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        _check_supported(config)
        self.config = copy.deepcopy(config)
        c = self.config
        self.num_members = int(num_members)
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.num_heads, self.num_kv_heads = c.num_attention_heads, c.num_key_value_heads
        depths = [c.num_hidden_layers] * self.num_members if depths is None else [int(d) for d in depths]
        if len(depths) != self.num_members or not all(1 <= d <= c.num_hidden_layers for d in depths):
            raise ValueError(f"depths must be {self.num_members} numbers in 1..{c.num_hidden_layers}, got {depths}")
        self.depths = depths
        gates = torch.tensor([[float(layer < d) for layer in range(c.num_hidden_layers)] for d in depths])
        self.register_buffer("gates", gates, persistent=False)  # (M, L): 1 = the member uses the layer
        if inv_freq is None:
            inv_freq = 1.0 / (_rope_theta(c) ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim))
        self.register_buffer("inv_freq", inv_freq.float().clone(), persistent=False)
        m, d = self.num_members, c.hidden_size
        self.embed = nn.Parameter(torch.empty(m, c.vocab_size, d))
        self.layers = nn.ModuleList(
            _Layer(m, d, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, c.intermediate_size)
            for _ in range(c.num_hidden_layers)
        )
        self.norm = nn.Parameter(torch.ones(m, d))
        self.lm_head = None if c.tie_word_embeddings else nn.Parameter(torch.empty(m, c.vocab_size, d))

    # ------------------------------------------------------------------------------------------ conversion
    @classmethod
    def from_models(cls, models: Sequence[nn.Module], depths: Sequence[int] | None = None) -> LlamaEnsemble:
        """Stack ``LlamaForCausalLM`` models of one config (copies; the models are untouched). Per-model metadata
        (``_name_or_path``, a grown model's ``growth_history``) may differ and is not kept."""
        if not models:
            raise ValueError("from_models needs at least one model")

        def shape_of(config) -> dict:
            return {k: v for k, v in config.to_dict().items() if k not in _MODEL_METADATA}

        config = copy.deepcopy(models[0].config)
        for i, model in enumerate(models):
            if shape_of(model.config) != shape_of(config):
                raise ValueError(f"model {i} has another config than model 0: members must share one shape")
        if hasattr(config, "growth_history"):
            del config.growth_history  # one per source model, not the ensemble's
        rotary = getattr(models[0].model, "rotary_emb", None)
        if rotary is not None and float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
            raise ValueError("RoPE with attention scaling is not supported (default RoPE only)")
        inv_freq = rotary.inv_freq.detach().cpu() if rotary is not None else None
        ens = cls(config, len(models), depths, inv_freq=inv_freq)
        states = [{k: v.detach() for k, v in model.state_dict().items()} for model in models]
        with torch.no_grad():
            for name, target in ens.hf_state().items():
                target.copy_(torch.stack([_hf_tensor(s, name) for s in states]).to(target.dtype))
        return ens.to(next(models[0].parameters()).device)

    @classmethod
    def from_config(cls, config, seeds: Sequence[int], depths: Sequence[int] | None = None) -> LlamaEnsemble:
        """Members initialised exactly as ``LlamaForCausalLM(config)`` after ``torch.manual_seed(seed)``, one per seed."""
        from transformers import LlamaForCausalLM

        models = []
        for seed in seeds:
            torch.manual_seed(int(seed))
            models.append(LlamaForCausalLM(config))
        return cls.from_models(models, depths)

    def to_models(self, members: Sequence[int] | None = None) -> list[nn.Module]:
        """Members as ``LlamaForCausalLM`` models of their own depth (float32 copies, on the ensemble's device)."""
        from transformers import LlamaForCausalLM

        out = []
        for m in range(self.num_members) if members is None else members:
            config = copy.deepcopy(self.config)
            config.num_hidden_layers = self.depths[m]
            if hasattr(config, "layer_types") and config.layer_types is not None:
                config.layer_types = list(config.layer_types)[: self.depths[m]]
            model = LlamaForCausalLM(config).to(self.embed.device)
            state = {}
            for name, source in self.hf_state(members=[m]).items():
                layer = _layer_of(name)
                if layer is None or layer < self.depths[m]:
                    state[name] = source[0].detach().float().clone()
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
            if missing or unexpected:  # pragma: no cover - a bug in hf_state
                raise RuntimeError(f"member {m}: missing {missing}, unexpected {unexpected}")
            out.append(model.eval())
        return out

    def hf_state(self, members: Sequence[int] | None = None, grad: bool = False) -> dict[str, torch.Tensor]:
        """transformers' state-dict names (``LlamaForCausalLM`` of full depth) -> views ``(M, ...)`` of the stacked
        weights, or of their gradients with ``grad=True`` (``None`` before a backward); ``members`` picks rows."""
        if grad:
            if any(p.grad is None for p in self.parameters()):
                raise ValueError("no gradients yet: run a backward first")
            return self._views(members, lambda p: p.grad)
        return self._views(members, lambda p: p)

    def _views(self, members, of) -> dict[str, torch.Tensor]:
        sel = slice(None) if members is None else list(members)
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        f = self.config.intermediate_size
        out = {"model.embed_tokens.weight": of(self.embed)[sel], "model.norm.weight": of(self.norm)[sel]}
        if self.lm_head is not None:
            out["lm_head.weight"] = of(self.lm_head)[sel]
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            qkv, gate_up = of(layer.qkv)[sel], of(layer.gate_up)[sel]
            out |= {
                p + "input_layernorm.weight": of(layer.input_norm)[sel],
                p + "self_attn.q_proj.weight": qkv[:, :q],
                p + "self_attn.k_proj.weight": qkv[:, q : q + kv],
                p + "self_attn.v_proj.weight": qkv[:, q + kv :],
                p + "self_attn.o_proj.weight": of(layer.o)[sel],
                p + "post_attention_layernorm.weight": of(layer.post_norm)[sel],
                p + "mlp.gate_proj.weight": gate_up[:, :f],
                p + "mlp.up_proj.weight": gate_up[:, f:],
                p + "mlp.down_proj.weight": of(layer.down)[sel],
            }
        return out

    def select_(self, keep: Sequence[int] | torch.Tensor) -> dict[nn.Parameter, nn.Parameter]:
        """Keep only the members ``keep`` (in that order), in place. Every parameter is replaced by a new one (autograd
        ties a parameter to its shape); returns ``{old: new}`` for :meth:`MemberAdamW.select_`."""
        idx = torch.as_tensor(list(keep) if not isinstance(keep, torch.Tensor) else keep, dtype=torch.long)
        replaced = {}
        for module in self.modules():
            for name, old in list(module._parameters.items()):
                if old is not None:
                    new = nn.Parameter(old.detach()[idx.to(old.device)].clone(), requires_grad=old.requires_grad)
                    module._parameters[name] = replaced[old] = new
        self.gates = self.gates[idx.to(self.gates.device)]
        self.depths = [self.depths[i] for i in idx.tolist()]
        self.num_members = len(self.depths)
        return replaced

    # --------------------------------------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, output_attentions: bool = False):
        """Logits ``(M, B, T, V)`` for ``input_ids`` ``(M, B, T)`` (causal, no padding).

        ``positions``: ``(P,)`` sequence positions whose logits to compute (default all; e.g. the one position that
        predicts a one-token answer, which skips the LM head elsewhere) -> ``(M, B, P, V)``.
        ``output_attentions``: also return the attention probabilities, one ``(M, B, H, T, T)`` per layer (explicit
        softmax instead of the fused kernel; for probes)."""
        c = self.config
        m, b, t = input_ids.shape
        if m != self.num_members:
            raise ValueError(f"input_ids has {m} members on its first axis, the ensemble {self.num_members}")
        d, hd, nh, nkv = c.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads
        offsets = torch.arange(m, device=input_ids.device)[:, None] * self.embed.shape[1]
        # one embedding lookup over all members' tables (its backward sorts; a gather's scatter-add would contend)
        x = F.embedding(input_ids.reshape(m, b * t) + offsets, self.embed.reshape(-1, d))  # (M, B*T, d)
        freqs = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        attentions = []
        q_rows, kv_rows = nh * hd, nkv * hd
        for i, layer in enumerate(self.layers):
            gate = self.gates[:, i].to(x.dtype)[:, None, None]
            h = _rms_norm(x, layer.input_norm, c.rms_norm_eps)
            qkv = _linear(h, layer.qkv)
            q = qkv[..., :q_rows].reshape(m * b, t, nh, hd).transpose(1, 2)
            k = qkv[..., q_rows : q_rows + kv_rows].reshape(m * b, t, nkv, hd).transpose(1, 2)
            v = qkv[..., q_rows + kv_rows :].reshape(m * b, t, nkv, hd).transpose(1, 2)
            cs, sn = cos.to(q.dtype), sin.to(q.dtype)
            q, k = q * cs + _rotate_half(q) * sn, k * cs + _rotate_half(k) * sn
            if nkv != nh:
                k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
            if output_attentions:
                scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
                causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
                probs = scores.masked_fill(~causal, float("-inf")).softmax(-1, dtype=torch.float32).to(q.dtype)
                attentions.append(probs.reshape(m, b, nh, t, t))
                a = probs @ v
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            a = a.transpose(1, 2).reshape(m, b * t, q_rows)
            x = x + gate * _linear(a, layer.o)
            h = _rms_norm(x, layer.post_norm, c.rms_norm_eps)
            g, u = _linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + gate * _linear(F.silu(g) * u, layer.down)
        x = x.reshape(m, b, t, d)
        if positions is not None:
            x = x[:, :, positions]
        p = x.shape[2]
        x = _rms_norm(x.reshape(m, b * p, d), self.norm, c.rms_norm_eps)
        head = self.embed if self.lm_head is None else self.lm_head
        logits = _linear(x, head).reshape(m, b, p, -1)
        return (logits, attentions) if output_attentions else logits


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _check_supported(config) -> None:
    why = []
    if getattr(config, "model_type", None) != "llama":
        why.append(f"model_type {getattr(config, 'model_type', None)!r} (only 'llama')")
    if getattr(config, "hidden_act", "silu") != "silu":
        why.append(f"hidden_act {config.hidden_act!r} (only 'silu')")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        why.append("biases")
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if params.get("rope_type", params.get("type", "default")) != "default":
        why.append(f"rope_type {params.get('rope_type', params.get('type'))!r} (only 'default')")
    if float(getattr(config, "attention_dropout", 0.0) or 0.0) != 0.0:
        why.append(f"attention_dropout {config.attention_dropout} (only 0)")
    if config.num_attention_heads % config.num_key_value_heads:
        why.append("num_attention_heads not a multiple of num_key_value_heads")
    if why:
        raise ValueError("LlamaEnsemble stacks plain Llama models only; unsupported: " + "; ".join(why))


def _hf_tensor(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name == "lm_head.weight" and name not in state:
        return state["model.embed_tokens.weight"]
    return state[name]


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


# ------------------------------------------------------------------------------------------------ training
def member_losses(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy per member, ``(M,)``, for ``logits`` ``(M, B, P, V)`` and ``labels`` ``(M, B, P)`` (already
    aligned: ``labels[..., p]`` is the target of ``logits[..., p, :]``). Computed in float32."""
    m = logits.shape[0]
    flat = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).reshape(m, -1)
    counts = (labels.reshape(m, -1) != ignore_index).sum(1).clamp_min(1)
    return flat.sum(1) / counts


def _clip_per_member_(grads: list[torch.Tensor], max_norm: float, eps: float) -> torch.Tensor:
    squares = torch.stack([g.float().pow(2).reshape(g.shape[0], -1).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    scale = (max_norm / (norms + eps)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1))))
    return norms


@functools.cache
def _compiled_fn(fn):
    """``torch.compile(fn)``, made once per process (Inductor fuses the per-parameter loops into a few kernels)."""
    return torch.compile(fn, dynamic=None)


@torch.no_grad()
def clip_grad_norm_per_member(parameters, max_norm: float, eps: float = 1e-6, compile: bool = False) -> torch.Tensor:
    """Clip each member's gradient (its slice ``[m]`` of every parameter) to total norm ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one model. Returns the norms before clipping, ``(M,)``.
    ``compile``: run it through ``torch.compile`` (the same arithmetic in a few fused kernels instead of ~4 per
    parameter; on a GPU the eager loop's kernel launches, not its arithmetic, are what costs)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        raise ValueError("no gradients to clip")
    clip = _compiled_fn(_clip_per_member_) if compile else _clip_per_member_
    return clip(grads, float(max_norm), float(eps))


def _member_adamw_(
    params, grads, exp_avgs, exp_avg_sqs, steps, factor, lr, beta1: float, beta2: float, eps: float, weight_decay: float
) -> None:
    """One AdamW update of every parameter, member ``m`` (first axis) at learning rate ``lr * factor[m]``; ``lr`` a
    0-d tensor (a float would be baked into a compiled graph)."""
    active = (factor > 0).float()
    for p, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        shape = (-1, *([1] * (p.dim() - 1)))
        on = active.reshape(shape)
        step += active
        g = grad.float()
        exp_avg.lerp_(g, ((1 - beta1) * on).to(exp_avg.dtype))
        exp_avg_sq.mul_(1 - (1 - beta2) * on).add_(g * g * ((1 - beta2) * on))
        count = step.clamp_min(1).reshape(shape)
        bias1, bias2 = 1 - beta1**count, 1 - beta2**count
        member_lr = lr * factor.reshape(shape)
        p.mul_(1 - member_lr * weight_decay)
        denom = (exp_avg_sq / bias2).sqrt().add(eps)
        p.sub_(member_lr * (exp_avg / bias1) / denom)


class MemberAdamW(torch.optim.Optimizer):
    """AdamW (``torch.optim.AdamW``'s update, decoupled weight decay) whose learning rate is ``lr * factor[m]`` for
    member ``m`` (first axis of every parameter). ``factor`` is a ``(M,)`` tensor you may change between steps; a
    member with factor 0 is frozen exactly (its weights and moments stay as they are). ``compile``: the update of
    all parameters through ``torch.compile`` (a few fused kernels instead of ~15 per parameter; same arithmetic to
    float32 round-off)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        factor: torch.Tensor | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        first = self.param_groups[0]["params"][0]
        self.factor = torch.ones(first.shape[0], device=first.device) if factor is None else factor.to(first.device)
        self.compile = compile
        self._lr = torch.zeros((), device=first.device)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - AdamW's contract
        loss = closure() if closure is not None else None
        update = _compiled_fn(_member_adamw_) if self.compile else _member_adamw_
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(p.shape[0], device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if not params:
                continue
            states = [self.state[p] for p in params]
            self._lr.fill_(group["lr"])  # a kernel, not a host sync
            beta1, beta2 = group["betas"]
            update(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
                self.factor,
                self._lr,
                float(beta1),
                float(beta2),
                float(group["eps"]),
                float(group["weight_decay"]),
            )
        return loss

    @torch.no_grad()
    def snapshot(self) -> list[dict[str, torch.Tensor]]:
        """A copy of every parameter (all members) and of its AdamW state, for :meth:`restore_`."""
        return [
            {"param": p.detach().clone(), **{k: v.clone() for k, v in self.state[p].items()}}
            for group in self.param_groups
            for p in group["params"]
        ]

    @torch.no_grad()
    def restore_(self, snapshot: list[dict[str, torch.Tensor]], members: Sequence[int]) -> None:
        """Put ``members`` (first axis) back to ``snapshot``: their weights, moments and step counts (zero where the
        snapshot predates the first step); the other members are left as they are. E.g. undo a loss spike of one
        member of an ensemble without touching the rest. Take a new snapshot after :meth:`select_`."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(params) != len(snapshot) or any(s["param"].shape != p.shape for s, p in zip(snapshot, params)):
            raise ValueError("the snapshot was taken for other parameters or members (take one after select_)")
        idx = torch.as_tensor(list(members), dtype=torch.long, device=params[0].device)
        for p, saved in zip(params, snapshot):
            p[idx] = saved["param"][idx]
            for key, value in self.state[p].items():
                value[idx] = saved[key][idx] if key in saved else 0

    def select_(self, keep: Sequence[int] | torch.Tensor, replaced: dict | None = None) -> None:
        """Keep the state of members ``keep`` only; ``replaced``: ``{old: new}`` parameters, as
        :meth:`LlamaEnsemble.select_` returns them."""
        idx = torch.as_tensor(list(keep) if not isinstance(keep, torch.Tensor) else keep, dtype=torch.long)
        replaced = replaced or {}
        self.factor = self.factor[idx.to(self.factor.device)]
        for group in self.param_groups:
            group["params"] = [replaced.get(p, p) for p in group["params"]]
        state = {replaced.get(p, p): {k: v[idx.to(v.device)] for k, v in s.items()} for p, s in self.state.items()}
        self.state.clear()
        self.state.update(state)
