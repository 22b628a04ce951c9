"""PEP 562 lazy attributes for a package's ``__init__``: a name is imported from its submodule
on first use, so importing the package costs nothing until something is needed (``import
attribution`` does not load TensorFlow; ``python -m pipeline.report --help`` loads no Beam)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping


def lazy_attributes(
    package: str, exports: Mapping[str, Iterable[str]], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a submodule to the names
    it defines; ``submodules`` are returned as modules (``package.read``)."""
    exports = {name: module for module, names in exports.items() for name in names}
    submodules = frozenset(submodules)

    def __getattr__(name: str):
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports, *submodules})

    return __getattr__, __dir__
