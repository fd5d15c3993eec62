"""Lazy public names for a package's ``__init__`` (PEP 562 module ``__getattr__``): a name is imported from the
module that defines it on first use, then cached in the package's namespace.

>>> import types
>>> pkg = types.ModuleType("pkg")
>>> pkg.__getattr__ = lazy_getattr("pkg", {"dumps": "json"}, vars(pkg))
>>> pkg.__getattr__("dumps") is __import__("json").dumps and "dumps" in vars(pkg)
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str], namespace: dict[str, Any],
                 submodules: Collection[str] = ()) -> Callable[[str], Any]:
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
