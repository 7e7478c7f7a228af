"""Report on the YOLOX-GSSAM family: size, cost, latency vs baseline, and sampled_contrast vs the broadcast form.

    python scripts/model_report.py                      # CPU: nano and s, every variant, 20 runs
    python scripts/model_report.py --runs 5 --sizes nano --variants sigres-p1   # quick check
    python scripts/model_report.py --device cuda        # GPU latency (fp16, channels_last) + GPU contrast

Per model: parameters (and added over the baseline), GFLOPs (2 x MACs of convolutions/matmuls, torch's
FlopCounterMode), latency per image at --input (median of --runs after --warmup; baseline and variants
interleaved run by run) with eager torch (BN folded as models.Detector runs it) and ONNX Runtime
(--threads intra-op threads) on CPU, or eager torch fp16/channels_last on CUDA.
Per GSSAM stage at --input: sampled_contrast broadcast vs exact, forward + backward time and peak
memory (CPU: torch allocations replayed from the profiler's memory timeline; CUDA: max_memory_allocated),
plus the goal case N = 1600 on a 320 x 320 map, and the crossover that sets gssam.BROADCAST_MAX_ELEMENTS.
Prints tables and writes JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import build_model, export_onnx  # noqa: E402
from models.gssam import VARIANTS, num_points, sampled_contrast_broadcast, sampled_contrast_exact  # noqa: E402
from models.backends.onnxruntime_backend import onnx_session  # noqa: E402
from models.yolox_gssam import (  # noqa: E402
    SIZES, STAGES, count_parameters, feature_sides, fuse_for_inference, stage_plan,
)

ALL_VARIANTS = [f"{v}-p{p}" for v in VARIANTS for p in (1, 2)]
ONNX_BLOCK = 6  # ONNX Runtime calls per model per round, the first untimed (see interleaved_medians)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--sizes", default="nano,s", help="comma list of YOLOX sizes (default nano,s)")
    parser.add_argument("--variants", default="all", help="comma list like sigres-p1,sig-p2 or 'all'")
    parser.add_argument("--input", type=int, default=640, help="square input side for latency (default 640)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per model (default 20 cpu, 50 cuda)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and ONNX Runtime (default 2)")
    parser.add_argument("--contrast-runs", type=int, default=3, help="timed runs per contrast case (default 3)")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime latency")
    parser.add_argument("--no-latency", action="store_true", help="skip model latency")
    parser.add_argument("--json", default="out/model_report.json", help="where to write the JSON report")
    args = parser.parse_args(argv)
    args.sizes = _parse_choices(parser, args.sizes, SIZES, "size")
    args.variants = ALL_VARIANTS if args.variants == "all" else _parse_choices(parser, args.variants, ALL_VARIANTS, "variant")
    if not args.device.startswith(("cpu", "cuda")):
        parser.error(f"--device must be cpu or cuda[:i], got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda given but no CUDA GPU is available")
    if args.input <= 0 or args.input % 32:
        parser.error(f"--input must be a positive multiple of 32, got {args.input}")
    args.runs = args.runs or (50 if args.device.startswith("cuda") else 20)
    if min(args.runs, args.contrast_runs, args.threads) < 1 or args.warmup < 0:
        parser.error("--runs, --contrast-runs and --threads must be >= 1, --warmup >= 0")
    return args


def _parse_choices(parser, text: str, valid, what: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [c for c in chosen if c not in valid]
    if unknown or not chosen:
        parser.error(f"unknown {what} {unknown or text!r}; valid: {', '.join(valid)}")
    return chosen


# ---------------------------------------------------------------- timing and memory helpers

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


def interleaved_medians(functions: dict, runs: int, warmup: int, device: torch.device,
                        block: int = 1) -> dict[str, float]:
    """Median seconds per function over ``runs`` timed calls; each round runs every function in turn,
    so drift hits all alike. With ``block`` > 1 a function runs ``block`` times per round and the first
    call of each block is not timed: ONNX Runtime sessions keep their threads spinning after a run,
    which steals the CPU from the next session's first call (measured: a run-by-run interleaving of
    nano and nano-GSSAM read 32.6 / 40.0 ms, ratio 1.23; each alone 14.8 / 20.6 ms, ratio 1.39)."""
    timed_per_block = max(1, block - 1)
    for _ in range(warmup):
        for function in functions.values():
            function()
    times = {name: [] for name in functions}
    for _ in range(math.ceil(runs / timed_per_block)):
        for name, function in functions.items():
            if block > 1:
                function()
            times[name] += [_timed(function, device) for _ in range(timed_per_block)]
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_bytes(function, device: torch.device) -> int:
    """Peak extra bytes torch allocates while ``function`` runs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------- models

