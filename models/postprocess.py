"""The YOLOX head's box decoding and NMS on NumPy arrays: one copy, for every backend, without torch.

Every backend returns the head's undecoded outputs (B x A x (5 + C): box offsets, objectness and
class sigmoids, anchors stride 8 first). ``decode`` is the yolox head's ``decode_outputs`` and
``select`` is ``yolox.utils.postprocess`` (score = objectness x best class score, NMS per class or
across classes), so a detector process that runs ONNX Runtime or OpenVINO never imports torch
(about 2.5 s of a stage's start on this machine). tests/models/test_postprocess.py holds both equal
to yolox's own functions.
"""
from __future__ import annotations

import numpy as np

STRIDES = (8, 16, 32)  # the YOLOX head's (models.yolox_gssam builds every model with them)


def anchor_grid(input_size: tuple[int, int], strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(A x 2 cell origins x, y; A x 1 strides) in the head's anchor order: per stride, row by row."""
    cells, scales = [], []
    for stride in strides:
        rows, columns = input_size[0] // stride, input_size[1] // stride
        y, x = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(columns, dtype=np.float32), indexing="ij")
        cells.append(np.stack([x.ravel(), y.ravel()], axis=1))
        scales.append(np.full((rows * columns, 1), stride, np.float32))
    return np.concatenate(cells), np.concatenate(scales)


def decode(raw: np.ndarray, input_size: tuple[int, int], strides=STRIDES) -> np.ndarray:
    """Undecoded B x A x (5 + C) -> boxes as cx, cy, w, h in input pixels (the rest unchanged)."""
    cells, scales = anchor_grid(input_size, strides)
    if raw.shape[1] != len(cells):
        raise ValueError(f"the model gave {raw.shape[1]} anchors, an input of {input_size} has {len(cells)}")
    decoded = np.array(raw, dtype=np.float32)
    decoded[..., :2] = (decoded[..., :2] + cells) * scales
    decoded[..., 2:4] = np.exp(decoded[..., 2:4]) * scales
    return decoded


def select(decoded: np.ndarray, num_classes: int, conf_threshold: float, nms_threshold: float,
           class_agnostic: bool = False) -> list[np.ndarray | None]:
    """Per image K x 7 [x1, y1, x2, y2, objectness, class score, class] best first, or None (no box
    scores objectness x class score >= conf_threshold): yolox.utils.postprocess's rule."""
    import cv2

    kept: list[np.ndarray | None] = []
    for prediction in decoded:
        class_scores = prediction[:, 5:5 + num_classes]
        classes = class_scores.argmax(axis=1)
        class_score = np.take_along_axis(class_scores, classes[:, None], axis=1)[:, 0]
        scores = prediction[:, 4] * class_score
        confident = scores >= conf_threshold
        if not confident.any():
            kept.append(None)
            continue
        centre, size = prediction[confident, :2], prediction[confident, 2:4]
        corners = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        rows = np.column_stack([corners, prediction[confident, 4], class_score[confident], classes[confident]])
        boxes_xywh = np.concatenate([corners[:, :2], size], axis=1).astype(np.float64)
        if class_agnostic:
            chosen = cv2.dnn.NMSBoxes(boxes_xywh, scores[confident].astype(np.float64), 0.0, nms_threshold)
        else:
            chosen = cv2.dnn.NMSBoxesBatched(boxes_xywh, scores[confident].astype(np.float64),
                                             classes[confident].astype(np.int32), 0.0, nms_threshold)
        chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
        order = np.argsort(-scores[confident][chosen], kind="stable")
        kept.append(rows[chosen[order]].astype(np.float32))
    return kept
