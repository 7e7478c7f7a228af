#!/usr/bin/env python
"""Tiled detection on HD frames, side by side in one run: full-frame letterbox vs tiled vs budgeted-tiled.

Settings: (a) synthetic 1920x1080 / 3840x2160 clips with 3-40 px targets (pipeline.offline.data.mosaic.
render_hd; V and IR alternate), (b) mosaics of held-out clips (the test split) on the same canvases
(pipeline.offline.data.mosaic). Modes per setting:
  full      the whole frame letterboxed into the detector's input (a 4K frame shrinks 6x);
  tiled     every tile at the source's scale plus the whole-frame pass (models.tiling.detect_tiled);
  fitted    the same with tiles shrunk to no less than --min-scale where that covers the frame in
            fewer tiles (models.tiling.fitted_tile_size: 1080p in 6 tiles at 0.895 instead of 12);
  budgeted  the tiles and whole-frame pass stages.tile_schedule.TileSchedule picks (--every,
            --budget; no motion input, no load: as a live stage that keeps up), fed with .saw of
            regions whose own detections score above --saw-conf;
  per-clip  (mosaics only) each clip's cell scored alone at 640x512: the accuracy tiling should
            recover (goal: tiled within 2 points of its mAP50:95).
Metrics: recall at IoU 0.5 by target size (longest side, canvas pixels; a box counts as found when some
detection with score >= --recall-conf overlaps it), mAP50:95 and mAP50 (COCO protocol,
pipeline.offline.eval.coco, detector at conf 0.001 like the eval), ms per frame of detection (letterbox,
tiles, model, NMS, merge; not decoding) and the fps that is on this machine.

Mosaic mAP is scored per cell: a detection belongs to the cell holding its centre, each cell is one COCO
image against its clip's boxes, exactly as the per-clip baseline is scored (so COCO's cap of 100
detections per image applies per clip, not per canvas of 24 clips). Detections on the grey padding fall
in no cell and are not scored. The whole-canvas mAP (one COCO image per canvas) is in the --json output.

    python scripts/bench_tiling.py                       # --frames 30 --sizes 1080 2160
    python scripts/bench_tiling.py --frames 2 --sizes 1080 --clips 6 --json out/bench_tiling.json

The test split is for reporting only; nothing here is tuned on it (overlap 64, budget 3, every 5 are the
detect stage's defaults, stages/tiling.py). Compare settings with --split val.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from models.backends import BACKENDS
from models.tiling import (DEFAULT_MIN_SCALE, detect_regions, detect_tiled, frame_regions, held_by, merge_regions,
                           tile_size_for)
from pipeline.offline.data import dataset, mosaic
from pipeline.offline.data.coco import CocoBuilder, coco_result
from pipeline.offline.eval.coco import class_to_category, run_cocoeval
from pipeline.offline.eval.recall import recall_by_size as recall_by_side
from stages.tile_schedule import TileSchedule

SIZE_BUCKETS_PX = (("<8", 0, 8), ("8-16", 8, 16), ("16-32", 16, 32), (">=32", 32, float("inf")))
RECALL_IOU = 0.5
MAP_CONF, MAP_NMS = 0.001, 0.65      # pipeline.offline.eval.settings: the whole PR curve
MODES = ("full", "tiled", "fitted", "budgeted", "per-clip")
GOAL_POINTS = 2.0                    # tiled on a mosaic within this many mAP50:95 points of per-clip


@dataclass
class Record:
    """One mode's frames in one setting: truth and detections per frame (canvas pixels), timings."""
    truth: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)   # (boxes N x 4, classes N)
    found: list[np.ndarray] = field(default_factory=list)                       # K x 6 per frame
    layouts: list[mosaic.Layout | None] = field(default_factory=list)           # cells scored per frame
    seconds: list[float] = field(default_factory=list)                          # per detector call
    regions: list[int] = field(default_factory=list)                            # model inputs per frame

    def add(self, frame: mosaic.MosaicFrame, found: np.ndarray, layout, regions: int) -> None:
        self.truth.append((frame.boxes, frame.classes))
        self.found.append(found)
        self.layouts.append(layout)
        self.regions.append(regions)


# --------------------------------------------------------------------------- the modes

def timed(call: Callable, *args):
    started = time.perf_counter()
    result = call(*args)
    return result, time.perf_counter() - started


