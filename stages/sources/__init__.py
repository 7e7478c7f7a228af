"""Source kinds: how the capture stage reads a source URI.

A kind is one ``SourceKind`` subclass with a ``name`` in a module of this package (every module here
is imported, and a subclass registers itself), so a new kind is one file: say which URIs it
``matches``, ``validate`` one at config load, and read frames (``read``, ``release``, ``fps``,
``frame_count``); ``finite`` says whether it ends (a file: paced, looped, resumed by skipping) or is a
camera (reconnects with backoff, resumes by numbering on).
"""
from __future__ import annotations

import importlib
import pkgutil

from stages.sources.base import SourceError, SourceKind, kind_for

__all__ = ["SourceError", "SourceKind", "kind_for"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
