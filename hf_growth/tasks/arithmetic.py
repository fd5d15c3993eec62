"""Arithmetic expressions modulo a prime (Feng et al. format, ``papers.md`` §1).

An expression with ``num_operators`` operators over integers ``0..modulus-1`` with ``+ - * /`` (``/`` is
multiplication by the modular inverse; never by zero) and the brackets it needs, then ``=``; the answer is
one number::

    question: "( 3 + 5 ) * 2 - 7 / 4 ="
    answer:   "9"

>>> from hf_growth.tasks.arithmetic import arithmetic_splits, evaluate
>>> s = arithmetic_splits(num_operators=3, train_size=20, validation_size=5, test_size=5)
>>> q, a = s["train"]["question"][0], s["train"]["answer"][0]
>>> evaluate(q, 11) == int(a)
True
"""

from __future__ import annotations

import numpy as np

from ._common import Splits, check_sizes, sample_unique_examples, to_dataset_dict

__all__ = ["arithmetic", "arithmetic_splits", "evaluate"]

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_OPS = ("+", "-", "*", "/")


def _apply(op: str, x: int, y: int, p: int) -> int:
    if op == "+":
        return (x + y) % p
    if op == "-":
        return (x - y) % p
    if op == "*":
        return (x * y) % p
    return (x * pow(y, -1, p)) % p


def _build(rng: np.random.Generator, ops: int, p: int):
    """Random expression tree with ``ops`` operators: returns (tokens, value, precedence) or None on /0."""
    if ops == 0:
        v = int(rng.integers(0, p))
        return [str(v)], v, 3
    left_ops = int(rng.integers(0, ops))
    left = _build(rng, left_ops, p)
    right = _build(rng, ops - 1 - left_ops, p)
    if left is None or right is None:
        return None
    op = _OPS[int(rng.integers(0, 4))]
    if op == "/" and right[1] == 0:
        return None
    lt, lv, lp = left
    rt, rv, rp = right
    prec = _PREC[op]
    if lp < prec:
        lt = ["(", *lt, ")"]
    if rp < prec or (rp == prec and op in "-/"):
        rt = ["(", *rt, ")"]
    return [*lt, op, *rt], _apply(op, lv, rv, p), prec


def evaluate(question: str, modulus: int = 11) -> int:
    """Evaluate a question string (``"... ="``) modulo ``modulus`` (a reference checker for tests)."""
    tokens = question.replace("=", " ").split()
    pos = 0

    def expr() -> int:
        nonlocal pos
        v = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            v = _apply(op, v, term(), modulus)
        return v

    def term() -> int:
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            v = _apply(op, v, atom(), modulus)
        return v

    def atom() -> int:
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = expr()
            pos += 1  # ")"
            return v
        return int(tok) % modulus

    return expr()


def arithmetic_splits(
    num_operators: int = 5,
    modulus: int = 11,
    seed: int = 0,
    train_size: int = 200_000,
    validation_size: int = 1000,
    test_size: int = 1000,
) -> Splits:
    """The splits as plain lists (see :func:`arithmetic`)."""
    if num_operators < 1:
        raise ValueError(f"num_operators must be >= 1, got {num_operators}")
    if modulus < 2 or any(modulus % k == 0 for k in range(2, int(modulus**0.5) + 1)):
        raise ValueError(f"modulus must be a prime (division is the modular inverse), got {modulus}")
    check_sizes(train_size, validation_size, test_size)

    def generate(rng: np.random.Generator, n: int, split: str):
        qs, ans = [], []
        while len(qs) < n:
            built = _build(rng, num_operators, modulus)
            if built is None:
                continue
            tokens, value, _ = built
            qs.append(" ".join(tokens) + " =")
            ans.append(str(value))
        return qs, ans

    sizes = {"train": train_size, "validation": validation_size, "test": test_size}
    return sample_unique_examples(generate, sizes, seed)


def arithmetic(
    num_operators: int = 5,
    modulus: int = 11,
    seed: int = 0,
    train_size: int = 200_000,
    validation_size: int = 1000,
    test_size: int = 1000,
):
    """``DatasetDict`` of modular arithmetic expressions (columns ``question``, ``answer``).

    The default train size (200k) is our choice; Feng et al.'s exact sizes are not given in papers.md.

    >>> ds = arithmetic(num_operators=4, train_size=100)  # doctest: +SKIP
    """
    splits = arithmetic_splits(num_operators, modulus, seed, train_size, validation_size, test_size)
    return to_dataset_dict(
        splits, {"task": "arithmetic", "num_operators": num_operators, "modulus": modulus, "seed": seed}
    )
