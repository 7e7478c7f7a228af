"""COCO scoring: the metrics library (faster-coco-eval or pycocotools), ``coco_metrics`` (overall, per
class, per modality, tiny), the PR plot, and the mapping of detections to COCO results.

``ap_tiny`` is COCO AP where the area range test is applied to the squared longest box side, i.e. objects
whose longest side is < 16 px. The ground truth itself comes from pipeline.offline.data.coco.CocoBuilder.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from pipeline.offline.data.coco import category_id, coco_result
from pipeline.offline.data.dataset import CLASSES
from pipeline.offline.eval.settings import METRIC_LIBRARIES, EvalError

log = logging.getLogger(__name__)

TINY_SIDE_PX = 16
Detections = dict  # (clip name, frame index) -> K x 6 float32 [x1, y1, x2, y2, score, class_id] (+ objectness)


def _coco_api(library: str):
    if library == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # it logs every summary line at INFO
        return COCO, COCOeval_faster
    if library == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"unknown metrics library {library!r}; valid: {', '.join(METRIC_LIBRARIES)}")


def _longest_side_area(annotations: list[dict]) -> None:
    """Replace each area by (longest box side)^2 so COCO's area-range test selects by longest side."""
    for annotation in annotations:
        annotation["area"] = float(max(annotation["bbox"][2], annotation["bbox"][3])) ** 2


def run_cocoeval(ground_truth: dict, predictions: list[dict], library: str, image_ids=None, tiny=False):
    """An accumulated COCOeval over copies of the inputs (the libraries write into what they are given)."""
    COCO, COCOeval = _coco_api(library)
    gt = json.loads(json.dumps(ground_truth))
    results = json.loads(json.dumps(predictions))
    if tiny:
        _longest_side_area(gt["annotations"])
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print progress
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(COCO, gt)
        if tiny:
            _longest_side_area(coco_dt.dataset["annotations"])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        if tiny:
            evaluator.params.areaRng = [[0.0, TINY_SIDE_PX ** 2 - 1e-6]]
            evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _empty_results(COCO, gt: dict):
    """A results object without detections (loadRes refuses an empty list)."""
    empty = COCO()
    empty.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
    empty.createIndex()
    return empty


def _ap(precision: np.ndarray) -> float | None:
    """COCO's summary of a precision slice: the mean over defined entries; None where no GT exists."""
    defined = precision[precision > -1]
    return float(defined.mean()) if defined.size else None


def _stat(value: float) -> float | None:
    return None if value < 0 else float(value)


def _per_modality(ground_truth: dict, predictions: list[dict], library: str) -> dict:
    per_modality = {}
    for modality in sorted({image.get("modality") for image in ground_truth["images"]} - {None}):
        ids = [image["id"] for image in ground_truth["images"] if image.get("modality") == modality]
        modality_stats = run_cocoeval(ground_truth, predictions, library, image_ids=ids).stats
        per_modality[modality] = {"map50_95": _stat(modality_stats[0]), "map50": _stat(modality_stats[1]),
                                  "images": len(ids)}
    return per_modality


AGNOSTIC_NMS_IOU = 0.7  # one box per object across classes, before class-agnostic scoring


def class_agnostic(ground_truth: dict, predictions: list[dict]) -> tuple[dict, list[dict]]:
    """Ground truth and predictions with every class made one, "object": does the detector find the
    thing in the sky, whatever it calls it. Per image the predictions of different classes on one
    object (class-aware NMS keeps one per class) are first reduced to the best-scored one."""
    gt = {**ground_truth, "categories": [{"id": 1, "name": "object"}],
          "annotations": [{**a, "category_id": 1} for a in ground_truth["annotations"]]}
    by_image: dict = {}
    for p in predictions:
        by_image.setdefault(p["image_id"], []).append(p)
    kept = []
    for image_predictions in by_image.values():
        kept += [{**p, "category_id": 1} for p in _best_per_object(image_predictions)]
    return gt, kept


