"""The retrieval problem, our formulation (``papers.md`` §3; the paper's token format is not available).

Nodes are the integers ``0..num_nodes-1``. Each example draws distinct random nodes and links them into
pointer chains of ``hops`` links each (the last chain may be shorter), ``num_pairs`` links in all. The links
are written as shuffled pairs ``a b`` ("a points to b"), then ``|``, the number of hops ``D`` and the query
node ``x0``; the answer is ``x_D``, the node reached after ``D`` links from ``x0``. The query chain may continue
past ``x_D``, so the model must count hops, and the other chains are distractors::

    question: "4 9 7 1 9 3 1 8 | 2 4"      (links 4->9, 7->1, 9->3, 1->8; 2 hops, start 4)
    answer:   "3"

The query node comes last, right where the answer is predicted: with ``| x0 D`` (this module's format until
2026-11) a 2-layer model stayed on the 1/num_pairs plateau for 6000 steps at D = 1 in all seeds tried, and
escaped it within 1400-4000 steps in 3 of 4 seeds with ``| D x0`` (a CPU calibration).

``pair_separator=True`` writes ``<sep>`` after every pair (``"4 9 <sep> 7 1 <sep> ... | 2 4"``). Without it a
chain's middle nodes appear twice in a row of tokens (as one link's target and the next link's source), so "the
token after x" is ambiguous unless the model knows each position's parity; with one-link chains (D = 1) no node
repeats. In a CPU probe (D = 2, 4 pairs, 3 layers, one seed) the training loss fell to 0.33 with the separator
against 0.88 without.

``curriculum=True`` (the implicit curriculum) draws D uniformly from ``1..hops`` for every training example;
validation and test always use ``D = hops`` (the difficulty being measured). ``curriculum=False`` trains at
``D = hops`` only.

>>> from hf_growth.tasks.retrieval import retrieval_splits, solve
>>> s = retrieval_splits(num_pairs=8, hops=3, num_nodes=32, train_size=50, validation_size=5, test_size=5)
>>> all(solve(q) == a for q, a in zip(s["train"]["question"], s["train"]["answer"]))
True
"""

from __future__ import annotations

import numpy as np

from ._common import Splits, check_sizes, sample_unique_examples, to_dataset_dict

__all__ = ["retrieval", "retrieval_splits", "solve", "QUERY", "SEPARATOR"]

QUERY = "|"
SEPARATOR = "<sep>"


def solve(question: str) -> str:
    """Follow the links of a question string (a reference checker)."""
    links, query = question.split(QUERY)
    tokens = [t for t in links.split() if t != SEPARATOR]
    succ = dict(zip(tokens[0::2], tokens[1::2]))
    hops, node = query.split()
    for _ in range(int(hops)):
        node = succ[node]
    return node


def _chain_layout(num_pairs: int, hops: int, num_nodes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Slot indices of each link's source and target when chains of ``hops`` links are laid out in a row, and the
    number of distinct nodes they need (checked against ``num_nodes``)."""
    if hops < 1 or num_pairs < hops:
        raise ValueError(f"need 1 <= hops <= num_pairs, got hops={hops}, num_pairs={num_pairs}")
    src, dst, slot = [], [], 0
    left = num_pairs
    while left > 0:
        n = min(hops, left)
        src.extend(range(slot, slot + n))
        dst.extend(range(slot + 1, slot + n + 1))
        slot += n + 1
        left -= n
    if slot > num_nodes:
        raise ValueError(f"{num_pairs} links in chains of {hops} need {slot} distinct nodes > num_nodes={num_nodes}")
    return np.array(src), np.array(dst), slot


def retrieval_splits(
    num_pairs: int = 16,
    hops: int = 4,
    num_nodes: int = 64,
    curriculum: bool = True,
    seed: int = 0,
    train_size: int = 2**20,
    validation_size: int = 1000,
    test_size: int = 1000,
    pair_separator: bool = False,
) -> Splits:
    """The splits as plain lists (see :func:`retrieval`)."""
    src, dst, needed = _chain_layout(num_pairs, hops, num_nodes)
    check_sizes(train_size, validation_size, test_size)

    def generate(rng: np.random.Generator, n: int, split: str):
        nodes = np.argsort(rng.random((n, num_nodes)), axis=1)[:, :needed]
        order = np.argsort(rng.random((n, num_pairs)), axis=1)
        a = np.take_along_axis(nodes[:, src], order, axis=1)
        b = np.take_along_axis(nodes[:, dst], order, axis=1)
        if curriculum and split == "train":
            d = rng.integers(1, hops + 1, size=n)
        else:
            d = np.full(n, hops)
        start = (rng.random(n) * (hops - d + 1)).astype(np.int64)  # chain 0 has slots 0..hops
        rows = np.arange(n)
        x0, xd = nodes[rows, start], nodes[rows, start + d]
        end = f" {SEPARATOR}" if pair_separator else ""
        qs = [
            " ".join(f"{x} {y}{end}" for x, y in zip(sources, targets)) + f" {QUERY} {k} {s}"
            for sources, targets, s, k in zip(a.tolist(), b.tolist(), x0.tolist(), d.tolist())
        ]
        return qs, [str(v) for v in xd.tolist()]

    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    return sample_unique_examples(generate, sizes, seed)


def retrieval(
    num_pairs: int = 16,
    hops: int = 4,
    num_nodes: int = 64,
    curriculum: bool = True,
    seed: int = 0,
    train_size: int = 2**20,
    validation_size: int = 1000,
    test_size: int = 1000,
    pair_separator: bool = False,
):
    """``DatasetDict`` of retrieval problems (columns ``question``, ``answer``); 2^20 train as in the paper.

    >>> ds = retrieval(num_pairs=8, hops=3, num_nodes=32, train_size=1000)  # doctest: +SKIP
    """
    splits = retrieval_splits(
        num_pairs, hops, num_nodes, curriculum, seed, train_size, validation_size, test_size, pair_separator
    )
    info = {
        "task": "retrieval",
        "num_pairs": num_pairs,
        "hops": hops,
        "num_nodes": num_nodes,
        "curriculum": curriculum,
        "seed": seed,
        "pair_separator": pair_separator,
    }
    return to_dataset_dict(splits, info)
