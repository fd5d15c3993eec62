"""ResFormer / SVFormer (value residual learning) as Hugging Face auto-classes.

``import hf_growth`` calls :func:`register_auto_classes`, after which the Auto classes know ``model_type
"resformer"``:

>>> import hf_growth
>>> from transformers import AutoConfig, AutoModelForCausalLM
>>> config = AutoConfig.for_model("resformer", vocab_size=64, hidden_size=32, intermediate_size=64,
...                               num_hidden_layers=2, num_attention_heads=4)
>>> type(AutoModelForCausalLM.from_config(config)).__name__
'ResFormerForCausalLM'

Registration is lazy, so that importing hf_growth stays cheap: a post-import hook registers the config when
transformers' Auto modules are imported (at once if they already are), and the value stored in the model
mappings is a stand-in that imports the class from ``modeling_resformer`` on first use.

``configuration_resformer.py`` and ``modeling_resformer.py`` are self-contained (``save_pretrained`` ships them
as remote code); ``convert.py`` turns a Llama into a ResFormer.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["register_auto_classes"]

_MODELING = "hf_growth.resformer.modeling_resformer"


class _LazyModelClass:
    """Stand-in for a model class in an Auto mapping; imports the real class on first attribute access.

    ``AutoModel*.from_config`` / ``from_pretrained`` only read ``__module__`` (plain attribute here) and then call
    ``_from_config`` / ``from_pretrained``, which this object forwards to the real class. Once resolved, it swaps
    itself for the real class in the mapping, so later lookups return the class itself.
    """

    def __init__(self, module: str, name: str, mapping: Any = None, config_class: Any = None) -> None:
        self.__module__ = module
        self.__name__ = name
        self.__qualname__ = name
        self._mapping = mapping
        self._config_class = config_class

    def resolve(self) -> type:
        """Import and return the model class (and put it in the mapping in place of this stand-in)."""
        cls = getattr(importlib.import_module(self.__module__), self.__name__)
        extra = getattr(self._mapping, "_extra_content", None)
        if extra is not None and extra.get(self._config_class) is self:
            extra[self._config_class] = cls
        return cls

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return getattr(self.resolve(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy class {self.__module__}.{self.__name__}>"


_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_MODELING_AUTO = "transformers.models.auto.modeling_auto"


def _register_config(configuration_auto: Any) -> None:
    from .configuration_resformer import ResFormerConfig

    configuration_auto.AutoConfig.register("resformer", ResFormerConfig, exist_ok=True)


def _register_models(modeling_auto: Any) -> None:
    from .configuration_resformer import ResFormerConfig

    for mapping, name in (
        (modeling_auto.MODEL_MAPPING, "ResFormerModel"),
        (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING, "ResFormerForCausalLM"),
    ):
        mapping.register(ResFormerConfig, _LazyModelClass(_MODELING, name, mapping, ResFormerConfig), exist_ok=True)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after one of the named modules is executed, then gets out of the way.

    It finds nothing itself: it asks the other finders for the spec and wraps that spec's loader, so the module is
    loaded exactly as it would be without the hook.
    """

    def __init__(self, callbacks: dict[str, Callable[[Any], None]]) -> None:
        self.callbacks = dict(callbacks)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: Any) -> None:
            original_exec(module)
            callback = self.callbacks.pop(fullname, None)
            if not self.callbacks and self in sys.meta_path:
                sys.meta_path.remove(self)
            if callback is not None:
                callback(module)

        loader.exec_module = exec_module
        return spec


_hook: _PostImportHook | None = None


def register_auto_classes() -> None:
    """Register ``resformer`` with AutoConfig, AutoModel and AutoModelForCausalLM. Idempotent, and cheap.

    Nothing heavy is imported here: if transformers' Auto modules are already imported, the classes are
    registered now; otherwise a post-import hook registers them the moment those modules are imported (e.g. by
    ``from transformers import AutoConfig``). The model classes themselves are stand-ins that import
    ``modeling_resformer`` on first use.

    >>> from hf_growth.resformer import register_auto_classes
    >>> register_auto_classes()
    """
    global _hook
    pending: dict[str, Callable[[Any], None]] = {}
    for module_name, callback in ((_CONFIG_AUTO, _register_config), (_MODELING_AUTO, _register_models)):
        module = sys.modules.get(module_name)
        if module is not None:
            callback(module)
        else:
            pending[module_name] = callback
    if _hook is not None and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    _hook = None
    if pending:
        _hook = _PostImportHook(pending)
        sys.meta_path.insert(0, _hook)
