"""Offline mode: ``python -m pipeline eval`` scores a detector on a labeled split with COCO metrics.

It runs the detector over every ``--stride``-th frame of the split's clips (or replays them through
the ZeroMQ pipeline with ``--through-pipeline``) and writes into ``--out``:
``report.json`` (map50_95, map50, ap_small/medium/large, ap_tiny, per_class, per_modality,
latency_ms, skipped clips), ``predictions.json`` (COCO results), ``ground_truth.json`` (the COCO file
scored against) and ``pr_curve.png``.

Metrics come from faster-coco-eval (default) or pycocotools; ``ap_tiny`` is COCO AP where the area
range test is applied to the squared longest box side, i.e. objects whose longest side is < 16 px.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.offline.data import dataset
from pipeline.offline.data.dataset import CLASSES, DEFAULT_ROOT, DatasetError
from pipeline.offline.data.tighten import LabelTightener

log = logging.getLogger(__name__)

TINY_SIDE_PX = 16
LATENCY_WARMUP_IMAGES = 3       # first images pay one-time allocation costs; not part of the mean
METRIC_LIBRARIES = ("faster", "pycocotools")
Detections = dict  # (clip name, frame index) -> K x 6 float32 [x1, y1, x2, y2, score, class_id]


class EvalError(Exception):
    """A problem that stops the evaluation, reported as one line (exit 2)."""


# --------------------------------------------------------------------------- metrics

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


def _run_cocoeval(ground_truth: dict, predictions: list[dict], library: str, image_ids=None, tiny=False):
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


def coco_metrics(ground_truth: dict, predictions: list[dict], library: str = "faster") -> dict:
    """COCO AP numbers for predictions (COCO results format) against a COCO ground truth dict."""
    main = _run_cocoeval(ground_truth, predictions, library)
    stats = main.stats
    precision = np.asarray(main.eval["precision"])  # [IoU, recall, class, area, maxDets]
    category_ids = list(main.params.catIds)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    per_class = {}
    for k, cat in enumerate(category_ids):
        per_class[names[cat]] = {"map50_95": _ap(precision[:, :, k, 0, -1]), "map50": _ap(precision[0, :, k, 0, -1]),
                                 "gt_boxes": sum(1 for a in ground_truth["annotations"] if a["category_id"] == cat)}
    per_modality = {}
    for modality in sorted({image.get("modality") for image in ground_truth["images"]} - {None}):
        ids = [image["id"] for image in ground_truth["images"] if image.get("modality") == modality]
        modality_stats = _run_cocoeval(ground_truth, predictions, library, image_ids=ids).stats
        per_modality[modality] = {"map50_95": _stat(modality_stats[0]), "map50": _stat(modality_stats[1]),
                                  "images": len(ids)}
    tiny = _run_cocoeval(ground_truth, predictions, library, tiny=True).stats
    return {"map50_95": _stat(stats[0]), "map50": _stat(stats[1]), "map75": _stat(stats[2]),
            "ap_small": _stat(stats[3]), "ap_medium": _stat(stats[4]), "ap_large": _stat(stats[5]),
            "ap_tiny": _stat(tiny[0]), "ar100": _stat(stats[8]),
            "per_class": per_class, "per_modality": per_modality,
            "_precision": precision, "_recall_thresholds": np.asarray(main.params.recThrs),
            "_class_names": [names[c] for c in category_ids]}


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


# --------------------------------------------------------------------------- predictions

def class_to_category(detector_class_names) -> dict[int, int]:
    """Detector class index -> COCO category id, by name; classes outside CLASSES are dropped."""
    mapping = {i: dataset.category_id(CLASSES.index(name.lower()))
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
        for x1, y1, x2, y2, score, class_id in detections.get((image["clip"], image["frame_index"]), ()):
            if int(class_id) in categories:
                results.append({"image_id": image["id"], "category_id": categories[int(class_id)],
                                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                "score": float(score)})
    return results


@dataclass
class DirectRun:
    """What running the detector in-process over the clips produced."""
    detections: Detections = field(default_factory=dict)
    frame_counts: dict[str, int] = field(default_factory=dict)   # only for clips that decoded short
    skipped: list[dict] = field(default_factory=list)            # {"clip", "reason"}
    timings_ms: list[tuple[float, float, float]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0


def _expected_images(clip: dataset.Clip, stride: int, max_frames: int | None) -> int:
    frames = dataset.video_info(clip)[0]
    expected = len(range(0, frames, stride))
    return expected if max_frames is None else min(expected, max_frames)


def _detect_clip(detector, clip: dataset.Clip, run: DirectRun, stride: int, max_frames, cache_dir) -> None:
    dataset.read_labels(clip)  # an unusable label file skips the clip before any compute
    expected = _expected_images(clip, stride, max_frames)
    last_index, seen = -1, 0
    for frame_index, image in dataset.iter_frames(clip, stride, cache_dir=cache_dir, max_frames=max_frames):
        start = time.perf_counter()
        chw, ratio = detector.preprocess(image)
        prepared = time.perf_counter()
        raw = detector.infer(chw[None])
        inferred = time.perf_counter()
        run.detections[(clip.name, frame_index)] = detector.postprocess(raw, [ratio], [image.shape])[0]
        done = time.perf_counter()
        run.timings_ms.append(((prepared - start) * 1e3, (inferred - prepared) * 1e3, (done - inferred) * 1e3))
        last_index, seen = frame_index, seen + 1
    if seen < expected:
        log.warning("%s: truncated or corrupt video: decoded %d of %d expected images; scoring frames 0-%d only",
                    clip.name, seen, expected, last_index)
        run.frame_counts[clip.name] = last_index + 1
    run.images += seen


def run_detector(detector, clips, stride: int = 1, max_frames: int | None = None, cache_dir=None) -> DirectRun:
    """Detections for every stride-th frame; a clip whose video or labels are unusable is skipped and listed."""
    run = DirectRun()
    started = time.perf_counter()
    for clip in clips:
        try:
            _detect_clip(detector, clip, run, stride, max_frames, cache_dir)
        except DatasetError as exc:
            log.warning("skipping clip: %s", exc)
            run.skipped.append({"clip": clip.name, "reason": str(exc)})
            for key in [key for key in run.detections if key[0] == clip.name]:
                del run.detections[key]
    run.seconds = time.perf_counter() - started
    return run


def latency_summary(timings_ms: list[tuple[float, float, float]]) -> dict:
    """Mean ms per image for each step (paper table 2 style), excluding warm-up images."""
    timed = timings_ms[LATENCY_WARMUP_IMAGES:] if len(timings_ms) > LATENCY_WARMUP_IMAGES else timings_ms
    if not timed:
        return {"images": 0}
    means = np.mean(np.asarray(timed), axis=0)
    return {"preprocess": float(means[0]), "inference": float(means[1]), "postprocess": float(means[2]),
            "total": float(means.sum()), "images": len(timed), "warmup_images_excluded": len(timings_ms) - len(timed),
            "batch_size": 1}


# --------------------------------------------------------------------------- through the pipeline

def detections_from_jsonl(path: Path, stream_id: str | None = None) -> tuple[Detections, dict]:
    """Read a pipeline tracks.jsonl into detections; also counts of duplicate / out-of-order / missing frames."""
    detections: Detections = {}
    order_errors = duplicates = 0
    last: dict[str, int] = {}
    from pipeline.runtime.records import read_frame_records

    try:
        for line_number, record in read_frame_records(path):
            try:
                key = (record["stream_id"] if stream_id is None else stream_id, int(record["frame_index"]))
                boxes = np.asarray(record["detections"], dtype=np.float32).reshape(-1, 6)
            except (KeyError, TypeError, ValueError) as exc:
                raise EvalError(f"{path}:{line_number}: malformed pipeline record ({exc})") from None
            if key in detections:  # keep the first, as the record stage does with a resent frame
                duplicates += 1
                continue
            order_errors += key[1] < last.get(key[0], -1)
            last[key[0]] = max(key[1], last.get(key[0], -1))
            detections[key] = boxes
    except ValueError as exc:  # a line that is not JSON
        raise EvalError(str(exc)) from None
    missing = sum(last_index + 1 - sum(1 for k in detections if k[0] == stream) for stream, last_index in last.items())
    return detections, {"duplicates": duplicates, "out_of_order": order_errors, "missing_before_last": missing}


def _pipeline_config(clips, args, output_dir: Path) -> dict:
    return {"sources": [{"id": clip.name, "uri": str(clip.video_path)} for clip in clips],
            "mode": "replay", "output_dir": str(output_dir),
            "stages": {"detect": {"weights": str(args.weights) if args.weights else "default",
                                  "backend": args.backend, "device": args.device, "batch_size": 1,
                                  "conf_threshold": args.conf, "nms_threshold": args.nms,
                                  "class_agnostic_nms": False},   # COCO scoring: what direct evaluation runs
                       "track": {"annotate": False}, "record": {"annotated": False}}}


def _run_process_group(command: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run command in its own process group; on timeout (returncode None) or interrupt stop the whole
    group, so no stage process outlives the evaluation."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        return None, _stop_group(process)
    except BaseException:
        _stop_group(process)
        raise


def _stop_group(process: subprocess.Popen) -> str:
    for sig, grace_s in ((signal.SIGTERM, 45), (signal.SIGKILL, 5)):  # SIGTERM: the supervisor drains (30 s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.communicate(timeout=grace_s)[0] or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def evaluate_through_pipeline(clips, args, out_dir: Path) -> tuple[Detections, dict]:
    """Replay the clips through the ZeroMQ pipeline (lossless replay mode) and read what it emitted.

    Every frame is replayed; the stride is applied when scoring, so the scored frames are the same as
    in direct evaluation.
    """
    import importlib.util

    import yaml

    if importlib.util.find_spec("pipeline.runtime.supervisor") is None:
        raise EvalError("--through-pipeline needs the ZeroMQ pipeline (pipeline.runtime.supervisor), absent in this checkout")
    output_dir = out_dir / "pipeline"
    config_path = out_dir / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(_pipeline_config(clips, args, output_dir)))
    started = time.perf_counter()
    command = [sys.executable, "-m", "pipeline", "run", str(config_path), "--no-progress"]
    returncode, output = _run_process_group(command, args.pipeline_timeout)
    (out_dir / "pipeline.log").write_text(output)
    if returncode is None:
        raise EvalError(f"the pipeline did not finish within {args.pipeline_timeout:g} s "
                        f"(stopped; log: {out_dir / 'pipeline.log'})")
    if returncode != 0:
        last_line = (output.strip().splitlines() or ["no output"])[-1]
        raise EvalError(f"the pipeline exited {returncode}: {last_line} (log: {out_dir / 'pipeline.log'})")
    detections: Detections = {}
    integrity = {"duplicates": 0, "out_of_order": 0, "missing_before_last": 0, "streams_without_output": []}
    for clip in clips:
        path = output_dir / clip.name / "tracks.jsonl"
        if not path.is_file():
            integrity["streams_without_output"].append(clip.name)
            continue
        clip_detections, counts = detections_from_jsonl(path, clip.name)
        detections.update(clip_detections)
        for key, value in counts.items():
            integrity[key] += value
    integrity["seconds"] = time.perf_counter() - started
    integrity["frames"] = len(detections)
    tight = args.visible_boxes == "tight"    # tracks are scored on every frame
    integrity["tracking"] = tracking_metrics(clips, output_dir,
                                             LabelTightener(1, args.cache_dir) if tight else dataset.read_labels)
    return detections, integrity


def tracking_metrics(clips, output_dir: Path, labels_of=dataset.read_labels) -> dict:
    """MOTA / IDF1 / HOTA of the pipeline's tracks against the labels, each clip a sequence."""
    from pipeline.offline.eval.track_metrics import evaluate_mot_sequences, gt_rows_from_labels, rows_from_tracks_jsonl

    sequences = {clip.name: (gt_rows_from_labels(labels_of(clip)),
                             rows_from_tracks_jsonl(output_dir / clip.name / "tracks.jsonl"))
                 for clip in clips if (output_dir / clip.name / "tracks.jsonl").is_file()}
    return evaluate_mot_sequences(sequences) if sequences else {}


# --------------------------------------------------------------------------- command line

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline eval", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="dataset root (default: %(default)s)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                        help="a split of configs/splits.json, or all = every clip under --data")
    parser.add_argument("--modality", nargs="+", choices=dataset.MODALITIES, default=list(dataset.MODALITIES))
    parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped default model)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--conf", type=float, default=0.001, help="score threshold (low: mAP needs the full PR curve)")
    parser.add_argument("--nms", type=float, default=0.65, help="NMS IoU threshold")
    parser.add_argument("--stride", type=int, default=1, help="score every N-th frame")
    parser.add_argument("--max-frames", type=int, help="at most N scored frames per clip (quick runs)")
    parser.add_argument("--out", type=Path, default=Path("out/eval"), help="output directory")
    parser.add_argument("--cache-dir", type=Path, help="on-disk frame cache (lossless PNG)")
    parser.add_argument("--visible-boxes", choices=("dataset", "tight"), default="dataset",
                        help="score against the dataset's visible-camera boxes as labeled (loose) or tightened "
                             "to the object (pipeline.offline.data.tighten, what --visible-boxes tight trains on)")
    parser.add_argument("--metrics", choices=METRIC_LIBRARIES, default="faster", help="COCO metrics library")
    parser.add_argument("--through-pipeline", action="store_true",
                        help="replay the clips through the ZeroMQ pipeline and score what it emitted")
    parser.add_argument("--pipeline-timeout", type=float, default=3600, help="seconds (with --through-pipeline)")
    args = parser.parse_args(argv)
    if args.stride < 1:
        parser.error("--stride must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error("--max-frames must be >= 1")
    return args


def _load_detector(args):
    from models import CheckpointError, Detector

    try:
        return Detector(args.weights, backend=args.backend, device=args.device,
                        conf_threshold=args.conf, nms_threshold=args.nms)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise EvalError(f"cannot load model: {exc}") from None


def _class_names_of(args) -> list[str]:
    from models import CheckpointError, load_checkpoint
    from models import DEFAULT_WEIGHTS

    try:
        return list(load_checkpoint(args.weights or DEFAULT_WEIGHTS)[1]["class_names"])
    except (CheckpointError, FileNotFoundError) as exc:
        raise EvalError(f"cannot load model: {exc}") from None


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation described by the parsed arguments; returns the report (also written to --out)."""
    clips = dataset.load_split(args.split, args.data, args.modality)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create output directory {args.out}: {exc.strerror}") from None
    report: dict = {"split": args.split, "data": str(args.data), "clips": len(clips), "stride": args.stride,
                    "max_frames": args.max_frames, "backend": args.backend, "device": args.device,
                    "mode": "pipeline" if args.through_pipeline else "direct"}
    skipped: list[dict] = []
    clips = usable_clips(clips, skipped)
    if args.through_pipeline:
        categories = class_to_category(_class_names_of(args))
        detections, report["pipeline"] = evaluate_through_pipeline(clips, args, args.out)
        frame_counts: dict[str, int] = {}
        report["throughput_fps"] = report["pipeline"]["frames"] / max(report["pipeline"]["seconds"], 1e-9)
    else:
        detector = _load_detector(args)
        categories = class_to_category(detector.class_names)
        report["weights"] = str(detector.weights)
        run = run_detector(detector, clips, args.stride, args.max_frames, args.cache_dir)
        detections, frame_counts = run.detections, run.frame_counts
        skipped += run.skipped
        report["latency_ms"] = latency_summary(run.timings_ms)
        report["throughput_fps"] = run.images / max(run.seconds, 1e-9)
    scored = [clip for clip in clips if clip.name not in {s["clip"] for s in skipped}]
    if not scored:
        raise EvalError(f"no clip could be evaluated: all {len(skipped)} skipped (first: {skipped[0]['reason']})")
    tightener = (LabelTightener(args.stride, args.cache_dir, args.max_frames) if args.visible_boxes == "tight"
                 else None)
    ground_truth = dataset.to_coco(scored, args.stride, frame_counts=frame_counts, max_frames=args.max_frames,
                                   labels_of=tightener)
    if tightener is not None:
        report["visible_boxes_tightened"] = {"changed": tightener.changed, "boxes": tightener.boxes}
    predictions = to_coco_results(detections, ground_truth, categories)
    started = time.perf_counter()
    metrics = coco_metrics(ground_truth, predictions, args.metrics)
    report["metrics_seconds"] = time.perf_counter() - started
    report.update({key: value for key, value in metrics.items() if not key.startswith("_")})
    report.update({"metrics_library": args.metrics, "images": len(ground_truth["images"]),
                   "gt_boxes": len(ground_truth["annotations"]), "predictions": len(predictions),
                   "skipped_clips": skipped, "skipped_count": len(skipped),
                   "labels_beyond_video": ground_truth["info"]["labels_beyond_video"]})
    _write_outputs(args.out, report, predictions, ground_truth, metrics)
    return report


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
        raise EvalError(f"no clip could be evaluated: all {len(skipped)} skipped (first: {skipped[0]['reason']})")
    return usable


def _write_outputs(out: Path, report: dict, predictions: list, ground_truth: dict, metrics: dict) -> None:
    (out / "predictions.json").write_text(json.dumps(predictions))
    (out / "ground_truth.json").write_text(json.dumps(ground_truth))
    plot_pr_curve(metrics, out / "pr_curve.png")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")


def _summary(report: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = [f"mAP50:95 {fmt(report['map50_95'])}  mAP50 {fmt(report['map50'])}  AP tiny {fmt(report['ap_tiny'])}  "
             f"small {fmt(report['ap_small'])}  medium {fmt(report['ap_medium'])}  large {fmt(report['ap_large'])}",
             "per class: " + ", ".join(f"{k} {fmt(v['map50_95'])}" for k, v in report["per_class"].items()),
             "per modality: " + ", ".join(f"{k} {fmt(v['map50_95'])}" for k, v in report["per_modality"].items())]
    latency = report.get("latency_ms", {})
    if latency.get("images"):
        lines.append(f"latency ms/image over {latency['images']} images: preprocess {latency['preprocess']:.2f}, "
                     f"inference {latency['inference']:.2f}, postprocess {latency['postprocess']:.2f}, "
                     f"total {latency['total']:.2f}")
    lines.append(f"{report['images']} images, {report['gt_boxes']} boxes, {report['predictions']} predictions, "
                 f"{report['throughput_fps']:.1f} frames/s end to end, {report['skipped_count']} clip(s) skipped")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- recall on a synthetic clip
RECALL_SIZE_BINS_PX = (0, 12, 20, 30, 50, 10_000)   # longest box side


def recall_by_size(truth: list[np.ndarray], found: list[np.ndarray], ious: tuple[float, ...] = (0.5, 0.3)) -> dict:
    """Share of true boxes (per image, K x 4 xyxy) that some found box (M x 4+) overlaps at each IoU in
    ``ious``, overall and by the longest side of the true box (``RECALL_SIZE_BINS_PX``). Each true box
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
    for low, high in zip(RECALL_SIZE_BINS_PX, RECALL_SIZE_BINS_PX[1:]):
        inside = (sides >= low) & (sides < high)
        if inside.any():
            report["by_size"].append({"side_px": [low, high], "boxes": int(inside.sum()), "recall": shares(inside)})
    return report


def clip_recall(detector, video: Path, coco_path: Path, class_name: str = "drone", every: int = 3,
                ious: tuple[float, ...] = (0.5, 0.3)) -> dict:
    """``recall_by_size`` of a detector's ``class_name`` detections against a labeled clip (a make_clip
    video + its COCO file) on every ``every``-th frame. The demo's bar: >= 90 % at IoU 0.5."""
    import cv2

    coco = json.loads(Path(coco_path).read_text())
    category = next(c["id"] for c in coco["categories"] if c["name"] == class_name)
    class_index = list(detector.class_names).index(class_name)
    truth: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == category:
            x, y, w, h = a["bbox"]
            truth.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    image_of_frame = {im["frame_index"]: im["id"] for im in coco["images"]}
    true_boxes, found_boxes = [], []
    capture, index = cv2.VideoCapture(str(video)), 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            boxes = truth.get(image_of_frame.get(index), []) if index % every == 0 else []
            index += 1
            if boxes:
                found = detector([frame])[0]
                true_boxes.append(np.array(boxes, float))
                found_boxes.append(found[found[:, 5] == class_index])
    finally:
        capture.release()
    if index == 0:
        raise EvalError(f"cannot read any frame of {video}")
    return recall_by_size(true_boxes, found_boxes, ious)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = evaluate(args)
    except (DatasetError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(_summary(report))
    print(f"wrote report.json, predictions.json, ground_truth.json, pr_curve.png to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

