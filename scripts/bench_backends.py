#!/usr/bin/env python
"""Backends side by side: speed and accuracy per backend and model, measured in one run.

    python scripts/bench_backends.py                       # every installed backend, default + baseline
    python scripts/bench_backends.py --backends onnx,openvino --models default --no-eval

Per (model, backend):
  speed      ms per frame at batch 1 and at --batch (the detect stage's batch_size), 2 threads, and
             frames/s at batch 1 with 1 and 2 threads. Each configuration runs in its own process
             (ONNX Runtime's threads spin after a call and would slow a neighbour), --rounds rounds
             in turn, the median of each kept.
  agreement  against ONNX Runtime fp32 on --frames real frames (val split; synthetic without the
             dataset): the share of its detections above conf 0.3 that the backend finds at IoU >= 0.9,
             and the largest objectness difference.
  accuracy   test-split mAP50:95 and AP tiny (pipeline eval on every --eval-stride-th frame, at most
             --eval-max-frames per clip, tiling off: the model alone) and the synthetic seed-7 clip's drone
             recall (scripts/demo_recall.py).
Also the GSSAM-vs-baseline latency ratio per backend. INT8 models are made first where missing
(python -m pipeline quantize). Prints Markdown tables; writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models import DEFAULT_WEIGHTS, Detector  # noqa: E402
from models.backends import BACKENDS, BackendError, check_available  # noqa: E402
from models.quantize import KINDS, quantize, quantized_path  # noqa: E402

MODELS = {"default": DEFAULT_WEIGHTS, "baseline": REPO / "models" / "weights" / "yolox-nano-baseline.pt"}
REFERENCE = "onnx"
AGREE_CONF, AGREE_IOU = 0.3, 0.9


def parse_models(spec: str) -> dict[str, Path]:
    """``default,baseline,twin=runs/x/best.pt`` -> {name: checkpoint}; one line for a bad item."""
    models = {}
    for item in filter(None, spec.split(",")):
        name, sep, path = item.partition("=")
        if not sep and name not in MODELS:
            raise SystemExit(f"error: --models: {name!r} is not one of {', '.join(MODELS)} nor NAME=CHECKPOINT.pt")
        models[name] = Path(path) if sep else MODELS[name]
        if not models[name].is_file():
            raise SystemExit(f"error: --models: {models[name]}: no such checkpoint")
    return models


# --------------------------------------------------------------------------- speed (one process each)

def time_one(weights: str, backend: str, threads: int, batch: int, calls: int) -> dict:
    """Median ms per call of one configuration; run in a child process (see --time-one)."""
    detector = Detector(weights, backend=backend, onnx_threads=threads)
    inputs = np.random.default_rng(0).integers(0, 255, (batch, 3, *detector.input_size)).astype(np.float32)
    for _ in range(3):
        detector.engine.run(inputs)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        detector.engine.run(inputs)
        times.append((time.perf_counter() - started) * 1e3)
    return {"ms_per_call": statistics.median(times)}


def speed(models: dict, backends: list[str], batch: int, rounds: int, calls: int) -> dict:
    """(model, backend) -> ms per frame at batch 1 / at ``batch`` (2 threads), fps at 1 and 2 threads."""
    configs = [(m, b, t, n) for m in models for b in backends for t, n in ((2, 1), (2, batch), (1, 1))]
    samples: dict[tuple, list[float]] = {c: [] for c in configs}
    for _ in range(rounds):
        for model, backend, threads, size in configs:
            done = subprocess.run([sys.executable, __file__, "--time-one", str(models[model]), backend, str(threads),
                                   str(size), str(calls)], capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                raise SystemExit(f"timing {model}/{backend} failed: {done.stderr.strip().splitlines()[-1:]}")
            samples[(model, backend, threads, size)].append(json.loads(done.stdout.splitlines()[-1])["ms_per_call"])
    result = {}
    for model in models:
        for backend in backends:
            one, many, single = (statistics.median(samples[(model, backend, t, n)]) for t, n in ((2, 1), (2, batch), (1, 1)))
            result[(model, backend)] = {"ms_b1": one, f"ms_b{batch}": many / batch, "fps_2_threads": 1e3 / one,
                                        "fps_1_thread": 1e3 / single}
    return result


# --------------------------------------------------------------------------- accuracy

def agreement_frames(count: int) -> list[np.ndarray]:
    from pipeline.offline.data import dataset

    try:
        clips = dataset.load_split("val")
        step = max(1, len(clips) // count)
        return [next(dataset.iter_frames(clip, stride=50, max_frames=1))[1] for clip in clips[::step][:count]]
    except dataset.DatasetError:
        from pipeline.offline.data.synthetic import render_clip

        return [next(iter(render_clip(seed=s, frames=1)))[0] for s in range(count)]


def agreement(weights, backend: str, frames: list[np.ndarray], reference: list) -> dict:
    import supervision as sv

    detector = Detector(weights, backend=backend, conf_threshold=AGREE_CONF)
    found = [detector([frame])[0] for frame in frames]
    total = sum(len(r) for r in reference)
    matched = sum(int((sv.box_iou_batch(r[:, :4], f[:, :4]).max(1) >= AGREE_IOU).sum())
                  for r, f in zip(reference, found) if len(r) and len(f))
    raw_ref = Detector(weights, backend=REFERENCE).engine
    raw_this = detector.engine
    batch = np.stack([detector.preprocess(frame)[0] for frame in frames[:8]])
    objectness = float(np.abs(raw_ref.run(batch)[..., 4] - raw_this.run(batch)[..., 4]).max())
    return {"matched": matched / total if total else None, "reference_boxes": total,
            "max_objectness_diff": objectness}


def accuracy(weights, backend: str, stride: int, max_frames: int) -> dict:
    from pipeline.offline.data.synthetic import make_clip
    from pipeline.offline.eval import EvalSettings, clip_recall, evaluate

    result = {}
    with tempfile.TemporaryDirectory() as folder:
        try:
            report = evaluate(EvalSettings(weights=Path(weights), backend=backend, split="test", stride=stride,
                                           max_frames=max_frames, tiling="off", out=Path(folder) / "eval"))
            result.update(map50_95=report["map50_95"], ap_tiny=report["ap_tiny"], images=report["images"])
        except Exception as exc:  # no dataset here: the demo recall still says something
            result.update(map50_95=None, ap_tiny=None, eval_error=str(exc).splitlines()[0][:120])
        detector = Detector(weights, backend=backend, conf_threshold=0.25, class_agnostic_nms=True)
        paths = make_clip(Path(folder), seed=7, frames=300, size=(640, 512))
        result["demo_recall"] = clip_recall(detector, paths.video, paths.coco)["recall"]["0.5"]
    return result


# --------------------------------------------------------------------------- report

def ensure_int8(models: dict, backends: list[str], frames: int) -> None:
    from pipeline.offline.quantize import calibration_frames
    from pipeline.offline.data.dataset import DEFAULT_ROOT

    for name, weights in models.items():
        for backend in backends:
            size = tuple(Detector(weights, backend=REFERENCE).input_size)
            if backend in KINDS and not quantized_path(weights, size, kind=backend).is_file():
                print(f"quantizing {name} for {backend} ({frames} training frames)", flush=True)
                quantize(weights, size, calibration_frames(frames, size, DEFAULT_ROOT), backend)


def _cell(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_tables(rows: dict, models: dict, backends: list[str], batch: int) -> None:
    print(f"| model | backend | ms b1 | ms/frame b{batch} | fps 1 thread | fps 2 threads | x onnx | "
          "agree IoU>=0.9 | max obj diff | mAP50:95 | AP tiny | demo recall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        base = rows[(model, REFERENCE)]["ms_b1"] if (model, REFERENCE) in rows else None
        for backend in backends:
            row = rows[(model, backend)]
            print(f"| {model} | {backend} | {row['ms_b1']:.1f} | {row[f'ms_b{batch}']:.1f} | {row['fps_1_thread']:.0f} | "
                  f"{row['fps_2_threads']:.0f} | {_cell(base and base / row['ms_b1'], '.2f')} | "
                  f"{_cell(row.get('matched'), '.0%')} | {_cell(row.get('max_objectness_diff'), '.3f')} | "
                  f"{_cell(row.get('map50_95'), '.3f')} | {_cell(row.get('ap_tiny'), '.3f')} | "
                  f"{_cell(row.get('demo_recall'), '.1%')} |")
    for model in [m for m in models if m != "baseline" and "baseline" in models]:
        print(f"\n| backend | {model} / baseline latency (batch 1) |\n|---|---|")
        for backend in backends:
            print(f"| {backend} | {rows[(model, backend)]['ms_b1'] / rows[('baseline', backend)]['ms_b1']:.2f} |")


def available(names: list[str]) -> list[str]:
    usable = []
    for name in names:
        try:
            check_available(name)
            usable.append(name)
        except BackendError as exc:
            print(f"skipping {name}: {exc}")
    return usable


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--time-one"]:
        weights, backend, threads, batch, calls = argv[1:6]
        print(json.dumps(time_one(weights, backend, int(threads), int(batch), int(calls))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--models", default="default,baseline",
                        help=f"comma list of {', '.join(MODELS)} or NAME=CHECKPOINT.pt (each GSSAM model's latency is "
                             "also given as a ratio to baseline's)")
    parser.add_argument("--batch", type=int, default=4, help="the detect stage's batch (default 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15, help="timed calls per configuration and round")
    parser.add_argument("--frames", type=int, default=40, help="frames for the agreement check")
    parser.add_argument("--calibration-frames", type=int, default=96)
    parser.add_argument("--eval-stride", type=int, default=15)
    parser.add_argument("--eval-max-frames", type=int, default=20)
    parser.add_argument("--no-eval", action="store_true", help="skip mAP and demo recall")
    parser.add_argument("--json", type=Path, default=REPO / "out" / "bench_backends.json")
    args = parser.parse_args(argv)
    backends = available([b for b in args.backends.split(",") if b])
    models = parse_models(args.models)
    if REFERENCE in backends:
        backends.remove(REFERENCE)
    backends.insert(0, REFERENCE)
    ensure_int8(models, backends, args.calibration_frames)
    started = time.time()
    rows = speed(models, backends, args.batch, args.rounds, args.calls)
    frames = agreement_frames(args.frames)
    for model, weights in models.items():
        reference = Detector(weights, backend=REFERENCE, conf_threshold=AGREE_CONF)
        truth = [reference([frame])[0] for frame in frames]
        for backend in backends:
            rows[(model, backend)].update(agreement(weights, backend, frames, truth))
            if not args.no_eval:
                rows[(model, backend)].update(accuracy(weights, backend, args.eval_stride, args.eval_max_frames))
            print(f"{model}/{backend}: {rows[(model, backend)]}", flush=True)
    print(f"\n{len(models)} models x {len(backends)} backends, {args.rounds} rounds, {time.time() - started:.0f} s\n")
    print_tables(rows, models, backends, args.batch)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({f"{m}/{b}": row for (m, b), row in rows.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
