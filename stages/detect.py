"""Detect: YOLOX-GSSAM on letterboxed frames, batched across streams.

Frames normally arrive letterboxed by the preprocess stage (buffer ``input``, ``meta["ratio"]``); a
frame path without preprocess is letterboxed here. The class names sent on with every frame are the
checkpoint's own, so the track stage never guesses them. Only this process imports torch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

import models
from models.backends import BACKENDS, BackendError, check_backend
from models.letterbox import letterbox
from pipeline.runtime.config import ConfigError, PipelineConfig, check_file
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.schema import setting
from pipeline.runtime.stage import Stage
from stages.model_input import model_input_size, weights_path, weights_problems_as_config_errors

log = logging.getLogger("stages.detect")


@dataclass
class DetectConfig:
    weights: str = "default"  # a checkpoint path, or "default": the shipped default model
    backend: str = setting("onnx", choices=BACKENDS)  # onnx (CPU) | torch
    device: str = "cpu"
    fp16: bool = False
    batch_size: int = setting(4, gt=0)
    conf_threshold: float = setting(0.25, ge=0.0, le=1.0)
    nms_threshold: float = setting(0.45, ge=0.0, le=1.0)
    # one box per object for the operator and the tracker: a drone that also scores as a bird at the same
    # place is kept once, as its best class (offline mAP keeps COCO's class-aware NMS)
    class_agnostic_nms: bool = True

    def validate(self, where: str) -> None:
        try:  # what the detector would refuse only after loading the weights (and restarting)
            check_backend(self.backend, self.device, self.fp16)
        except BackendError as exc:
            raise ConfigError(f"config key '{where}.{exc.key}': {exc}") from None


class DetectStage(Stage):
    name = "detect"
    section = DetectConfig
    port_offset = 1

    @classmethod
    def check_config(cls, cfg: PipelineConfig, check_files: bool) -> None:
        if check_files and cfg.stages.detect.weights != "default":
            check_file(cfg, cfg.stages.detect.weights, "stages.detect.weights")

    @classmethod
    def preflight(cls, cfg: PipelineConfig) -> None:
        """The weights must hold a readable checkpoint meta (read without torch); the detect process
        itself checks the weights against the model when it loads them."""
        model_input_size(cfg)

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        det = self.settings
        self.batch_size = det.batch_size
        with weights_problems_as_config_errors():
            self.detector = models.Detector(
                weights_path(cfg), backend=det.backend, device=det.device, fp16=det.fp16,
                conf_threshold=det.conf_threshold, nms_threshold=det.nms_threshold,
                class_agnostic_nms=det.class_agnostic_nms, input_size=model_input_size(cfg))
        log.info("detector %s (%s on %s), classes %s", weights_path(cfg), det.backend, det.device,
                 self.detector.class_names)

    def accept(self, msg: FrameMessage) -> str | None:
        if "input" not in msg.buffers:
            return None  # letterboxed here
        shape, ratio = msg.buffers["input"].shape, msg.meta.get("ratio")
        if msg.buffers["input"].dtype != np.uint8 or shape != (*self.detector.input_size, 3):
            return f"buffer 'input' must be uint8 {[*self.detector.input_size, 3]}, got {list(shape)}"
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio < 1e4:
            return f"meta 'ratio' must be a positive number, got {str(ratio)[:40]}"
        return None

    def _input(self, msg: FrameMessage) -> np.ndarray:
        if "input" not in msg.buffers:  # no preprocess stage in this frame path
            msg.buffers["input"], msg.meta["ratio"] = letterbox(msg.image, self.detector.input_size)
        return msg.buffers.pop("input")

    def process_batch(self, msgs: list[FrameMessage]) -> list[FrameMessage]:
        batch = np.stack([self._input(m) for m in msgs]).transpose(0, 3, 1, 2).astype(np.float32)
        raw = self.detector.infer(batch)
        results = self.detector.postprocess(raw, [m.meta["ratio"] for m in msgs], [m.image.shape for m in msgs])
        for msg, dets in zip(msgs, results):
            msg.detections = np.asarray(dets, dtype=np.float32).reshape(-1, 6)
            msg.meta["class_names"] = self.detector.class_names
        return msgs
