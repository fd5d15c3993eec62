"""Reasoning training: the Seq-VCR regulariser, pause tokens, ``SeqVCRTrainer`` and tensor datasets.

Importing this package needs only torch (the trainer and pause helpers import transformers when used),
and never ``datasets``.

>>> import torch
>>> from hf_growth.training import seq_vcr_loss
>>> float(seq_vcr_loss(torch.randn(8, 4, 16))) > 0
True
"""

from __future__ import annotations

from .._lazy import lazy_getattr
from .seq_vcr import SeqVCRTerms, seq_vcr_loss, seq_vcr_terms

__all__ = [
    "SeqVCRTerms",
    "seq_vcr_loss",
    "seq_vcr_terms",
    "SeqVCRConfig",
    "SeqVCRTrainer",
    "PauseTokens",
    "PauseCollator",
    "add_pause_tokens",
    "encode_examples",
    "generate_with_pauses",
    "pause_tokens_of",
    "TensorDataset",
    "collate_tensors",
]

_LAZY = {
    "SeqVCRConfig": ".seq_vcr_config",
    "SeqVCRTrainer": ".seq_vcr_trainer",
    "PauseTokens": ".pause",
    "PauseCollator": ".pause",
    "add_pause_tokens": ".pause",
    "encode_examples": ".pause",
    "generate_with_pauses": ".pause",
    "pause_tokens_of": ".pause",
    "TensorDataset": ".data",
    "collate_tensors": ".data",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
