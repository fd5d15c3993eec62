"""What the growth tests share: the exactness check on random and tiny-activation inputs, and a few training
steps that record which entries got gradients.

>>> tiny_inputs().shape
torch.Size([2, 32])
"""

from __future__ import annotations

import torch

from hf_growth.growth.verify import max_logit_diff

#: float32 round-off bound of every exactness test on tiny random models
TOL = 1e-5


def tiny_inputs() -> torch.Tensor:
    """Every token of a 64-token vocabulary once, in two rows of 32 (longer than the tests' sliding windows)."""
    return torch.arange(64).reshape(2, 32)


def worst_logit_diff(src: torch.nn.Module, grown: torch.nn.Module) -> float:
    """max |Δlogits| over a seeded random batch and :func:`tiny_inputs`."""
    return max(max_logit_diff(src, grown), max_logit_diff(src, grown, tiny_inputs()))


def assert_exact(src: torch.nn.Module, grown: torch.nn.Module, tol: float = TOL) -> float:
    """Assert ``grown`` computes what ``src`` computes to ``tol``; returns the measured worst difference."""
    diff = worst_logit_diff(src, grown)
    assert diff <= tol, diff
    return diff


def train_steps(model: torch.nn.Module, steps: int = 3, lr: float = 0.05) -> dict[str, torch.Tensor]:
    """A few SGD steps; per parameter, whether each entry had a non-zero gradient in some step."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    seen = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    ids = torch.cat([torch.arange(64), torch.zeros(1, dtype=torch.long)])[None]  # every token before a label
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                seen[n] |= p.grad != 0
        opt.step()
    return seen
