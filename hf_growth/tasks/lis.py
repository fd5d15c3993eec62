"""Longest increasing subsequence (Feng et al. format, ``papers.md`` §1).

A sequence of ``length`` integers in ``[0, max_value)``, then ``<sep>``; the answer is the length of the
longest **strictly** increasing subsequence::

    question: "12 5 7 3 9 <sep>"      (length=5)
    answer:   "3"                     (5 7 9)

>>> from hf_growth.tasks.lis import lis_splits, lis_length
>>> s = lis_splits(length=10, train_size=20, validation_size=5, test_size=5)
>>> q, a = s["test"]["question"][0], s["test"]["answer"][0]
>>> lis_length([int(t) for t in q.split()[:-1]]) == int(a)
True
"""

from __future__ import annotations

import bisect

import numpy as np

from ._common import Splits, check_sizes, join_rows, sample_unique_examples, to_dataset_dict

__all__ = ["lis", "lis_splits", "lis_length", "SEP"]

SEP = "<sep>"


def lis_length(sequence) -> int:
    """Length of the longest strictly increasing subsequence (patience sorting)."""
    tails: list[int] = []
    for x in sequence:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def _lis_batch(seqs: np.ndarray) -> np.ndarray:
    """Vectorised patience sorting over rows."""
    n, length = seqs.shape
    big = np.iinfo(np.int64).max
    tails = np.full((n, length), big, dtype=np.int64)
    rows = np.arange(n)
    for j in range(length):
        x = seqs[:, j]
        idx = (tails < x[:, None]).sum(axis=1)
        tails[rows, idx] = x
    return (tails != big).sum(axis=1)


def lis_splits(
    length: int = 50,
    max_value: int = 250,
    seed: int = 0,
    train_size: int = 200_000,
    validation_size: int = 1000,
    test_size: int = 1000,
) -> Splits:
    """The splits as plain lists (see :func:`lis`)."""
    if length < 1 or max_value < 1:
        raise ValueError(f"length and max_value must be >= 1, got {length} and {max_value}")
    check_sizes(train_size, validation_size, test_size)

    def generate(rng: np.random.Generator, n: int, split: str):
        seqs = rng.integers(0, max_value, size=(n, length), dtype=np.int64)
        answers = _lis_batch(seqs)
        return [q + " " + SEP for q in join_rows(seqs)], [str(int(a)) for a in answers]

    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    return sample_unique_examples(generate, sizes, seed)


def lis(
    length: int = 50,
    max_value: int = 250,
    seed: int = 0,
    train_size: int = 200_000,
    validation_size: int = 1000,
    test_size: int = 1000,
):
    """``DatasetDict`` of LIS problems (columns ``question``, ``answer``); train size 200k is our choice.

    >>> ds = lis(length=20, train_size=100)  # doctest: +SKIP
    """
    splits = lis_splits(length, max_value, seed, train_size, validation_size, test_size)
    return to_dataset_dict(splits, {"task": "lis", "length": length, "max_value": max_value, "seed": seed})
