"""``SeqVCRConfig``: ``TrainingArguments`` plus the Seq-VCR and pause-token settings of :class:`SeqVCRTrainer`.

Like TRL's configs it is a dataclass, so ``transformers.HfArgumentParser`` turns it into command-line flags
(``--seq_vcr_projection_dim 256``); ``scripts/train_reasoning.py`` builds its arguments from it.

>>> from transformers import HfArgumentParser
>>> (args,) = HfArgumentParser(SeqVCRConfig).parse_args_into_dataclasses(
...     ["--output_dir", "/tmp/out", "--seq_vcr_layers", "0,2", "--use_cpu", "--report_to", "none"])
>>> args.seq_vcr_layers, args.seq_vcr_variance_weight
([0, 2], 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

__all__ = ["SeqVCRConfig"]

_STATISTICS = ("batch", "batch_length")


@dataclass
class SeqVCRConfig(TrainingArguments):
    """``TrainingArguments`` plus the Seq-VCR settings; defaults are the paper's multiplication setting
    (lambda1 = 1.0, lambda2 = 0.004, eta = 1e-3, last block, 2048-dim projection, per-position statistics,
    2 pause tokens, batch 32, learning rate 5e-4). Arithmetic/LIS: weights 0.1 / 0.5, batch 128, lr 1e-4.

    ``seq_vcr_layers``: ``"last"``, ``"embeddings"`` (the input of the first block), a block index, or a list
    of block indices (``"0,5"`` from the command line); with several layers the terms are averaged.

    >>> args = SeqVCRConfig(output_dir="/tmp/out", report_to=[], use_cpu=True)
    >>> args.seq_vcr_covariance_weight, args.seq_vcr_projection_dim, args.per_device_train_batch_size
    (0.004, 2048, 32)
    """

    use_seq_vcr: bool = field(default=True, metadata={"help": "Add the Seq-VCR regulariser to the loss."})
    seq_vcr_variance_weight: float = field(default=1.0, metadata={"help": "lambda1 (variance hinge)."})
    seq_vcr_covariance_weight: float = field(default=0.004, metadata={"help": "lambda2 (off-diagonal covariance)."})
    seq_vcr_eps: float = field(default=1e-3, metadata={"help": "eta inside sqrt(var + eta)."})
    seq_vcr_layers: str = field(
        default="last", metadata={"help": "'last', 'embeddings', a block index or comma-separated indices."}
    )
    seq_vcr_projection_dim: int | None = field(
        default=2048, metadata={"help": "Width of the projection head trained only by Seq-VCR; 0 or None = no head."}
    )
    seq_vcr_statistics: str = field(
        default="batch", metadata={"help": "'batch' (per position across the batch) or 'batch_length'."}
    )
    seq_vcr_compile: bool | None = field(
        default=None, metadata={"help": "torch.compile the head + statistics; None = when torch_compile is on."}
    )
    num_pause_tokens: int = field(default=2, metadata={"help": "Pause tokens between question and answer."})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate (paper: 5e-4)."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device (paper: 32)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.seq_vcr_layers = _parse_layers(self.seq_vcr_layers)
        if self.seq_vcr_statistics not in _STATISTICS:
            raise ValueError(f"seq_vcr_statistics must be one of {_STATISTICS}, got {self.seq_vcr_statistics!r}")
        if self.seq_vcr_projection_dim == 0:  # the command line's way to say "no head"
            self.seq_vcr_projection_dim = None
        if self.seq_vcr_projection_dim is not None and int(self.seq_vcr_projection_dim) < 1:
            raise ValueError(
                f"seq_vcr_projection_dim must be >= 1, or 0 / None for no head, got {self.seq_vcr_projection_dim}"
            )
        if self.num_pause_tokens < 0:
            raise ValueError(f"num_pause_tokens must be >= 0, got {self.num_pause_tokens}")


def _parse_layers(layers: Any) -> str | list[int]:
    if isinstance(layers, str):
        text = layers.strip()
        if text in ("last", "embeddings"):
            return text
        try:
            return [int(part) for part in text.replace("[", "").replace("]", "").split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"seq_vcr_layers must be 'last', 'embeddings' or block indices, got {layers!r}") from None
    if isinstance(layers, int):
        return [layers]
    return [int(i) for i in layers]
