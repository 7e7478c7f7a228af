"""Detect: YOLOX-GSSAM on letterboxed frames, batched across streams."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np

from pipeline.runtime.config import ConfigError, PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage

log = logging.getLogger("stages.detect")


def weights_path(cfg: PipelineConfig) -> str:
    import models

    weights = cfg.stages.detect.weights
    return str(models.DEFAULT_WEIGHTS if weights == "default" else cfg.resolve(weights))


@contextmanager
def weights_problems_as_config_errors():
    """A wrong or truncated weights file is a configuration problem: one line and exit 2 (no
    restarts), not a traceback in every restarted stage."""
    from models import CheckpointError

    try:
        yield
    except CheckpointError as exc:
        raise ConfigError(f"config key 'stages.detect.weights': {exc}") from None


def check_weights(cfg: PipelineConfig) -> None:
    """Load the configured weights once before any stage starts (ConfigError if they are wrong)."""
    import models

    with weights_problems_as_config_errors():
        models.load_checkpoint(weights_path(cfg))


def model_input_size(cfg: PipelineConfig) -> tuple[int, int]:
    """The detector's input (h, w): stages.preprocess.input_size, else the checkpoint's own."""
    import models

    if cfg.stages.preprocess.input_size:
        return tuple(cfg.stages.preprocess.input_size)
    with weights_problems_as_config_errors():
        return tuple(models.checkpoint_meta(weights_path(cfg))["input_size"])


class DetectStage(Stage):
    name = "detect"
    input_key = "detect_in"
    output_key = "track_in"

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        from models import Detector

        det = cfg.stages.detect
        self.batch_size = det.batch_size
        with weights_problems_as_config_errors():
            self.detector = Detector(weights_path(cfg), backend=det.backend, device=det.device, fp16=det.fp16,
                                     conf_threshold=det.conf_threshold, nms_threshold=det.nms_threshold,
                                     class_agnostic_nms=det.class_agnostic_nms,
                                     input_size=cfg.stages.preprocess.input_size)  # None: the checkpoint's
        log.info("detector %s (%s on %s), classes %s", weights_path(cfg), det.backend, det.device,
                 self.detector.class_names)

    def process_batch(self, msgs: list[FrameMessage]) -> list[FrameMessage]:
        batch = np.stack([m.buffers.pop("input") for m in msgs]).transpose(0, 3, 1, 2).astype(np.float32)
        raw = self.detector.infer(batch)
        results = self.detector.postprocess(raw, [m.meta["ratio"] for m in msgs], [m.image.shape for m in msgs])
        for msg, dets in zip(msgs, results):
            msg.detections = np.asarray(dets, dtype=np.float32).reshape(-1, 6)
            msg.meta["class_names"] = self.detector.class_names
        return msgs
