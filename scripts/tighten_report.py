"""How well pipeline.offline.data.tighten recovers objects from loose visible-camera boxes.

    python scripts/tighten_report.py [--clips 20] [--grid out/tighten_grid.png] [--data ../shared/data/...]

1. Synthetic check (no data needed): drones and birds rendered by pipeline.offline.data.synthetic on visible-camera
   backgrounds, their true boxes loosened the way the real visible labels are drawn (the object roughly
   centred in a box of at least ~20-26 x 18-24 px), then tightened. Prints the IoU with the true box
   before and after, by object size.
2. Real data (when the dataset is present): how many visible labels of the train split change, the
   median area kept, and a PNG grid of random labels (red: as labeled, green: tightened) to look at.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import supervision as sv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.offline.data import dataset, formats, synthetic  # noqa: E402
from pipeline.offline.data.tighten import tighten_box  # noqa: E402

SIZE_BINS = ((0, 12), (12, 24), (24, 1000))


def iou_xywh(a, b) -> float:
    return float(sv.box_iou_batch(sv.xywh_to_xyxy(np.array([a])), sv.xywh_to_xyxy(np.array([b])))[0, 0])


def synthetic_check(clips: int) -> None:
    rng = np.random.default_rng(0)
    rows = []   # (longest side, IoU loose, IoU tightened, changed)
    for seed in range(clips):
        for t, (image, boxes) in enumerate(synthetic.render_clip(seed, 40, (640, 512), "V")):
            if t % 10:
                continue
            for b in boxes:
                truth = (b.x, b.y, b.w, b.h)
                loose = synthetic.loose_visible_box(truth, rng)
                tight, changed = tighten_box(image, loose)
                rows.append((max(b.w, b.h), iou_xywh(loose, truth), iou_xywh(tight, truth), changed))
    table = np.array(rows)
    print(f"synthetic visible clips ({clips}, every 10th of 40 frames): IoU with the true box")
    for low, high in SIZE_BINS:
        part = table[(table[:, 0] >= low) & (table[:, 0] < high)]
        if len(part):
            print(f"  {low:>2}-{high:<4} px {len(part):>4} boxes  loose {part[:, 1].mean():.2f} "
                  f"(>=0.5: {(part[:, 1] >= 0.5).mean():4.0%})  tightened {part[:, 2].mean():.2f} "
                  f"(>=0.5: {(part[:, 2] >= 0.5).mean():4.0%})  changed {part[:, 3].mean():4.0%}")


def _tile(frame: np.ndarray, box, tight, title: str) -> np.ndarray:
    x, y, w, h = box
    cx, cy, half = int(x + w / 2), int(y + h / 2), int(max(w, h) * 0.8) + 10
    padded = cv2.copyMakeBorder(frame, half, half, half, half, cv2.BORDER_CONSTANT)
    scale = 200 / (2 * half)
    tile = cv2.resize(padded[cy:cy + 2 * half, cx:cx + 2 * half], (200, 200), interpolation=cv2.INTER_NEAREST)
    for (bx, by, bw, bh), colour in ((box, (0, 0, 255)), (tight, (0, 255, 0))):
        corner = (int((bx - cx + half) * scale), int((by - cy + half) * scale))
        cv2.rectangle(tile, corner, (int((bx + bw - cx + half) * scale), int((by + bh - cy + half) * scale)), colour, 1)
    cv2.putText(tile, title, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return tile


def real_check(clips: list[dataset.Clip], grid: Path, samples: int) -> None:
    rng = np.random.default_rng(0)
    kept, changed, tiles = [], 0, []
    for clip in rng.choice(clips, min(samples, len(clips)), replace=False):
        labels = dataset.read_labels(clip)
        if not labels:
            continue
        frame_index = int(rng.choice(sorted(labels)))
        frame = next((f for i, f in dataset.iter_frames(clip) if i == frame_index), None)
        if frame is None:
            continue
        for _, *box in labels[frame_index]:
            tight, was_changed = tighten_box(frame, tuple(box))
            changed += was_changed
            kept.append(tight[2] * tight[3] / (box[2] * box[3]))
            if len(tiles) < 24:
                tiles.append(_tile(frame, box, tight, f"{clip.name[2:]} {box[2]:.0f}x{box[3]:.0f}"))
    print(f"real visible train labels ({len(kept)} boxes, one random frame of {samples} clips): "
          f"{changed / max(len(kept), 1):.0%} tightened, median area kept {np.median(kept):.2f}")
    if len(tiles) >= 8:
        rows = [np.hstack(tiles[i:i + 8]) for i in range(0, len(tiles) - len(tiles) % 8, 8)]
        grid.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(grid), np.vstack(rows))
        print(f"grid (red: as labeled, green: tightened): {grid}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=20, help="synthetic clips to render")
    p.add_argument("--data", type=Path, default=dataset.DEFAULT_ROOT,
                   help="this dataset (its visible train clips) or a folder in another label format (its visible clips)")
    p.add_argument("--format", choices=formats.formats(), default="auto")
    p.add_argument("--classes", help="map another format's class names onto the model's, e.g. uav=drone")
    p.add_argument("--samples", type=int, default=40, help="real visible clips to sample")
    p.add_argument("--grid", type=Path, default=Path("out/tighten_grid.png"))
    args = p.parse_args()
    synthetic_check(args.clips)
    if not args.data.is_dir():
        print(f"real-data check skipped: no dataset at {args.data}")
        return 0
    try:
        fmt = formats.detect_format(args.data) if args.format == "auto" else args.format
        clips = formats.load_clips("train" if fmt == "dataset" else "all", args.data, ("V",), fmt,
                                   formats.parse_class_map(args.classes))
    except dataset.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    real_check(clips, args.grid, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