def _best_per_object(predictions: list[dict]) -> list[dict]:
    ordered = sorted(predictions, key=lambda p: -p["score"])
    boxes = np.array([p["bbox"] for p in ordered], np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
    area = boxes[:, 2] * boxes[:, 3]
    alive = np.ones(len(ordered), bool)
    for i in range(len(ordered)):
        if not alive[i]:
            continue
        width = np.clip(np.minimum(x2[i], x2[i + 1:]) - np.maximum(x1[i], x1[i + 1:]), 0, None)
        height = np.clip(np.minimum(y2[i], y2[i + 1:]) - np.maximum(y1[i], y1[i + 1:]), 0, None)
        overlap = width * height
        iou = overlap / np.maximum(area[i] + area[i + 1:] - overlap, 1e-12)
        alive[i + 1:] &= iou <= AGNOSTIC_NMS_IOU
    return [p for p, keep in zip(ordered, alive) if keep]


def coco_metrics(ground_truth: dict, predictions: list[dict], library: str = "faster") -> dict:
    """COCO AP numbers for predictions (COCO results format) against a COCO ground truth dict."""
    main = run_cocoeval(ground_truth, predictions, library)
    stats = main.stats
    precision = np.asarray(main.eval["precision"])  # [IoU, recall, class, area, maxDets]
    category_ids = list(main.params.catIds)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    per_class = {}
    for k, cat in enumerate(category_ids):
        per_class[names[cat]] = {"map50_95": _ap(precision[:, :, k, 0, -1]), "map50": _ap(precision[0, :, k, 0, -1]),
                                 "gt_boxes": sum(1 for a in ground_truth["annotations"] if a["category_id"] == cat)}
    tiny = run_cocoeval(ground_truth, predictions, library, tiny=True).stats
    return {"map50_95": _stat(stats[0]), "map50": _stat(stats[1]), "map75": _stat(stats[2]),
            "ap_small": _stat(stats[3]), "ap_medium": _stat(stats[4]), "ap_large": _stat(stats[5]),
            "ap_tiny": _stat(tiny[0]), "ar100": _stat(stats[8]),
            "per_class": per_class, "per_modality": _per_modality(ground_truth, predictions, library),
            "class_agnostic": _agnostic(ground_truth, predictions, library),
            "_precision": precision, "_recall_thresholds": np.asarray(main.params.recThrs),
            "_class_names": [names[c] for c in category_ids]}


def _agnostic(ground_truth: dict, predictions: list[dict], library: str) -> dict:
    stats = run_cocoeval(*class_agnostic(ground_truth, predictions), library).stats
    result = {"map50_95": _stat(stats[0]), "map50": _stat(stats[1]), "ap_small": _stat(stats[3])}
    if predictions and all("objectness" in p for p in predictions):
        # the same, each object's box ranked by the detector's objectness instead of objectness x class:
        # how well the one class-agnostic "object in the sky" score the track stage alerts on sorts them
        by_objectness = [{**p, "score": p["objectness"]} for p in predictions]
        stats = run_cocoeval(*class_agnostic(ground_truth, by_objectness), library).stats
        result.update(objectness_map50_95=_stat(stats[0]), objectness_map50=_stat(stats[1]))
    return result


def plot_pr_curve(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall = metrics["_precision"], metrics["_recall_thresholds"]
    figure, axis = plt.subplots(figsize=(6, 5))
    for k, name in enumerate(metrics["_class_names"]):
        curve = precision[0, :, k, 0, -1]
        if (curve > -1).any():
            axis.plot(recall, np.clip(curve, 0, None), label=f"{name} AP50={_ap(curve):.3f}")
    mean_curve = np.where(precision[0, :, :, 0, -1] > -1, precision[0, :, :, 0, -1], np.nan)
    if np.isfinite(mean_curve).any():
        axis.plot(recall, np.nanmean(mean_curve, axis=1), "k--", label="mean over classes")
    title = "mAP50:95 n/a" if metrics["map50_95"] is None else f"mAP50:95={metrics['map50_95']:.3f}"
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR at IoU 0.5 ({title})")
    axis.legend(loc="lower left", fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def class_to_category(detector_class_names) -> dict[int, int]:
    """Detector class index -> COCO category id, by name; classes outside CLASSES are dropped."""
    mapping = {i: category_id(CLASSES.index(name.lower()))
               for i, name in enumerate(detector_class_names) if name.lower() in CLASSES}
    if not mapping:
        raise EvalError(f"unknown class names: the model's classes {list(detector_class_names)} "
                        f"share none with the dataset's {list(CLASSES)}")
    dropped = [name for name in detector_class_names if name.lower() not in CLASSES]
    if dropped:
        log.warning("model classes %s are not dataset classes; their detections are not scored", dropped)
    return mapping


def to_coco_results(detections: Detections, ground_truth: dict, categories: dict[int, int]) -> list[dict]:
    """COCO results for the ground truth's images, in image order; detections of other frames are ignored."""
    results = []
    for image in ground_truth["images"]:
        for row in detections.get((image["clip"], image["frame_index"]), ()):
            x1, y1, x2, y2, score, class_id = row[:6]
            if int(class_id) in categories:
                result = coco_result(image["id"], categories[int(class_id)], (x1, y1, x2, y2), score)
                if len(row) > 6:    # the detector's objectness (Detector.postprocess(objectness=True))
                    result["objectness"] = round(float(row[6]), 5)
                results.append(result)
    return results