class Budgeted:
    """Live-mode tiling of one stream: the tiles and whole-frame pass its TileSchedule picks."""

    def __init__(self, detector, image_hw, overlap: int, every: int, budget: int, saw_conf: float,
                 min_scale: float = DEFAULT_MIN_SCALE):
        self.detector, self.image_hw, self.saw_conf, self.overlap = detector, tuple(image_hw), saw_conf, overlap
        self.tile_hw = tile_size_for(image_hw, detector.input_size, None, overlap, min_scale)
        regions = frame_regions(image_hw, detector.input_size, self.tile_hw, overlap, whole_frame=True)
        self.whole, self.tiles = regions[0], regions[1:]
        self.schedule = TileSchedule(len(self.tiles), every, budget, whole=True)
        self.last_regions = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        chosen = self.schedule.choose(None)  # no motion score here: the preprocess stage computes it live
        whole = self.schedule.whole_now  # (never late here: always some region, as in a stage that keeps up)
        regions = [self.whole] * whole + [self.tiles[i] for i in chosen]
        per_region = detect_regions(self.detector, image, regions, self.tile_hw, whole_first=whole)
        found = [(i, dets) for i, dets in zip([None] * whole + chosen, per_region)
                 if len(dets) and float(dets[:, 4].max()) > self.saw_conf]
        unheld = any(not held_by(d, self.tiles).all() for _, d in found)  # an object no tile holds whole
        self.schedule.saw([i for i, _ in found if i is not None], whole=unheld)
        self.last_regions = len(regions)
        return merge_regions(per_region, regions, image.shape[:2], whole_first=whole)


def run_frame(detector, frame: mosaic.MosaicFrame, records: dict, budgeted: Budgeted, overlap: int,
              layout, min_scale: float) -> None:
    """Full, tiled, fitted and budgeted detection of one frame, each timed and recorded."""
    found, seconds = timed(lambda image: detector([image])[0], frame.image)
    records["full"].seconds.append(seconds)
    records["full"].add(frame, found, layout, 1)
    found, seconds = timed(detect_tiled, detector, frame.image, None, overlap)
    records["tiled"].seconds.append(seconds)
    tiles = len(frame_regions(frame.image.shape[:2], detector.input_size, None, overlap))
    records["tiled"].add(frame, found, layout, tiles)
    if "fitted" in records:
        found, seconds = timed(lambda image: detect_tiled(detector, image, None, overlap, min_scale=min_scale), frame.image)
        records["fitted"].seconds.append(seconds)
        tiles = len(frame_regions(frame.image.shape[:2], detector.input_size, None, overlap, True, min_scale))
        records["fitted"].add(frame, found, layout, tiles)
    found, seconds = timed(budgeted, frame.image)
    records["budgeted"].seconds.append(seconds)
    records["budgeted"].add(frame, found, layout, budgeted.last_regions)


def run_cells(detector, frame: mosaic.MosaicFrame, cells: list[mosaic.CellFrame], layout: mosaic.Layout,
              record: Record, cache: dict, keys: list) -> None:
    """The per-clip baseline: each cell alone through the detector (cached: the clips and frames are
    the same at every canvas size), shifted to the canvas."""
    shifted = []
    for cell, (x, y), key in zip(cells, layout.offsets, keys):
        if key not in cache:
            cache[key] = timed(lambda image: detector([image])[0], cell.image)
        found, seconds = cache[key]
        record.seconds.append(seconds)
        shifted.append(found + np.array([x, y, x, y, 0, 0], dtype=np.float32))
    record.add(frame, np.concatenate(shifted), layout, len(cells))


def modes(args) -> tuple[str, ...]:
    return tuple(mode for mode in MODES if mode != "fitted" or args.min_scale < 1)


# --------------------------------------------------------------------------- scoring

def recall_by_size(record: Record, conf: float) -> dict:
    """Per size bucket: boxes and the share some detection (score >= conf) overlaps at IoU >= 0.5,
    by the project's rule (pipeline.offline.eval.recall)."""
    truth = [boxes for boxes, _ in record.truth]
    found = [dets[dets[:, 4] >= conf] for dets in record.found]
    edges = tuple(low for _, low, _ in SIZE_BUCKETS_PX) + (SIZE_BUCKETS_PX[-1][2],)
    rows = {tuple(row["side_px"]): row for row in recall_by_side(truth, found, (RECALL_IOU,), edges)["by_size"]}
    report = {}
    for name, low, high in SIZE_BUCKETS_PX:
        row = rows.get((low, high))
        report[name] = {"boxes": row["boxes"] if row else 0,
                        "recall": row["recall"][str(RECALL_IOU)] if row else None}
    return report


