"""Write deterministic synthetic low-slow-small clips (mp4 + COCO json + MOTChallenge gt).

    python scripts/make_synthetic.py --out out/synthetic --seed 0 --count 3
    python scripts/make_synthetic.py --out out/tiny-dataset --dataset-layout   # Video_V/..., labels_V/...
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.offline.data import synthetic  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x512, got {text!r}") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"size must be positive and even, got {text!r}")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first clip")
    parser.add_argument("--count", type=int, default=1, help="number of clips (seeds seed..seed+count-1)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=parse_size, default=(640, 512), help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--modality", choices=("V", "IR"), default="V")
    parser.add_argument("--background", choices=("sky", "treeline", "buildings", "ground"))
    parser.add_argument("--drones", type=int, help="drones per clip (default: 1-3 from the seed)")
    parser.add_argument("--birds", type=int, help="birds per clip (default: 0-2 from the seed)")
    parser.add_argument("--crf", type=int, default=23, help="H.264 quality (higher = more compression)")
    parser.add_argument("--dataset-layout", action="store_true",
                        help="write the default tiny dataset in the real dataset's layout instead")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.count < 1:
        parser.error("--frames and --count must be >= 1")
    started = time.perf_counter()
    if args.dataset_layout:
        names = synthetic.make_dataset(args.out, frames=args.frames, crf=args.crf)
        print(f"wrote {len(names)} clips ({', '.join(names)}) under {args.out}")
    for seed in range(args.seed, args.seed + args.count) if not args.dataset_layout else ():
        paths = synthetic.make_clip(args.out, seed=seed, frames=args.frames, size=args.size, fps=args.fps,
                                    modality=args.modality, n_drones=args.drones, n_birds=args.birds,
                                    background=args.background, crf=args.crf)
        print(f"wrote {paths.video} {paths.coco.name} {paths.mot_gt.name}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
