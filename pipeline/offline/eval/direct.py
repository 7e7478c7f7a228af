"""Direct evaluation: the detector run in this process over every ``stride``-th frame of the clips
(``run_detector``), timed per step (``latency_summary``: preprocess / inference / postprocess)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from models.tiling import DEFAULT_AUTO_FACTOR, DEFAULT_MIN_SCALE, detect_tiled, wants_tiles
from pipeline.offline.data import dataset
from pipeline.offline.data.dataset import DatasetError
from pipeline.offline.eval.coco import Detections
from pipeline.offline.eval.settings import EvalError, EvalSettings

log = logging.getLogger(__name__)

LATENCY_WARMUP_IMAGES = 3       # first images pay one-time allocation costs; not part of the mean


@dataclass
class DirectRun:
    """What running the detector in-process over the clips produced."""
    detections: Detections = field(default_factory=dict)
    frame_counts: dict[str, int] = field(default_factory=dict)   # only for clips that decoded short
    skipped: list[dict] = field(default_factory=list)            # {"clip", "reason"}
    timings_ms: list[tuple[float, float, float]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0


def load_detector(settings: EvalSettings):
    """models.Detector for the settings' weights, backend, device and thresholds; EvalError if unusable."""
    from models import CheckpointError, Detector

    try:
        return Detector(settings.weights, backend=settings.backend, device=settings.device,
                        conf_threshold=settings.conf, nms_threshold=settings.nms)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise EvalError(f"cannot load model: {exc}") from None


def _expected_images(clip: dataset.Clip, stride: int, max_frames: int | None) -> int:
    frames = dataset.video_info(clip)[0]
    expected = len(range(0, frames, stride))
    return expected if max_frames is None else min(expected, max_frames)


def _detect_image(detector, image: np.ndarray, tiling: str,
                  min_scale: float = DEFAULT_MIN_SCALE) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One image's detections and its (preprocess, inference, postprocess) ms; a tiled image's time is
    all counted as inference (its steps interleave per batch of tiles)."""
    start = time.perf_counter()
    if wants_tiles(tiling, image.shape[:2], detector.input_size, DEFAULT_AUTO_FACTOR):
        dets = detect_tiled(detector, image, class_agnostic=detector.class_agnostic_nms, objectness=True,
                            min_scale=min_scale)
        return dets, (0.0, (time.perf_counter() - start) * 1e3, 0.0)
    chw, ratio = detector.preprocess(image)
    prepared = time.perf_counter()
    raw = detector.infer(chw[None])
    inferred = time.perf_counter()
    dets = detector.postprocess(raw, [ratio], [image.shape], objectness=True)[0]   # K x 7: objectness last
    done = time.perf_counter()
    return dets, ((prepared - start) * 1e3, (inferred - prepared) * 1e3, (done - inferred) * 1e3)


def _detect_clip(detector, clip: dataset.Clip, run: DirectRun, stride: int, max_frames, cache_dir,
                 tiling: str = "off", min_scale: float = DEFAULT_MIN_SCALE) -> None:
    dataset.read_labels(clip)  # an unusable label file skips the clip before any compute
    expected = _expected_images(clip, stride, max_frames)
    last_index, seen = -1, 0
    for frame_index, image in dataset.iter_frames(clip, stride, cache_dir=cache_dir, max_frames=max_frames):
        run.detections[(clip.name, frame_index)], timing = _detect_image(detector, image, tiling, min_scale)
        run.timings_ms.append(timing)
        last_index, seen = frame_index, seen + 1
    if seen < expected:
        log.warning("%s: truncated or corrupt video: decoded %d of %d expected images; scoring frames 0-%d only",
                    clip.name, seen, expected, last_index)
        run.frame_counts[clip.name] = last_index + 1
    run.images += seen


def run_detector(detector, clips, stride: int = 1, max_frames: int | None = None, cache_dir=None,
                 tiling: str = "off", min_scale: float = DEFAULT_MIN_SCALE) -> DirectRun:
    """Detections for every stride-th frame, tiled as ``tiling`` and ``min_scale`` say (models.tiling);
    a clip whose video or labels are unusable is skipped and listed."""
    run = DirectRun()
    started = time.perf_counter()
    for clip in clips:
        try:
            _detect_clip(detector, clip, run, stride, max_frames, cache_dir, tiling, min_scale)
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
