"""HD test frames for tiled detection: mosaics of labeled clips, and synthetic HD clips with tiny targets.

Why: the dataset's clips are 640x512 (visible, V) and 320x256 (thermal, IR), but tiled detection
(models.tiling) is for 1920x1080 and 3840x2160 sources. A mosaic lays several clips side by side on
one HD canvas, so a detector examining the canvas meets every clip's objects at the clip's own pixel
scale, and the same clips scored alone (``cell_images``) give the accuracy tiling should recover.

Mosaic rules:
- cells of 640x512 (``CELL_WH``) from the canvas's top-left corner, row by row: 3x2 on 1920x1080,
  6x4 on 3840x2160; the canvas left over (56 / 112 rows at the bottom) is padding, filled with the
  letterbox's grey 114 (what the model already sees around every letterboxed frame) or, with
  ``fill="blur"``, a blurred mirror of the cells above it;
- a thermal clip is enlarged 2x into its cell with the letterbox's own resize (cv2 bilinear), so a
  cell holds exactly the pixels the detector gets when it letterboxes that clip alone; its labels are
  scaled by 2 too. V and IR clips can be mixed freely on one canvas (``choose_clips`` shuffles what
  it is given); box sizes are then in canvas pixels, i.e. twice the native size for IR;
- every clip's boxes are shifted by its cell's offset and clipped to its cell;
- frame by frame until the shortest clip ends, or with ``loop`` each clip restarts when it ends;
- ``visible_boxes="tight"`` tightens the visible camera's loose boxes (pipeline.offline.data.tighten)
  on the frame they label, as ``eval --visible-boxes tight`` does.

Synthetic HD clips (``render_hd``) reuse pipeline.offline.data.synthetic's renderer (sky with clouds,
ground / tree line / buildings, 3-40 px drone and bird silhouettes on slow smooth paths, blur, noise),
with target counts scaled to the canvas. Everything is deterministic given a seed.

Write a mosaic as .mp4 + COCO labels: ``python -m pipeline.offline.data.mosaic --size 1080 --out DIR``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from pipeline.offline.data import dataset, synthetic
from pipeline.offline.data.coco import CocoBuilder
from pipeline.offline.data.tighten import tighten_box

CELL_WH = (640, 512)                     # the V camera's frame and the detector's input (w, h)
CANVASES = {1080: (1920, 1080), 2160: (3840, 2160)}   # canvas height -> (w, h)
PAD_GREY = 114                           # models.letterbox.PAD_VALUE: the grey the model knows as "nothing"
FILLS = ("grey", "blur")
VISIBLE_BOXES = ("dataset", "tight")
# synthetic targets per 1920x1080 canvas; scaled by area, so a 4K frame has 4x as many
HD_DRONES, HD_BIRDS = 8, 3


class MosaicFrame(NamedTuple):
    """One canvas: BGR uint8 image, boxes N x 4 [x1, y1, x2, y2] (canvas pixels), classes N (int)."""
    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


class CellFrame(NamedTuple):
    """One clip's frame as it sits in its cell: 640x512 image, boxes in cell pixels, classes."""
    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True)
class Layout:
    """Where cells sit on a canvas: ``offsets[i]`` = (x, y) of cell i's top-left corner."""
    canvas_wh: tuple[int, int]
    offsets: tuple[tuple[int, int], ...]

    @property
    def cells(self) -> int:
        return len(self.offsets)

    def cell_at(self, points_xy: np.ndarray) -> np.ndarray:
        """Index of the cell holding each point (N x 2), -1 for a point on the padding."""
        points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
        found = np.full(len(points), -1, dtype=np.int64)
        for index, (x, y) in enumerate(self.offsets):
            inside = ((points[:, 0] >= x) & (points[:, 0] < x + CELL_WH[0])
                      & (points[:, 1] >= y) & (points[:, 1] < y + CELL_WH[1]))
            found[inside & (found < 0)] = index
        return found


