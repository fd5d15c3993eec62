"""Lazy imports, one mechanism for the whole package: importing ``hf_growth`` (or planning a growth that only copies
tensors) must not import torch, transformers or matplotlib.

- :func:`lazy_getattr`: a package's public names, each imported from the module that defines it on first use
  (a PEP 562 module ``__getattr__``), then cached in the package's namespace.
- :func:`lazy_module`: a stand-in for a module (``torch``) that imports it on first attribute access and then
  puts the module itself in the namespaces it was bound into.
- :func:`import_object`: ``"package.module:Name"`` -> the object (registries that name classes as strings).

>>> import types
>>> pkg = types.ModuleType("pkg")
>>> pkg.__getattr__ = lazy_getattr("pkg", {"dumps": "json"}, vars(pkg))
>>> pkg.__getattr__("dumps") is __import__("json").dumps and "dumps" in vars(pkg)
True
>>> namespace = {}
>>> namespace["json"] = lazy_module("json", namespace)
>>> namespace["json"].dumps([1]), namespace["json"] is __import__("json")
('[1]', True)
>>> import_object("json:loads")("[2]")
[2]
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["LazyModule", "import_object", "lazy_getattr", "lazy_module"]


def lazy_getattr(
    package: str, names: Mapping[str, str], namespace: dict[str, Any], submodules: Collection[str] = ()
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each public name to the module defining it
    (relative to ``package`` when it starts with a dot), ``submodules`` are subpackages returned as modules."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
        elif name in submodules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    return __getattr__


class LazyModule:
    """A stand-in for the module ``name``: the first attribute access imports it and replaces the stand-in by the
    module in every namespace it was bound into (:meth:`bind`), so later uses cost nothing. Use it as

    .. code-block:: python

        if TYPE_CHECKING:
            import torch
        else:
            torch = lazy_module("torch", globals())
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._namespaces: list[dict[str, Any]] = []

    def bind(self, namespace: dict[str, Any]) -> LazyModule:
        """Replace this stand-in in ``namespace`` (a module's ``globals()``) once the module is imported."""
        self._namespaces.append(namespace)
        return self

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        module = importlib.import_module(self._name)
        for namespace in self._namespaces:
            for key, value in list(namespace.items()):
                if value is self:
                    namespace[key] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str, namespace: dict[str, Any] | None = None) -> Any:
    """A :class:`LazyModule` for ``name``, bound into ``namespace`` when given."""
    module = LazyModule(name)
    return module.bind(namespace) if namespace is not None else module


def import_object(target: str) -> Any:
    """The object a ``"package.module:Name"`` string names (the module is imported on this call)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name) if name else importlib.import_module(module)
