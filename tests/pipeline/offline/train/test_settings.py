"""pipeline.offline.train.settings / cli: argv -> TrainSettings, checked when built."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pipeline.offline.train import TrainError, TrainSettings, parse_args


def test_argv_becomes_typed_settings_with_the_optimizer_defaults():
    settings = parse_args(["--out", "runs/x", "--epochs", "2", "--input-size", "256x320", "--batch", "32",
                           "--optimizer", "sgd", "--l1-loss"])
    assert isinstance(settings, TrainSettings)
    assert settings.input_size == (256, 320) and settings.epochs == 2 and settings.minutes is None
    assert settings.l1_loss and settings.lr == pytest.approx(0.01 * 32 / 64) and settings.weight_decay == 5e-4
    adamw = parse_args(["--out", "x", "--minutes", "1.5"])
    assert (adamw.lr, adamw.weight_decay, adamw.minutes) == (2e-3, 0.05, 1.5)
    assert parse_args(["--out", "x", "--epochs", "1", "--lr", "4e-4"]).lr == 4e-4


def test_config_lists_every_option_under_its_command_line_name():
    config = parse_args(["--out", "x", "--epochs", "1"]).as_config()
    assert config["input_size"] == [512, 640] and config["out"] == "x" and config["small_object_power"] == 0.0
    assert {"no_progress", "prepare_only", "gpu_reserve_gb", "visible_boxes"} <= set(config)


@pytest.mark.parametrize("options, message", [
    ({}, "give a budget"),
    ({"epochs": 1, "minutes": 2.0}, "one budget"),
    ({"epochs": 1, "input_size": (500, 640)}, "--input-size must be HxW, multiples of 32 (e.g. 512x640), got '500x640'"),
    ({"epochs": 1, "crop": 100}, "--crop must be a multiple of 32"),
    ({"epochs": 1, "batch": 0}, "--batch must be >= 1"),
    ({"minutes": 0.0}, "must be positive"),
])
def test_settings_built_directly_are_checked_too(options, message):
    with pytest.raises(TrainError, match=re.escape(message)):
        TrainSettings(out="x", **options)


def test_an_unreadable_input_size_is_one_train_error():
    with pytest.raises(TrainError, match="got '512by640'"):
        parse_args(["--out", "x", "--epochs", "1", "--input-size", "512by640"])


def test_the_package_runs_as_a_module():
    """scripts/gpu_train.sh runs ``python -m pipeline.offline.train``."""
    done = subprocess.run([sys.executable, "-m", "pipeline.offline.train", "--out", "x"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.strip() == "error: give a budget: --epochs N or --minutes M"
