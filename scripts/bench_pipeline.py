#!/usr/bin/env python
"""Pipeline benchmark, all measured side by side in one run on one clip with one detector:

  (a) a single-process sequential loop: decode -> preprocess -> infer -> track -> annotate -> encode
  (b) the ZeroMQ pipeline in replay mode (each stage its own process)
  (c) live mode: capture-to-recorded latency p50/p99, first vs second half of the run (must not grow)
  (d) transport of one 1920x1080 frame over ipc and tcp, against a plain memory copy
  (e) two live 30 fps cameras (the clip played twice at once): frames recorded per second in total,
      and the share of frames not recorded (dropped by the live policy), for each detect setting of
      DETECT_SETTINGS (threads spinning or sleeping, one 2-thread model copy or two 1-thread workers)

    python scripts/bench_pipeline.py [--clip FILE] [--weights PATH] [--backend onnx|torch] [--frames N]
    python scripts/bench_pipeline.py --two-cameras-only --rounds 3     # (e) alone, each setting 3 times

Steady-state rates: (a) and (b) count from the first frame out to the last, so process start-up
and model loading are excluded from both.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.backends import BACKEND_CHOICES  # noqa: E402
from pipeline.runtime.config import config_from_dict  # noqa: E402
from pipeline.runtime.messages import FrameMessage  # noqa: E402
from pipeline.runtime.transport import open_socket  # noqa: E402


def make_clip(folder: Path, frames: int) -> Path:
    from pipeline.offline.data.synthetic import make_clip as synth

    return synth(folder, seed=3, frames=frames, size=(640, 512)).video


# (e) compares the detect stage's CPU settings: threads per model copy, copies (workers), spinning
DETECT_SETTINGS = {
    "2 threads, spinning": {"threads": 2, "spin": True},
    "2 threads, sleeping": {"threads": 2, "spin": False},
    "2 workers x 1 thread, sleeping": {"threads": 1, "workers": 2, "spin": False},
}


def pipeline_config(clip: Path, out: Path, weights: str, backend: str, mode: str, cameras: int = 1,
                    detect: dict | None = None) -> dict:
    ids = ["bench"] if cameras == 1 else [f"cam{i}" for i in range(cameras)]
    detect = {"weights": weights, "backend": backend, "batch_size": 4, **(detect or {})}
    return {"mode": mode, "sources": [{"id": i, "uri": str(clip)} for i in ids], "output_dir": str(out),
            "stages": {"detect": detect,
                       "record": {"segment_seconds": 600}},
            "supervisor": {"status_interval_s": 5}}


# ---------------------------------------------------------------- (a) one process
def sequential_fps(clip: Path, out: Path, weights: str, backend: str) -> tuple[float, float]:
    """-> (fps, mean detector ms per frame)"""
    import cv2

    from stages.detect import DetectStage
    from stages.preprocess import PreprocessStage
    from stages.record import RecordStage
    from stages.track import TrackStage

    cfg = config_from_dict(pipeline_config(clip, out, weights, backend, "replay"))
    pre, det, trk, rec = PreprocessStage(cfg), DetectStage(cfg), TrackStage(cfg), RecordStage(cfg)
    cap = cv2.VideoCapture(str(clip))
    count, start, detect_s = 0, None, 0.0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        start = start or time.perf_counter()
        msg = FrameMessage("bench", count, count / 30.0, time.time(), {"image": image})
        for stage in (pre, det, trk, rec):
            t0 = time.perf_counter()
            msg = (stage.process_batch([msg]) or [msg])[0]
            detect_s += time.perf_counter() - t0 if stage is det else 0.0
        count += 1
    rec.close()
    trk.close()
    return (count - 1) / (time.perf_counter() - start), detect_s / count * 1000


# ---------------------------------------------------------------- (b), (c) the pipeline
def run_pipeline(clip: Path, out: Path, weights: str, backend: str, mode: str, cameras: int = 1,
                 detect: dict | None = None) -> list[dict]:
    """The tracks.jsonl rows of every stream of one run, in order."""
    cfg = pipeline_config(clip, out, weights, backend, mode, cameras, detect)
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "pipeline", "run", str(cfg_path), "--no-progress"], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    for source in cfg["sources"]:
        rows += [json.loads(line) for line in (out / source["id"] / "tracks.jsonl").read_text().splitlines()]
    return rows


def two_cameras(clip: Path, out: Path, weights: str, backend: str, frames: int, detect: dict) -> dict:
    """(e): frames recorded per second over both live streams, and the share of their frames dropped."""
    rows = run_pipeline(clip, out, weights, backend, "live", cameras=2, detect=detect)
    walls = [r["recorded_wall"] for r in rows]
    seconds = max(walls) - min(walls)
    return {"fps_total": (len(rows) - 1) / seconds, "recorded": len(rows), "dropped_share": 1 - len(rows) / (2 * frames),
            "latency_p99_ms": float(np.percentile([(r["recorded_wall"] - r["capture_wall"]) * 1000 for r in rows], 99))}


def replay_fps(rows: list[dict]) -> float:
    return (len(rows) - 1) / (rows[-1]["recorded_wall"] - rows[0]["recorded_wall"])


def live_latency(rows: list[dict]) -> dict:
    lat = np.array([(r["recorded_wall"] - r["capture_wall"]) * 1000 for r in rows])
    half = len(lat) // 2
    return {"p50": np.percentile(lat, 50), "p99": np.percentile(lat, 99),
            "p99_first_half": np.percentile(lat[:half], 99), "p99_second_half": np.percentile(lat[half:], 99),
            "recorded": len(rows)}


# ---------------------------------------------------------------- (d) transport
def transport_ms(address: str, frame: np.ndarray, repeats: int) -> float:
    ctx = zmq.Context()
    pull = open_socket(ctx, f"pull+bind:{address}", hwm=4)
    push = open_socket(ctx, f"push+connect:{address}", hwm=4)
    msg = FrameMessage("bench", 0, 0.0, 0.0, {"image": frame})
    push.send_multipart(msg.encode(), copy=False)
    FrameMessage.decode(pull.recv_multipart(copy=False))  # connect + warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        push.send_multipart(msg.encode(), copy=False)
        got = FrameMessage.decode(pull.recv_multipart(copy=False))
        assert got.image.shape == frame.shape
    elapsed = (time.perf_counter() - start) / repeats
    push.close(0), pull.close(0), ctx.term()
    return elapsed * 1000


def memcpy_ms(frame: np.ndarray, repeats: int) -> float:
    target = np.empty_like(frame)
    start = time.perf_counter()
    for _ in range(repeats):
        np.copyto(target, frame)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, help="video to use (default: a synthetic 640x512 clip)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the synthetic clip")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--backend", default="onnx", choices=BACKEND_CHOICES)
    parser.add_argument("--repeats", type=int, default=50, help="transport repetitions")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--rounds", type=int, default=1,
                        help="(e): runs of each detect setting, in turn (the median is reported)")
    parser.add_argument("--two-cameras-only", action="store_true", help="run (e) alone")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.two_cameras_only:
        return two_cameras_only(args)

    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        tmp = Path(tmp)
        clip = args.clip or make_clip(tmp / "clip", args.frames)
        print(f"clip {clip}, detector {args.weights} ({args.backend})", flush=True)
        seq, detect_ms = sequential_fps(clip, tmp / "seq", args.weights, args.backend)
        print(f"(a) sequential: {seq:.1f} fps (detector {detect_ms:.1f} ms/frame)", flush=True)
        replay = replay_fps(run_pipeline(clip, tmp / "replay", args.weights, args.backend, "replay"))
        print(f"(b) pipeline replay: {replay:.1f} fps", flush=True)
        live = live_latency(run_pipeline(clip, tmp / "live", args.weights, args.backend, "live"))
        frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        copy = memcpy_ms(frame, args.repeats)
        ipc = transport_ms(f"ipc://{tmp}/bench.ipc", frame, args.repeats)
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tcp = transport_ms(f"tcp://127.0.0.1:{port}", frame, args.repeats)
        frames = args.frames if args.clip is None else len(run_pipeline(clip, tmp / "count", args.weights,
                                                                         args.backend, "replay"))
        cameras = compare_two_cameras(clip, tmp, args, frames)

    results = {"two_cameras": cameras, "detector_ms": detect_ms, "live_p99_goal_ms": 2 * detect_ms + 1000 / 30, "sequential_fps": seq,
               "replay_fps": replay, "replay_over_sequential": replay / seq, "live_latency_ms": live,
               "memcpy_ms": copy, "ipc_ms": ipc, "tcp_ms": tcp, "ipc_over_memcpy": ipc / copy,
               "tcp_over_memcpy": tcp / copy}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def print_table(results: dict) -> None:
    seq, replay, live, detect_ms = (results[k] for k in ("sequential_fps", "replay_fps", "live_latency_ms",
                                                          "detector_ms"))
    copy, ipc, tcp, live_goal_ms = (results[k] for k in ("memcpy_ms", "ipc_ms", "tcp_ms", "live_p99_goal_ms"))
    print()
    print(f"{'measure':<44}{'value':>12}  goal")
    rows = [
        ("(a) sequential single process, fps", f"{seq:.1f}", ""),
        ("(b) ZeroMQ pipeline replay, fps", f"{replay:.1f}", ""),
        ("(b)/(a)", f"{replay / seq:.2f}", ">= 1.2"),
        ("(c) live capture->recorded p50, ms", f"{live['p50']:.0f}", ""),
        ("detector alone (in (a)), ms per frame", f"{detect_ms:.1f}", ""),
        ("(c) live capture->recorded p99, ms", f"{live['p99']:.0f}", f"<= {live_goal_ms:.0f} (2 x detector + 1 frame)"),
        ("(c) live p99 first half / second half, ms", f"{live['p99_first_half']:.0f}/{live['p99_second_half']:.0f}",
         "not growing"),
        ("(c) live frames recorded of source", f"{live['recorded']}", ""),
        ("(d) memcpy 1920x1080x3, ms", f"{copy:.2f}", ""),
        ("(d) ipc send+receive, ms (x memcpy)", f"{ipc:.2f} ({ipc / copy:.1f}x)", "<= 3x"),
        ("(d) tcp send+receive, ms (x memcpy)", f"{tcp:.2f} ({tcp / copy:.1f}x)", "<= 3x"),
    ]
    for name, value, goal in rows + two_camera_rows(results["two_cameras"]):
        print(f"{name:<44}{value:>12}  {goal}")


def compare_two_cameras(clip: Path, tmp: Path, args, frames: int) -> dict:
    """(e) for each detect setting, ``args.rounds`` runs in turn: the median run (by fps) of each
    (the upper of the two middle runs for an even count)."""
    runs = {name: [] for name in DETECT_SETTINGS}
    for round_index in range(args.rounds):
        for index, (name, detect) in enumerate(DETECT_SETTINGS.items()):
            out = tmp / f"two_{round_index}_{index}"
            runs[name].append(two_cameras(clip, out, args.weights, args.backend, frames, detect))
            print(f"(e) {name}, round {round_index + 1}: {runs[name][-1]['fps_total']:.1f} fps", flush=True)
    def median_run(rows: list[dict]) -> dict:
        return {**sorted(rows, key=lambda r: r["fps_total"])[len(rows) // 2], "fps_runs": [r["fps_total"] for r in rows]}

    return {name: median_run(rows) for name, rows in runs.items()}


def two_camera_rows(cameras: dict) -> list[tuple[str, str, str]]:
    rows = []
    for name, row in cameras.items():
        rows.append((f"(e) two live cameras, {name}: fps", f"{row['fps_total']:.1f}", ">= 45 in total"))
        dropped = f"{row['dropped_share']:.0%} / {row['latency_p99_ms']:.0f}"
        rows.append(("    dropped before recording / p99 ms", dropped, ""))
    return rows


def two_cameras_only(args) -> int:
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        tmp = Path(tmp)
        clip = args.clip or make_clip(tmp / "clip", args.frames)
        frames = args.frames if args.clip is None else len(run_pipeline(clip, tmp / "count", args.weights,
                                                                         args.backend, "replay"))
        cameras = compare_two_cameras(clip, tmp, args, frames)
    for name, value, goal in two_camera_rows(cameras):
        print(f"{name:<44}{value:>12}  {goal}")
    if args.json:
        args.json.write_text(json.dumps({"two_cameras": cameras}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
