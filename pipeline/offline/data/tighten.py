"""Tighten the visible camera's loose label boxes to the object they contain.

The dataset's visible-camera (V) boxes are drawn loosely: a distant drone 5-10 px wide sits in a box of
~20-24 px (dataset README; V drone boxes p10 23 x 19 px, IR p10 12 x 9 px). The thermal boxes and the
synthetic clips' boxes are tight. Trained on both, a model learns two conventions for the same small dark
blob and boxes every small visible object at ~24 px, so a 5 px drone gets IoU 0.05 against a tight box.

``tighten_box`` finds the object inside one box by its contrast with the box's own border (where a loose
box shows background): background = per channel a plane fitted to a band along the box edge, noise = the
band's MAD around it; object pixels differ from the background by more than OBJECT_SIGMAS noise and
OBJECT_MIN_LEVELS grey levels in some channel. The new box is the bounding box of the object pixels,
matching the synthetic renderer's convention (pixels showing at least 30 % of the object's contrast). A box is left as labeled
when it cannot be read reliably: no object pixels, a busy border (branches, roofs), object pixels touching
the border on opposite sides (the box is already tight), or a result that keeps almost all of the box.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

BORDER_BAND_PX = 2          # band along the inside of the box edge that estimates the background
OBJECT_SIGMAS = 5.0         # object pixel: this many robust standard deviations from the background ...
OBJECT_MIN_LEVELS = 14.0    # ... and at least this many grey levels (H.264 ringing stays below it)
NOISE_FLOOR_LEVELS = 2.0    # lowest noise estimate (flat synthetic sky has a MAD near 0)
BUSY_BORDER_LEVELS = 12.0   # border noise above this: textured background, the segmentation is unreliable
BORDER_HIT_SHARE = 0.15     # a border band with more object pixels than this is not background
MIN_KEEP_SHARE = 0.85       # a result keeping this share of both sides is no tightening: keep the label
MIN_OBJECT_PIXELS = 2
COVERAGE_SHARE = 0.3        # the renderer's box holds pixels at least 30 % covered by the object


def _border_mask(height: int, width: int, band: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[:band], mask[-band:], mask[:, :band], mask[:, -band:] = True, True, True, True
    return mask


def _background_plane(patch: np.ndarray, border: np.ndarray) -> np.ndarray:
    """Per channel, the plane a + b*x + c*y fitted to the border band (sky gradients, cloud edges)."""
    ys, xs = np.mgrid[:patch.shape[0], :patch.shape[1]].astype(np.float32)
    design = np.stack([np.ones_like(xs), xs, ys], axis=-1)
    coefficients, *_ = np.linalg.lstsq(design[border], patch[border], rcond=None)
    return design @ coefficients


def tighten_box(frame: np.ndarray, box: tuple[float, float, float, float]
                ) -> tuple[tuple[float, float, float, float], bool]:
    """(x, y, w, h) of the object inside ``box`` of a BGR (or grey) uint8 frame, and whether it changed.

    Returns the box unchanged (and False) wherever the object cannot be separated reliably.
    """
    x, y, w, h = box
    x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
    x1, y1 = min(int(np.ceil(x + w)), frame.shape[1]), min(int(np.ceil(y + h)), frame.shape[0])
    if x1 - x0 < 4 * BORDER_BAND_PX or y1 - y0 < 4 * BORDER_BAND_PX:
        return box, False
    patch = frame[y0:y1, x0:x1].astype(np.float32)
    if patch.ndim == 2:
        patch = patch[..., None]
    border = _border_mask(y1 - y0, x1 - x0, BORDER_BAND_PX)
    deviation = np.abs(patch - _background_plane(patch, border))
    noise = 1.4826 * np.median(deviation[border], axis=0)
    if float(noise.max()) > BUSY_BORDER_LEVELS:
        return box, False
    threshold = np.maximum(OBJECT_SIGMAS * np.maximum(noise, NOISE_FLOOR_LEVELS), OBJECT_MIN_LEVELS)
    strongest = deviation.max(axis=2)
    # a pixel belongs to the object where it shows COVERAGE_SHARE of the object's full contrast: the
    # synthetic renderer's rule (coverage > 0.3), which also leaves out the blurred fringe
    is_object = (deviation > threshold).any(axis=2) & (strongest >= COVERAGE_SHARE * strongest.max())
    if int(is_object.sum()) < MIN_OBJECT_PIXELS or is_object[border].mean() > BORDER_HIT_SHARE:
        return box, False
    # isolated speckles (compression blocks, noise) are not the object: keep components of 2+ pixels
    _, labels, stats, _ = cv2.connectedComponentsWithStats(is_object.astype(np.uint8), connectivity=8)
    keep = np.isin(labels, 1 + np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= MIN_OBJECT_PIXELS))
    ys, xs = np.nonzero(keep)
    if not len(xs):
        return box, False
    touches = (xs.min() == 0 and xs.max() == x1 - x0 - 1) or (ys.min() == 0 and ys.max() == y1 - y0 - 1)
    new_w, new_h = float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)
    if touches or (new_w >= MIN_KEEP_SHARE * w and new_h >= MIN_KEEP_SHARE * h):
        return box, False
    return (float(x0 + xs.min()), float(y0 + ys.min()), new_w, new_h), True


def tighten_xyxy(frame: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows [class, x1, y1, x2, y2] with their boxes tightened (a new array); and how many changed."""
    out = np.array(boxes, copy=True)
    changed = 0
    for row in out:
        (x, y, w, h), was_changed = tighten_box(frame, (row[1], row[2], row[3] - row[1], row[4] - row[2]))
        row[1:5] = x, y, x + w, y + h
        changed += was_changed
    return out, changed


@dataclass
class LabelTightener:
    """``dataset.read_labels`` with the visible clips' boxes tightened, reading the frames it needs.

    Only frames that are every ``stride``-th (what the caller scores) are read and tightened; thermal
    clips are returned as labeled. ``changed`` / ``boxes`` count what it did over all calls.
    """
    stride: int = 1
    cache_dir: Path | str | None = None     # dataset.iter_frames' frame cache
    max_frames: int | None = None           # only the first N scored frames (to_coco's max_frames)
    changed: int = 0
    boxes: int = 0

    def __call__(self, clip) -> dict[int, list[tuple]]:
        from pipeline.offline.data import dataset

        labels = dataset.read_labels(clip)
        if clip.modality != "V" or not labels:
            return labels
        wanted = [index for index in labels if index >= 0 and index % self.stride == 0]
        last = max(wanted, default=-1) // self.stride + 1
        if self.max_frames is not None:
            last = min(last, self.max_frames)
        tightened = dict(labels)
        for index, frame in dataset.iter_frames(clip, self.stride, cache_dir=self.cache_dir, max_frames=last):
            if index in labels:
                tightened[index] = [self._tighten_row(frame, row) for row in labels[index]]
        return tightened

    def _tighten_row(self, frame: np.ndarray, row: tuple) -> tuple:
        class_id, *box = row
        tight, changed = tighten_box(frame, tuple(box))
        self.changed, self.boxes = self.changed + changed, self.boxes + 1
        return (class_id, *tight)
