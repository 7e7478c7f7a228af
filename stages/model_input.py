"""The model input of a run, shared by the preprocess and detect stages: which weights file, and the
input size (stages.preprocess.input_size, else the checkpoint's own, read without torch)."""
from __future__ import annotations

from contextlib import contextmanager

import models
from pipeline.runtime.config import ConfigError, PipelineConfig


def check_weights_value(cfg: PipelineConfig, value: str) -> None:
    """A shipped name or an existing file, never both: a file beside the config that is called like a
    shipped checkpoint would otherwise be passed over without a word."""
    where = "config key 'stages.detect.weights'"
    local = cfg.resolve(value)
    if models.shipped_weights(value) is not None:
        if local.is_file():
            raise ConfigError(f"{where}: {value!r} names a shipped checkpoint and the file {local}; "
                              f"write ./{value} for the file")
    elif not local.is_file():
        shipped = ", ".join(models.shipped_names())
        hint = f" and is not a shipped name ({shipped})" if models.is_weights_name(value) else ""
        raise ConfigError(f"{where}: {value} does not exist{hint}")


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
