"""Per-frame cost of track + annotate + encode at 640x512 and 1920x1080, printed as a table.

Frames and boxes come from the synthetic generator (its ground-truth boxes stand in for detections),
run through the real TrackStage (tracking alone, then tracking + annotation) and the real recorder's
SegmentWriter (PyAV/libx264, fragmented MP4). Every size is measured in the same run, so the ratios
between columns and rows are comparable; absolute numbers depend on the machine and its load.

    python scripts/bench_track_record.py [--frames 60] [--sizes 640x512,1920x1080]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.runtime.config import config_from_dict  # noqa: E402
from stages.record import RecordConfig  # noqa: E402
from pipeline.runtime.messages import FrameMessage  # noqa: E402
from pipeline.offline.data.synthetic import render_clip  # noqa: E402
from stages.record import SegmentWriter, video_frame  # noqa: E402
from stages.track import TrackStage  # noqa: E402


def clip(size: tuple[int, int], frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for image, boxes in render_clip(seed=3, frames=frames, size=size, n_drones=3, n_birds=2):
        dets = np.array([[b.x, b.y, b.x + b.w, b.y + b.h, 0.85, b.class_id] for b in boxes], np.float32)
        out.append((image, dets.reshape(-1, 6)))
    return out


def time_track(tmp: Path, frames, annotate: bool) -> float:
    cfg = config_from_dict({"sources": [{"id": "bench", "uri": "unused"}], "output_dir": str(tmp / "out"),
                            "transport": {"ipc_dir": str(tmp / f"ipc{int(annotate)}")},
                            "stages": {"track": {"annotate": annotate}}}, check_files=False)
    stage = TrackStage(cfg)
    try:
        started = time.perf_counter()
        for i, (image, dets) in enumerate(frames):
            stage.process(FrameMessage("bench", i, i / 30, time.time(), {"image": image}, dets.copy()))
        return (time.perf_counter() - started) / len(frames) * 1000
    finally:
        stage.close()


def time_encode(tmp: Path, frames) -> float:
    folder = tmp / "rec"
    folder.mkdir(exist_ok=True)
    writer = SegmentWriter(folder, RecordConfig(segment_seconds=3600))
    started = time.perf_counter()
    for i, (image, _) in enumerate(frames):
        writer.write(video_frame(image), i / 30)
    writer.close()
    return (time.perf_counter() - started) / len(frames) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", default="640x512,1920x1080")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print(f"{'size':>10} {'track':>8} {'annotate':>9} {'encode':>8} {'total':>8} {'fps':>7} {'x 30fps':>8}")
    print(f"{'':>10} {'ms/frame':>8} {'ms/frame':>9} {'ms/frame':>8} {'ms/frame':>8}")
    for size in sizes:
        frames = clip(size, args.frames)
        with tempfile.TemporaryDirectory() as tmp:
            track_ms = time_track(Path(tmp), frames, annotate=False)
            annotate_ms = max(0.0, time_track(Path(tmp), frames, annotate=True) - track_ms)
            encode_ms = time_encode(Path(tmp), frames)
        total = track_ms + annotate_ms + encode_ms
        print(f"{f'{size[0]}x{size[1]}':>10} {track_ms:8.2f} {annotate_ms:9.2f} {encode_ms:8.2f} {total:8.2f} "
              f"{1000 / total:7.1f} {1000 / total / 30:8.2f}")
    print("track includes publishing each frame on the events socket; annotate = (track+annotate) - track")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
