"""The config schema's machinery: dataclasses walked against YAML, with every value check declared on
the field it checks.

A section is a dataclass. Its fields' type hints say what a value must be (int, float, str, bool, a
list, a mapping, another section, or None where the hint allows it); ``setting(...)`` adds the range
or the choices a value must be in; a section's ``validate(self, where)`` holds the checks that
involve more than one of its fields. ``build(cls, raw, where)`` applies all of them, so a section is
checked in one place, at load, and the message names the key: ``config key 'stages.view.port' must
be <= 65535, got 70000``.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """One line naming the key and the problem."""


def setting(default: Any = dataclasses.MISSING, *, factory=None, ge=None, gt=None, le=None, choices=None):
    """A section field with its checks: ``ge``/``gt``/``le`` bounds (numbers), ``choices`` (allowed values)."""
    metadata = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("choices", choices)) if v is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def build(cls, raw: Any, where: str):
    """An instance of section ``cls`` from a YAML mapping; ConfigError naming the key otherwise."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{join(where, key)}' (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields:
        if f.name in raw:
            kwargs[f.name] = coerce(hints[f.name], raw[f.name], join(where, f.name))
            check_value(kwargs[f.name], f.metadata, join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{join(where, f.name)}'")
    section = cls(**kwargs)
    if hasattr(section, "validate"):
        section.validate(where)
    return section


def coerce(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {type(value).__name__}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {type(value).__name__}")
        return {str(k): coerce(args[1], v, join(where, k)) for k, v in value.items()}
    return _scalar(hint, value, where)


def _scalar(hint, value, where: str):
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # ids like 0 or 1 read from YAML
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"config key '{where}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"config key '{where}' must be a finite number, got {value!r}")
    return value


def check_value(value, rules: typing.Mapping, where: str) -> None:
    """The field's declared checks; a list is checked element by element, None (where allowed) passes."""
    if value is None or not rules:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_value(item, rules, f"{where}[{i}]")
        return
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"config key '{where}' must be one of {list(rules['choices'])}, got {value!r}")
    for rule, holds, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                              ("le", lambda v, b: v <= b, "<=")):
        if rule in rules and not holds(value, rules[rule]):
            raise ConfigError(f"config key '{where}' must be {word} {rules[rule]}, got {value!r}")


def join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def to_plain(value):
    """Sections and the containers holding them as plain dicts and lists (for YAML)."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
