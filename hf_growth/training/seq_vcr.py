"""The Seq-VCR regulariser (Arefin et al., arXiv 2411.02344; ``papers.md`` §1).

For representations ``X`` of shape ``(N, T, d)`` the statistics are taken per position ``i`` across the batch
(``statistics="batch"``) or over all ``N*T`` rows jointly (``statistics="batch_length"``)::

    C_i = 1/(n_i - 1) * sum_j (X_ji - mean_i)(X_ji - mean_i)^T
    L   = 1/(T*d) * sum_i sum_k [ lambda1 * max(0, 1 - sqrt(C_i[k,k] + eta)) + lambda2 * sum_{k' != k} C_i[k,k']^2 ]

Padded rows (``mask == False``) are left out of the statistics; positions with fewer than two valid rows are
skipped and ``T`` counts only the positions that were used. The statistics are computed in float32 even under
bf16/fp16 autocast. The covariance term never builds the ``d x d`` matrices when ``n < d``: the squared
Frobenius norm of ``Xc^T Xc`` equals that of the ``n x n`` Gram matrix ``Xc Xc^T``.

>>> import torch
>>> from hf_growth.training.seq_vcr import seq_vcr_loss, seq_vcr_terms
>>> x = torch.randn(8, 5, 16)
>>> total = seq_vcr_loss(x)
>>> terms = seq_vcr_terms(x)
>>> bool(torch.isclose(total, terms.variance + terms.covariance))
True
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

__all__ = ["SeqVCRTerms", "seq_vcr_loss", "seq_vcr_terms"]

_STATISTICS = ("batch", "batch_length")


class SeqVCRTerms(NamedTuple):
    """The Seq-VCR loss and its two weighted parts (``total == variance + covariance``)."""

    total: torch.Tensor
    variance: torch.Tensor  # lambda1 * mean hinge term
    covariance: torch.Tensor  # lambda2 * mean off-diagonal squared covariance


def _autocast_off(device_type: str):
    """A context with autocast off for ``device_type`` (a no-op context when it is off already: building a
    ``torch.autocast`` costs more than the small ops it would wrap)."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, TypeError):  # pragma: no cover - device types without autocast support
        return contextlib.nullcontext()


_LOW_PRECISION = (torch.float32, torch.bfloat16, torch.float16)


class _SeqVCR(torch.autograd.Function):
    """``[variance, covariance]`` (a float32 ``(2,)`` tensor) of ``x`` laid out ``(rows, groups, d)``: statistics over
    the rows of each group. The forward records no autograd graph and the backward is the closed form below, so the
    regulariser costs a few dozen kernels per step instead of a hundred-odd small autograd nodes.

    With ``xc`` the masked, centred rows, ``v = diag(C)``, ``s = sqrt(v + eta)``, ``F = ||C||_F^2``, and ``u_g / norm``
    the weight of group ``g`` (0 for skipped groups)::

        dL/dxc = (2 / den) * dL/dv * xc + (4 / den^2) * dL/dF * (xc xc^T) xc
        dL/dv  = -lambda1 * u/norm * [s < 1] / (2 s) - 2 * lambda2 * u/norm * [offdiag >= 0] * v
        dL/dF  = lambda2 * u/norm * [offdiag >= 0]

    and ``dL/dx = dL/dxc`` (the centring's own term, ``-mean_rows(dL/dxc)``, is exactly zero: the rows of ``xc`` and
    of ``(xc xc^T) xc`` sum to zero over each group; padded rows have ``xc = 0`` and get no gradient).
    """

    @staticmethod
    def forward(ctx, x, m, variance_weight, covariance_weight, eps):
        with _autocast_off(x.device.type):
            rows, groups, d = x.shape
            ctx.dtype = x.dtype
            if x.dtype not in _LOW_PRECISION:
                x = x.float()
            if m is None:
                xf = x.float()
                mean = xf.sum(dim=0).div_(float(max(rows, 1)))
                xc = xf - mean
                den = float(max(rows - 1, 1))
                var = xc.square().sum(dim=0).div_(den)
                scale = 1.0 / float(groups * d) if rows >= 2 else 0.0  # u_g / norm, the same for every group
                den_sq = den * den
            else:
                m3 = m.unsqueeze(-1)
                count = m.sum(dim=0)  # (G,)
                xm = x * m3  # float32 (m is float32); padded rows exactly zero
                mean = xm.sum(dim=0).div_(count.clamp_min(1.0).unsqueeze(-1))  # (G, d)
                xc = torch.addcmul(xm, mean, m3, value=-1.0)  # == (x - mean) * m, padded rows exactly zero
                den = (count - 1.0).clamp_min_(1.0)  # (G,)
                var = xc.square().sum(dim=0).div_(den.unsqueeze(-1))  # (G, d) = diag(C_g)
                used = (count >= 2).to(torch.float32)
                norm = (used.sum() * d).clamp_min_(1.0)
                scale = used.div_(norm)  # (G,) u_g / norm
                den_sq = den.square()
            s = var.add(eps).sqrt_()
            hinge = torch.rsub(s, 1.0).relu_().sum(dim=-1)  # (G,)
            xt = xc.transpose(0, 1)  # (G, R, d)
            small = rows < d  # ||Xc^T Xc||_F = ||Xc Xc^T||_F: the small Gram matrix suffices
            gram = torch.bmm(xt, xt.transpose(1, 2)) if small else torch.bmm(xt.transpose(1, 2), xt)
            offdiag = gram.square().sum(dim=(1, 2)).div_(den_sq).sub_(var.square().sum(dim=-1))  # (G,)
            parts = torch.stack([hinge, offdiag.clamp_min(0.0)])  # (2, G)
            vals = (parts * scale).sum(dim=-1) if m is not None else parts.sum(dim=-1).mul_(scale)
            torch._foreach_mul_(list(vals.unbind()), [float(variance_weight), float(covariance_weight)])
        ctx.small, ctx.masked = small, m is not None
        ctx.weights = (float(variance_weight), float(covariance_weight))
        ctx.scalars = (scale, den) if m is None else ()
        tensors = (xc, s, var, gram, offdiag)
        ctx.save_for_backward(*(tensors + ((scale, den) if m is not None else ())))
        return vals

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_vals):
        saved = ctx.saved_tensors
        xc, s, var, gram, offdiag = saved[:5]
        scale, den = saved[5:] if ctx.masked else ctx.scalars
        w1, w2 = ctx.weights
        with _autocast_off(xc.device.type):
            g_var, g_cov = grad_vals.unbind()
            if ctx.masked:
                a = scale * (g_var * w1)  # dL/d(hinge_g), (G,)
                c = (scale * (g_cov * w2)).mul_(offdiag >= 0)  # dL/d(offdiag_g), zero where clamped
            else:
                a = g_var * (w1 * scale)
                c = (offdiag >= 0) * (g_cov * (w2 * scale))
            inv_den = 1.0 / den if not ctx.masked else den.reciprocal()
            coef_v = (s < 1.0) / s  # -2 s * d(relu(1 - s))/dv, zero where the hinge is flat
            if ctx.masked:
                b = coef_v.mul_((a * inv_den).neg_().unsqueeze(-1))
                b.addcmul_(var, (c * inv_den).mul_(-4.0).unsqueeze(-1))  # (2/den) dL/dv, (G, d)
                f = (c * inv_den.square()).mul_(4.0).view(-1, 1, 1)  # (4/den^2) dL/dF, (G, 1, 1)
            else:
                b = coef_v.mul_(a * -inv_den).addcmul_(var, (c * (-4.0 * inv_den)).unsqueeze(-1))
                f = (c * (4.0 * inv_den * inv_den)).view(-1, 1, 1)
            xt = xc.transpose(0, 1)
            gram_f = gram * f
            term = torch.bmm(gram_f, xt) if ctx.small else torch.bmm(xt, gram_f)  # (G, R, d)
            grad = torch.addcmul(term.transpose(0, 1), xc, b)
        return grad.to(ctx.dtype), None, None, None, None


