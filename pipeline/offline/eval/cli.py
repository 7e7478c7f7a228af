"""``python -m pipeline eval``: argv -> ``EvalSettings`` -> ``report.evaluate``; prints the summary.
A bad option exits 2 with argparse's usage line; a problem with the data or the model with one line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models import weights_file
from models.backends import BACKEND_CHOICES, resolve_backend
from pipeline.offline.data.dataset import DEFAULT_ROOT, MODALITIES, DatasetError
from pipeline.offline.data.formats import formats
from pipeline.offline.eval.settings import METRIC_LIBRARIES, EvalError, EvalSettings

DESCRIPTION = "Offline mode: ``python -m pipeline eval`` scores a detector on a labeled split with COCO metrics."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline eval", description=DESCRIPTION)
    parser.add_argument("--data", type=Path, default=DEFAULT_ROOT,
                        help="labeled footage: this dataset's root (default: %(default)s) or a folder in another "
                             "label format (see --format)")
    parser.add_argument("--format", choices=formats(), default="auto",
                        help="label format of --data: yolo, coco, mot, cvat, dataset (this dataset's layout); auto detects")
    parser.add_argument("--classes", help="map the data's class names onto the model's, e.g. uav=drone,plane=airplane "
                                          "(name=- leaves a class out)")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                        help="a split of configs/splits.json, or all = every clip under --data (default: test of "
                             "this dataset, all of a folder in another format)")
    parser.add_argument("--modality", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    parser.add_argument("--weights", type=weights_file,
                        help="a checkpoint file, or a shipped name: default (the field model; the default), demo, ...")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="torch",
                        help="auto: the fastest this machine runs at the fp32 mAP, measured (the report names it)")
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
    parser.add_argument("--tiling", choices=("off", "on", "auto"), default="auto",
                        help="tiled detection as the pipeline runs it (models.tiling; auto: frames larger than the "
                             "model input by more than 1.5x); the dataset's 640x512 clips are never tiled in auto")
    parser.add_argument("--tile-min-scale", type=float, default=1.0, metavar="S",
                        help="tiles shrunk down to this scale where that covers a frame in fewer (the pipeline's "
                             "stages.detect.tiling.min_scale; 1: tiles at the source's own scale)")
    parser.add_argument("--export-yolo", type=Path, metavar="DIR",
                        help="also write the predictions as a YOLO folder (labels/, images/ links, data.yaml) to "
                             "correct in a labeling tool and bring back with --data")
    parser.add_argument("--export-cvat", type=Path, metavar="DIR",
                        help="also write the predictions as CVAT for images 1.1 (annotations.xml, images/ links) to "
                             "upload into CVAT, correct, export and bring back with --data")
    parser.add_argument("--export-conf", type=float, default=0.25, help="score at least this to be exported")
    parser.add_argument("--through-pipeline", action="store_true",
                        help="replay the clips through the ZeroMQ pipeline and score what it emitted")
    parser.add_argument("--pipeline-timeout", type=float, default=3600, help="seconds (with --through-pipeline)")
    return parser


def parse_args(argv: list[str]) -> EvalSettings:
    """Checked settings from argv; a bad value exits 2 through argparse (usage + one error line)."""
    parser = build_parser()
    options = vars(parser.parse_args(argv))
    options["modality"] = tuple(options["modality"])
    options["backend"] = resolve_backend(options["backend"], options.get("device", "cpu"))
    try:
        return EvalSettings(**options)
    except EvalError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    from pipeline.offline.eval.report import evaluate, summary

    settings = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = evaluate(settings)
    except (DatasetError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"wrote report.json, predictions.json, ground_truth.json, pr_curve.png to {settings.out}")
    return 0
