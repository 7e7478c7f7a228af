#!/usr/bin/env python
"""Write the model card beside a shipped checkpoint from its evaluation report and training logs:

    python scripts/write_model_card.py models/weights/default.pt --report out/eval/default-test/report.json \
        --training docs/runs/gpu-h200-2026-11-26/nano-sigres-s1/log.json runs/cpu-ft-nano-sigres/log.json \
        --eval-command "python -m pipeline eval --split test --stride 10 --backend onnx --out out/eval/default-test" \
        [--tight-report out/eval/default-test-tight/report.json] [--note "free text"]

The card holds: model name, input size, classes, data and split, each training stage (hardware, wall
time, steps, images seen, schedule), and the test-split metrics (overall, per class, per modality,
tiny objects, latency) with the command that reproduces them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _pct(value) -> str:
    return "–" if value is None or value < 0 else f"{100 * value:.1f}"


def _ordinal(n: int) -> str:
    """3 -> '3rd' (a bundle holds every 3rd frame and its runs record stride 3)."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def training_rows(logs: list[Path]) -> list[str]:
    rows = ["| stage | hardware | budget | steps | images seen | batch × crop | lr | train frames | synthetic clips "
            "| visible boxes | best val mAP50:95 |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in logs:
        log = json.loads(path.read_text())
        cfg = log["config"]
        start = f"from `{cfg['init']}`" if cfg.get("init") else "from scratch"
        rows.append(f"| {path.parent.parent.name}/{path.parent.name} ({start}) | {log['hardware']} | {log['train_loop_s'] / 60:.1f} min loop | "
                    f"{log['steps']} | {log['images_seen']:,} | {cfg['batch']} × {cfg['crop']} px | {cfg['lr']:g} | "
                    f"every {_ordinal(cfg.get('stride', 3))} | {cfg.get('synthetic', 0)} | {cfg.get('visible_boxes', 'dataset')} | {log['best_val_map50_95']:.4f} |")
    return rows


def _group_value(report: dict, group: str, name: str):
    value = (report.get(group) or {}).get(name)
    return value.get("map50_95") if isinstance(value, dict) else value


def metric_rows(reports: list[tuple[str, dict]]) -> list[str]:
    """One column per (title, eval report), e.g. the dataset's labels and visible boxes tightened."""
    rows = ["| metric (%) | " + " | ".join(title for title, _ in reports) + " |", "|---" * (len(reports) + 1) + "|"]
    for key, label in (("map50_95", "mAP50:95"), ("map50", "mAP50"), ("ap_small", "AP small"),
                       ("ap_medium", "AP medium"), ("ap_large", "AP large"), ("ap_tiny", "AP tiny (longest side < 16 px)")):
        rows.append(f"| {label} | " + " | ".join(_pct(report.get(key)) for _, report in reports) + " |")
    first = reports[0][1]
    for group, prefix in (("per_class", "AP50:95"), ("per_modality", "AP50:95 modality")):
        for name in first.get(group) or {}:
            rows.append(f"| {prefix} {name} | "
                        + " | ".join(_pct(_group_value(report, group, name)) for _, report in reports) + " |")
    return rows


def latency_line(report: dict) -> str:
    lat = report.get("latency_ms") or {}
    parts = [f"{k} {lat[k]:.1f}" for k in ("preprocess", "inference", "postprocess", "total") if k in lat]
    return f"{'; '.join(parts)} (mean over {int(lat.get('images', 0))} images)" if parts else "–"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--report", type=Path, required=True, help="report.json of `python -m pipeline eval`")
    parser.add_argument("--training", type=Path, nargs="+", required=True, help="log.json of each training stage")
    parser.add_argument("--tight-report", type=Path,
                        help="report.json of the same evaluation with --visible-boxes tight (a second column)")
    parser.add_argument("--eval-command", required=True)
    parser.add_argument("--note", default="")
    args = parser.parse_args()

    import models

    _, meta = models.load_checkpoint(args.weights)
    report = json.loads(args.report.read_text())
    reports = [("dataset's labels", report)]
    if args.tight_report:
        reports.append(("visible boxes tightened", json.loads(args.tight_report.read_text())))
    lines = [
        f"# Model card: `{args.weights.name}`",
        "",
        f"- **Model**: `{meta['name']}` (built by `models.build_model`), input {meta['input_size'][0]}×{meta['input_size'][1]} (H×W), "
        f"classes {', '.join(meta['class_names'])}; fp16 EMA weights, {args.weights.stat().st_size / 2**20:.1f} MiB.",
        "- **Data**: Halmstad drone-detection dataset (CC0), train split of `configs/splits.json` (by clip, stratified by "
        "modality × class × distance), the frames each stage below names; validation on the val split; scores below on the **test split** "
        "(clips never seen in training).",
        "",
        "## Training",
        *training_rows(args.training),
        "",
        "Recipe: `docs/training.md`; GPU procedure and logs: `docs/runs/`.",
        "",
        f"## Test split ({report.get('images', report.get('num_images', '?'))} images)",
        *metric_rows(reports),
        "",
        f"Latency per image (ms, backend `{report.get('backend', '?')}` on {report.get('device', '?')}, this "
        f"evaluation's machine): {latency_line(report)}.",
        "",
        f"Reproduce: `{args.eval_command}`" + (" (add `--visible-boxes tight` for the second column)"
                                                 if args.tight_report else ""),
    ]
    if args.note:
        lines += ["", args.note]
    card = args.weights.with_suffix(".md")
    card.write_text("\n".join(lines) + "\n")
    print(f"wrote {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