def cell_images(boxes, classes, found, layout: mosaic.Layout) -> list[tuple]:
    """One canvas split into its cells' (boxes, classes, detections), each by its box centres."""
    truth_cell = layout.cell_at((boxes[:, :2] + boxes[:, 2:4]) / 2)
    found_cell = layout.cell_at((found[:, :2] + found[:, 2:4]) / 2)
    return [(boxes[truth_cell == i], classes[truth_cell == i], found[found_cell == i])
            for i in range(layout.cells)]


def coco_map(images: Iterable[tuple], categories: dict[int, int]) -> tuple[float | None, float | None]:
    """(mAP50:95, mAP50) of images given as (boxes, classes, detections), COCO protocol."""
    builder, results = CocoBuilder(dataset.CLASSES), []
    for index, (boxes, classes, found) in enumerate(images):
        image_id = builder.add_image(str(index), 1, 1)  # the size is not used by the bbox protocol
        for (x1, y1, x2, y2), class_id in zip(boxes.tolist(), classes.tolist()):
            builder.add_box(image_id, class_id, (x1, y1, x2 - x1, y2 - y1))
        results += [coco_result(image_id, categories[int(c)], (x1, y1, x2, y2), s)
                    for x1, y1, x2, y2, s, c in found.tolist() if int(c) in categories]
    stats = run_cocoeval(builder.build(), results, "faster").stats
    return tuple(None if value < 0 else float(value) for value in stats[:2])


def score(record: Record, categories: dict[int, int], recall_conf: float) -> dict:
    """What the table shows for one mode of one setting."""
    whole = [(b, c, f) for (b, c), f in zip(record.truth, record.found)]
    if any(layout is not None for layout in record.layouts):
        scored = [cell for (b, c, f), layout in zip(whole, record.layouts) for cell in cell_images(b, c, f, layout)]
    else:
        scored = whole
    map50_95, map50 = coco_map(scored, categories)
    ms = 1e3 * float(np.mean(record.seconds)) if record.seconds else None
    report = {"recall": recall_by_size(record, recall_conf), "map50_95": map50_95, "map50": map50,
              "ms_per_call": ms, "fps": 1e3 / ms if ms else None, "frames": len(record.truth),
              "images_scored": len(scored), "regions_per_frame": float(np.mean(record.regions))}
    if scored is not whole:
        report["map50_95_canvas"], report["map50_canvas"] = coco_map(whole, categories)
    return report


# --------------------------------------------------------------------------- the settings

def synthetic_setting(detector, size: int, args) -> tuple[dict, dict]:
    """Synthetic HD clips (V, IR, V, ... by clip), seeds --seed, --seed + 1, ..."""
    width, height = mosaic.canvas_size(size)
    records = {mode: Record() for mode in modes(args) if mode != "per-clip"}
    clips = []
    for k in range(args.synthetic_clips):
        modality = ("V", "IR")[k % 2]
        clips.append(f"{modality} seed {args.seed + k}")
        budgeted = Budgeted(detector, (height, width), args.overlap, args.every, args.budget, args.saw_conf,
                            args.budget_min_scale)
        for frame in mosaic.render_hd(args.seed + k, args.frames, size, modality):
            run_frame(detector, frame, records, budgeted, args.overlap, None, args.min_scale)
    return {"setting": f"synthetic {width}x{height}", "kind": "synthetic", "clips": clips}, records


