"""One evaluation from settings to report: ``evaluate(settings)`` picks the usable clips, gets detections
(direct or through the pipeline), builds the ground truth, scores it and writes into ``settings.out``:
``report.json``, ``predictions.json`` (COCO results), ``ground_truth.json`` and ``pr_curve.png``.
``summary(report)`` is the text the command prints."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pipeline.offline.data import dataset, formats
from pipeline.offline.data.dataset import DatasetError
from pipeline.offline.data.tighten import LabelTightener
from pipeline.offline.eval.coco import Detections, class_to_category, coco_metrics, plot_pr_curve, to_coco_results
from pipeline.offline.eval.direct import latency_summary, load_detector, run_detector
from pipeline.offline.eval.settings import EvalError, EvalSettings
from pipeline.offline.eval.through_pipeline import checkpoint_class_names, evaluate_through_pipeline

log = logging.getLogger(__name__)


def evaluate(settings: EvalSettings) -> dict:
    """Run the evaluation the settings describe; returns the report (also written to settings.out)."""
    clips = formats.load_clips(settings.split, settings.data, settings.modality, settings.format,
                               formats.parse_class_map(settings.classes))
    return evaluate_clips(clips, settings)


def evaluate_clips(clips: list, settings: EvalSettings) -> dict:
    """``evaluate`` on clips already chosen (``pipeline adapt`` scores its held-out clips of a folder);
    ``settings.data`` only names them in the report."""
    try:
        settings.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create output directory {settings.out}: {exc.strerror}") from None
    report: dict = {"split": settings.split or ("all" if clips[0].boxes is not None else "test"),
                    "data": str(settings.data), "format": settings.format, "clips": len(clips),
                    "stride": settings.stride, "max_frames": settings.max_frames, "backend": settings.backend,
                    "device": settings.device, "mode": "pipeline" if settings.through_pipeline else "direct"}
    skipped: list[dict] = []
    clips = usable_clips(clips, skipped)
    detections, categories, frame_counts = _detections(clips, settings, report, skipped)
    scored = [clip for clip in clips if clip.name not in {s["clip"] for s in skipped}]
    if not scored:
        raise _nothing_to_score(skipped)
    ground_truth = _ground_truth(scored, settings, frame_counts, report)
    predictions = to_coco_results(detections, ground_truth, categories)
    if settings.export_yolo is not None or settings.export_cvat is not None:
        report["exported_boxes"] = _export(predictions, ground_truth, settings)
    started = time.perf_counter()
    metrics = coco_metrics(ground_truth, predictions, settings.metrics)
    report["metrics_seconds"] = time.perf_counter() - started
    report.update({key: value for key, value in metrics.items() if not key.startswith("_")})
    report.update({"metrics_library": settings.metrics, "images": len(ground_truth["images"]),
                   "gt_boxes": len(ground_truth["annotations"]), "predictions": len(predictions),
                   "skipped_clips": skipped, "skipped_count": len(skipped),
                   "labels_beyond_video": ground_truth["info"]["labels_beyond_video"]})
    _write_outputs(settings.out, report, predictions, ground_truth, metrics)
    return report


def _detections(clips, settings: EvalSettings, report: dict, skipped: list[dict]
                ) -> tuple[Detections, dict[int, int], dict[str, int]]:
    """(detections, detector class -> COCO category, decoded frame counts of clips that decoded short);
    what the run measured goes into ``report``, clips it could not read into ``skipped``."""
    if settings.through_pipeline:
        categories = class_to_category(checkpoint_class_names(settings.weights))
        detections, report["pipeline"] = evaluate_through_pipeline(clips, settings, settings.out)
        report["throughput_fps"] = report["pipeline"]["frames"] / max(report["pipeline"]["seconds"], 1e-9)
        return detections, categories, {}
    detector = load_detector(settings)
    categories = class_to_category(detector.class_names)
    report["weights"] = str(detector.weights)
    run = run_detector(detector, clips, settings.stride, settings.max_frames, settings.cache_dir, settings.tiling,
                       settings.tile_min_scale)
    skipped += run.skipped
    report["latency_ms"] = latency_summary(run.timings_ms)
    report["throughput_fps"] = run.images / max(run.seconds, 1e-9)
    return run.detections, categories, run.frame_counts


def _ground_truth(clips, settings: EvalSettings, frame_counts: dict[str, int], report: dict) -> dict:
    """The COCO ground truth of the scored frames, visible boxes tightened when the settings ask."""
    tightener = (LabelTightener(settings.stride, settings.cache_dir, settings.max_frames)
                 if settings.tight_visible_boxes else None)
    ground_truth = dataset.to_coco(clips, settings.stride, frame_counts=frame_counts,
                                   max_frames=settings.max_frames, labels_of=tightener)
    if tightener is not None:
        report["visible_boxes_tightened"] = {"changed": tightener.changed, "boxes": tightener.boxes}
    return ground_truth


def usable_clips(clips, skipped: list[dict]) -> list:
    """Clips whose labels parse and whose video opens; the others are listed in skipped with the reason.
    Raises EvalError when none is left."""
    usable = []
    for clip in clips:
        try:
            dataset.read_labels(clip)
            dataset.video_info(clip)
            usable.append(clip)
        except DatasetError as exc:
            log.warning("skipping clip: %s", exc)
            skipped.append({"clip": clip.name, "reason": str(exc)})
    if not usable:
        raise _nothing_to_score(skipped)
    return usable


def _nothing_to_score(skipped: list[dict]) -> EvalError:
    return EvalError(f"no clip could be evaluated: all {len(skipped)} skipped (first: {skipped[0]['reason']})")


def _export(predictions: list, ground_truth: dict, settings: EvalSettings) -> int:
    """The predictions written for correction in a labeling tool (YOLO and/or CVAT); boxes written."""
    from pipeline.offline.data.formats.export import write_cvat, write_yolo

    written = 0
    for writer, folder, name in ((write_yolo, settings.export_yolo, "YOLO"), (write_cvat, settings.export_cvat, "CVAT")):
        if folder is None:
            continue
        try:
            written = writer(predictions, ground_truth, folder, settings.export_conf)
        except OSError as exc:
            raise EvalError(f"cannot write the {name} export to {folder}: {exc.strerror or exc}") from None
    return written


def _write_outputs(out: Path, report: dict, predictions: list, ground_truth: dict, metrics: dict) -> None:
    (out / "predictions.json").write_text(json.dumps(predictions))
    (out / "ground_truth.json").write_text(json.dumps(ground_truth))
    plot_pr_curve(metrics, out / "pr_curve.png")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")


def _format_ap(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _objectness_text(agnostic: dict) -> str:
    if "objectness_map50" not in agnostic:
        return ""
    return (f"; ranked by objectness alone: mAP50:95 {_format_ap(agnostic['objectness_map50_95'])}  "
            f"mAP50 {_format_ap(agnostic['objectness_map50'])}")


def summary(report: dict) -> str:
    """The lines the command prints: the APs, per class and modality, latency and counts."""
    fmt = _format_ap
    lines = [f"mAP50:95 {fmt(report['map50_95'])}  mAP50 {fmt(report['map50'])}  AP tiny {fmt(report['ap_tiny'])}  "
             f"small {fmt(report['ap_small'])}  medium {fmt(report['ap_medium'])}  large {fmt(report['ap_large'])}",
             "per class: " + ", ".join(f"{k} {fmt(v['map50_95'])}" for k, v in report["per_class"].items()),
             f"class-agnostic (any object in the sky): mAP50:95 {fmt(report['class_agnostic']['map50_95'])}  "
             f"mAP50 {fmt(report['class_agnostic']['map50'])}" + _objectness_text(report['class_agnostic']),
             "per modality: " + ", ".join(f"{k} {fmt(v['map50_95'])}" for k, v in report["per_modality"].items())]
    latency = report.get("latency_ms", {})
    if latency.get("images"):
        lines.append(f"latency ms/image over {latency['images']} images: preprocess {latency['preprocess']:.2f}, "
                     f"inference {latency['inference']:.2f}, postprocess {latency['postprocess']:.2f}, "
                     f"total {latency['total']:.2f}")
    lines.append(f"{report['images']} images, {report['gt_boxes']} boxes, {report['predictions']} predictions, "
                 f"{report['throughput_fps']:.1f} frames/s end to end, {report['skipped_count']} clip(s) skipped")
    return "\n".join(lines)
