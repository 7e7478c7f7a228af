"""pipeline/runtime/schema.py: a section's checks are declared on its fields and applied in one place."""
from dataclasses import dataclass

import pytest

from pipeline.runtime.schema import ConfigError, build, setting, to_plain


@dataclass
class Inner:
    ratio: float = setting(0.5, ge=0.0, le=1.0)


@dataclass
class Section:
    name: str
    port: int = setting(80, ge=0, le=65535)
    timeout_s: float = setting(1.0, gt=0)
    kind: str = setting("a", choices=("a", "b"))
    sizes: list[int] = setting(factory=lambda: [1], ge=1)
    limit: float | None = setting(None, gt=0)
    inner: Inner = setting(factory=Inner)

    def validate(self, where: str) -> None:
        if self.kind == "b" and self.limit is None:
            raise ConfigError(f"config key '{where}.limit' is required with kind b")


def test_defaults_and_coercion():
    section = build(Section, {"name": 7, "timeout_s": 2}, "s")
    assert section.name == "7" and section.timeout_s == 2.0 and section.inner.ratio == 0.5 and section.limit is None


@pytest.mark.parametrize("raw, message", [
    ({"name": "x", "port": 70000}, "config key 's.port' must be <= 65535, got 70000"),
    ({"name": "x", "port": -1}, "config key 's.port' must be >= 0, got -1"),
    ({"name": "x", "timeout_s": 0}, "config key 's.timeout_s' must be > 0, got 0.0"),
    ({"name": "x", "timeout_s": float("nan")}, "config key 's.timeout_s' must be a finite number, got nan"),
    ({"name": "x", "kind": "c"}, "config key 's.kind' must be one of ['a', 'b'], got 'c'"),
    ({"name": "x", "sizes": [2, 0]}, "config key 's.sizes[1]' must be >= 1, got 0"),
    ({"name": "x", "limit": -1}, "config key 's.limit' must be > 0, got -1.0"),
    ({"name": "x", "inner": {"ratio": 2}}, "config key 's.inner.ratio' must be <= 1.0, got 2.0"),
    ({"name": "x", "port": True}, "config key 's.port' must be int, got bool True"),
    ({"name": "x", "colour": 1}, "unknown config key 's.colour' (allowed: inner, kind, limit, name, port, sizes,"),
    ({}, "missing required config key 's.name'"),
    ({"name": "x", "kind": "b"}, "config key 's.limit' is required with kind b"),
    ([], "s: expected a mapping, got list"),
])
def test_every_check_is_one_line_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as caught:
        build(Section, raw, "s")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_to_plain_turns_sections_into_yaml_data():
    assert to_plain({"s": build(Section, {"name": "x"}, "s")})["s"] == {
        "name": "x", "port": 80, "timeout_s": 1.0, "kind": "a", "sizes": [1], "limit": None, "inner": {"ratio": 0.5}}
