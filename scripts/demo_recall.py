"""How many drones of the synthetic seed-7 clip a model finds: recall at IoU 0.5 / 0.3, by size.

    python scripts/demo_recall.py [--weights W|default|demo] [--conf 0.25] [--backend onnx] [--json out.json]

Renders the synthetic clip (seed 7, 300 frames, 640x512; `make demo` replayed it until 2026-12-07) into a
temporary folder and scores every 3rd frame (pipeline.offline.eval.clip_recall).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.backends import BACKENDS  # noqa: E402
import models  # noqa: E402
from pipeline.offline.eval import clip_recall  # noqa: E402
from pipeline.offline.data.synthetic import make_clip  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="demo", help="checkpoint or shipped name (default: demo, the model trained with such renders)")
    p.add_argument("--backend", default="onnx", choices=BACKENDS)
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--class-aware-nms", action="store_true",
                   help="COCO-style NMS per class (default: the pipeline's class-agnostic NMS, as the pipeline draws)")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args()
    detector = models.Detector(models.weights_file(args.weights), backend=args.backend, conf_threshold=args.conf,
                               class_agnostic_nms=not args.class_aware_nms)
    with tempfile.TemporaryDirectory() as folder:
        paths = make_clip(Path(folder), seed=args.seed, frames=300, size=(640, 512))
        report = clip_recall(detector, paths.video, paths.coco)
    report.update(weights=args.weights, conf=args.conf, seed=args.seed, class_agnostic_nms=not args.class_aware_nms)
    print(f"{Path(args.weights).name}: {report['boxes']} drone boxes, recall "
          + ", ".join(f"IoU {t}: {r:.1%}" for t, r in report["recall"].items()))
    for row in report["by_size"]:
        low, high = row["side_px"]
        print(f"  {low:>3}-{high:<5} px  {row['boxes']:>4} boxes  "
              + "  ".join(f"IoU {t}: {r:6.1%}" for t, r in row["recall"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
