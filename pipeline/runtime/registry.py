"""Where stages are found by name. A Stage subclass that sets ``name`` registers itself when its module
is imported (``Stage.__init_subclass__``); the config, the supervisor and the CLI ask this registry.

A frame-path entry or a ``run_stages`` entry is a stage reference:
    detect                           the stage registered as "detect", found in stages/detect.py
    my_package.my_module:denoise     the stage "denoise" that my_package.my_module registers
so a new stage is one file (stages/<name>.py, or any importable module) plus its line in the YAML.
"""
from __future__ import annotations

import importlib

from pipeline.runtime.schema import ConfigError

STAGE_PACKAGE = "stages"  # stages/<name>.py holds the stage <name> (the design card's layout)
_STAGES: dict[str, type] = {}


def register_stage(cls: type) -> type:
    """Add a stage class under its ``name``; a second class under one name is a programming error."""
    known = _STAGES.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"two stages are named {cls.name!r}: {known.__module__}.{known.__qualname__} and "
                         f"{cls.__module__}.{cls.__qualname__}")
    _STAGES[cls.name] = cls
    return cls


def stage_name(ref: str) -> str:
    """"pkg.mod:name" -> "name"; "name" -> "name"."""
    return ref.rpartition(":")[2]


def stage_class(ref: str) -> type:
    """The stage class a reference names, importing its module on first use (ConfigError if none)."""
    module, _, name = ref.rpartition(":")
    if not name.isidentifier():
        raise ConfigError(f"stage reference {ref!r}: a stage is <name> or <package.module>:<name>")
    if name not in _STAGES:
        _import(module or f"{STAGE_PACKAGE}.{name}", ref)
    if name not in _STAGES:
        raise ConfigError(f"stage reference {ref!r}: module {module or STAGE_PACKAGE + '.' + name} "
                          f"registers no stage named {name!r}")
    return _STAGES[name]


def _import(module: str, ref: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module == missing or module.startswith(missing + "."):  # the stage's module itself is absent
            raise ConfigError(f"unknown stage {ref!r}: no module {module} (a stage lives in "
                              f"{STAGE_PACKAGE}/<name>.py, or is named <package.module>:<name>)") from None
        raise
