"""``hidden_size``: the residual width.

RMSNorm models are zero-padded: new embedding columns and new rows of every output projection are zero, new
input columns are seeded free values, and the RMSNorm gains and epsilon are rescaled so that the norm of the
padded hidden state is unchanged (exact). LayerNorm subtracts the mean, so LayerNorm models (GPT-2) grow exactly
only by an integer factor, by cloning (HyperCloning): every hidden unit (and head) is repeated, input weights are
divided by the factor, with symmetry-breaking ``noise`` that sums to zero over the copies. ``approximate: true``
zero-pads a LayerNorm model anyway (the error is measured).

>>> HiddenSizeStep(to=1152).params()
{'hidden_size': {'to': 1152}}
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..._lazy import lazy_module
from .. import ops
from .base import GrowthStep, Stage
from .head_dim import grow_head

if TYPE_CHECKING:
    import torch

    from ..free_values import RoleContext
else:
    torch = lazy_module("torch", globals())


class HiddenSizeStep(GrowthStep):
    """``hidden_size``: the residual width. ``noise``: std of the symmetry-breaking noise of integer cloning
    (LayerNorm models; default ``initializer_range``, 0 disables)."""

    kind: Literal["hidden_size"] = "hidden_size"
    noise: float | None = Field(default=None, ge=0)

    def resize(self, stage: Stage) -> None:
        before, adapter = stage.before, stage.adapter
        self.no_shrink(before.hidden, self.to, "hidden size")
        after = before.with_(hidden=self.to)
        if adapter.norm == "layer":
            if self.to % before.hidden:
                if not self.approximate:
                    raise ValueError(
                        f"LayerNorm subtracts the mean, so zero-padding {before.hidden} -> {self.to} is not "
                        f"exact; {adapter.name} grows exactly only by integer cloning (HyperCloning): use a "
                        f"multiple of {before.hidden} (e.g. {2 * before.hidden}), or set `approximate: true`"
                    )
                stage.record["zero_pad"] = True
                if before.qk_dim * before.heads == before.hidden and self.to % before.heads == 0:
                    # head size is hidden / heads (GPT-2): it grows with the hidden size
                    after = after.with_(qk_dim=self.to // before.heads, v_dim=self.to // before.heads)
            else:
                m = self.to // before.hidden
                after = after.with_(heads=before.heads * m, kv_heads=before.kv_heads * m)
        stage.after = after
        if self.noise is None and adapter.norm == "layer":
            stage.step = self.model_copy(update={"noise": stage.std})

    def transform(self, role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
        return grow_hidden(role, t, c)

    def row_local(self, role: str, stage: Stage) -> bool:
        """HyperCloning's ``lm_head`` mixes columns with noise drawn for the whole tensor: not row-local."""
        cloning = stage.adapter.norm == "layer" and not stage.record.get("zero_pad")
        return not (cloning and role == "lm_head")


_HIDDEN_IN = ("q.w", "k.w", "v.w", "mlp_in.w", "lm_head")  # hidden is their input (columns)
_HIDDEN_OUT_W = ("o.w", "mlp_out.w")  # hidden is their output (rows)
_HIDDEN_VEC = ("o.b", "mlp_out.b", "norm.w", "norm.b", "final_norm.w", "final_norm.b")


def _hidden_zero_pad(role: str, t: torch.Tensor, c: RoleContext):
    h, new = c.before.hidden, c.after.hidden
    adapter = c.stage.adapter
    lead = ops.leading(h)
    if role in ("embed", "pos"):
        if role == "embed" and adapter.embed_scaled_by_sqrt_hidden:
            # the model multiplies the embedding by sqrt(hidden): by sqrt(h/h') here, the first state is unchanged
            t = t.float() if c.meta else t.float() * math.sqrt(h / new)
        return c.placed(t, (t.shape[0], new), [None, lead]), [None, lead]
    if role in _HIDDEN_IN:  # only the new columns are drawn, straight into the output
        t = _qk_norm_compensated(role, t, c)
        out = c.empty((t.shape[0], new))
        c.free((t.shape[0], new - h), out=out[:, h:], alongside=lambda: out[:, :h].copy_(t))
        return out, [None, lead]
    if role in ("q.b", "k.b") and adapter.qk_norm:
        return _qk_norm_compensated(role, t, c), None
    if role in _HIDDEN_OUT_W:
        return c.placed(t, (new, t.shape[1]), [lead, None]), [lead, None]
    if role in ("norm.w", "final_norm.w"):
        if adapter.norm == "rms":
            # a tied unembedding is the embedding, scaled by sqrt(h/h') above: the last norm keeps its gains
            # (its output grows by sqrt(h'/h) in the old entries, which makes up for it)
            keep = role == "final_norm.w" and c.before.tied and adapter.embed_scaled_by_sqrt_hidden
            return ops.rms_gain_rescale(t, h, new, offset=adapter.norm_weight_offset, scale=1.0 if keep else None), [
                lead
            ]
        return c.placed(t, (new,), [lead], 1.0), [lead]  # LayerNorm, approximate
    if role in _HIDDEN_VEC:
        return c.placed(t, (new,), [lead]), [lead]
    return None