def mosaic_setting(detector, size: int, clips: list, args, cache: dict) -> tuple[dict, dict]:
    """Mosaics of ``clips``, as many canvases as they fill (the last one may have empty grey cells)."""
    layout = mosaic.grid_layout(size)
    width, height = layout.canvas_wh
    records = {mode: Record() for mode in modes(args)}
    for start in range(0, len(clips), layout.cells):
        group = clips[start:start + layout.cells]
        used = mosaic.Layout(layout.canvas_wh, layout.offsets[:len(group)])
        budgeted = Budgeted(detector, (height, width), args.overlap, args.every, args.budget, args.saw_conf,
                            args.budget_min_scale)
        rows = mosaic.iter_cell_rows(group, args.frames, loop=True, visible_boxes=args.visible_boxes)
        for index, cells in enumerate(rows):
            frame = mosaic.compose(cells, layout, args.fill)
            run_frame(detector, frame, records, budgeted, args.overlap, used, args.min_scale)
            run_cells(detector, frame, cells, used, records["per-clip"], cache,
                      [(clip.name, index) for clip in group])
    canvases = -(-len(clips) // layout.cells)
    return {"setting": f"mosaic {width}x{height}", "kind": "mosaic", "canvases": canvases,
            "clips": [clip.name for clip in clips]}, records


def mosaic_clips(args) -> list | None:
    """The held-out clips the mosaics show (seeded order), or None (with a note) when absent."""
    try:
        found = dataset.load_split(args.split, args.data)
    except dataset.DatasetError as exc:
        print(f"note: real mosaics skipped: {exc}")
        return None
    return mosaic.choose_clips(found, args.clips, args.seed)


# --------------------------------------------------------------------------- the report

def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


MODE_NAMES = {"full": "full frame (letterbox)", "tiled": "tiled (all tiles + whole)",
              "fitted": "fitted tiles (all, shrunk to fewer + whole)",
              "budgeted": "budgeted tiled", "per-clip": "per-clip 640x512 (baseline)"}


def format_table(results: list[dict]) -> str:
    lines = ["| setting | mode | inputs/frame | recall <8 px | 8-16 | 16-32 | >=32 | mAP50:95 | mAP50 | ms/frame | fps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for mode, row in result["modes"].items():
            recall = " | ".join(_percent(row["recall"][name]["recall"]) for name, _, _ in SIZE_BUCKETS_PX)
            ms = "–" if row["ms_per_call"] is None else f"{row['ms_per_call']:.0f}"
            fps = "–" if row["fps"] is None else f"{row['fps']:.1f}"
            if mode == "per-clip":
                ms, fps = f"{ms} per clip", f"{fps} clip frames"
            lines.append(f"| {result['setting']} | {MODE_NAMES[mode]} | {row['regions_per_frame']:.1f} | {recall} "
                         f"| {_percent(row['map50_95'])} | {_percent(row['map50'])} | {ms} | {fps} |")
    return "\n".join(lines)


def format_counts(results: list[dict]) -> str:
    lines = ["| setting | clips | frames | boxes <8 px | 8-16 | 16-32 | >=32 |", "|---|---|---|---|---|---|---|"]
    for result in results:
        row = result["modes"]["full"]
        counts = " | ".join(str(row["recall"][name]["boxes"]) for name, _, _ in SIZE_BUCKETS_PX)
        lines.append(f"| {result['setting']} | {len(result['clips'])} | {row['frames']} | {counts} |")
    return "\n".join(lines)


def goals(results: list[dict]) -> list[dict]:
    """Per mosaic: tiled and full-frame mAP50:95 against the per-clip baseline, in points."""
    verdicts = []
    for result in results:
        if result["kind"] != "mosaic":
            continue
        modes = {mode: row["map50_95"] for mode, row in result["modes"].items()}
        if None in modes.values():
            continue
        gap = {mode: 100 * (value - modes["per-clip"]) for mode, value in modes.items() if mode != "per-clip"}
        verdicts.append({"setting": result["setting"], "points_vs_per_clip": gap,
                         "tiled_within_goal": gap["tiled"] >= -GOAL_POINTS})
    return verdicts


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()}"


# --------------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30, help="frames per clip (consecutive, from frame 0)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1080, 2160], choices=sorted(mosaic.CANVASES))
    parser.add_argument("--overlap", type=int, default=64, help="minimum tile overlap, px (the stage's default)")
    parser.add_argument("--budget", type=int, default=3, help="budgeted mode: tiles per frame besides due ones")
    parser.add_argument("--every", type=int, default=5, help="budgeted mode: every tile at least every N frames")
    parser.add_argument("--min-scale", type=float, default=0.85, help="fitted mode: tiles shrunk to no less "
                        "than this where that saves tiles (1: no fitted mode)")
    parser.add_argument("--budget-min-scale", type=float, default=DEFAULT_MIN_SCALE,
                        help="budgeted mode's tiles, likewise (default: the detect stage's)")
    parser.add_argument("--saw-conf", type=float, default=0.3, help="budgeted mode: a tile is hot above this score")
    parser.add_argument("--recall-conf", type=float, default=0.25, help="recall counts detections above this "
                        "(the detect stage's conf_threshold); mAP uses all down to 0.001")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--weights", type=models.weights_file, help="checkpoint (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seeds and which clips sit in which cell")
    parser.add_argument("--data", type=Path, default=dataset.DEFAULT_ROOT, help="dataset root")
    parser.add_argument("--split", default="test", help="clips of the mosaics (test: report; val: compare)")
    parser.add_argument("--clips", type=int, default=24, help="clips in the mosaics: 24 fill one 4K canvas "
                        "and four 1080p ones, so both sizes show the same clips")
    parser.add_argument("--synthetic-clips", type=int, default=2, help="synthetic clips per size (V, IR, ...)")
    parser.add_argument("--visible-boxes", choices=mosaic.VISIBLE_BOXES, default="tight",
                        help="visible labels as drawn or tightened (the model's convention; default)")
    parser.add_argument("--fill", choices=mosaic.FILLS, default="grey", help="mosaic padding")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--no-mosaic", action="store_true")
    parser.add_argument("--json", type=Path, help="write every number here")
    return parser.parse_args(argv)


def load_detector(args):
    from models import Detector

    # class-agnostic NMS and merge, as the detect stage runs (stages/detect.py); conf/NMS as the eval's
    detector = Detector(args.weights, backend=args.backend, conf_threshold=MAP_CONF, nms_threshold=MAP_NMS,
                        onnx_threads=args.threads, class_agnostic_nms=True)
    blank = np.full((*detector.input_size, 3), 114, np.uint8)
    detector([blank])  # warm-up: first calls pay one-time allocations, which no mode should be charged
    return detector


def run_settings(detector, args) -> list[tuple[dict, dict]]:
    started, settings = time.perf_counter(), []
    clips = None if args.no_mosaic else mosaic_clips(args)
    cache: dict = {}
    runs = [] if args.no_synthetic else [(synthetic_setting, (size, args)) for size in args.sizes]
    runs += [(mosaic_setting, (size, clips, args, cache)) for size in args.sizes] if clips else []
    for run, run_args in runs:
        settings.append(run(detector, *run_args))
        # progress on stderr: a full run takes minutes and prints its table only at the end
        print(f"{settings[-1][0]['setting']} done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return settings


def report(detector, args, settings, argv, seconds: float) -> dict:
    categories = class_to_category(detector.class_names)
    results = [{**info, "modes": {mode: score(record, categories, args.recall_conf) for mode, record in records.items()}}
               for info, records in settings]
    print(f"detector {detector.model_name} {detector.input_size[1]}x{detector.input_size[0]}, {args.backend}, "
          f"weights {detector.weights.name}; {machine()}; split {args.split}; visible boxes {args.visible_boxes}")
    print(f"overlap {args.overlap}, fitted min scale {args.min_scale}, budget {args.budget}, every {args.every}, "
          f"budgeted min scale {args.budget_min_scale}, saw conf {args.saw_conf}; "
          f"mAP at conf {MAP_CONF}, recall at IoU {RECALL_IOU} and conf {args.recall_conf}; run {seconds:.0f} s\n")
    print(format_table(results) + "\n\n" + format_counts(results))
    verdicts = goals(results)
    for verdict in verdicts:
        gap = verdict["points_vs_per_clip"]
        points = ", ".join(f"{mode} {value:+.1f}" for mode, value in gap.items())
        print(f"{verdict['setting']}: mAP50:95 vs per-clip, points: {points}; tiled within {GOAL_POINTS:g}: "
              f"{'yes' if verdict['tiled_within_goal'] else 'no'}")
    return {"command": "python scripts/bench_tiling.py " + " ".join(argv), "machine": machine(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results, "goals": verdicts, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.split != "test":
        print(f"note: split {args.split}: for comparing settings, not for reporting")
    started = time.perf_counter()
    detector = load_detector(args)
    settings = run_settings(detector, args)
    if not settings:
        print("error: nothing to run (no synthetic setting and no clips for a mosaic)", file=sys.stderr)
        return 2
    out = report(detector, args, settings, argv, time.perf_counter() - started)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
