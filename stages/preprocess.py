"""Preprocess: letterbox each frame to the detector's input size.

The letterbox is yolox's (keep aspect, top-left, pad 114, bilinear) but kept as uint8 HWC, so the hop
to the detector moves a quarter of the bytes of float32; the detector casts. Equality with yolox's
own `preproc` is a test (tests/stages/test_preprocess.py).
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.runtime.config import PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage
from stages.detect import model_input_size

PAD_VALUE = 114


def letterbox(image: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping aspect into (h, w), top-left, rest padded: -> (uint8 h x w x 3, ratio)."""
    ratio = min(input_size[0] / image.shape[0], input_size[1] / image.shape[1])
    resized_hw = int(image.shape[0] * ratio), int(image.shape[1] * ratio)
    padded = np.full((*input_size, 3), PAD_VALUE, dtype=np.uint8)
    padded[: resized_hw[0], : resized_hw[1]] = cv2.resize(
        image, (resized_hw[1], resized_hw[0]), interpolation=cv2.INTER_LINEAR)
    return padded, float(ratio)


class PreprocessStage(Stage):
    name = "preprocess"
    input_key = "preprocess_in"
    output_key = "detect_in"

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.input_size = model_input_size(cfg)  # the size the detect stage runs at

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        msg.buffers["input"], msg.meta["ratio"] = letterbox(msg.image, self.input_size)
        return [msg]
