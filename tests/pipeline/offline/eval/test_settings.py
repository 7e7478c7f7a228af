"""pipeline.offline.eval.settings / cli: argv -> EvalSettings, checked when built."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.offline.data.dataset import DEFAULT_ROOT, MODALITIES
from pipeline.offline.eval import EvalError, EvalSettings, parse_args


def test_argv_becomes_typed_settings():
    settings = parse_args(["--split", "val", "--modality", "IR", "--weights", "w.pt", "--stride", "10",
                           "--max-frames", "5", "--through-pipeline", "--visible-boxes", "tight"])
    assert isinstance(settings, EvalSettings)
    assert settings.modality == ("IR",) and settings.weights == Path("w.pt") and settings.stride == 10
    assert settings.max_frames == 5 and settings.through_pipeline and settings.tight_visible_boxes
    assert parse_args([]) == EvalSettings()
    assert EvalSettings().data == DEFAULT_ROOT and EvalSettings().modality == MODALITIES


@pytest.mark.parametrize("argv, message", [(["--stride", "0"], "--stride must be >= 1"),
                                           (["--max-frames", "0"], "--max-frames must be >= 1")])
def test_bad_values_exit_2_with_the_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_settings_built_directly_are_checked_too():
    with pytest.raises(EvalError, match="--stride"):
        EvalSettings(stride=0)
    with pytest.raises(EvalError, match="metrics library"):
        EvalSettings(metrics="detectron")