def _seq_vcr_parts(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    variance_weight: float,
    covariance_weight: float,
    eps: float,
    statistics: str,
) -> torch.Tensor:
    """``[variance, covariance]`` as one differentiable float32 ``(2,)`` tensor (what :func:`seq_vcr_terms` and
    ``SeqVCRTrainer`` build on)."""
    if x.dim() != 3:
        raise ValueError(f"seq_vcr_loss expects x of shape (N, T, d), got {tuple(x.shape)}")
    if statistics not in _STATISTICS:
        raise ValueError(f"statistics must be one of {_STATISTICS}, got {statistics!r}")
    n, t, d = x.shape
    if mask is not None:
        if tuple(mask.shape) != (n, t):
            raise ValueError(f"mask must have shape (N, T) = {(n, t)}, got {tuple(mask.shape)}")
        mask = mask.to(device=x.device)
        mask = (mask if mask.dtype == torch.bool else mask != 0).to(torch.float32)
    if statistics == "batch_length":  # one group of N*T rows
        x = x.reshape(n * t, 1, d)
        mask = None if mask is None else mask.reshape(n * t, 1)
    # "batch": rows = the N sequences, one group per position
    return _SeqVCR.apply(x, mask, variance_weight, covariance_weight, eps)


def seq_vcr_terms(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    variance_weight: float = 1.0,
    covariance_weight: float = 0.004,
    eps: float = 1e-3,
    statistics: str = "batch",
) -> SeqVCRTerms:
    """Compute the Seq-VCR loss of ``x`` (``(N, T, d)``) and return ``SeqVCRTerms(total, variance, covariance)``.

    ``mask`` is an ``(N, T)`` boolean (or 0/1) tensor marking the valid (non-padded) positions.

    >>> import torch
    >>> seq_vcr_terms(torch.zeros(4, 3, 8)).variance.item()  # collapsed: hinge = 1 - sqrt(eta)
    0.9683772325515747
    """
    parts = _seq_vcr_parts(x, mask, variance_weight, covariance_weight, eps, statistics)
    variance, covariance = parts.unbind()
    return SeqVCRTerms(parts.sum(), variance, covariance)


def seq_vcr_loss(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    variance_weight: float = 1.0,
    covariance_weight: float = 0.004,
    eps: float = 1e-3,
    statistics: str = "batch",
) -> torch.Tensor:
    """Return the Seq-VCR loss (a float32 scalar); see :func:`seq_vcr_terms` for the two parts.

    >>> import torch
    >>> float(seq_vcr_loss(torch.randn(16, 4, 8), statistics="batch_length")) >= 0
    True
    """
    return seq_vcr_terms(x, mask, variance_weight, covariance_weight, eps, statistics).total
