"""Reasoning task datasets: multiplication, modular arithmetic, LIS and the retrieval problem.

Every builder is deterministic for a seed and returns a ``datasets.DatasetDict`` with ``train``,
``validation`` and ``test`` splits of string columns ``question`` and ``answer`` (no question appears in
two splits); ``*_splits`` variants return plain lists and do not need ``datasets``. The formats are in each
module's docstring. Answers are scored with :func:`exact_match`.

>>> from hf_growth import tasks
>>> ds = tasks.multiplication(digits=2, train_size=100, validation_size=10, test_size=10)  # doctest: +SKIP
>>> tasks.exact_match(["5 5 6"], ["5 5 6"])
1.0
"""

from __future__ import annotations

from typing import Any

from ._common import SPLITS, exact_match, normalize_answer, to_dataset_dict
from .arithmetic import arithmetic, arithmetic_splits
from .lis import lis, lis_splits
from .multiplication import multiplication, multiplication_splits
from .retrieval import retrieval, retrieval_splits
from .tokenizer import build_tokenizer

__all__ = [
    "SPLITS",
    "TASKS",
    "arithmetic",
    "arithmetic_splits",
    "build",
    "build_tokenizer",
    "exact_match",
    "lis",
    "lis_splits",
    "multiplication",
    "multiplication_splits",
    "normalize_answer",
    "retrieval",
    "retrieval_splits",
    "to_dataset_dict",
]

# name -> (DatasetDict builder, plain-lists builder)
TASKS: dict[str, tuple[Any, Any]] = {
    "multiplication": (multiplication, multiplication_splits),
    "arithmetic": (arithmetic, arithmetic_splits),
    "lis": (lis, lis_splits),
    "retrieval": (retrieval, retrieval_splits),
}


def build(name: str, as_datasets: bool = True, **kwargs: Any):
    """Build task ``name`` with ``kwargs``: a ``DatasetDict``, or plain lists with ``as_datasets=False``.

    >>> build("lis", as_datasets=False, length=5, train_size=4, validation_size=2,
    ...       test_size=2)["test"]["answer"][:1]  # doctest: +SKIP
    ['3']
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    full, plain = TASKS[name]
    return full(**kwargs) if as_datasets else plain(**kwargs)
