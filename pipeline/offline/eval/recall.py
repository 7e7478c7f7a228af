"""Recall on labeled boxes by size: ``recall_by_size`` (any box lists) and ``clip_recall`` (a detector on a
rendered clip and its COCO file: the demo's bar is >= 90 % at IoU 0.5)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.offline.eval.settings import EvalError

RECALL_SIZE_BINS_PX = (0, 12, 20, 30, 50, 10_000)   # longest box side


def recall_by_size(truth: list[np.ndarray], found: list[np.ndarray], ious: tuple[float, ...] = (0.5, 0.3),
                   bins: tuple[float, ...] = RECALL_SIZE_BINS_PX) -> dict:
    """Share of true boxes (per image, K x 4 xyxy) that some found box (M x 4+) overlaps at each IoU in
    ``ious``, overall and by the longest side of the true box (``bins``: bin edges in px). Each true box
    takes its best overlap (not a one-to-one matching: at a low IoU one wide box could cover two
    adjacent targets; at 0.5 that needs near-identical targets)."""
    import supervision as sv

    sides, best = [], []
    for boxes, dets in zip(truth, found):
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        if not len(boxes):
            continue
        sides.append(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))
        best.append(sv.box_iou_batch(boxes, np.asarray(dets)[:, :4].astype(float)).max(1) if len(dets)
                    else np.zeros(len(boxes)))
    sides = np.concatenate(sides) if sides else np.zeros(0)
    best = np.concatenate(best) if best else np.zeros(0)

    def shares(mask):
        return {str(t): float((best[mask] >= t).mean()) if mask.any() else 0.0 for t in ious}

    report = {"boxes": len(sides), "recall": shares(np.ones(len(sides), bool)), "by_size": []}
    for low, high in zip(bins, bins[1:]):
        inside = (sides >= low) & (sides < high)
        if inside.any():
            report["by_size"].append({"side_px": [low, high], "boxes": int(inside.sum()), "recall": shares(inside)})
    return report


def _true_boxes_by_frame(coco: dict, class_name: str) -> dict[int, list]:
    """frame index -> [x, y, w, h] of the ``class_name`` boxes of a make_clip COCO file."""
    category = next(c["id"] for c in coco["categories"] if c["name"] == class_name)
    frame_of_image = {image["id"]: image["frame_index"] for image in coco["images"]}
    boxes: dict[int, list] = {}
    for annotation in coco["annotations"]:
        if annotation["category_id"] == category and annotation["image_id"] in frame_of_image:
            boxes.setdefault(frame_of_image[annotation["image_id"]], []).append(annotation["bbox"])
    return boxes


def clip_recall(detector, video: Path, coco_path: Path, class_name: str = "drone", every: int = 3,
                ious: tuple[float, ...] = (0.5, 0.3)) -> dict:
    """``recall_by_size`` of a detector's ``class_name`` detections against a labeled clip (a make_clip
    video + its COCO file) on every ``every``-th frame. The demo's bar: >= 90 % at IoU 0.5."""
    import cv2
    import supervision as sv

    truth = _true_boxes_by_frame(json.loads(Path(coco_path).read_text()), class_name)
    class_index = list(detector.class_names).index(class_name)
    true_boxes, found_boxes = [], []
    capture, index = cv2.VideoCapture(str(video)), 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            boxes = truth.get(index, []) if index % every == 0 else []
            index += 1
            if boxes:
                found = detector([frame])[0]
                true_boxes.append(sv.xywh_to_xyxy(np.array(boxes, float)))
                found_boxes.append(found[found[:, 5] == class_index])
    finally:
        capture.release()
    if index == 0:
        raise EvalError(f"cannot read any frame of {video}")
    return recall_by_size(true_boxes, found_boxes, ious)
