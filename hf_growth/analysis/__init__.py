"""Measurements from the papers, on your own models, as numbers and pictures (papers.md §1–§3).

>>> from hf_growth.analysis import layer_entropy, value_statistics, plot_layer_entropy  # doctest: +SKIP
>>> plot_layer_entropy({"model": layer_entropy(model, input_ids)}, "entropy.png")       # doctest: +SKIP

- ``layer_entropy(model, batches)``: matrix entropy of each layer's token representations (collapse).
- ``value_statistics(model, batches)``: per-layer value / attention statistics (ResFormer's analysis).
- ``HeadEmergenceCallback``: attention maps and per-head scores on a probe batch during training.
- ``plot_layer_entropy``, ``plot_value_statistics``, ``plot_head_emergence``: PNG figures.

Names resolve lazily so that importing this package does not import matplotlib or the Trainer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

_LAZY = {
    "layer_entropy": ".entropy",
    "matrix_entropy": ".entropy",
    "value_statistics": ".values",
    "HeadEmergenceCallback": ".heads",
    "plot_layer_entropy": ".plots",
    "plot_value_statistics": ".plots",
    "plot_head_emergence": ".plots",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .entropy import layer_entropy, matrix_entropy
    from .heads import HeadEmergenceCallback
    from .plots import plot_head_emergence, plot_layer_entropy, plot_value_statistics
    from .values import value_statistics


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