def _qk_norm_compensated(role: str, t: torch.Tensor, c: RoleContext) -> torch.Tensor:
    """Queries and keys under per-head RMSNorms that share the rescaled epsilon (``adapter.qk_norm``): scaled by
    sqrt(h/h'), since RMSNorm(a q; a^2 eps) = RMSNorm(q; eps) and eps' = eps h/h'. Other roles as they are."""
    if not c.stage.adapter.qk_norm or role not in ("q.w", "k.w", "q.b", "k.b"):
        return t
    return t.float() if c.meta else t.float() * math.sqrt(c.before.hidden / c.after.hidden)


def _hidden_clone(role: str, t: torch.Tensor, c: RoleContext):
    h, new = c.before.hidden, c.after.hidden
    m = new // h
    std = c.step.noise

    def noise(out_copies: int, in_copies: int, shape: tuple[int, ...]) -> torch.Tensor | None:
        if in_copies < 2 or std == 0:
            return None
        return c.free((out_copies, in_copies - 1, *shape), tag=f"noise{out_copies}", std=std, dtype=torch.float32)

    lead = ops.leading
    if role in ("embed", "pos"):
        return ops.repeat_along(t, m, dim=1), [None, lead(h)]
    if role == "lm_head":
        return ops.clone_linear(t, 1, m, noise(1, m, t.shape)), [None, lead(h)]
    if role in ("q.w", "k.w", "v.w", "o.w"):
        return ops.clone_linear(t, m, m, noise(m, m, t.shape)), [lead(t.shape[0]), lead(t.shape[1])]
    if role == "mlp_in.w":
        return ops.clone_linear(t, 1, m, noise(1, m, t.shape)), [None, lead(h)]
    if role == "mlp_out.w":
        return ops.clone_linear(t, m, 1), [lead(h), None]
    if role in ("q.b", "k.b", "v.b"):
        return ops.repeat_along(t, m), [lead(t.shape[0])]
    if role in ("final_norm.w", "final_norm.b") and c.before.tied:
        # the tied unembedding repeats the embedding columns: divide the last norm instead
        repeated = ops.repeat_along(t.float(), m)
        return (repeated if c.meta else repeated / m), [lead(h)]
    if role in _HIDDEN_VEC:
        return ops.repeat_along(t, m), [lead(h)]
    return None


def _chain_placements(p1: Any, p2: Any, old_shape: tuple[int, ...]) -> Any:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    out = []
    for d in range(len(old_shape)):
        a = p1[d] if p1[d] is not None else None
        b = p2[d] if p2[d] is not None else None
        if a is None:
            out.append(b[: old_shape[d]] if b is not None else None)
        else:
            out.append(b[a] if b is not None else a)
    return out


def grow_hidden(role: str, t: torch.Tensor, c: RoleContext) -> tuple[torch.Tensor, Any] | None:
    """Every role that touches the residual width: cloned (LayerNorm, integer factor) or zero-padded."""
    if c.stage.adapter.norm == "layer" and not c.stage.record.get("zero_pad"):
        return _hidden_clone(role, t, c)
    b, a = c.before, c.after
    if a.qk_dim == b.qk_dim:
        return _hidden_zero_pad(role, t, c)
    # approximate GPT-2 zero padding: the head size grows with the hidden size, in two sub-steps
    mid = b.with_(hidden=a.hidden)
    c1 = replace(c, stage=replace(c.stage, after=mid))
    c2 = replace(c, stage=replace(c.stage, before=mid))
    r1 = _hidden_zero_pad(role, t, c1)
    t1, p1 = r1 if r1 is not None else (t, None)
    r2 = grow_head(role, t1, c2)
    if r2 is None:
        return r1
    return r2[0], _chain_placements(p1, r2[1], tuple(t.shape))
