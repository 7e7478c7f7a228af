"""Tiled detection: frames larger than the detector's input are examined as overlapping tiles plus one
downscaled pass over the whole frame, and the detections merged back into one set in source pixels.

Why: the letterbox shrinks a 3840x2160 frame by 6 to fit a 640x512 input, so a 20-px drone arrives as
a 3-px speck. A tile is cut at the source's own scale by default (``tile_size`` = the model input),
which is the scale the model was trained at (training crops are cut from frames at scale 1; see
models/README.md, "Tiling"). The whole-frame pass keeps objects larger than a tile.

A *region* is (x0, y0, x1, y1) in source pixels. Every region, tile or whole frame, goes through the
one letterbox rule (models.letterbox), so a tile of the input's size passes at ratio 1 and a larger
``tile_size`` is scaled down like the whole frame is.

Merge rule (``merge``): detections of all regions, those drawn at a scale that suits them first
(a tile's uncut boxes, and the whole-frame pass's boxes that no examined tile holds whole), each
group by score; a detection suppresses every later one of
another region whose overlap with it covers at least ``ios_threshold`` of the smaller box
(intersection over smaller, so the part of an object cut by a tile border, inside the whole
object's box, counts as the same object), provided the smaller box has at least MIN_AREA_RATIO of
the larger's area or one was cut (a drone in front of an airplane stays two objects). A kept box
takes the best score of its class among those it suppressed; one that was itself cut by an interior
tile border is widened to their union. So a small drone keeps its sharp tile box even when the
blurred whole-frame box scored higher, and a large airplane split by tiles keeps the whole-frame
box. Class-agnostic unless told otherwise. No torch here.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .letterbox import letterbox

TILING_MODES = ("off", "on", "auto")
CUT_MARGIN_PX = 2.0  # a box edge this close to an interior tile border was cut by it
# the defaults of stages.detect.tiling, which the offline eval uses too (one copy of each)
DEFAULT_MODE = "auto"
DEFAULT_AUTO_FACTOR = 1.5  # auto: tile a frame larger than the input by more than this along a side
DEFAULT_OVERLAP = 64  # px shared by neighbouring tiles: an object this large lies whole in one of them
DEFAULT_MERGE_IOS = 0.5
MAX_MERGED = 1000  # detections per frame that take part in the merge (best scores first)
# a frame that would need more tiles gets the whole-frame pass alone: 4K makes 35 tiles of 640x512;
# 8K would make 140, ~3 s of model time per frame here, and a batch of four such frames would outlast
# the supervisor's heartbeat timeout (set a larger tile_size for 8K: 1024x1280 tiles at 0.5 make 35)
MAX_TILES_PER_FRAME = 64
# two overlapping boxes of different regions are one object only if the smaller has at least this share
# of the larger's area (or one was cut by a tile border): a drone in front of an airplane stays two
MIN_AREA_RATIO = 0.2
# tiles may be shrunk to this scale (never below) when that covers a frame in fewer tiles: 1 keeps every
# tile at the source's own scale (the input's size in source pixels)
DEFAULT_MIN_SCALE = 1.0


def axis_starts(length: int, tile: int, min_overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length): evenly spread, first at 0, last ending at length,
    neighbours overlapping by at least ``min_overlap``, at most half a tile (more would examine every
    pixel more than twice); one tile where the axis fits in one."""
    if length <= tile:
        return [0]
    overlap = min(min_overlap, tile // 2)
    step = tile - overlap
    count = math.ceil((length - overlap) / step)
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_grid(image_hw, tile_hw, min_overlap: int) -> list[tuple[int, int, int, int]]:
    """Regions (x0, y0, x1, y1) of the tiles covering an image, row by row; a tile is clipped to the
    image where the image is smaller than the tile along an axis."""
    height, width = int(image_hw[0]), int(image_hw[1])
    tile_h, tile_w = int(tile_hw[0]), int(tile_hw[1])
    return [(x0, y0, min(x0 + tile_w, width), min(y0 + tile_h, height))
            for y0 in axis_starts(height, tile_h, min_overlap)
            for x0 in axis_starts(width, tile_w, min_overlap)]


def tile_count(image_hw, tile_hw, min_overlap: int) -> int:
    """How many tiles tile_grid makes for a frame, without making them (a guard against forged sizes)."""
    rows = len(axis_starts(int(image_hw[0]), int(tile_hw[0]), min_overlap))
    return rows * len(axis_starts(int(image_hw[1]), int(tile_hw[1]), min_overlap))


def fitted_tile_size(image_hw, input_hw, min_overlap: int, min_scale: float) -> tuple[int, int]:
    """The tile size (source pixels, the input's aspect) that covers a frame in the fewest tiles while
    tiles are fed at a scale of at least ``min_scale``; of equally few, the one at the largest scale.

    1920x1080 at 512x640 tiles takes 3 rows of 4 (rows overlapping by 228 px, not 64); shrunk to 0.895
    the tiles are 572x715 and 2 rows of 3 cover it: half the model inputs. Every whole-pixel tile
    height and width the scale allows is tried (the count is not monotone in the size where the
    overlap is capped at half a tile); cached per frame size."""
    return _fitted(tuple(int(v) for v in image_hw[:2]), (int(input_hw[0]), int(input_hw[1])), int(min_overlap),
                   float(min_scale))


@functools.lru_cache(maxsize=64)
def _fitted(image_hw: tuple, input_hw: tuple, min_overlap: int, min_scale: float) -> tuple[int, int]:
    input_h, input_w = input_hw
    scales = {1.0}
    for side in input_hw:
        scales.update(side / size for size in range(side + 1, math.floor(side / min_scale + 1e-9) + 1))
    best = None
    for scale in sorted(scales, reverse=True):
        tile = (math.ceil(input_h / scale - 1e-9), math.ceil(input_w / scale - 1e-9))
        count = tile_count(image_hw, tile, min_overlap)
        if best is None or count < best[0]:
            best = (count, tile)
    return best[1]


def tile_size_for(image_hw, input_hw, tile_hw=None, min_overlap: int = DEFAULT_OVERLAP,
                  min_scale: float = DEFAULT_MIN_SCALE) -> tuple[int, int]:
    """The tiles a frame is cut in (source pixels): ``tile_hw`` where one is configured, else the input's
    size, shrunk towards ``min_scale`` where that saves tiles (``fitted_tile_size``)."""
    if tile_hw is not None:
        return int(tile_hw[0]), int(tile_hw[1])
    if min_scale >= 1.0:
        return int(input_hw[0]), int(input_hw[1])
    return fitted_tile_size(image_hw, input_hw, min_overlap, min_scale)


def wants_tiles(mode: str, image_hw, input_hw, auto_factor: float) -> bool:
    """Whether a frame of ``image_hw`` is tiled: always (on), never (off), or when it is larger than the
    input by more than ``auto_factor`` along either axis (auto)."""
    if mode == "auto":
        return max(image_hw[0] / input_hw[0], image_hw[1] / input_hw[1]) > auto_factor
    return mode == "on"


def region_input(image: np.ndarray, region, input_hw, max_ratio: float | None = None) -> tuple[np.ndarray, float]:
    """The detector input for one region of a frame, and its letterbox ratio; a tile passes
    ``max_ratio`` = its tiles' scale (``tile_ratio``) so one clipped at the frame's edge is not enlarged."""
    x0, y0, x1, y1 = region
    return letterbox(image[y0:y1, x0:x1], input_hw, max_ratio)


def tile_ratio(tile_hw, input_hw) -> float:
    """The scale tiles of ``tile_hw`` source pixels are fed to an input of ``input_hw`` at (1: native)."""
    return min(input_hw[0] / tile_hw[0], input_hw[1] / tile_hw[1])


def to_frame(dets: np.ndarray, region) -> np.ndarray:
    """Detections in a region's own pixels (K x 6, or 7 with objectness) -> the frame's pixels (a new array)."""
    out = _rows(dets)
    out[:, [0, 2]] += region[0]
    out[:, [1, 3]] += region[1]
    return out


def cut_mask(dets: np.ndarray, region, image_hw) -> np.ndarray:
    """Which detections of a region touch one of its borders that lies inside the frame."""
    x0, y0, x1, y1 = region
    height, width = image_hw[:2]
    near = CUT_MARGIN_PX
    cut = np.zeros(len(dets), dtype=bool)
    for inner, coord, edge in ((x0 > 0, 0, x0), (y0 > 0, 1, y0), (x1 < width, 2, x1), (y1 < height, 3, y1)):
        if inner:
            cut |= np.abs(dets[:, coord] - edge) <= near
    return cut


def intersection_over_smaller(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """len(a) x len(b): each pair's intersection over the smaller box's area."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return ix * iy / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1e-6)


def merge(dets: np.ndarray, cut: np.ndarray, ios_threshold: float = DEFAULT_MERGE_IOS,
          class_agnostic: bool = True, trusted: np.ndarray | None = None,
          region_ids: np.ndarray | None = None) -> np.ndarray:
    """One box per object from the detections of overlapping regions (K x 6, frame pixels); see the
    module docstring for the rule. ``cut``: per detection, whether a tile border cut it; ``trusted``
    (default all): detections drawn at a scale that suits their size, which go first, by score,
    before the others; ``region_ids`` (default all different): boxes of one region were already
    NMSed there and never merge with each other. Only the MAX_MERGED best-scoring detections take
    part (COCO scores 100 per image; a low threshold on a frame of many tiles would otherwise make
    the pairwise overlaps cost seconds). A kept box takes the best score of its class in its group."""
    dets = _rows(dets)
    trusted = np.ones(len(dets), dtype=bool) if trusted is None else np.asarray(trusted, dtype=bool)
    regions = np.arange(len(dets)) if region_ids is None else np.asarray(region_ids)
    best = np.argsort(-dets[:, 4], kind="stable")[:MAX_MERGED]
    order = best[np.argsort(~trusted[best], kind="stable")]  # trusted first, each part by score
    dets, cut, regions = dets[order], np.asarray(cut, dtype=bool)[order], regions[order]
    same = _same_object(dets, cut, regions, ios_threshold, class_agnostic)
    alive = np.ones(len(dets), dtype=bool)
    kept = []
    for i in range(len(dets)):
        if not alive[i]:
            continue
        group = alive & same[i]
        group[i] = True
        box = dets[i].copy()
        if cut[i]:
            box[:2], box[2:4] = dets[group, :2].min(axis=0), dets[group, 2:4].max(axis=0)
        box[4] = dets[group & (dets[:, 5] == box[5]), 4].max()
        box[6:] = dets[group, 6:].max(axis=0)   # objectness, where carried: the surest view of the object
        kept.append(box)
        alive &= ~group
    return np.stack(kept) if kept else np.zeros((0, dets.shape[1]), dtype=np.float32)


def _rows(dets) -> np.ndarray:
    """Detections as a float32 K x C array (C = 6, or 7 with objectness; an empty input is K = 0)."""
    array = np.array(dets, dtype=np.float32)
    return array.reshape(-1, array.shape[-1] if array.ndim == 2 and array.shape[-1] >= 6 else 6)


def _same_object(dets: np.ndarray, cut: np.ndarray, regions: np.ndarray, ios_threshold: float,
                 class_agnostic: bool) -> np.ndarray:
    """K x K: which pairs of boxes stand for one object (the merge rule's test)."""
    same = intersection_over_smaller(dets, dets) >= ios_threshold
    same &= regions[:, None] != regions[None, :]
    area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    ratio = np.minimum(area[:, None], area[None, :]) / np.maximum(np.maximum(area[:, None], area[None, :]), 1e-6)
    same &= (ratio >= MIN_AREA_RATIO) | cut[:, None] | cut[None, :]
    if not class_agnostic:
        same &= dets[:, None, 5] == dets[None, :, 5]
    return same


def frame_tiles(image_hw, tile_hw, min_overlap: int) -> list[tuple[int, int, int, int]]:
    """The tiles of a frame, less one that would be the whole frame (the whole-frame pass sees it)."""
    whole = (0, 0, int(image_hw[1]), int(image_hw[0]))
    return [r for r in tile_grid(image_hw, tile_hw, min_overlap) if r != whole]


def frame_regions(image_hw, input_hw, tile_hw, min_overlap: int, whole_frame: bool = True,
                  min_scale: float = DEFAULT_MIN_SCALE) -> list[tuple]:
    """The regions a fully tiled frame is examined in: the whole frame first (if asked), then the
    tiles (``tile_size_for``); the whole frame alone where it would need more than MAX_TILES_PER_FRAME tiles."""
    whole = [(0, 0, int(image_hw[1]), int(image_hw[0]))]
    tile_hw = tile_size_for(image_hw, input_hw, tile_hw, min_overlap, min_scale)
    if tile_count(image_hw, tile_hw, min_overlap) > MAX_TILES_PER_FRAME:
        return whole
    return (whole if whole_frame else []) + frame_tiles(image_hw, tile_hw, min_overlap)


def region_inputs(image: np.ndarray, regions, input_hw, tile_hw=None, whole_first: bool = True
                  ) -> list[tuple[np.ndarray, float]]:
    """(detector input, ratio) of each region: the whole-frame pass (``regions[0]`` when
    ``whole_first``) letterboxed, a tile at its tiles' scale."""
    cap = tile_ratio(tile_hw or input_hw, input_hw)
    return [region_input(image, r, input_hw, None if whole_first and i == 0 else cap) for i, r in enumerate(regions)]


def detect_regions(detector, image: np.ndarray, regions, tile_hw=None, batch_size: int = 8,
                   whole_first: bool = True, objectness: bool = False) -> list[np.ndarray]:
    """Detections (frame pixels) of each region of one image, the regions run through ``detector``
    (models.Detector: ``input_size``, ``infer``, ``postprocess``) in batches; ``regions[0]`` is the
    whole-frame pass when ``whole_first``."""
    results = []
    for start in range(0, len(regions), batch_size):
        chunk = regions[start:start + batch_size]
        inputs = region_inputs(image, chunk, detector.input_size, tile_hw, whole_first and start == 0)
        batch = np.stack([padded for padded, _ in inputs]).transpose(0, 3, 1, 2).astype(np.float32)
        shapes = [(r[3] - r[1], r[2] - r[0], 3) for r in chunk]
        found = detector.postprocess(detector.infer(batch), [ratio for _, ratio in inputs], shapes, objectness)
        results += [to_frame(dets, region) for dets, region in zip(found, chunk)]
    return results


def held_by(dets: np.ndarray, tiles) -> np.ndarray:
    """Which boxes (frame pixels) lie wholly inside one of ``tiles``: an object such a tile saw whole,
    at its own scale."""
    held = np.zeros(len(dets), dtype=bool)
    for x0, y0, x1, y1 in tiles:
        held |= (dets[:, 0] >= x0) & (dets[:, 1] >= y0) & (dets[:, 2] <= x1) & (dets[:, 3] <= y1)
    return held


def trusted_mask(dets: np.ndarray, whole: bool, cut: np.ndarray, tiles) -> np.ndarray:
    """Which detections of a region were drawn at a scale that suits them: a tile's whole (uncut)
    boxes; the whole-frame pass's (``whole``) boxes that none of the frame's examined ``tiles`` holds
    whole (an object inside a tile was seen there at full resolution, sharper; on the val split's
    1080p mosaics trusting instead every whole-frame box at least an overlap long cost 0.8 points)."""
    if not whole:
        return ~cut
    return ~held_by(dets, tiles)


def merge_regions(per_region: list[np.ndarray], regions, image_hw, ios_threshold: float = DEFAULT_MERGE_IOS,
                  class_agnostic: bool = True, whole_first: bool = True) -> np.ndarray:
    """The merged detections of a frame from its regions' detections (``detect_regions``), the
    whole-frame pass first where ``whole_first``."""
    if not per_region:
        return np.zeros((0, 6), dtype=np.float32)
    cuts = [cut_mask(d, r, image_hw) for d, r in zip(per_region, regions)]
    tiles = regions[1:] if whole_first else regions
    trusted = [trusted_mask(d, whole_first and i == 0, c, tiles) for i, (d, c) in enumerate(zip(per_region, cuts))]
    region_ids = np.concatenate([np.full(len(d), i) for i, d in enumerate(per_region)])
    return merge(np.concatenate(per_region), np.concatenate(cuts), ios_threshold, class_agnostic,
                 np.concatenate(trusted), region_ids)


def detect_tiled(detector, image: np.ndarray, tile_hw=None, min_overlap: int = DEFAULT_OVERLAP,
                 whole_frame: bool = True, batch_size: int = 8, ios_threshold: float = DEFAULT_MERGE_IOS,
                 class_agnostic: bool = True, objectness: bool = False,
                 min_scale: float = DEFAULT_MIN_SCALE) -> np.ndarray:
    """Every tile of one frame plus the whole-frame pass, merged (what replay mode and eval run)."""
    tile_hw = tile_size_for(image.shape[:2], detector.input_size, tile_hw, min_overlap, min_scale)
    regions = frame_regions(image.shape[:2], detector.input_size, tile_hw, min_overlap, whole_frame)
    whole_first = whole_frame or len(regions) == 1  # a frame with too many tiles: the whole frame alone
    per_region = detect_regions(detector, image, regions, tile_hw, batch_size, whole_first, objectness)
    return merge_regions(per_region, regions, image.shape[:2], ios_threshold, class_agnostic, whole_first)
