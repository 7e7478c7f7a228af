"""The one letterbox rule of the project: keep the aspect, scale to fit the detector's input, place at
the top-left, pad with 114 (yolox's ``preproc``). Stages letterbox uint8 frames with ``letterbox``;
training letterboxes batches on its device with the same ``letterbox_ratio`` / ``resized_size``;
``to_source_pixels`` maps boxes back. No torch here: an edge host running preprocess needs none.
"""
from __future__ import annotations

import cv2
import numpy as np

PAD_VALUE = 114
STRIDE = 32  # YOLOX's largest feature stride: an input side must be a multiple of it


def check_input_size(size, where: str = "input_size") -> tuple[int, int]:
    """(h, w) as ints, both positive multiples of STRIDE; ValueError naming ``where`` otherwise."""
    try:
        h, w = (v if isinstance(v, int) and not isinstance(v, bool) else _not_int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be [height, width], got {size!r}") from None
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ValueError(f"{where} must be [height, width], positive multiples of {STRIDE}, got {list(size)!r}")
    return h, w


def _not_int(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(value)


def letterbox_ratio(image_hw, input_hw) -> float:
    """The scale that fits an image of ``image_hw`` into ``input_hw`` keeping its aspect."""
    return min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])


def resized_size(image_hw, ratio: float) -> tuple[int, int]:
    """(h, w) of the scaled image inside the letterbox (truncated, as yolox does)."""
    return max(1, int(image_hw[0] * ratio)), max(1, int(image_hw[1] * ratio))  # a sliver keeps one pixel


def letterbox(image: np.ndarray, input_size, max_ratio: float | None = None) -> tuple[np.ndarray, float]:
    """uint8 H x W x 3 -> (uint8 input_h x input_w x 3, ratio): bilinear resize, top-left, padded.
    ``max_ratio``: scale by at most this (a tile at the edge of a frame keeps its tiles' scale)."""
    ratio = letterbox_ratio(image.shape[:2], input_size)
    if max_ratio is not None:
        ratio = min(ratio, max_ratio)
    h, w = resized_size(image.shape[:2], ratio)
    padded = np.full((*input_size, 3), PAD_VALUE, dtype=np.uint8)
    if (h, w) == image.shape[:2]:
        padded[:h, :w] = image  # a tile at the input's own scale: no resampling
    else:
        padded[:h, :w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    return padded, float(ratio)


def to_source_pixels(boxes_xyxy: np.ndarray, ratio: float, image_shape) -> np.ndarray:
    """Boxes in letterboxed-input pixels -> source-image pixels, clipped into the image (a new array)."""
    height, width = image_shape[:2]
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)[:, :4] / ratio
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes
