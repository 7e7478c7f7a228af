"""The fair GSSAM study (issue 21): a trained plain YOLOX continued as itself and as its identity-start
GSSAM twin, from the same checkpoint, for the same steps, with the same data order, over several seeds.

    .venv/bin/python scripts/twin_study.py --out runs/twin-study            # train, score, summarise
    .venv/bin/python scripts/twin_study.py --out runs/twin-study --report   # only summarise what exists

Every run is ``python -m pipeline train --init INIT`` with one command line for both arms (only
``--model`` differs); both draw their crops from ``--seed``'s generator, which nothing else consumes,
so seed k of the baseline and seed k of the twin see the same crops in the same order. Each epoch's
EMA weights (``epoch-N.pt``) are scored on the test split, so the table has one row per step count.
The study resumes: a finished run or score is kept, an interrupted run continues with ``--resume``.
Writes ``OUT/summary.md`` and ``OUT/summary.json``; choose on the val columns, report the test ones.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASELINE_WEIGHTS = REPO / "models" / "weights" / "yolox-nano-baseline.pt"
METRICS = ("map50_95", "ap_tiny", "ap_small", "map50")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--init", type=_init, default=BASELINE_WEIGHTS, help="the trained plain YOLOX both arms start "
                   "from, or scratch: both from random weights (the from-scratch protocol, at equal steps)")
    p.add_argument("--baseline", default="yolox-nano")
    p.add_argument("--twin", default="yolox-nano-gssam-sigresid-p1")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2, help="step counts scored = epochs x --epoch-steps")
    p.add_argument("--epoch-steps", type=int, default=300)
    p.add_argument("--train-args", default="--bundle .bundle --cache .cache/bundle_npy --synthetic 60 "
                   "--synthetic-frames 150 --batch 16 --crop 256 --lr 1e-3 --warmup-steps 50 --threads 1 "
                   "--workers 1 --val-per-clip 10 --no-progress", help="the rest of the (shared) train command")
    p.add_argument("--eval-args", default="--split test --stride 10 --backend onnx --cache-dir .cache/eval_frames")
    p.add_argument("--score-epochs", default=None, help="score only these epochs on test, e.g. 2,4 (default: all)")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="2: train (and score) the two arms of a "
                   "seed side by side, one thread each (the same load on both arms)")
    p.add_argument("--report", action="store_true", help="summarise only; train and score nothing")
    return p.parse_args(argv)


def _init(value: str) -> Path | None:
    return None if value == "scratch" else Path(value)


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


def train(args, model: str, seed: int) -> Path:
    out = args.out / run_name(model, seed)
    start = [] if args.init is None else ["--init", str(args.init)]
    command = ["--model", model, *start, "--seed", str(seed), "--epochs", str(args.epochs),
               "--epoch-steps", str(args.epoch_steps), "--out", str(out), "--keep-epochs", *args.train_args.split()]
    _same_command(out, command)  # a run kept from an earlier call must be this study's
    log = out / "log.json"
    if log.is_file() and json.loads(log.read_text()).get("status") == "done":
        return out
    command = [sys.executable, "-m", "pipeline", "train", *command]
    if (out / "last.pt").is_file():
        command.append("--resume")
    with open(out / "train.log", "a") as log_file:
        subprocess.run(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, check=True)
    return out


def _same_command(out: Path, command: list[str]) -> None:
    recorded = out / "study_command.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != command:
        raise SystemExit(f"error: {out} was trained with another command ({recorded}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(command) + "\n")


def score(args, weights: Path, out: Path) -> dict:
    report = out / "report.json"
    if not report.is_file():
        command = [sys.executable, "-m", "pipeline", "eval", "--weights", str(weights), "--out", str(out),
                   *args.eval_args.split()]
        out.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(out.parent / f"{out.name}.log", "w") as log_file:
            subprocess.run(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, check=True, env=env)
    return json.loads(report.read_text())


def run_rows(args, model: str, seed: int, scoring: bool) -> list[dict]:
    """One row per epoch of one run: its step count, val (training validation) and test scores."""
    out = args.out / run_name(model, seed)
    log = out / "log.json"
    if not log.is_file():
        return []
    rows = []
    chosen = {int(e) for e in args.score_epochs.split(",")} if args.score_epochs else None
    for epoch in json.loads(log.read_text())["epochs"]:
        if chosen is not None and epoch["epoch"] not in chosen:
            continue
        weights = out / f"epoch-{epoch['epoch']}.pt"
        target = out / f"test-epoch-{epoch['epoch']}"
        if not (target / "report.json").is_file() and not (scoring and weights.is_file()):
            continue
        test = score(args, weights, target)
        rows.append({"model": model, "seed": seed, "step": epoch["step"], "val_map50_95": epoch["map50_95"],
                     **{f"test_{m}": test[m] for m in METRICS}, "ms": test["latency_ms"].get("total"),
                     "gssam": gssam_scalars(weights) if weights.is_file() else {}})
    return rows


def gssam_scalars(weights: Path) -> dict:
    """The learned GSSAM scalars of a checkpoint (gate g, affine a and b per stage): how far the
    module moved from the identity it started as."""
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    return {name: round(float(value), 4) for name, value in state.items()
            if name.rsplit(".", 1)[-1] in ("gate", "contrast_scale", "contrast_shift")}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half_range = (max(values) - min(values)) / 2
    return f"{100 * mean:.1f} ± {100 * half_range:.1f}"


def summarise(rows: list[dict], start: dict, args) -> str:
    begun = ("Start: random weights (from scratch); both arms train for the same steps" if start is None else
             f"Start: `{args.init.name}` (test mAP50:95 {100 * start['map50_95']:.1f}, AP tiny "
             f"{100 * start['ap_tiny']:.1f}); both arms continue it for the same steps")
    lines = [f"{begun}, seeds {args.seeds}.", "",
             "Cells: mean ± half the range over the seeds, in points.", "",
             "| step | arm | seeds | val mAP50:95 | test mAP50:95 | AP tiny | AP small | mAP50 |",
             "|---|---|---|---|---|---|---|---|"]
    for step in sorted({r["step"] for r in rows}):
        for model in (args.baseline, args.twin):
            group = [r for r in rows if r["step"] == step and r["model"] == model]
            if group:
                cells = [spread([r[key] for r in group]) for key in
                         ("val_map50_95", "test_map50_95", "test_ap_tiny", "test_ap_small", "test_map50")]
                lines.append(f"| {step} | {model} | {len(group)} | " + " | ".join(cells) + " |")
    lines += ["", "Paired (twin − baseline, same seed, same step), points:", "",
              "| step | seed | Δ val | Δ test mAP50:95 | Δ AP tiny | Δ AP small |", "|---|---|---|---|---|---|"]
    for step in sorted({r["step"] for r in rows}):
        deltas = []
        for seed in sorted({r["seed"] for r in rows}):
            pair = {r["model"]: r for r in rows if r["step"] == step and r["seed"] == seed}
            if len(pair) == 2:
                twin, base = pair[args.twin], pair[args.baseline]
                delta = [twin[k] - base[k] for k in ("val_map50_95", "test_map50_95", "test_ap_tiny", "test_ap_small")]
                deltas.append(delta)
                lines.append(f"| {step} | {seed} | " + " | ".join(f"{100 * d:+.1f}" for d in delta) + " |")
        if deltas:
            means = [statistics.fmean(column) for column in zip(*deltas)]
            wins = sum(d[1] > 0 for d in deltas)
            lines.append(f"| {step} | mean ({wins}/{len(deltas)} twin ahead on test) | "
                         + " | ".join(f"{100 * m:+.1f}" for m in means) + " |")
    lines += ["", "Learned GSSAM scalars of the twin at its last scored step (g: gate, from 0; a, b: affine, from 1, 0):",
              ""]
    for row in rows:
        if row["model"] == args.twin and row["step"] == max(r["step"] for r in rows) and row.get("gssam"):
            gates = [f"{name.split('.')[-3]} g {value:+.3f}" for name, value in row["gssam"].items()
                     if name.endswith("gate")]
            lines.append(f"- seed {row['seed']}: " + ", ".join(gates))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    start_report = args.out / "test-start" / "report.json"
    if args.report and args.init is not None and not start_report.is_file():
        print(f"error: {args.out} holds no study yet (no test-start/report.json)", file=sys.stderr)
        return 2
    start = (None if args.init is None else json.loads(start_report.read_text()) if args.report
             else score(args, args.init, args.out / "test-start"))
    rows = []
    arms = (args.baseline, args.twin)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for seed in seeds:
            if not args.report:
                list(pool.map(lambda model: train(args, model, seed), arms))
            for arm_rows in pool.map(lambda model: run_rows(args, model, seed, scoring=not args.report), arms):
                rows += arm_rows
            (args.out / "summary.json").write_text(json.dumps({"start": start and {m: start[m] for m in METRICS},
                                                                "rows": rows}, indent=1) + "\n")
            (args.out / "summary.md").write_text(summarise(rows, start, args))
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
