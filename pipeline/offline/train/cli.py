"""``python -m pipeline train``: argv -> ``TrainSettings`` -> ``loop.run``; errors as one line, exit 2."""
from __future__ import annotations

import argparse
import logging
import sys

from models.letterbox import STRIDE
from pipeline.offline.data.dataset import MODALITIES
from pipeline.offline.train.settings import TrainError, TrainSettings, parse_input_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline train", description="Train a YOLOX(-GSSAM) model.")
    _data_options(p)
    _budget_options(p)
    _recipe_options(p)
    _run_options(p)
    return p


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="yolox-nano-gssam-sigres-p1", help="model name (models.model_names())")
    p.add_argument("--data", default=None, help="dataset root (default: pipeline.offline.data.dataset.DEFAULT_ROOT)")
    p.add_argument("--format", default="auto", help="label format of --data: dataset (this dataset's layout, split "
                   "by configs/splits.json), yolo, coco, mot, cvat; another format's clips are split by clip into "
                   "train and val (pipeline.offline.data.holdout); auto detects")
    p.add_argument("--classes", default=None, help="map another format's class names onto the model's, e.g. uav=drone")
    p.add_argument("--bundle", default=None, help="read a compact bundle (scripts/make_train_bundle.py) instead")
    p.add_argument("--splits", default=None, help="split manifest (default configs/splits.json)")
    p.add_argument("--cache", default=None, help="with --bundle: decode once into DIR/<clip>.npy, shared by runs")
    p.add_argument("--stride", type=int, default=3, help="keep every k-th frame of the real dataset")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def _budget_options(p: argparse.ArgumentParser) -> None:
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None)
    budget.add_argument("--minutes", type=float, default=None, help="time budget of the training loop")
    p.add_argument("--end-by", type=float, default=None, help="with --minutes: also end by this UNIX time")
    p.add_argument("--epoch-steps", type=int, default=None, help="steps per epoch (default: one pass, "
                   "at most total/--evals with --minutes)")
    p.add_argument("--evals", type=int, default=5, help="with --minutes: number of epochs (= evaluations)")


def _recipe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=320, help="training crop side (px)")
    p.add_argument("--input-size", default="512x640", help=f"eval/inference input HxW (multiples of {STRIDE})")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=float, default=None, help="default 2e-3 (adamw) / 0.01*batch/64 (sgd)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0.05 (adamw) / 5e-4 (sgd)")
    p.add_argument("--gssam-lr-scale", type=float, default=1.0, help="multiply the lr of the GSSAM modules' "
                   "parameters by this (new layers of a twin started from a plain YOLOX: docs/ablation.md)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), default="fp16", help="CUDA autocast dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder: last.pt, best.pt, log.json, curve.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (same model, or "
                   "the plain YOLOX a GSSAM model is the twin of): a fresh schedule on top of an earlier run")
    p.add_argument("--l1-loss", action="store_true", help="add yolox's L1 box loss (YOLOX turns it on for its "
                   "last epochs): tighter boxes, which tiny targets need for IoU 0.5")
    p.add_argument("--small-object-power", type=float, default=0.0, help="positive crops favour objects "
                   "under 16 px: pick weight (16/side)**P for larger ones (0: uniform)")
    p.add_argument("--visible-boxes", choices=("dataset", "tight"), default="dataset",
                   help="tight: shrink the visible camera's loose label boxes to the object (pipeline.offline.data.tighten), "
                        "the convention of the thermal and synthetic boxes")
    p.add_argument("--assignment", choices=("batched", "yolox"), default="batched",
                   help="SimOTA label assignment: batched (models/simota.py) or yolox's per-image loop")
    p.add_argument("--camera-effects", type=float, default=0.0, help="share of crops shown as another camera "
                   "would: thermal palettes (the proxy camera's held out), inversion, visible-style thermal, gamma, "
                   "sensor and fixed-pattern noise, vignetting, blur, JPEG (pipeline/offline/train/camera.py)")
    p.add_argument("--copy-paste", type=float, default=0.0, help="share of crops that get 1-3 real labeled objects "
                   "from other frames pasted in, 4-48 px, either camera (pipeline/offline/train/paste.py)")
    p.add_argument("--freeze-bn", action="store_true", help="keep the BatchNorm statistics of --init (their "
                   "scale and shift still train): a fine-tune on little data forgets less")
    p.add_argument("--modality", choices=MODALITIES, default=None,
                   help="train and validate on one camera's clips of this dataset only (of --synthetic N, only the "
                        "clips rendered as that camera are kept): for cross-camera numbers, e.g. train on V, score IR")
    p.add_argument("--synthetic", type=int, default=0, help="mix N synthetic clips (pipeline.offline.data.synthetic) into train")
    p.add_argument("--synthetic-frames", type=int, default=150)
    p.add_argument("--synthetic-look", choices=("plain", "varied"), default="plain",
                   help="varied: each synthetic clip gets its own sky (blue, overcast, dusk), haze, target contrast "
                        "and polarity, noise and blur; plain: all look like the synthetic seed-7 clip")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-per-clip", type=int, default=10, help="val frames per clip (evenly spaced)")
    p.add_argument("--max-clips", type=int, default=None, help="use only the first N clips per split (smoke)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per real clip (smoke)")
    p.add_argument("--frames-on", choices=("auto", "device", "host"), default="auto")
    p.add_argument("--gpu-reserve-gb", type=float, default=20.0,
                   help="auto: keep frames on the GPU only if this much stays free after them")
    p.add_argument("--probe-steps", type=int, default=20, help="with --minutes: steps timed before planning")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: CPU count)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--keep-epochs", action="store_true", help="keep every epoch's weights as epoch-N.pt "
                   "(a study scores each step count; ~2 MiB each for nano, ~200 MB for yolox-x)")
    p.add_argument("--patience", type=int, default=None, help="stop early when this many evaluations in a row "
                   "do not beat the best val mAP50:95 (best.pt stays the best)")
    p.add_argument("--prepare-only", action="store_true", help="decode/render into --cache, then exit")


def parse_args(argv: list[str]) -> TrainSettings:
    """Checked settings from argv; TrainError names the first bad option."""
    options = vars(build_parser().parse_args(argv))
    options["input_size"] = parse_input_size(options["input_size"])
    return TrainSettings(**options)


def main(argv: list[str] | None = None) -> int:
    from pipeline.offline.train.loop import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return run(parse_args(list(sys.argv[1:] if argv is None else argv)))
    except TrainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
