"""Seq-VCR loss against a slow reference written straight from papers.md §1."""

from __future__ import annotations

import math

import pytest
import torch

from hf_growth.training import seq_vcr_loss, seq_vcr_terms


def reference(x, mask=None, lam1=1.0, lam2=0.004, eta=1e-3, statistics="batch"):
    """Loop over positions, features and feature pairs: the formula as printed, in float64."""
    x = x.double()
    n, t, d = x.shape
    if mask is None:
        mask = torch.ones(n, t, dtype=torch.bool)
    if statistics == "batch_length":
        groups = [x.reshape(n * t, d)[mask.reshape(-1)]]
    else:
        groups = [x[mask[:, i], i, :] for i in range(t)]
    var_sum = cov_sum = 0.0
    used = 0
    for rows in groups:
        m = rows.shape[0]
        if m < 2:
            continue
        used += 1
        mean = rows.mean(dim=0)
        c = torch.zeros(d, d, dtype=torch.float64)
        for j in range(m):
            diff = rows[j] - mean
            c += torch.outer(diff, diff)
        c /= m - 1
        for k in range(d):
            var_sum += lam1 * max(0.0, 1.0 - math.sqrt(c[k, k].item() + eta))
            for k2 in range(d):
                if k2 != k:
                    cov_sum += lam2 * c[k, k2].item() ** 2
    norm = used * d
    return var_sum / norm, cov_sum / norm