def canvas_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(w, h) of a canvas named by its height (1080, 2160) or given as (w, h)."""
    if isinstance(size, int):
        if size not in CANVASES:
            raise ValueError(f"unknown canvas size {size}; expected one of {sorted(CANVASES)} or (w, h)")
        return CANVASES[size]
    width, height = (int(v) for v in size)
    return width, height


def grid_layout(size: int | Sequence[int]) -> Layout:
    """As many whole cells as fit, from the top-left corner, row by row (3x2 at 1080p, 6x4 at 4K)."""
    width, height = canvas_size(size)
    columns, rows = width // CELL_WH[0], height // CELL_WH[1]
    if not columns or not rows:
        raise ValueError(f"a canvas of {width}x{height} holds no {CELL_WH[0]}x{CELL_WH[1]} cell")
    offsets = tuple((col * CELL_WH[0], row * CELL_WH[1]) for row in range(rows) for col in range(columns))
    return Layout((width, height), offsets)


def choose_clips(clips: Sequence[dataset.Clip], count: int, seed: int = 0) -> list[dataset.Clip]:
    """``count`` clips in a seeded shuffled order (V and IR mixed as they come); all when fewer."""
    order = sorted(clips, key=lambda clip: clip.name)  # the caller's order must not matter
    random.Random(seed).shuffle(order)
    return order[:count]


def _cell_boxes(rows, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Label rows (class, x, y, w, h) in clip pixels -> boxes xyxy in cell pixels (clipped), classes."""
    boxes, classes = [], []
    for class_id, x, y, w, h in rows:
        x1, y1 = np.clip(x * scale, 0, CELL_WH[0]), np.clip(y * scale, 0, CELL_WH[1])
        x2, y2 = np.clip((x + w) * scale, 0, CELL_WH[0]), np.clip((y + h) * scale, 0, CELL_WH[1])
        if x2 > x1 and y2 > y1:  # a label wholly outside the frame has nothing left to find
            boxes.append((x1, y1, x2, y2))
            classes.append(int(class_id))
    return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(classes, dtype=np.int64)


def _to_cell(frame: np.ndarray, rows, visible_boxes: str, modality: str) -> CellFrame:
    if visible_boxes == "tight" and modality == "V":
        rows = [(class_id, *tighten_box(frame, (x, y, w, h))[0]) for class_id, x, y, w, h in rows]
    height, width = frame.shape[:2]
    scale = min(CELL_WH[0] / width, CELL_WH[1] / height)
    image = frame
    if (width, height) != CELL_WH:
        # the letterbox's resize (models.letterbox): bilinear, to the truncated scaled size
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        image = np.full((CELL_WH[1], CELL_WH[0], 3), PAD_GREY, dtype=np.uint8)
        image[:size[1], :size[0]] = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
    return CellFrame(image, *_cell_boxes(rows, scale))


def iter_clip_cells(clip: dataset.Clip, loop: bool = False, visible_boxes: str = "dataset",
                    cache_dir=None) -> Iterator[CellFrame]:
    """A clip's frames as cells, with its labels; with ``loop`` it starts over when it ends."""
    if visible_boxes not in VISIBLE_BOXES:
        raise ValueError(f"visible_boxes must be one of {VISIBLE_BOXES}, got {visible_boxes!r}")
    labels = dataset.read_labels(clip)
    while True:
        decoded = 0
        for index, frame in dataset.iter_frames(clip, cache_dir=cache_dir):
            decoded += 1
            yield _to_cell(frame, labels.get(index, ()), visible_boxes, clip.modality)
        if not loop or not decoded:
            return


def _fill_padding(canvas: np.ndarray, layout: Layout, fill: str) -> None:
    """Fill the canvas below and right of the cells (it starts grey): left grey, or a blurred mirror."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "grey":
        return
    used_w = max(x for x, _ in layout.offsets) + CELL_WH[0]
    used_h = max(y for _, y in layout.offsets) + CELL_WH[1]
    width, height = layout.canvas_wh
    mirrored = cv2.copyMakeBorder(canvas[:used_h, :used_w], 0, height - used_h, 0, width - used_w,
                                  cv2.BORDER_REFLECT)
    # heavy blur: the border should read as "more of the scene" without adding sharp false targets
    blurred = cv2.GaussianBlur(mirrored, (0, 0), 15)
    canvas[used_h:], canvas[:, used_w:] = blurred[used_h:], blurred[:, used_w:]


def compose(cells: Sequence[CellFrame | None], layout: Layout, fill: str = "grey") -> MosaicFrame:
    """One canvas from up to ``layout.cells`` cells (None or missing: an empty grey cell)."""
    if len(cells) > layout.cells:
        raise ValueError(f"{len(cells)} cells do not fit a layout of {layout.cells}")
    width, height = layout.canvas_wh
    canvas = np.full((height, width, 3), PAD_GREY, dtype=np.uint8)
    boxes, classes = [], []
    for cell, (x, y) in zip(cells, layout.offsets):
        if cell is None:
            continue
        canvas[y:y + CELL_WH[1], x:x + CELL_WH[0]] = cell.image
        boxes.append(cell.boxes + np.array([x, y, x, y], dtype=np.float32))
        classes.append(cell.classes)
    _fill_padding(canvas, layout, fill)
    if not boxes:
        return MosaicFrame(canvas, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    return MosaicFrame(canvas, np.concatenate(boxes), np.concatenate(classes))


def iter_cell_rows(clips: Sequence[dataset.Clip], frames: int | None = None, loop: bool = False,
                   visible_boxes: str = "dataset", cache_dir=None) -> Iterator[list[CellFrame]]:
    """Per frame, every clip's cell; stops at the shortest clip (or after ``frames`` with ``loop``)."""
    if loop and frames is None:
        raise ValueError("loop needs a frame count, or it never ends")
    streams = [iter_clip_cells(clip, loop, visible_boxes, cache_dir) for clip in clips]
    count = 0
    while frames is None or count < frames:
        row = [next(stream, None) for stream in streams]
        if any(cell is None for cell in row):
            return  # the shortest clip ended
        yield row
        count += 1


