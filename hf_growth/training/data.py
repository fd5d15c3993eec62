"""Tensor datasets for fast training: whole splits tokenised once, batches fetched by indexing.

``TensorDataset.__getitems__`` returns a ready batch (a one-element list holding a dict of 2-D tensors, which
survives the Trainer's column-removing wrapper), so the ``DataLoader`` does no per-example Python work;
:func:`collate_tensors` concatenates such batches and stacks lists of single rows.

>>> import torch
>>> from hf_growth.training.data import TensorDataset, collate_tensors
>>> ds = TensorDataset({"input_ids": torch.arange(12).view(4, 3), "labels": torch.arange(12).view(4, 3)})
>>> collate_tensors(ds.__getitems__([0, 2]))["input_ids"].tolist()
[[0, 1, 2], [6, 7, 8]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["TensorDataset", "collate_tensors", "encode_split"]


class TensorDataset(torch.utils.data.Dataset):
    """A map-style dataset over a dict of equally long tensors (rows = examples)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"all tensors need the same number of rows, got {sizes}")
        self.tensors = dict(tensors)
        self._len = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return [{k: v[idx] for k, v in self.tensors.items()}]


def collate_tensors(batch: Any) -> dict[str, torch.Tensor]:
    """Collator for :class:`TensorDataset`: a dict batch passes through, a list of batches (``input_ids``
    2-D) is concatenated, a list of rows (``input_ids`` 1-D) is stacked."""
    if isinstance(batch, Mapping):
        return dict(batch)
    first = batch[0]
    if "input_ids" in first and torch.as_tensor(first["input_ids"]).dim() == 2:
        return {k: torch.cat([b[k] for b in batch]) for k in first}
    return {k: torch.stack([torch.as_tensor(row[k]) for row in batch]) for k in first}


def encode_split(tokenizer, split: Mapping[str, Sequence[str]], pause=None, padding_side: str = "right") -> TensorDataset:
    """Tokenise a split (``{"question": [...], "answer": [...]}`` or a ``datasets.Dataset``) into a
    :class:`TensorDataset` with ``input_ids``, ``attention_mask`` and ``labels``."""
    from .pause import encode_examples

    return TensorDataset(encode_examples(tokenizer, split["question"], split["answer"], pause, padding_side))