@pytest.mark.parametrize("statistics", ["batch", "batch_length"])
@pytest.mark.parametrize("shape", [(6, 4, 5), (3, 5, 8)])  # n > d (d x d path) and n < d (Gram path)
def test_matches_reference(statistics, shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 0.7
    x[:, :, 0] *= 3.0  # one dimension above the hinge
    var_ref, cov_ref = reference(x, lam1=0.3, lam2=0.5, statistics=statistics)
    terms = seq_vcr_terms(x, variance_weight=0.3, covariance_weight=0.5, statistics=statistics)
    assert terms.variance.item() == pytest.approx(var_ref, rel=1e-4, abs=1e-6)
    assert terms.covariance.item() == pytest.approx(cov_ref, rel=1e-4, abs=1e-6)
    assert seq_vcr_loss(x, None, 0.3, 0.5, statistics=statistics).item() == pytest.approx(var_ref + cov_ref, rel=1e-4)


@pytest.mark.parametrize("statistics", ["batch", "batch_length"])
def test_mask_excludes_padding_and_skips_thin_positions(statistics):
    torch.manual_seed(1)
    x = torch.randn(5, 6, 7)
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[3:, 4:] = False  # right padding: positions 4-5 have 3 valid rows
    mask[1:, 5] = False  # position 5 has a single valid row: skipped
    x_garbage = x.clone()
    x_garbage[~mask] = 1e6  # padded values must not matter
    var_ref, cov_ref = reference(x, mask, statistics=statistics)
    terms = seq_vcr_terms(x_garbage, mask, statistics=statistics)
    assert terms.variance.item() == pytest.approx(var_ref, rel=1e-4)
    assert terms.covariance.item() == pytest.approx(cov_ref, rel=1e-4)


def test_all_positions_skipped_gives_zero():
    x = torch.randn(1, 3, 4, requires_grad=True)
    loss = seq_vcr_loss(x)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_collapsed_representations_finite_loss_and_grad():
    x = torch.ones(8, 4, 16, requires_grad=True)
    terms = seq_vcr_terms(x)
    assert terms.variance.item() == pytest.approx(1 - math.sqrt(1e-3), rel=1e-5)
    assert terms.covariance.item() == 0.0
    terms.total.backward()
    assert torch.isfinite(x.grad).all()
    # a tiny perturbation of a collapsed input gets a gradient that pushes the variance up
    y = (torch.ones(8, 4, 16) + 1e-4 * torch.randn(8, 4, 16)).requires_grad_()
    seq_vcr_loss(y, statistics="batch_length").backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_float32_statistics_under_bf16_autocast():
    torch.manual_seed(2)
    x = torch.randn(8, 3, 16)
    ref = seq_vcr_loss(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = seq_vcr_loss(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=2e-2)


def test_gradient_matches_float64_autograd():
    torch.manual_seed(3)
    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    x32 = x.detach().float().requires_grad_()
    seq_vcr_loss(x32, covariance_weight=0.5).backward()
    # float64 direct implementation of the same formula for the gradient
    xc = x - x.mean(dim=0, keepdim=True)
    c = torch.einsum("nti,ntj->tij", xc, xc) / 3
    diag = torch.diagonal(c, dim1=1, dim2=2)
    off = (c**2).sum(dim=(1, 2)) - (diag**2).sum(dim=1)
    loss = (torch.relu(1 - torch.sqrt(diag + 1e-3)).sum() + 0.5 * off.sum()) / (3 * 6)
    loss.backward()
    torch.testing.assert_close(x32.grad.double(), x.grad, rtol=1e-4, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"\(N, T, d\)"):
        seq_vcr_loss(torch.randn(4, 5))
    with pytest.raises(ValueError, match="statistics"):
        seq_vcr_loss(torch.randn(4, 5, 3), statistics="tokens")
    with pytest.raises(ValueError, match="mask"):
        seq_vcr_loss(torch.randn(4, 5, 3), mask=torch.ones(4, 4, dtype=torch.bool))


def _autograd_reference(x, mask, lam1, lam2, eta, statistics):
    """The formula with float64 autograd (masked mean/covariance per group), returning (variance, covariance)."""
    n, t, d = x.shape
    if statistics == "batch_length":
        x, mask = x.reshape(n * t, 1, d), mask.reshape(n * t, 1)
    m = mask.to(x.dtype).unsqueeze(-1)
    count = m.sum(dim=0)  # (G, 1)
    mean = (x * m).sum(dim=0) / count.clamp_min(1)
    xc = (x - mean) * m
    den = (count - 1).clamp_min(1)
    c = torch.einsum("rgi,rgj->gij", xc, xc) / den.unsqueeze(-1)
    diag = torch.diagonal(c, dim1=1, dim2=2)
    used = (count.squeeze(-1) >= 2).to(x.dtype)
    norm = (used.sum() * d).clamp_min(1)
    hinge = torch.relu(1 - torch.sqrt(diag + eta)).sum(dim=-1)
    off = (c**2).sum(dim=(1, 2)) - (diag**2).sum(dim=-1)
    return lam1 * (hinge * used).sum() / norm, lam2 * (off * used).sum() / norm


@pytest.mark.parametrize("statistics", ["batch", "batch_length"])
@pytest.mark.parametrize("shape", [(6, 4, 5), (3, 5, 8)])  # d x d and Gram paths
def test_masked_gradients_of_each_term_match_float64_autograd(statistics, shape):
    torch.manual_seed(4)
    x = torch.randn(*shape, dtype=torch.float64) * 0.6
    x[:, :, 0] *= 3.0  # one dimension above the hinge (flat relu)
    mask = torch.ones(shape[:2], dtype=torch.long)
    mask[1:, -1] = 0  # a position with a single valid row: skipped
    mask[-1, 1:] = 0
    for gv, gc in ((1.0, 0.0), (0.0, 1.0), (0.7, -1.3)):
        x64 = x.clone().requires_grad_()
        var_ref, cov_ref = _autograd_reference(x64, mask, 0.3, 0.5, 1e-3, statistics)
        (gv * var_ref + gc * cov_ref).backward()
        x32 = x.float().requires_grad_()
        terms = seq_vcr_terms(x32, mask, 0.3, 0.5, 1e-3, statistics)
        assert terms.variance.item() == pytest.approx(var_ref.item(), rel=1e-5, abs=1e-7)
        assert terms.covariance.item() == pytest.approx(cov_ref.item(), rel=1e-5, abs=1e-7)
        (gv * terms.variance + gc * terms.covariance).backward()
        torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
        assert x32.grad[mask == 0].abs().max() == 0  # padded rows get no gradient


def test_bf16_input_gets_bf16_gradient():
    torch.manual_seed(5)
    x = torch.randn(8, 3, 16).to(torch.bfloat16).requires_grad_()
    seq_vcr_loss(x, torch.ones(8, 3, dtype=torch.bool)).backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
