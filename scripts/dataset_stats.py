"""Dataset statistics: clips / frames / boxes per split, modality and class, and box-size histograms (PNG).

    python scripts/dataset_stats.py [--data ../shared/data/drone-detection-dataset] [--out out/dataset_stats]
    python scripts/dataset_stats.py --data my_camera_yolo/ --classes uav=drone   # any format formats/ reads
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.offline.data import dataset, formats  # noqa: E402
from pipeline.offline.data.dataset import CLASSES, DatasetError  # noqa: E402


def collect(clips: list[dataset.Clip], split_of: dict[str, str]) -> tuple[dict, dict]:
    """Counts[(split, modality, class)] -> {clips, frames, boxes} and longest box sides per (modality, class)."""
    counts: dict = defaultdict(lambda: {"clips": 0, "frames": 0, "boxes": 0})
    sides: dict = defaultdict(list)
    for clip in clips:
        split = split_of.get(clip.name, "unassigned")
        try:
            labels = dataset.read_labels(clip)
            frames = dataset.video_info(clip)[0]
        except DatasetError as exc:
            logging.warning("skipping clip: %s", exc)
            continue
        counts[(split, clip.modality, clip.label)]["clips"] += 1
        counts[(split, clip.modality, clip.label)]["frames"] += frames
        for boxes in labels.values():
            for class_id, _, _, w, h in boxes:
                counts[(split, clip.modality, CLASSES[class_id])]["boxes"] += 1
                sides[(clip.modality, CLASSES[class_id])].append(max(w, h))
    return counts, sides


def print_table(counts: dict) -> None:
    print(f"{'split':<11}{'modality':<9}{'class':<12}{'clips':>7}{'frames':>9}{'boxes':>9}")
    for split in ("train", "val", "test", "unassigned"):
        rows = sorted((k, v) for k, v in counts.items() if k[0] == split)
        for (_, modality, name), value in rows:
            print(f"{split:<11}{modality:<9}{name:<12}{value['clips']:>7}{value['frames']:>9}{value['boxes']:>9}")
        if rows:
            total = {key: sum(v[key] for _, v in rows) for key in ("clips", "frames", "boxes")}
            print(f"{split:<11}{'all':<9}{'all':<12}{total['clips']:>7}{total['frames']:>9}{total['boxes']:>9}")


def plot_histograms(sides: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities = sorted({modality for modality, _ in sides})
    figure, axes = plt.subplots(1, max(len(modalities), 1), figsize=(6 * max(len(modalities), 1), 4), squeeze=False)
    bins = np.logspace(0, np.log10(400), 40)
    for axis, modality in zip(axes[0], modalities):
        for name in CLASSES:
            values = sides.get((modality, name))
            if values:
                axis.hist(values, bins=bins, histtype="step", linewidth=1.5,
                          label=f"{name} (n={len(values)}, median {np.median(values):.0f} px)")
        axis.axvline(16, color="grey", linestyle=":", label="tiny (< 16 px)")
        axis.set(xscale="log", xlabel="longest box side (px)", ylabel="boxes", title=f"{modality} box sizes")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def read_clips(args: argparse.Namespace) -> tuple[list[dataset.Clip], dict[str, str]]:
    """The clips and their splits: this dataset's by the manifest, another format's folder all "unassigned"."""
    fmt = formats.detect_format(args.data) if args.format == "auto" else args.format
    if fmt != "dataset":
        return formats.read_clips(args.data, fmt, formats.parse_class_map(args.classes)), {}
    clips = dataset.find_clips(args.data)
    splits = json.loads(args.manifest.read_text())["splits"]
    return clips, {name: split for split, names in splits.items() for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=dataset.DEFAULT_ROOT,
                        help="this dataset's root or a folder in another label format (YOLO, COCO, MOT, CVAT)")
    parser.add_argument("--format", choices=formats.formats(), default="auto")
    parser.add_argument("--classes", help="map another format's class names onto the model's, e.g. uav=drone")
    parser.add_argument("--manifest", type=Path, default=dataset.SPLIT_MANIFEST)
    parser.add_argument("--out", type=Path, default=Path("out/dataset_stats"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        clips, split_of = read_clips(args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        print(f"error: cannot read split manifest {args.manifest}: {exc}", file=sys.stderr)
        return 2
    counts, sides = collect(clips, split_of)
    print_table(counts)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_histograms(sides, args.out / "box_sizes.png")
    for (modality, name), values in sorted(sides.items()):
        p10, p50, p90 = np.percentile(values, [10, 50, 90])
        tiny = np.mean(np.asarray(values) < 16)
        print(f"{modality:<3}{name:<11} longest side p10/median/p90 {p10:.0f}/{p50:.0f}/{p90:.0f} px, tiny {tiny:.0%}")
    print(f"wrote {args.out / 'box_sizes.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
