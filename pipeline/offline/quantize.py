"""``python -m pipeline quantize``: make the INT8 model an ``onnx-int8`` or ``openvino-int8`` backend runs.

    python -m pipeline quantize --backend onnx-int8 [--weights PT] [--input 512x640] [--frames 96]

Calibration frames: ``--frames`` training-split frames of both modalities, spread over the clips
(never a val or test frame), letterboxed as the detector feeds them. Without the dataset, frames
of the synthetic renderer stand in (said in a warning: the INT8 model then fits real footage worse).
The model is cached beside the fp32 export (models.quantize); the detector finds it there.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from models import DEFAULT_WEIGHTS, CheckpointError, checkpoint_meta, weights_file
from models.backends import BackendError, check_available
from models.letterbox import check_input_size, letterbox
from models.quantize import KINDS, QuantizeError, quantize
from pipeline.offline.data import dataset

log = logging.getLogger("pipeline.offline.quantize")


def _letterboxed(image: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    return letterbox(image, input_size)[0].transpose(2, 0, 1).astype(np.float32)


def training_frames(count: int, input_size: tuple[int, int], root: Path) -> np.ndarray:
    """``count`` frames of the train split, half per modality where both exist, a few per clip."""
    clips = dataset.load_split("train", root)
    by_modality = {m: [c for c in clips if c.name.split("_", 1)[0] == m] for m in dataset.MODALITIES}
    present = [group for group in by_modality.values() if group]
    picked: list[np.ndarray] = []
    for group in present:
        wanted = -(-count // len(present))
        chosen = [group[i] for i in np.unique(np.linspace(0, len(group) - 1, min(len(group), wanted)).astype(int))]
        per_clip = -(-wanted // len(chosen))
        for clip in chosen:
            stride = max(1, dataset.video_info(clip)[0] // per_clip)
            picked += [_letterboxed(frame, input_size)
                       for _, frame in dataset.iter_frames(clip, stride=stride, max_frames=per_clip)]
    log.info("calibration: %d training frames from %d clips", min(count, len(picked)), len(clips))
    return np.stack(picked[:count])


def synthetic_frames(count: int, input_size: tuple[int, int]) -> np.ndarray:
    from pipeline.offline.data.synthetic import render_clip

    frames = []
    for seed in range(count):
        image, _ = next(iter(render_clip(seed=seed, frames=1, modality="IR" if seed % 2 else "V")))
        frames.append(_letterboxed(image, input_size))
    return np.stack(frames)


def calibration_frames(count: int, input_size: tuple[int, int], root: Path) -> np.ndarray:
    try:
        return training_frames(count, input_size, root)
    except dataset.DatasetError as exc:
        log.warning("no training frames (%s): calibrating on synthetic frames, which fit real footage worse", exc)
        return synthetic_frames(count, input_size)


def _input_size(text: str | None, weights: Path) -> tuple[int, int]:
    if text is None:
        return tuple(checkpoint_meta(weights)["input_size"])
    height, _, width = text.partition("x")
    if not (height.isdigit() and width.isdigit()):
        raise QuantizeError(f"--input must be HxW, e.g. 512x640, got {text!r}")
    return check_input_size((int(height), int(width)), "--input")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=sorted(KINDS), required=True)
    parser.add_argument("--weights", type=weights_file, default=DEFAULT_WEIGHTS)
    parser.add_argument("--input", help="input size HxW (default: the checkpoint's)")
    parser.add_argument("--frames", type=int, default=96, help="calibration frames (default 96)")
    parser.add_argument("--data", type=Path, default=dataset.DEFAULT_ROOT, help="dataset root (its train split)")
    parser.add_argument("--cache-dir", type=Path, help="export cache (default: the detector's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.frames < 1:
            raise QuantizeError("--frames must be >= 1")
        check_available(args.backend)
        input_size = _input_size(args.input, args.weights)
        frames = calibration_frames(args.frames, input_size, args.data)
        path = quantize(args.weights, input_size, frames, args.backend, args.cache_dir)
    except (QuantizeError, CheckpointError, BackendError, ImportError, OSError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"{args.backend} model from {len(frames)} calibration frames: {path}")
    return 0
