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

#: single width steps on the tests' tiny models (hidden 48, 4 query / 2 KV heads, MLP 64)
WIDTH_STEPS = {
    "mlp_width": [{"mlp_width": 96}],
    "heads_regroup": [{"num_heads": 6}],
    "heads_add_groups": [{"num_heads": {"to": 6, "num_key_value_heads": 3}}],
    "heads_more_kv": [{"num_heads": {"to": 8, "num_key_value_heads": 4}}],
    "hidden_size": [{"hidden_size": 72}],
    "hidden_size_x2": [{"hidden_size": 96}],
}
#: head-size steps for head size 12: x2 and x3 (RoPE: integer factors)
HEAD_DIM_STEPS = {"head_dim": [{"head_dim": 24}], "head_dim_x3": [{"head_dim": 36}]}


def depth_steps(layers: int) -> dict[str, list[dict]]:
    """Single depth steps on a ``layers``-layer model: interleaved, on top by copy, at positions 0 and 3."""
    return {
        "layers_interleave": [{"num_layers": 2 * layers}],
        "layers_top_copy": [{"num_layers": {"to": layers + 1, "where": "top", "init": "copy"}}],
        "layers_positions": [{"num_layers": {"to": layers + 2, "where": [0, 3]}}],
    }


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
