"""Build ``.bundle/``: the train + val clips in a compact form that travels to a GPU machine.

Each clip keeps every ``--stride``-th frame, re-encoded as H.264 (libx264 via PyAV, no B-frames so decode
order = stored order) at ``--crf``; ``manifest.json`` holds, per clip, the ORIGINAL index of every kept
frame and the labels keyed by that original index (labels are never shifted), plus the split manifest it
came from. The test split never goes into the bundle. Prints the size; fails if it exceeds ``--max-mb``.

    .venv/bin/python scripts/make_train_bundle.py [--out .bundle] [--stride 3] [--crf 25]
Read it with ``python -m pipeline train --bundle .bundle``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pipeline.offline.data import dataset  # noqa: E402

FORMAT = "train-bundle/1"


def encode_clip(task) -> dict:
    """Re-encode one clip's kept frames; returns its manifest entry."""
    import av

    clip, split, stride, crf, out_dir, max_frames = task
    labels = dataset.read_labels(clip)
    video = Path(out_dir) / "clips" / f"{clip.name}.mp4"
    frame_ids = []
    container = av.open(str(video), "w")
    try:
        stream = None
        for index, frame in dataset.iter_frames(clip, stride=stride, max_frames=max_frames):
            if stream is None:
                stream = container.add_stream("libx264", rate=30 // stride or 1)
                stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
                stream.options = {"crf": str(crf), "preset": "slow", "bf": "0", "threads": "1"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
            frame_ids.append(index)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()
    kept = set(frame_ids)
    return {"name": clip.name, "modality": clip.modality, "label": clip.label, "split": split,
            "video": f"clips/{clip.name}.mp4", "frame_ids": frame_ids,
            "labels": {str(i): [list(row) for row in rows] for i, rows in sorted(labels.items()) if i in kept}}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(dataset.DEFAULT_ROOT))
    p.add_argument("--out", default=str(REPO_ROOT / ".bundle"))
    p.add_argument("--splits", default="train,val", help="comma-separated; test stays out by design")
    p.add_argument("--splits-manifest", default=str(dataset.SPLIT_MANIFEST))
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--crf", type=int, default=25)
    p.add_argument("--max-mb", type=float, default=45.0)
    p.add_argument("--max-clips", type=int, default=None, help="first N clips per split (smoke bundles)")
    p.add_argument("--max-frames", type=int, default=None, help="kept frames per clip (smoke bundles)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    if "test" in splits:
        print("error: the test split stays out of the training bundle", file=sys.stderr)
        return 2
    if args.stride < 1 or not 0 <= args.crf <= 51:
        print("error: --stride must be >= 1 and --crf within 0..51", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        tasks = [(clip, split, args.stride, args.crf, str(out), args.max_frames)
                 for split in splits for clip in dataset.load_split(split, args.data, manifest=args.splits_manifest)[:args.max_clips]]
    except dataset.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if out.exists():
        shutil.rmtree(out)
    (out / "clips").mkdir(parents=True)
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        entries = pool.map(encode_clip, tasks, chunksize=1)
    manifest = {"format": FORMAT, "classes": list(dataset.CLASSES), "stride": args.stride, "crf": args.crf,
                "source": str(args.data), "splits_manifest": json.loads(Path(args.splits_manifest).read_text()),
                "clips": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    size_mb = folder_bytes(out) / 2**20
    frames = sum(len(e["frame_ids"]) for e in entries)
    boxes = sum(len(rows) for e in entries for rows in e["labels"].values())
    print(f"bundle {out}: {len(entries)} clips ({', '.join(splits)}), {frames} frames, {boxes} boxes, "
          f"stride {args.stride}, crf {args.crf}: {size_mb:.1f} MiB in {time.monotonic() - started:.0f}s")
    if size_mb > args.max_mb:
        print(f"error: bundle is {size_mb:.1f} MiB > --max-mb {args.max_mb}; raise --crf or --stride",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
