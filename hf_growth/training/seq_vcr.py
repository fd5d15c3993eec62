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

from typing import NamedTuple

import torch

__all__ = ["SeqVCRTerms", "seq_vcr_loss", "seq_vcr_terms"]

_STATISTICS = ("batch", "batch_length")


class SeqVCRTerms(NamedTuple):
    """The Seq-VCR loss and its two weighted parts (``total == variance + covariance``)."""

    total: torch.Tensor
    variance: torch.Tensor  # lambda1 * mean hinge term
    covariance: torch.Tensor  # lambda2 * mean off-diagonal squared covariance


def _autocast_off(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # pragma: no cover - device types without autocast support
        import contextlib

        return contextlib.nullcontext()


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
    if x.dim() != 3:
        raise ValueError(f"seq_vcr_loss expects x of shape (N, T, d), got {tuple(x.shape)}")
    if statistics not in _STATISTICS:
        raise ValueError(f"statistics must be one of {_STATISTICS}, got {statistics!r}")
    n, t, d = x.shape
    if mask is not None and tuple(mask.shape) != (n, t):
        raise ValueError(f"mask must have shape (N, T) = {(n, t)}, got {tuple(mask.shape)}")

    with _autocast_off(x.device.type):
        x = x.float()
        if statistics == "batch_length":
            # one group of N*T rows
            x = x.reshape(1, n * t, d).transpose(0, 1)  # (N*T, 1, d): rows first, one "position"
            mask = None if mask is None else mask.reshape(n * t, 1)
        # x: (rows, groups, d) -> work with groups first: (G, R, d)
        xg = x.transpose(0, 1)
        if mask is None:
            m = torch.ones(xg.shape[:2], dtype=xg.dtype, device=xg.device)
        else:
            m = mask.transpose(0, 1).to(device=xg.device, dtype=xg.dtype)
        count = m.sum(dim=1)  # (G,)
        used = count >= 2
        m3 = m.unsqueeze(-1)
        mean = (xg * m3).sum(dim=1) / count.clamp_min(1.0).unsqueeze(-1)  # (G, d)
        xc = (xg - mean.unsqueeze(1)) * m3  # padded rows are exactly zero
        denom = (count - 1.0).clamp_min(1.0)  # (G,)

        var = xc.pow(2).sum(dim=1) / denom.unsqueeze(-1)  # (G, d) = diag(C_i)
        hinge = torch.relu(1.0 - torch.sqrt(var + eps)).sum(dim=-1)  # (G,)

        rows = xc.shape[1]
        if rows < d:  # ||Xc^T Xc||_F = ||Xc Xc^T||_F: the small Gram matrix suffices
            gram = torch.bmm(xc, xc.transpose(1, 2))
        else:
            gram = torch.bmm(xc.transpose(1, 2), xc)
        frob = gram.pow(2).sum(dim=(1, 2)) / denom.pow(2)  # ||C_i||_F^2
        offdiag = (frob - var.pow(2).sum(dim=-1)).clamp_min(0.0)  # (G,)

        used_f = used.to(xg.dtype)
        num_used = used_f.sum()
        norm = (num_used * d).clamp_min(1.0)
        variance = variance_weight * (hinge * used_f).sum() / norm
        covariance = covariance_weight * (offdiag * used_f).sum() / norm
        total = variance + covariance
    return SeqVCRTerms(total, variance, covariance)


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
