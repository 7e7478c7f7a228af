"""Benchmark the offline evaluation: end-to-end throughput and metric time against plain pycocotools.

Prints, side by side in one run:
  1. frames per second of decoding alone and of decode + detector (the ``eval`` loop), with the
     preprocess / inference / postprocess split;
  2. seconds to compute COCO metrics on the same ground truth and predictions with plain pycocotools
     (one COCOeval: the baseline), with faster-coco-eval, and for the full ``eval`` report
     (overall + tiny + per-modality evaluations) with each library; ratios against the baseline.

    python scripts/bench_eval.py                       # a synthetic dataset written to a temp dir
    python scripts/bench_eval.py --data ../shared/data/drone-detection-dataset --split test --stride 10
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.backends import BACKENDS  # noqa: E402
from pipeline.offline import eval as evaluate
from pipeline.offline.data import dataset, synthetic  # noqa: E402
from pipeline.offline.data.dataset import CLASSES, DatasetError  # noqa: E402


def time_decode(clips, stride: int, max_frames: int | None) -> tuple[int, float]:
    started, frames = time.perf_counter(), 0
    for clip in clips:
        frames += sum(1 for _ in dataset.iter_frames(clip, stride, max_frames=max_frames))
    return frames, time.perf_counter() - started


def plain_pycocotools_seconds(ground_truth: dict, predictions: list[dict]) -> float:
    """The baseline: one COCOeval from pycocotools, as a user would run it."""
    import copy

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = copy.deepcopy(ground_truth), copy.deepcopy(predictions)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return time.perf_counter() - started


def single_eval_seconds(ground_truth: dict, predictions: list[dict], library: str) -> float:
    started = time.perf_counter()
    evaluate.run_cocoeval(ground_truth, predictions, library)
    return time.perf_counter() - started


def full_report_seconds(ground_truth: dict, predictions: list[dict], library: str) -> float:
    started = time.perf_counter()
    evaluate.coco_metrics(ground_truth, predictions, library)
    return time.perf_counter() - started


def tiny_checkpoint(directory: Path) -> Path:
    import models

    path = directory / "bench-nano.pt"
    models.save_checkpoint(path, models.build_model("yolox-nano", len(CLASSES)), name="yolox-nano",
                           input_size=(416, 416), class_names=list(CLASSES))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset root (default: a synthetic dataset in a temp dir)")
    parser.add_argument("--split", default="all")
    parser.add_argument("--weights", type=models.weights_file, help="checkpoint (default: the shipped model, else an untrained nano)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--max-frames", type=int, default=40, help="per clip, for the detector run")
    parser.add_argument("--metric-stride", type=int, default=1, help="frame stride of the metric benchmark's GT")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp) / "data"
        if args.data is None:
            synthetic.make_dataset(root, frames=150)
        try:
            clips = dataset.load_split(args.split, root)
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from models import Detector
        from models import DEFAULT_WEIGHTS

        weights = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else tiny_checkpoint(Path(tmp)))
        detector = Detector(weights, backend=args.backend, conf_threshold=0.001, nms_threshold=0.65)
        frames, decode_s = time_decode(clips, args.stride, args.max_frames)
        run = evaluate.run_detector(detector, clips, args.stride, args.max_frames)
        latency = evaluate.latency_summary(run.timings_ms)

        ground_truth = dataset.to_coco(clips, args.metric_stride)
        predictions = synthetic.noisy_predictions(ground_truth, seed=0)
        baseline = plain_pycocotools_seconds(ground_truth, predictions)
        timings = {"plain pycocotools COCOeval (baseline)": baseline,
                   "faster-coco-eval COCOeval": single_eval_seconds(ground_truth, predictions, "faster"),
                   "eval report, pycocotools": full_report_seconds(ground_truth, predictions, "pycocotools"),
                   "eval report, faster-coco-eval": full_report_seconds(ground_truth, predictions, "faster")}

    print(f"clips {len(clips)}, detector {detector.model_name} {detector.input_size} on {args.backend}, "
          f"weights {weights.name}")
    print(f"{'throughput':<40}{'frames':>8}{'seconds':>10}{'frames/s':>10}")
    print(f"{'decode only':<40}{frames:>8}{decode_s:>10.2f}{frames / decode_s:>10.1f}")
    print(f"{'decode + detector (eval loop)':<40}{run.images:>8}{run.seconds:>10.2f}{run.images / run.seconds:>10.1f}")
    print(f"latency ms/image over {latency['images']} images: preprocess {latency['preprocess']:.2f}, "
          f"inference {latency['inference']:.2f}, postprocess {latency['postprocess']:.2f}")
    print(f"\nmetrics on {len(ground_truth['images'])} images, {len(ground_truth['annotations'])} GT boxes, "
          f"{len(predictions)} predictions")
    print(f"{'metric computation':<40}{'seconds':>10}{'vs baseline':>13}")
    for name, seconds in timings.items():
        print(f"{name:<40}{seconds:>10.3f}{baseline / seconds:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
