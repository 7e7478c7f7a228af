"""``python -m pipeline adapt``: argv -> ``AdaptSettings`` -> ``run.adapt``; problems as one line, exit 2."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from models import DEFAULT_WEIGHTS, CheckpointError, weights_file
from models.backends import BACKENDS
from pipeline.offline.adapt.settings import AdaptSettings
from pipeline.offline.data.dataset import DatasetError
from pipeline.offline.data.formats import formats
from pipeline.offline.eval.settings import EvalError
from pipeline.offline.train.settings import TrainError

DESCRIPTION = ("Fine-tune the shipped detector on your own camera's labeled clips in minutes on a CPU, "
               "without forgetting what it knew; writes the new weights, their card and a before/after table.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline adapt", description=DESCRIPTION)
    p.add_argument("--data", type=Path, required=True, help="your labeled clips: YOLO, COCO, MOT, CVAT or this "
                   "dataset's layout (at least 2 clips: one is held out)")
    p.add_argument("--format", choices=formats(), default="auto")
    p.add_argument("--classes", help="map your class names onto the model's, e.g. uav=drone,kite=- ")
    p.add_argument("--test-data", type=Path, help="clips to report on (default: --holdout of --data's clips)")
    p.add_argument("--weights", type=weights_file, default=DEFAULT_WEIGHTS,
                   help="start from this checkpoint or shipped name (default: the shipped default model)")
    p.add_argument("--minutes", type=float, default=15.0, help="training-loop budget (default 15)")
    p.add_argument("--out", type=Path, help="output folder (default out/adapt/<name of --data>)")
    p.add_argument("--base", default="auto", help="this project's dataset mixed in against forgetting: auto "
                   "(when present), none, or its root")
    p.add_argument("--base-share", type=float, default=0.7, help="share of training crops from the base data "
                   "(0.7 with lr 5e-5 and camera effects 0.5: chosen on a tuning split, docs/generalisation.md)")
    p.add_argument("--base-stride", type=int, default=30, help="every k-th frame of the base train clips")
    p.add_argument("--base-clips", type=int, help="at most N base train clips (quick runs)")
    p.add_argument("--stride", type=int, default=2, help="every k-th frame of your clips")
    p.add_argument("--max-frames", type=int, help="at most N frames per clip of yours (quick runs)")
    p.add_argument("--holdout", type=float, default=0.3, help="share of --data's clips held out for the report")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--camera-effects", type=float, default=0.5,
                   help="share of crops shown as another camera would, as the default model was trained (train --camera-effects)")
    p.add_argument("--freeze-bn", action="store_true", help="keep the start model's BatchNorm statistics")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--evals", type=int, default=6, help="validations on the val clips (each may keep the weights)")
    p.add_argument("--patience", type=int, default=3, help="stop after N validations without a gain")
    p.add_argument("--val-per-clip", type=int, default=20)
    p.add_argument("--backend", choices=BACKENDS, default="onnx", help="backend of the before/after scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--skip-base-check", action="store_true", help="do not score the base val split (forgetting is "
                   "then neither measured nor limited: --max-forget does nothing)")
    p.add_argument("--blend", default="auto", help="how much of the fine-tune to keep: auto (shares 1, 0.75, 0.5, "
                   "0.25 of it blended with the start model in weight space, one chosen on your val clips and the "
                   "base val split: about 2 minutes of scoring after training), shares with at most 2 decimals "
                   "separated by commas (the fine-tune itself is a candidate only if 1 is listed), or 1 (the "
                   "fine-tune as it is, nothing scored)")
    p.add_argument("--max-forget", type=float, default=1.0, help="points of base val mAP50:95 a chosen blend may "
                   "lose (default 1)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.offline.adapt.run import adapt

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = vars(build_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))
    settings = None
    try:
        settings = AdaptSettings(**options)
        return adapt(settings)
    except (TrainError, DatasetError, EvalError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # (the training loop handles its own Ctrl-C: this is decoding or scoring)
        started = settings is not None and (settings.out / "train" / "last.pt").is_file()
        print("adapt: interrupted; " + (f"the training run in {settings.out / 'train'} is kept: the same command "
                                        "with --resume finishes it" if started else "nothing was trained yet"),
              file=sys.stderr)
        return 130
