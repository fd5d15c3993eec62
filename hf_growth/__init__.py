"""hf-growth: grow pretrained transformers function-preservingly and train them to reason.

>>> import hf_growth                      # registers model_type "resformer" with the Auto classes
>>> from hf_growth import grow_model, load_model
>>> model, tokenizer = load_model("smollm2")  # doctest: +SKIP

Importing the package is cheap: the public names below are resolved on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "ResFormerConfig": "hf_growth.resformer.configuration_resformer",
    "ResFormerModel": "hf_growth.resformer.modeling_resformer",
    "ResFormerForCausalLM": "hf_growth.resformer.modeling_resformer",
    "ResFormerPreTrainedModel": "hf_growth.resformer.modeling_resformer",
    "convert_llama_to_resformer": "hf_growth.resformer.convert",
    "grow_model": "hf_growth.growth",
    "load_model": "hf_growth.growth.sources",
    "load_smollm2": "hf_growth._embedded",
    "GrowthPlan": "hf_growth.growth.plan",
    "max_logit_diff": "hf_growth.growth.verify",
    "freeze_original": "hf_growth.growth.freeze",
    "grow_in_place": "hf_growth.growth.in_place",
    "SeqVCRConfig": "hf_growth.training.seq_vcr_config",
    "SeqVCRTrainer": "hf_growth.training.seq_vcr_trainer",
    "add_pause_tokens": "hf_growth.training.pause",
    "MidasStackingCallback": "hf_growth.training.callbacks",
    "GrowthCallback": "hf_growth.training.callbacks",
}
_SUBMODULES = {"tasks", "analysis", "training", "growth", "resformer", "hub"}

__all__ = sorted([*_LAZY, *_SUBMODULES])

if TYPE_CHECKING:  # pragma: no cover
    from . import analysis, growth, hub, resformer, tasks, training
    from ._embedded import load_smollm2
    from .growth import grow_model
    from .growth.freeze import freeze_original
    from .growth.plan import GrowthPlan
    from .growth.sources import load_model
    from .growth.verify import max_logit_diff
    from .resformer.configuration_resformer import ResFormerConfig
    from .resformer.convert import convert_llama_to_resformer
    from .resformer.modeling_resformer import ResFormerForCausalLM, ResFormerModel, ResFormerPreTrainedModel
    from .training.callbacks import GrowthCallback, MidasStackingCallback
    from .training.pause import add_pause_tokens
    from .training.seq_vcr_config import SeqVCRConfig
    from .training.seq_vcr_trainer import SeqVCRTrainer


__getattr__ = lazy_getattr(__name__, _LAZY, globals(), _SUBMODULES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


from .resformer import register_auto_classes as _register_auto_classes  # noqa: E402

_register_auto_classes()
