"""Detect: YOLOX-GSSAM on letterboxed frames, batched across streams."""
from __future__ import annotations

import logging

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.messages import FrameMessage
from pipeline.stage import Stage

log = logging.getLogger("stages.detect")


def weights_path(cfg: PipelineConfig) -> str:
    import models

    weights = cfg.stages.detect.weights
    return str(models.DEFAULT_WEIGHTS if weights == "default" else cfg.resolve(weights))


def model_input_size(cfg: PipelineConfig) -> tuple[int, int]:
    import models

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
        self.detector = Detector(weights_path(cfg), backend=det.backend, device=det.device, fp16=det.fp16,
                                 conf_threshold=det.conf_threshold, nms_threshold=det.nms_threshold)
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