def model_cost(model: torch.nn.Module, input_size: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros(1, 3, input_size, input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return counter.get_total_flops() / 1e9


def _torch_runner(model, images):
    def run():
        with torch.inference_mode():
            model(images)
    return run


def _onnx_runner(model, input_size: int, threads: int, folder: Path, name: str):
    path = export_onnx(model, folder / f"{name}.onnx", (input_size, input_size))
    session = onnx_session(path, threads)
    batch = np.random.default_rng(0).uniform(0, 255, (1, 3, input_size, input_size)).astype(np.float32)
    return lambda: session.run(None, {"images": batch})


def report_size(size: str, args, device: torch.device) -> list[dict]:
    names = [f"yolox-{size}"] + [f"yolox-{size}-gssam-{v}" for v in args.variants]
    models = {n: build_model(n, num_classes=4).eval().to(device) for n in names}
    rows = {n: {"model": n, "params": count_parameters(m), "gflops": model_cost(m, args.input, device)}
            for n, m in models.items()}
    baseline = rows[names[0]]
    for row in rows.values():
        row["params_added"] = row["params"] - baseline["params"]
    if not args.no_latency:
        _latency(models, rows, args, device)
    return list(rows.values())


def _latency(models: dict, rows: dict, args, device: torch.device) -> None:
    images = torch.rand(1, 3, args.input, args.input, device=device) * 255
    fused = {n: fuse_for_inference(m) for n, m in models.items()}
    key = "torch_ms"
    if device.type == "cuda":
        key = "cuda_fp16_ms"
        fused = {n: m.half().to(memory_format=torch.channels_last) for n, m in fused.items()}
        images = images.half().contiguous(memory_format=torch.channels_last)
    _store(rows, key, interleaved_medians({n: _torch_runner(m, images) for n, m in fused.items()},
                                          args.runs, args.warmup, device))
    if device.type == "cpu" and not args.no_onnx:
        with tempfile.TemporaryDirectory() as folder:
            runners = {n: _onnx_runner(m.cpu(), args.input, args.threads, Path(folder), n) for n, m in models.items()}
            _store(rows, "onnx_ms", interleaved_medians(runners, args.runs, args.warmup, torch.device("cpu"),
                                                        block=ONNX_BLOCK))


def _store(rows: dict, key: str, medians: dict[str, float]) -> None:
    baseline = medians[next(iter(medians))]
    for name, seconds in medians.items():
        rows[name][key] = seconds * 1000
        rows[name][key.replace("_ms", "_ratio")] = seconds / baseline


# ---------------------------------------------------------------- sampled_contrast

EXACT_REPEATS = 10


def contrast_case(height: int, width: int, pool: int, runs: int, device: torch.device) -> dict:
    """Forward + backward of both forms on one B=1 map: time, peak memory, max difference."""
    torch.manual_seed(0)
    base = torch.randn(1, 1, height, width, device=device)
    weights = torch.randn_like(base)

    def step(function):
        c = base.clone().requires_grad_(True)
        value = function(c, pool)
        (value * weights).sum().backward()
        return value.detach(), c.grad

    forms = {"broadcast": sampled_contrast_broadcast, "exact": sampled_contrast_exact}
    # The exact form runs EXACT_REPEATS times per round (mean of the round): timed once right after a
    # broadcast round it mostly measures page faults and caches cleared by the broadcast's GiB-sized
    # intermediate, which say nothing about the exact form itself.
    runners = {"broadcast": lambda: step(forms["broadcast"]),
               "exact": lambda: [step(forms["exact"]) for _ in range(EXACT_REPEATS)]}
    seconds = interleaved_medians(runners, runs, 1, device)
    seconds["exact"] /= EXACT_REPEATS
    memory = {k: peak_memory_bytes(lambda f=f: step(f), device) for k, f in forms.items()}
    (value_b, grad_b), (value_e, grad_e) = step(forms["broadcast"]), step(forms["exact"])
    return {
        "hw": [height, width], "pool": pool, "points": num_points(height, width, pool),
        "broadcast_ms": seconds["broadcast"] * 1000, "exact_ms": seconds["exact"] * 1000,
        "speedup": seconds["broadcast"] / seconds["exact"],
        "broadcast_peak_mib": memory["broadcast"] / 2**20, "exact_peak_mib": memory["exact"] / 2**20,
        "memory_ratio": memory["broadcast"] / max(memory["exact"], 1),
        "max_value_rel_diff": float(((value_b - value_e).abs() / value_b.abs().clamp_min(1)).max()),
        "max_grad_rel_diff": float(((grad_b - grad_e).abs() / grad_b.abs().clamp_min(1)).max()),
    }


def report_contrast(args, device: torch.device) -> dict:
    stages = []
    for index, (height, width) in enumerate(feature_sides((args.input, args.input))):
        num_convs, pool = stage_plan(index)
        stages.append({"stage": STAGES[index], "n": num_convs, **contrast_case(height, width, pool, args.contrast_runs, device)})
    goal = contrast_case(320, 320, 8, args.contrast_runs, device)
    return {"stages": stages, "goal_n1600_320x320": goal}


def report_crossover(device: torch.device, runs: int = 15) -> list[dict]:
    """Inference-mode forward time of both forms by N, on a few map sizes."""
    rows = []
    for side in (40, 80, 160):
        c = torch.randn(1, 1, side, side, device=device)
        for points_per_side in (1, 2, 3, 4, 6, 8):
            pool = -(-side // points_per_side)
            runners = {"broadcast": lambda p=pool: sampled_contrast_broadcast(c, p),
                       "exact": lambda p=pool: sampled_contrast_exact(c, p)}
            with torch.inference_mode():
                medians = interleaved_medians(runners, runs, 2, device)
            rows.append({"side": side, "points": num_points(side, side, pool),
                         "broadcast_us": medians["broadcast"] * 1e6, "exact_us": medians["exact"] * 1e6})
    return rows


# ---------------------------------------------------------------- output

def print_models(rows: list[dict]) -> None:
    columns = [("model", "{:<32}"), ("params", "{:>10,}"), ("params_added", "{:>8,}"), ("gflops", "{:>7.2f}"),
               ("torch_ms", "{:>9.1f}"), ("torch_ratio", "{:>6.3f}"), ("onnx_ms", "{:>9.1f}"),
               ("onnx_ratio", "{:>6.3f}"), ("cuda_fp16_ms", "{:>9.2f}"), ("cuda_fp16_ratio", "{:>6.3f}")]
    columns = [(k, f) for k, f in columns if any(k in r for r in rows)]
    print(" ".join(f"{k:>{len(f.format(rows[0][k])) if k in rows[0] else 8}}" for k, f in columns))
    for row in rows:
        print(" ".join(f.format(row[k]) if k in row else "-" for k, f in columns))


def print_contrast(contrast: dict, crossover: list[dict]) -> None:
    print(f"\n{'case':<22}{'N':>6}{'bcast ms':>10}{'exact ms':>10}{'speedup':>9}{'bcast MiB':>11}"
          f"{'exact MiB':>11}{'mem ratio':>10}{'grad diff':>11}")
    cases = [(f"{s['stage']} {s['hw'][0]}x{s['hw'][1]} r={s['pool']}", s) for s in contrast["stages"]]
    cases.append(("goal 320x320 r=8", contrast["goal_n1600_320x320"]))
    for label, c in cases:
        print(f"{label:<22}{c['points']:>6}{c['broadcast_ms']:>10.2f}{c['exact_ms']:>10.2f}{c['speedup']:>9.1f}"
              f"{c['broadcast_peak_mib']:>11.2f}{c['exact_peak_mib']:>11.2f}{c['memory_ratio']:>10.1f}"
              f"{c['max_grad_rel_diff']:>11.1e}")
    print("\ncrossover (inference forward, us):  side  N  broadcast  exact")
    for row in crossover:
        print(f"  {row['side']:>5} {row['points']:>3} {row['broadcast_us']:>10.1f} {row['exact_us']:>7.1f}")


def goals(rows: list[dict], contrast: dict) -> dict:
    summary = {}
    for row in rows:
        if row["model"].endswith("-gssam-sigres-p1"):
            for key in ("torch_ratio", "onnx_ratio", "cuda_fp16_ratio"):
                if key in row:
                    summary[f"{row['model']} {key} (goal <= 1.03)"] = round(row[key], 3)
    goal = contrast["goal_n1600_320x320"]
    summary["contrast speedup at N=1600 (goal >= 200)"] = round(goal["speedup"], 1)
    summary["contrast memory ratio at N=1600 (goal >= 100)"] = round(goal["memory_ratio"], 1)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    started = time.time()
    rows = [row for size in args.sizes for row in report_size(size, args, device)]
    print_models(rows)
    contrast = report_contrast(args, device)
    crossover = report_crossover(device)
    print_contrast(contrast, crossover)
    summary = goals(rows, contrast)
    print("\ngoals:")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    report = {"device": str(device), "device_name": _device_name(device), "threads": args.threads,
              "input": args.input, "runs": args.runs, "warmup": args.warmup, "models": rows,
              "contrast": contrast, "crossover": crossover, "goals": summary,
              "seconds": round(time.time() - started, 1), "torch": torch.__version__}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path} in {report['seconds']} s")
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
