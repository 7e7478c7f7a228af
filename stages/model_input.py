"""The model input of a run, shared by the preprocess and detect stages: which weights file, and the
input size (stages.preprocess.input_size, else the checkpoint's own, read without torch)."""
from __future__ import annotations

from contextlib import contextmanager

import models
from pipeline.runtime.config import ConfigError, PipelineConfig


def weights_path(cfg: PipelineConfig) -> str:
    weights = cfg.stages.detect.weights
    return str(models.shipped_weights(weights) or cfg.resolve(weights))


@contextmanager
def weights_problems_as_config_errors():
    """A wrong or truncated weights file is a configuration problem: one line and exit 2 (no
    restarts), not a traceback in every restarted stage."""
    from models.backends import BackendError
    from models.meta import CheckpointError

    try:
        yield
    except CheckpointError as exc:
        raise ConfigError(f"config key 'stages.detect.weights': {exc}") from None
    except BackendError as exc:  # e.g. an INT8 backend whose model was never made
        raise ConfigError(f"config key 'stages.detect.{exc.key}': {exc}") from None


def model_input_size(cfg: PipelineConfig) -> tuple[int, int]:
    """The detector's input (h, w): stages.preprocess.input_size, else the checkpoint's own."""
    preprocess = cfg.stages.get("preprocess")  # absent where the frame path has no preprocess stage
    if preprocess is not None and preprocess.input_size:
        return tuple(preprocess.input_size)
    with weights_problems_as_config_errors():
        return tuple(models.checkpoint_meta(weights_path(cfg))["input_size"])
