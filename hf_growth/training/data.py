"""Tensor datasets for fast training: whole splits tokenised once, batches fetched by indexing.

``TensorDataset.__getitems__`` returns a ready batch (a one-element list holding a dict of 2-D tensors, which
survives the Trainer's column-removing wrapper), so the ``DataLoader`` does no per-example Python work;
:func:`collate_tensors` passes such a batch through (no copy), concatenates several and stacks lists of single
rows. :meth:`TensorDataset.to` moves the tensors to the training device once: batches are then gathered there,
with no host-to-device copy of the batch and no host synchronisation per step (use it with
``dataloader_pin_memory=False`` and ``dataloader_num_workers=0``).

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

__all__ = ["LabelledLogitsCollator", "TensorDataset", "collate_tensors", "encode_split", "first_labelled_position"]


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

    @property
    def device(self) -> torch.device:
        """The device of the tensors (that of the first one)."""
        return next(iter(self.tensors.values())).device

    def to(self, device: torch.device | str) -> TensorDataset:
        """A :class:`TensorDataset` over the same rows with every tensor on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if all(v.device == device for v in self.tensors.values()):
            return self
        return TensorDataset({k: v.to(device) for k, v in self.tensors.items()})

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        idx = torch.as_tensor(indices if isinstance(indices, (list, torch.Tensor)) else list(indices), dtype=torch.long)
        device = self.device
        if idx.device != device:
            # one index copy for all tensors; from pinned memory and non-blocking on CUDA (a pageable copy waits
            # for the GPU's queue to drain: a host sync every step)
            cuda = device.type == "cuda" and idx.device.type == "cpu"
            idx = (idx.pin_memory() if cuda else idx).to(device, non_blocking=cuda)
        return [{k: v.index_select(0, idx) for k, v in self.tensors.items()}]


def collate_tensors(batch: Any) -> dict[str, torch.Tensor]:
    """Collator for :class:`TensorDataset`: a dict batch passes through, a list of batches (``input_ids``
    2-D) is concatenated, a list of rows (``input_ids`` 1-D) is stacked."""
    if isinstance(batch, Mapping):
        return dict(batch)
    first = batch[0]
    if "input_ids" in first and torch.as_tensor(first["input_ids"]).dim() == 2:
        if len(batch) == 1:  # one ready batch from ``TensorDataset.__getitems__``: no copy
            return dict(first)
        return {k: torch.cat([b[k] for b in batch]) for k in first}
    return {k: torch.stack([torch.as_tensor(row[k]) for row in batch]) for k in first}


def encode_split(
    tokenizer, split: Mapping[str, Sequence[str]], pause=None, padding_side: str = "right"
) -> TensorDataset:
    """Tokenise a split (``{"question": [...], "answer": [...]}`` or a ``datasets.Dataset``) into a
    :class:`TensorDataset` with ``input_ids``, ``attention_mask`` and ``labels``."""
    from .pause import encode_examples

    return TensorDataset(encode_examples(tokenizer, split["question"], split["answer"], pause, padding_side))


def first_labelled_position(*datasets: TensorDataset, ignore_index: int = -100) -> int | None:
    """The first column where any row of any of ``datasets`` has a label (``None``: no labels at all)."""
    firsts = []
    for dataset in datasets:
        columns = (dataset.tensors["labels"] != ignore_index).any(0).nonzero()
        if len(columns):
            firsts.append(int(columns[0]))
    return min(firsts) if firsts else None


class LabelledLogitsCollator:
    """Collate, then let a causal LM compute logits only where they are scored: from the position before the
    first labelled column (``first_labelled``, e.g. from :func:`first_labelled_position`) to the end.

    Adds ``logits_to_keep`` (transformers' causal LMs slice the hidden states before the LM head) and the matching
    ``shift_labels`` (read by transformers' causal-LM loss instead of shifting ``labels``). The loss is the same
    (the dropped positions carry no label in any row); on short-answer tasks the vocabulary-wide logits, their
    float32 copy and their gradient shrink to the answer part (SmolLM2's tokenizer, 4x4 multiplication with 2
    pauses: 17 of 36 positions, ``benchmarks/labelled_logits.py``). Batches without ``labels`` pass through
    unchanged.

    >>> import torch
    >>> collate = LabelledLogitsCollator(first_labelled=3)
    >>> batch = collate([{"input_ids": torch.zeros(2, 5, dtype=torch.long),
    ...                   "labels": torch.tensor([[-100, -100, -100, 7, 8], [-100, -100, -100, 9, -100]])}])
    >>> batch["logits_to_keep"], batch["shift_labels"].tolist()
    (3, [[7, 8, -100], [9, -100, -100]])
    """

    def __init__(self, first_labelled: int, collate: Any = collate_tensors, ignore_index: int = -100) -> None:
        if first_labelled < 0:
            raise ValueError(f"first_labelled must be >= 0, got {first_labelled}")
        self.first_labelled, self.collate, self.ignore_index = int(first_labelled), collate, ignore_index

    def __call__(self, batch: Any) -> dict[str, Any]:
        out = self.collate(batch)
        labels = out.get("labels")
        start = self.first_labelled - 1  # the logit at position p is scored against the label at p + 1
        if labels is None or start <= 0:
            return out
        out["logits_to_keep"] = labels.shape[1] - start
        out["shift_labels"] = torch.nn.functional.pad(labels[:, start + 1 :], (0, 1), value=self.ignore_index)
        return out
