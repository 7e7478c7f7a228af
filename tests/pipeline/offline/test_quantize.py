"""python -m pipeline quantize: makes the INT8 model an INT8 backend runs, where the detect stage's
preflight finds it; without one, the run stops before any stage starts with the command to make it."""
from __future__ import annotations

import pytest

from pipeline.offline import quantize as command
from pipeline.runtime.config import ConfigError, config_from_dict


def _config(tmp_path, weights, backend):
    (tmp_path / "clip.mp4").write_bytes(b"")  # the source is not opened: only the detector's preflight runs
    return config_from_dict({"sources": [{"id": "a", "uri": str(tmp_path / "clip.mp4")}], "output_dir": str(tmp_path / "out"),
                             "stages": {"detect": {"weights": str(weights), "backend": backend}}})


def test_preflight_names_the_command_that_makes_a_missing_int8_model(tmp_path, random_weights, monkeypatch):
    monkeypatch.setenv("MODELS_ONNX_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, random_weights, "onnx-int8")
    with pytest.raises(ConfigError, match=r"stages.detect.backend': no onnx-int8 model .* python -m pipeline quantize"):
        cfg.stage_class("detect").preflight(cfg)


@pytest.mark.slow
def test_quantize_without_the_dataset_calibrates_on_synthetic_frames(tmp_path, random_weights, monkeypatch, capsys):
    monkeypatch.setenv("MODELS_ONNX_CACHE", str(tmp_path / "cache"))
    code = command.main(["--backend", "onnx-int8", "--weights", str(random_weights), "--frames", "4",
                         "--data", str(tmp_path / "no-dataset")])
    assert code == 0
    assert "onnx-int8 model from 4 calibration frames" in capsys.readouterr().out
    cfg = _config(tmp_path, random_weights, "onnx-int8")
    cfg.stage_class("detect").preflight(cfg)  # found now


@pytest.mark.parametrize("argv, problem", [
    (["--backend", "onnx-int8", "--frames", "0"], "--frames must be >= 1"),
    (["--backend", "onnx-int8", "--input", "big"], "--input must be HxW, e.g. 512x640, got 'big'"),
])
def test_bad_options_are_one_line(argv, problem, capsys):
    assert command.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {problem}"
