"""Soak: the two-camera live config for N minutes with the fuzzer on, then SIGTERM.

    python scripts/soak.py --minutes 30 [--fuzz-rate 200] [--out out/soak]

Prints, measured side by side in one run: RSS per stage in the first vs the last fifth of the run,
latency p50/p99 (capture -> recorded, from tracks.jsonl) first vs last fifth, frames dropped by the
live policy vs lost, malformed messages counted, restarts, and whether every segment plays. Goals:
RSS growth < 5 %, p99 flat (+-10 %), zero losses beyond drops, zero restarts, every segment plays.
The two cameras are the embedded real clip (configs/assets/) looping, paced; with ``--rtsp`` the
second one is the rehearsal RTSP camera (scripts/rtsp_server.py, GStreamer, serving the same clip
round and round), so the soak also covers a network source.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from scripts.fuzz import FILTERS, bad_message  # noqa: E402

CLIP = REPO / "configs" / "assets" / "V_DRONE_080.mp4"  # the embedded real clip


SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter whose `gi` has GStreamer's RTSP server


def soak_config(out: Path, clip: Path, rtsp_url: str | None = None) -> dict:
    sources = [{"id": f"cam{i}", "uri": str(clip), "pace": True, "loop": True} for i in range(2)]
    if rtsp_url is not None:
        sources[1] = {"id": "cam1", "uri": rtsp_url}
    return {"mode": "live", "output_dir": str(out / "output"), "sources": sources,
            "stages": {"detect": {"weights": "default", "backend": "onnx"}, "record": {"segment_seconds": 30}}}


def start_rtsp_camera(clip: Path, port: int) -> tuple[subprocess.Popen, str]:
    """The rehearsal camera in its own process; returns it and its URL once it listens."""
    proc = subprocess.Popen([SYSTEM_PYTHON, str(REPO / "scripts" / "rtsp_server.py"), "--port", str(port),
                             "--path", "/cam", "--video", str(clip)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"error: the RTSP camera did not start ({line.strip() or 'no output'})")
    return proc, line.split()[1]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def sample_rss(status_path: Path, samples: list, stop: threading.Event) -> None:
    while not stop.wait(5.0):
        try:
            status = json.loads(status_path.read_text())
        except (FileNotFoundError, ValueError):
            continue
        samples.append((time.time(), {label: rss_mib(beat["pid"]) for label, beat in status.items()
                                      if isinstance(beat.get("pid"), int)}))


def fuzz_forever(run_config: Path, rate: float, stop: threading.Event, sent: list) -> None:
    import zmq

    run = yaml.safe_load(run_config.read_text())
    ctx = zmq.Context()
    socks = []
    for stage in FILTERS:
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 2)
        sock.connect(run["endpoints"][f"{stage}_in"].split(":", 1)[1])
        socks.append(sock)
    rng = random.Random(0)
    while not stop.wait(1.0 / rate):
        try:
            socks[rng.randrange(len(socks))].send_multipart(bad_message(rng), zmq.NOBLOCK)
            sent[0] += 1
        except zmq.Again:
            pass  # a busy stage: live mode would drop it anyway
    for sock in socks:
        sock.close(0)
    ctx.term()


def fifths(values: list[tuple[float, float]], start: float, end: float) -> tuple[list, list]:
    span = (end - start) / 5
    return ([v for t, v in values if t < start + span], [v for t, v in values if t >= end - span])


def latency_table(output: Path, start: float, end: float) -> dict:
    rows = []
    for path in sorted(output.glob("cam*/tracks.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            rows.append((record["recorded_wall"], (record["recorded_wall"] - record["capture_wall"]) * 1000))
    first, last = fifths(rows, start, end)
    pct = lambda v, q: float(np.percentile(v, q)) if v else float("nan")  # noqa: E731
    return {"p50": (pct(first, 50), pct(last, 50)), "p99": (pct(first, 99), pct(last, 99)), "frames": len(rows)}


def segments_play(output: Path) -> tuple[int, int]:
    good = total = 0
    for segment in sorted(output.glob("cam*/segment_*.mp4")):
        total += 1
        try:
            with av.open(str(segment)) as container:
                good += sum(1 for _ in container.decode(video=0)) > 0
        except av.FFmpegError:
            pass
    return good, total


def run_soak(args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    config = args.out / "soak.yaml"
    camera, url = start_rtsp_camera(args.clip, args.rtsp_port) if args.rtsp else (None, None)
    config.write_text(yaml.safe_dump(soak_config(args.out, args.clip, url)))
    output = args.out / "output"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(args.out / "soak.log", "w"))
    while not (output / "status.json").exists():
        time.sleep(0.5)
    stop, samples, sent = threading.Event(), [], [0]
    threads = [threading.Thread(target=sample_rss, args=(output / "status.json", samples, stop)),
               threading.Thread(target=fuzz_forever, args=(output / "run_config.yaml", args.fuzz_rate, stop, sent))]
    start = time.time()
    for thread in threads:
        thread.start()
    time.sleep(args.minutes * 60)
    stop.set()
    for thread in threads:
        thread.join()
    end = time.time()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    if camera is not None:
        camera.send_signal(signal.SIGTERM)
        camera.wait(timeout=30)
    return {"exit": code, "start": start, "end": end, "samples": samples, "fuzzed": sent[0],
            "status": json.loads((output / "status.json").read_text()), "output": output}


def report(result: dict) -> None:
    start, end, status = result["start"], result["end"], result["status"]
    print(f"exit {result['exit']}, {(end - start) / 60:.1f} min, {result['fuzzed']} malformed messages sent")
    print(f"{'stage':<16}{'RSS first MiB':>14}{'RSS last MiB':>14}{'growth':>9}{'restarts':>10}{'drop':>7}"
          f"{'lost':>7}{'bad':>7}")
    for label, beat in status.items():
        series = [(t, sample[label]) for t, sample in result["samples"] if label in sample]
        first, last = fifths(series, start, end)
        f, l_ = (float(np.nanmedian(v)) if v else float("nan") for v in (first, last))
        drops = int(beat.get("dropped_stale", 0)) + int(beat.get("dropped_full", 0))
        print(f"{label:<16}{f:>14.0f}{l_:>14.0f}{(l_ / f - 1) * 100:>8.1f}%{beat.get('restarts', 0):>10}"
              f"{drops:>7}{beat.get('frames_missing', 0):>7}{beat.get('malformed', 0):>7}")
    latency = latency_table(result["output"], start, end)
    print(f"latency capture->recorded ms, first vs last fifth: p50 {latency['p50'][0]:.0f} / {latency['p50'][1]:.0f}, "
          f"p99 {latency['p99'][0]:.0f} / {latency['p99'][1]:.0f} ({latency['frames']} frames recorded)")
    good, total = segments_play(result["output"])
    print(f"segments that play: {good} of {total}")
    reconnects = {label: beat.get("reconnects", 0) for label, beat in status.items() if label.startswith("capture:")}
    print(f"source reconnects (a looping file and a streaming camera: 0 expected): {reconnects}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fuzz-rate", type=float, default=200.0, help="malformed messages per second")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "soak")
    parser.add_argument("--rtsp", action="store_true", help="second camera: the rehearsal RTSP camera")
    parser.add_argument("--rtsp-port", type=int, default=8554)
    args = parser.parse_args()
    args.out, args.clip = args.out.resolve(), args.clip.resolve()  # the config resolves paths against its folder
    if not args.clip.is_file():
        print(f"error: {args.clip} is missing: the embedded clip is configs/assets/V_DRONE_080.mp4 (git checkout it), or give --clip", file=sys.stderr)
        return 2
    report(run_soak(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
