"""Names of a package that load on first use (PEP 562), so importing the package costs nothing: the
package's ``__getattr__ = lazy_names(__name__, {name: submodule})``. Used where a light process must
import a package whose other parts need torch (models/, pipeline/offline/train/)."""
from __future__ import annotations

import importlib
import sys


def lazy_names(package: str, homes: dict[str, str]):
    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{homes[name]}", package), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    return __getattr__
