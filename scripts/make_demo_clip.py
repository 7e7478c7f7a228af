"""Make the embedded demo clip: one test-split clip of the drone-detection dataset, with its boxes as COCO.

    python scripts/make_demo_clip.py [--clip V_DRONE_080] [--root ../shared/data/drone-detection-dataset]

Copies the clip's video into configs/assets/ and writes NAME.json beside it: every frame's boxes, the
visible camera's loose boxes tightened to the object (pipeline.offline.data.tighten), the convention
`eval --visible-boxes tight` scores against. The dataset is CC0 1.0 (configs/assets/README.md). The clip
must be in the test split: the shipped models never trained on it, so the demo shows what a new clip gets.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.offline.data import dataset  # noqa: E402
from pipeline.offline.data.tighten import LabelTightener  # noqa: E402

ASSETS = REPO / "configs" / "assets"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="V_DRONE_080")
    p.add_argument("--root", type=Path, default=dataset.DEFAULT_ROOT)
    p.add_argument("--out", type=Path, default=ASSETS)
    args = p.parse_args(argv)
    try:
        test_clips = {clip.name: clip for clip in dataset.load_split("test", args.root)}
    except dataset.DatasetError as exc:  # no ../shared here, or a dataset without that split
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.clip not in test_clips:
        print(f"error: {args.clip} is not a clip of the test split (configs/splits.json)", file=sys.stderr)
        return 2
    clip = test_clips[args.clip]
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(clip.video_path, args.out / f"{clip.name}.mp4")
    tightener = LabelTightener()
    coco = dataset.to_coco([clip], labels_of=tightener)
    coco["info"].update(source=f"{clip.name} of the drone-detection dataset (Svanström et al. 2021), CC0 1.0",
                        boxes="visible boxes tightened" if clip.modality == "V" else "as labeled")
    (args.out / f"{clip.name}.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    print(f"{args.out / clip.name}.mp4 and .json: {len(coco['images'])} frames, {len(coco['annotations'])} boxes "
          f"({tightener.changed} of {tightener.boxes} tightened)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