def iter_mosaic(clips: Sequence[dataset.Clip], size: int | Sequence[int] = 1080, frames: int | None = None,
                loop: bool = False, fill: str = "grey", visible_boxes: str = "dataset",
                cache_dir=None) -> Iterator[MosaicFrame]:
    """Canvases of the clips, in the order given (cell 0 = top-left); at most as many as fit."""
    layout = grid_layout(size)
    for row in iter_cell_rows(list(clips)[:layout.cells], frames, loop, visible_boxes, cache_dir):
        yield compose(row, layout, fill)


def hd_target_counts(size: int | Sequence[int]) -> tuple[int, int]:
    """(drones, birds) for a synthetic canvas: HD_DRONES / HD_BIRDS per 1920x1080 of area."""
    width, height = canvas_size(size)
    area = width * height / (1920 * 1080)
    return max(1, round(HD_DRONES * area)), round(HD_BIRDS * area)


def render_hd(seed: int = 0, frames: int = 30, size: int | Sequence[int] = 1080, modality: str = "V",
              n_drones: int | None = None, n_birds: int | None = None) -> Iterator[MosaicFrame]:
    """Synthetic HD frames (pipeline.offline.data.synthetic's renderer) with 3-40 px targets and their
    tight boxes (drone = class 0, bird = class 1); deterministic from ``seed``."""
    width, height = canvas_size(size)
    drones, birds = hd_target_counts((width, height))
    rendered = synthetic.render_clip(seed, frames, (width, height), modality=modality,
                                     n_drones=drones if n_drones is None else n_drones,
                                     n_birds=birds if n_birds is None else n_birds)
    for image, boxes in rendered:
        xyxy = np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], dtype=np.float32).reshape(-1, 4)
        yield MosaicFrame(image, xyxy, np.array([b.class_id for b in boxes], dtype=np.int64))


def to_coco(frames: Sequence[tuple[np.ndarray, np.ndarray]], canvas_wh: tuple[int, int], name: str) -> dict:
    """COCO ground truth of canvases given as (boxes, classes) per frame (image ``frame_index`` = position,
    ``clip`` = ``name``)."""
    builder = CocoBuilder(dataset.CLASSES)
    for index, (boxes, classes) in enumerate(frames):
        image_id = builder.add_image(f"{name}/{index:06d}", canvas_wh[0], canvas_wh[1], clip=name, frame_index=index)
        for (x1, y1, x2, y2), class_id in zip(np.asarray(boxes).tolist(), np.asarray(classes).tolist()):
            builder.add_box(image_id, class_id, (x1, y1, x2 - x1, y2 - y1))
    return builder.build({"description": f"mosaic {name}"})


def write_mosaic(out_dir: Path | str, frames: Iterable[MosaicFrame], name: str = "mosaic", fps: int = 30) -> Path:
    """``<name>.mp4`` and ``<name>.json`` (COCO) under out_dir; returns the video's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("no frame to write")
    height, width = first.image.shape[:2]
    labels: list[tuple[np.ndarray, np.ndarray]] = []

    def images():
        for frame in itertools.chain([first], frames):
            labels.append((frame.boxes, frame.classes))
            yield frame.image

    video = out_dir / f"{name}.mp4"
    synthetic.write_video(video, images(), width, height, fps)
    (out_dir / f"{name}.json").write_text(json.dumps(to_coco(labels, (width, height), name)))
    return video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.offline.data.mosaic",
                                     description="Write a mosaic of labeled clips (or a synthetic HD clip) as .mp4 + COCO.")
    parser.add_argument("--data", default=str(dataset.DEFAULT_ROOT), help="dataset root")
    parser.add_argument("--split", default="test", help="train | val | test | all (default test: held out)")
    parser.add_argument("--size", type=int, default=1080, choices=sorted(CANVASES), help="canvas height")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="which clips, in which cells")
    parser.add_argument("--fill", default="grey", choices=FILLS)
    parser.add_argument("--visible-boxes", default="dataset", choices=VISIBLE_BOXES)
    parser.add_argument("--synthetic", action="store_true", help="a synthetic HD clip instead of a mosaic")
    parser.add_argument("--out", default="out/mosaic")
    args = parser.parse_args(argv)
    name = f"{'synthetic' if args.synthetic else 'mosaic'}_{args.size}_seed{args.seed}"
    try:
        if args.synthetic:
            frames = render_hd(args.seed, args.frames, args.size)
        else:
            clips = choose_clips(dataset.load_split(args.split, args.data), grid_layout(args.size).cells, args.seed)
            frames = iter_mosaic(clips, args.size, args.frames, loop=True, fill=args.fill,
                                 visible_boxes=args.visible_boxes)
        print(f"wrote {write_mosaic(args.out, frames, name)}")
    except dataset.DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
