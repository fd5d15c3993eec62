"""A tiny synthetic retrieval task (papers.md §3, our formulation) for probing and demonstrating head emergence.

A chain x_0 → x_1 → … → x_D of distinct node tokens is written as shuffled pairs ``a b`` among distractor
pairs, followed by ``SEP x_0 HOP_D`` and the target x_D. Token ids: nodes ``0 .. num_nodes-1``, ``SEP =
num_nodes``, ``HOP_k = num_nodes + k``. Self-contained on purpose (no dependency on ``hf_growth.tasks``).
"""

from __future__ import annotations

import numpy as np
import torch


def retrieval_vocab_size(num_nodes: int, max_hops: int) -> int:
    """The vocabulary a model needs for ``synthetic_retrieval(num_nodes=..., hops=...)``."""
    return num_nodes + 1 + max_hops


def synthetic_retrieval(
    n: int, *, num_pairs: int = 6, num_nodes: int = 32, hops: int | tuple[int, ...] = (1, 2), seed: int = 0
) -> dict[str, torch.Tensor]:
    """``n`` examples: ``input_ids`` and ``labels`` (``(n, 2*num_pairs + 4)``, loss on the target only),
    ``important`` (bool, the chain pairs' positions), ``answer_key`` (bool, where the target x_D is written
    in the pairs: the last hop's read-out position), ``first_hop_key`` (bool, where x_1 is written: what an
    induction head at the query token x_0 reads), ``query_mask`` (bool, the ``HOP`` position that predicts
    the target) and ``hops`` (each example's hop count, drawn uniformly from ``hops``: the implicit curriculum).

    >>> data = synthetic_retrieval(4, num_pairs=3, num_nodes=10, hops=2)
    >>> data["input_ids"].shape, int(data["important"][0].sum())
    (torch.Size([4, 10]), 4)
    """
    hop_choices = (hops,) if isinstance(hops, int) else tuple(hops)
    max_hops = max(hop_choices)
    if max_hops > num_pairs or 2 * num_pairs + 1 > num_nodes:
        raise ValueError("need hops <= num_pairs and num_nodes >= 2 * num_pairs + 1")
    rng = np.random.default_rng(seed)
    length = 2 * num_pairs + 4
    input_ids = np.zeros((n, length), dtype=np.int64)
    important = np.zeros((n, length), dtype=bool)
    answer_key = np.zeros((n, length), dtype=bool)
    first_hop_key = np.zeros((n, length), dtype=bool)
    hop_counts = rng.choice(hop_choices, size=n)
    for i in range(n):
        d = int(hop_counts[i])
        nodes = rng.permutation(num_nodes)
        chain = nodes[: d + 1]
        pairs = [(chain[k], chain[k + 1], True) for k in range(d)]
        rest = nodes[d + 1 :]
        pairs += [(rest[2 * k], rest[2 * k + 1], False) for k in range(num_pairs - d)]
        order = rng.permutation(num_pairs)
        for slot, p in enumerate(order):
            a, b, on_chain = pairs[p]
            input_ids[i, 2 * slot : 2 * slot + 2] = (a, b)
            important[i, 2 * slot : 2 * slot + 2] = on_chain
            answer_key[i, 2 * slot + 1] = on_chain and b == chain[d]
            first_hop_key[i, 2 * slot + 1] = on_chain and a == chain[0]
        input_ids[i, -4:] = (num_nodes, chain[0], num_nodes + d, chain[d])
    labels = np.full_like(input_ids, -100)
    labels[:, -1] = input_ids[:, -1]
    query_mask = np.zeros_like(important)
    query_mask[:, -2] = True
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "important": torch.from_numpy(important),
        "answer_key": torch.from_numpy(answer_key),
        "first_hop_key": torch.from_numpy(first_hop_key),
        "query_mask": torch.from_numpy(query_mask),
        "hops": torch.from_numpy(hop_counts.astype(np.int64)),
    }


__all__ = ["retrieval_vocab_size", "synthetic_retrieval"]
