"""scripts/bench_backends.py: which models it compares (names, or NAME=CHECKPOINT)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("bench_backends", REPO / "scripts" / "bench_backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_are_named_or_given_as_checkpoints(tmp_path):
    bench = _script()
    twin = tmp_path / "twin.pt"
    twin.write_bytes(b"x")
    models = bench.parse_models(f"default,baseline,twin={twin}")
    assert list(models) == ["default", "baseline", "twin"] and models["twin"] == twin
    assert models["baseline"] == bench.MODELS["baseline"]


@pytest.mark.parametrize("spec, message", [
    ("nano", "--models: 'nano' is not one of default, baseline nor NAME=CHECKPOINT.pt"),
    ("twin=/nonexistent.pt", "--models: /nonexistent.pt: no such checkpoint"),
])
def test_a_bad_model_is_one_line(spec, message):
    with pytest.raises(SystemExit, match=message):
        _script().parse_models(spec)
