"""Multi-digit multiplication in the Deng et al. (implicit CoT) format (``papers.md`` §1).

Digits are separated by spaces and written **least-significant first**; the answer is the product's digits,
least-significant first, without padding (a 4x4 product has 7 or 8 digits)::

    question: "5 6 3 2 * 7 4 3 4"      (2365 x 4347)
    answer:   "5 5 6 0 8 2 0 1"        (10280655)

Operands have exactly ``digits_a`` / ``digits_b`` digits (no leading zero). Generation is vectorised with
numpy: the default 808k/1k/1k 4x4 dataset builds in a few seconds.

>>> from hf_growth.tasks.multiplication import multiplication_splits
>>> s = multiplication_splits(digits=2, train_size=10, validation_size=5, test_size=5)
>>> q, a = s["test"]["question"][0], s["test"]["answer"][0]
>>> x, y = (int("".join(reversed(p.split()))) for p in q.split(" * "))
>>> int("".join(reversed(a.split()))) == x * y
True
"""

from __future__ import annotations

import numpy as np

from ._common import Splits, check_sizes, sample_unique_ids, to_dataset_dict

__all__ = ["multiplication", "multiplication_splits", "format_numbers"]


def _lsb_digits(values: np.ndarray, width: int) -> np.ndarray:
    powers = 10 ** np.arange(width, dtype=np.int64)
    return (values[:, None] // powers[None, :]) % 10


def format_numbers(values: np.ndarray, width: int, strip: bool = False) -> list[str]:
    """Numbers as space-separated digits, least-significant first, ``width`` digits (``strip``: no padding)."""
    values = np.asarray(values, dtype=np.int64)
    digits = _lsb_digits(values, width)
    chars = np.full((values.size, 2 * width - 1), ord(" "), dtype=np.uint8)
    chars[:, 0::2] = digits + ord("0")
    if strip:
        lengths = np.maximum(1, np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1)
        cols = np.arange(2 * width - 1)[None, :]
        chars[cols >= (2 * lengths[:, None] - 1)] = ord(" ")
    text = chars.view(f"S{2 * width - 1}").ravel()
    out = text.astype(str).tolist()
    return [s.rstrip() for s in out] if strip else out


def multiplication_splits(
    digits: int = 4,
    digits_a: int | None = None,
    digits_b: int | None = None,
    seed: int = 0,
    train_size: int = 808_000,
    validation_size: int = 1000,
    test_size: int = 1000,
) -> Splits:
    """The splits as plain lists: ``{"train"|"validation"|"test": {"question": [...], "answer": [...]}}``."""
    da = int(digits_a if digits_a is not None else digits)
    db = int(digits_b if digits_b is not None else digits)
    if da < 1 or db < 1 or da + db > 18:
        raise ValueError(f"digits must be >= 1 and digits_a + digits_b <= 18, got {da} and {db}")
    check_sizes(train_size, validation_size, test_size)
    na, nb = 9 * 10 ** (da - 1), 9 * 10 ** (db - 1)
    ids = sample_unique_ids(na * nb, {"train": train_size, "validation": validation_size, "test": test_size}, seed)
    out: Splits = {}
    for name in ("train", "validation", "test"):
        a = ids[name] // nb + 10 ** (da - 1)
        b = ids[name] % nb + 10 ** (db - 1)
        left, right = format_numbers(a, da), format_numbers(b, db)
        questions = [f"{x} * {y}" for x, y in zip(left, right)]
        out[name] = {"question": questions, "answer": format_numbers(a * b, da + db, strip=True)}
    return out


def multiplication(
    digits: int = 4,
    digits_a: int | None = None,
    digits_b: int | None = None,
    seed: int = 0,
    train_size: int = 808_000,
    validation_size: int = 1000,
    test_size: int = 1000,
):
    """``DatasetDict`` (train/validation/test; columns ``question``, ``answer``) of ``digits_a x digits_b``
    multiplications. If fewer distinct questions exist than asked for, train gets the rest.

    >>> ds = multiplication(digits=3, train_size=100, validation_size=10, test_size=10)  # doctest: +SKIP
    >>> ds["train"][0]  # doctest: +SKIP
    {'question': '...', 'answer': '...'}
    """
    splits = multiplication_splits(digits, digits_a, digits_b, seed, train_size, validation_size, test_size)
    return to_dataset_dict(
        splits, {"task": "multiplication", "digits_a": digits_a or digits, "digits_b": digits_b or digits, "seed": seed}
    )
