"""Validation during training: mAP of a model on evenly spaced full frames of the val clips.

Frames are letterboxed as models.Detector does (``sampler.letterbox_batch``), boxes mapped back with
models.letterbox.to_source_pixels, the ground truth built by pipeline.offline.data.coco.CocoBuilder and
scored by the evaluation's own COCO code (pipeline.offline.eval.coco.coco_metrics).
"""
from __future__ import annotations

import numpy as np
import torch

from models.letterbox import to_source_pixels
from pipeline.offline.data.coco import CocoBuilder, bbox_from_xyxy, category_id, coco_result
from pipeline.offline.train.device import autocast
from pipeline.offline.train.sampler import letterbox_batch
from pipeline.offline.train.sources import ClipFrames

SCORE_THRESHOLD, NMS_THRESHOLD = 0.001, 0.65   # what `pipeline eval` scores with: mAP needs the whole PR curve


def coco_map(gt: dict, detections: list[dict]) -> dict:
    """mAP50:95 / mAP50 overall and per modality through the evaluation code (pipeline.offline.eval)."""
    from pipeline.offline.eval.coco import coco_metrics

    if not detections or not gt["annotations"]:
        return {"map50_95": 0.0, "map50": 0.0, "per_modality": {}}
    metrics = coco_metrics(gt, detections)
    per_modality = {m: round(v["map50_95"] or 0.0, 4) for m, v in metrics["per_modality"].items()}
    return {"map50_95": metrics["map50_95"] or 0.0, "map50": metrics["map50"] or 0.0, "per_modality": per_modality}


def _evenly_spaced(count: int, wanted: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).round().astype(int))


def _detect(model: torch.nn.Module, frames: np.ndarray, input_size: tuple[int, int], device: torch.device,
            amp: str, num_classes: int) -> list[np.ndarray]:
    """Per frame: M x 6 float32 [x1, y1, x2, y2, score, class] in frame pixels (yolox postprocess)."""
    from yolox.utils import postprocess

    inputs, ratio = letterbox_batch(torch.from_numpy(np.ascontiguousarray(frames)).to(device), input_size)
    with autocast(device, amp):
        raw = model(inputs)
    kept = postprocess(raw.float(), num_classes, SCORE_THRESHOLD, NMS_THRESHOLD, class_agnostic=False)
    found = []
    for rows in kept:
        rows = np.zeros((0, 7), np.float32) if rows is None else rows.cpu().numpy()
        boxes = to_source_pixels(rows[:, :4], ratio, frames.shape[1:3])
        found.append(np.column_stack([boxes, rows[:, 4] * rows[:, 5], rows[:, 6]]))
    return found


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, clips: list[ClipFrames], class_names: list[str],
                   input_size: tuple[int, int], device: torch.device, batch: int, amp: str,
                   per_clip: int) -> dict:
    """mAP of ``model`` on up to ``per_clip`` evenly spaced frames of each clip (full frames, letterboxed)."""
    was_training = model.training
    model.eval()
    truth, detections = CocoBuilder(class_names), []
    for clip in clips:
        height, width = clip.frames.shape[1:3]
        picks = _evenly_spaced(len(clip.frames), per_clip)
        for start in range(0, len(picks), batch):
            chunk = picks[start:start + batch]
            found = _detect(model, clip.frames[chunk], input_size, device, amp, len(class_names))
            for index, rows in zip(chunk, found):
                image_id = truth.add_image(f"{clip.name}/{clip.frame_ids[index]:06d}", int(width), int(height),
                                           modality=clip.modality)
                for c, x1, y1, x2, y2 in clip.boxes[index]:
                    truth.add_box(image_id, int(c), bbox_from_xyxy(x1, y1, x2, y2))
                detections += [coco_result(image_id, category_id(int(cls)), xyxy, score)
                               for *xyxy, score, cls in rows]
    model.train(was_training)
    gt = truth.build()
    metrics = coco_map(gt, detections)
    metrics.update(images=len(gt["images"]), boxes=len(gt["annotations"]))
    return metrics
