"""Shared helpers of the task builders: unique split sampling, DatasetDict assembly, exact match."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")
Splits = dict[str, dict[str, list[str]]]


def split_rngs(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per split, so the test set does not depend on the train size."""
    children = np.random.SeedSequence(seed).spawn(len(SPLITS))
    return {name: np.random.default_rng(child) for name, child in zip(SPLITS, children)}


def check_sizes(train_size: int, validation_size: int, test_size: int) -> None:
    for name, value in (("train_size", train_size), ("validation_size", validation_size), ("test_size", test_size)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def sample_unique_ids(space: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Sample disjoint sets of distinct integers in ``[0, space)`` for test, validation, then train.

    When the space is too small for every split, train gets what is left (test and validation first).
    """
    rngs = split_rngs(seed)
    taken = np.empty(0, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for name in ("test", "validation", "train"):
        want = int(sizes[name])
        left = space - taken.size
        if want > left:
            if name != "train" or left <= 0:
                raise ValueError(
                    f"only {space} distinct questions exist; cannot draw {want} for {name} "
                    f"after {taken.size} for the other splits: ask for smaller sizes"
                )
            want = left
        rng = rngs[name]
        if space <= 4 * (want + taken.size) or space <= 2_000_000:
            pool = np.setdiff1d(np.arange(space, dtype=np.int64), taken, assume_unique=True)
            ids = rng.permutation(pool)[:want]
        else:
            ids = np.empty(0, dtype=np.int64)
            while ids.size < want:
                draw = rng.integers(0, space, size=int((want - ids.size) * 1.1) + 16, dtype=np.int64)
                draw = np.concatenate([ids, draw])
                _, first = np.unique(draw, return_index=True)
                draw = draw[np.sort(first)]
                ids = draw[~np.isin(draw, taken)][:want]
        out[name] = ids
        taken = np.concatenate([taken, ids])
    return out


def sample_unique_examples(
    generate: Callable[[np.random.Generator, int, str], tuple[list[str], list[str]]],
    sizes: dict[str, int],
    seed: int,
    max_rounds: int = 50,
) -> Splits:
    """Draw examples with ``generate(rng, n, split)`` until each split has its size of distinct questions
    that no other split holds (test first, then validation, then train)."""
    rngs = split_rngs(seed)
    seen: set[str] = set()
    out: Splits = {}
    for name in ("test", "validation", "train"):
        want = int(sizes[name])
        qs: list[str] = []
        ans: list[str] = []
        for _ in range(max_rounds):
            if len(qs) >= want:
                break
            need = want - len(qs)
            new_q, new_a = generate(rngs[name], int(need * 1.05) + 8, name)
            for q, a in zip(new_q, new_a):
                if q not in seen:
                    seen.add(q)
                    qs.append(q)
                    ans.append(a)
                    if len(qs) == want:
                        break
        if len(qs) < want:
            raise ValueError(f"could not draw {want} distinct {name} questions: the space is too small")
        out[name] = {"question": qs, "answer": ans}
    return {name: out[name] for name in SPLITS}


def to_dataset_dict(splits: Splits, info: dict[str, Any] | None = None):
    """Wrap ``{split: {"question": [...], "answer": [...]}}`` into a ``datasets.DatasetDict``."""
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a declared dependency
        raise ImportError("the task builders return datasets.DatasetDict: `pip install datasets`") from error
    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string")})
    description = "" if info is None else repr(info)
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(
                splits[name], features=features, info=datasets.DatasetInfo(description=description, features=features)
            )
            for name in SPLITS
        }
    )


def normalize_answer(text: str) -> str:
    """Whitespace-normalised answer string (the only normalisation exact match applies)."""
    return " ".join(str(text).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after whitespace normalisation.

    >>> exact_match(["1 2", "3"], [" 1  2", "4"])
    0.5
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("exact_match needs at least one reference")
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)


def join_rows(tokens: np.ndarray) -> list[str]:
    """Join each row of a 2-D integer array into a space-separated string."""
    return [" ".join(map(str, row)) for row in tokens.tolist()]
