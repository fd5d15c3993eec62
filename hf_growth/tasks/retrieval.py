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
escaped it within 1400-4000 steps in 3 of 4 seeds with ``| D x0`` (CPU calibration, ``benchmarks/README.md``).

``pair_separator=True`` writes ``<sep>`` after every pair (``"4 9 <sep> 7 1 <sep> ... | 2 4"``). Without it a
chain's middle nodes appear twice in a row of tokens (as one link's target and the next link's source), so "the
token after x" is ambiguous unless the model knows each position's parity; with one-link chains (D = 1) no node
repeats. In a CPU probe (D = 2, 4 pairs, 3 layers, one seed) the training loss fell to 0.33 with the separator
against 0.88 without (``benchmarks/README.md``).

``curriculum=True`` (the implicit curriculum) draws D uniformly from ``1..hops`` for every training example;
validation and test always use ``D = hops`` (the difficulty being measured). ``curriculum=False`` trains at
``D = hops`` only.

>>> from hf_growth.tasks.retrieval import retrieval_splits, solve
>>> s = retrieval_splits(num_pairs=8, hops=3, num_nodes=32, train_size=50, validation_size=5, test_size=5)
>>> all(solve(q) == a for q, a in zip(s["train"]["question"], s["train"]["answer"]))
True
"""

from __future__ import annotations

import functools

import numpy as np

from ._common import Splits, check_sizes, sample_unique_examples, to_dataset_dict

__all__ = ["retrieval", "retrieval_splits", "sample_retrieval_ids", "solve", "QUERY", "SEPARATOR"]

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


@functools.lru_cache(maxsize=64)
def _chain_layout_on(num_pairs: int, hops: int, num_nodes: int, device):
    """:func:`_chain_layout` as index tensors on ``device``, made once (a host-to-GPU copy per call would wait for
    the GPU: the sampler then could not run ahead of the training step)."""
    import torch

    src, dst, needed = _chain_layout(num_pairs, hops, num_nodes)
    return torch.as_tensor(src, device=device), torch.as_tensor(dst, device=device), needed


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
        qs = [" ".join(f"{x} {y}{end}" for x, y in zip(sources, targets)) + f" {QUERY} {k} {s}"
              for sources, targets, s, k in zip(a.tolist(), b.tolist(), x0.tolist(), d.tolist())]
        return qs, [str(v) for v in xd.tolist()]

    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    return sample_unique_examples(generate, sizes, seed)


def sample_retrieval_ids(
    n: int,
    num_pairs: int,
    hops: int,
    num_nodes: int,
    curriculum,
    token_ids,
    query_id: int,
    generator=None,
    separator_id: int | None = None,
    max_hops=None,
    newest_share: float = 0.0,
):
    """Fresh training examples as token ids, drawn on ``token_ids``' device: ``(questions (n, 2*num_pairs + 3),
    answers (n,))``, or ``3*num_pairs + 3`` tokens with ``separator_id`` (the id of ``<sep>``, written after every
    pair as ``pair_separator=True`` does). Same distribution and layout as :func:`retrieval_splits`' train split (distinct nodes,
    chains of ``hops`` links in shuffled pairs, ``| D x0``, answer ``x_D``); for training on an endless stream
    instead of a fixed set (nothing checks these against the validation and test questions, which fresh draws
    from this space repeat with negligible probability).

    ``curriculum``: a bool, or a bool tensor ``(n,)`` (per example: D uniform in ``1..hops``, else ``D = hops``).
    ``token_ids``: ``(V,)`` long tensor, the id of the word ``str(k)`` at index ``k`` (covering ``num_nodes`` and
    ``hops``); ``query_id``: the id of ``|``. ``max_hops``: an int or a long tensor ``(n,)`` in ``1..hops``; a
    curriculum example then draws D uniformly from ``1..max_hops`` (a staged curriculum raises it during training;
    the chains keep ``hops`` links, so only the question gets easier). An int or a CPU tensor is range-checked; a tensor
    already on the GPU is not (that check would make the host wait for the GPU every step). ``newest_share``: with
    ``max_hops``, the fraction of curriculum examples that ask for ``D = max_hops`` itself (the rest stay uniform in
    ``1..max_hops``, so D = max_hops has ``share + (1 - share) / max_hops`` of them); 0 draws nothing extra.

    >>> import torch
    >>> from hf_growth.tasks.retrieval import sample_retrieval_ids, solve
    >>> q, a = sample_retrieval_ids(4, num_pairs=6, hops=3, num_nodes=16, curriculum=True,
    ...                             token_ids=torch.arange(16), query_id=99)
    >>> q.shape, all(solve(" ".join("|" if t == 99 else str(t) for t in row)) == str(int(x))
    ...                  for row, x in zip(q.tolist(), a))
    (torch.Size([4, 15]), True)
    """
    import torch

    if not 0.0 <= newest_share <= 1.0 or (newest_share and max_hops is None):
        raise ValueError(f"newest_share must lie in [0, 1] and comes with max_hops, got {newest_share}")
    if token_ids.numel() < max(num_nodes, hops + 1):
        raise ValueError(f"token_ids covers {token_ids.numel()} numbers, need {max(num_nodes, hops + 1)}")
    device = token_ids.device
    src, dst, needed = _chain_layout_on(num_pairs, hops, num_nodes, device)
    rand = dict(generator=generator, device=device)
    nodes = torch.rand(n, num_nodes, **rand).argsort(1)[:, :needed]
    order = torch.rand(n, num_pairs, **rand).argsort(1)
    a = nodes[:, src].gather(1, order)
    b = nodes[:, dst].gather(1, order)
    if isinstance(curriculum, torch.Tensor):
        cur = curriculum.to(device).expand(n)
    else:
        cur = torch.full((n,), bool(curriculum), device=device)
    if max_hops is None:
        easy = torch.randint(1, hops + 1, (n,), **rand)
    else:
        top = max_hops if isinstance(max_hops, torch.Tensor) else torch.tensor(int(max_hops))
        # checked where it is given: a CPU tensor or an int costs no sync; one on the GPU is taken as it is
        if top.device.type == "cpu" and bool(((top < 1) | (top > hops)).any()):
            raise ValueError(f"max_hops must lie in 1..hops={hops}, got {top.tolist()}")
        top = top.to(device).expand(n)
        easy = 1 + (torch.rand(n, **rand) * top).long().clamp_max(top - 1)
        if newest_share:
            easy = torch.where(torch.rand(n, **rand) < newest_share, top, easy)
    d = torch.where(cur, easy, torch.full((n,), hops, device=device))
    start = (torch.rand(n, **rand) * (hops - d + 1)).long()  # chain 0 has slots 0..hops
    rows = torch.arange(n, device=device)
    x0, xd = nodes[rows, start], nodes[rows, start + d]
    columns = [token_ids[a], token_ids[b]]
    if separator_id is not None:
        columns.append(torch.full_like(a, separator_id))
    pairs = torch.stack(columns, dim=2).reshape(n, len(columns) * num_pairs)
    tail = torch.stack([torch.full_like(d, query_id), token_ids[d], token_ids[x0]], dim=1)
    return torch.cat([pairs, tail], dim=1), token_ids[xd]


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
    splits = retrieval_splits(num_pairs, hops, num_nodes, curriculum, seed, train_size, validation_size, test_size,
                              pair_separator)
    info = {"task": "retrieval", "num_pairs": num_pairs, "hops": hops, "num_nodes": num_nodes,
            "curriculum": curriculum, "seed": seed, "pair_separator": pair_separator}
    return to_dataset_dict(splits, info)
