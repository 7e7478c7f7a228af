"""Copy-paste of real labeled objects onto other crops (issue 17: breadth from the data at hand).

A drone is seen here against a few hundred backgrounds; pasting real objects cut from other frames onto
other clips' crops, at new sizes and contrasts, shows it against many more (Kisantal et al. 2019 found
this pays most for small objects). Both cameras are pasted onto both: an IR object lands on a visible
crop and back.

What is pasted is the object's *difference from its own background*, not its rectangle: the patch minus
the median of its border ring, weighted by a matte that is 1 where the patch differs clearly from that
border and 0 where it does not (the sky or trees around the drone). So a dark drone darkens and a hot
drone brightens the new background, without carrying a patch of its old sky along, and the contrast can
be scaled (``gain``). The pasted box is the source's box in the run's box convention (tightened
or not, as its own labels are), scaled and shifted with the patch.

All draws come from the sampler's numpy generator, only when pasting is on (older recipes cut the same
crops).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SIDE_RANGE = (4.0, 48.0)       # pasted object's longest side in crop pixels (log-uniform): the small targets
GAIN_RANGE = (0.5, 1.5)        # contrast of the pasted object against its new background
MAX_PASTES = 3                 # objects pasted into one crop (1..this)
MARGIN = 0.5                   # border ring taken around the box, as a share of its longest side (+ 2 px)
PLACE_TRIES = 4                # positions tried before a paste that would cover a labeled object is skipped
MIN_CONTRAST = 12.0            # grey levels a paste must change somewhere, else it is not labeled (see paste_into)


def draw_pastes(rng: np.random.Generator, pick_object, box_of, area: tuple, taken: np.ndarray) -> list[dict]:
    """The pastes of one crop: source object, size, place, contrast, flip; inside ``area`` (x1, y1, x2,
    y2: the part of the crop that shows the frame, not the letterbox padding), their boxes miss
    ``taken`` (N x 4 crop-pixel boxes already labeled in the crop) and each other."""
    pastes, taken = [], [tuple(b) for b in taken]
    for _ in range(int(rng.integers(1, MAX_PASTES + 1))):
        frame, box = (int(v) for v in pick_object(rng))
        width, height = box_of(frame, box)
        factor = math.exp(rng.uniform(*np.log(SIDE_RANGE))) / max(width, height, 1.0)
        gain, flip = float(rng.uniform(*GAIN_RANGE)), bool(rng.random() < 0.5)
        w, h = width * factor, height * factor
        for _ in range(PLACE_TRIES):
            if area[2] - area[0] < w or area[3] - area[1] < h:
                break
            x1, y1 = rng.uniform(area[0], area[2] - w), rng.uniform(area[1], area[3] - h)
            placed = (x1, y1, x1 + w, y1 + h)
            if not any(_overlaps(placed, other) for other in taken):
                taken.append(placed)
                pastes.append({"frame": frame, "box": box, "factor": factor, "x1": float(x1), "y1": float(y1),
                               "gain": gain, "flip": flip})
                break
    return pastes


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def paste_box(paste: dict, box: np.ndarray) -> np.ndarray:
    """[class, cx, cy, w, h] of a pasted object in crop pixels (box: the source row [class, x1, y1, x2, y2])."""
    width, height = (box[3] - box[1]) * paste["factor"], (box[4] - box[2]) * paste["factor"]
    return np.array([box[0], paste["x1"] + width / 2, paste["y1"] + height / 2, width, height], np.float32)


def cut_object(frame: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]] | None:
    """(difference from the border, matte, box's top-left inside the patch) of one object, or None when
    the box leaves no patch to cut (a label outside its frame: user labels are not trusted).

    frame: H x W x C uint8; the patch is the box widened by MARGIN on each side, inside the frame."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[1:5])
    margin = MARGIN * max(x2 - x1, y2 - y1) + 2
    left, top = max(int(x1 - margin), 0), max(int(y1 - margin), 0)
    right, bottom = min(int(math.ceil(x2 + margin)), width), min(int(math.ceil(y2 + margin)), height)
    if right - left < 3 or bottom - top < 3 or x2 <= x1 or y2 <= y1:
        return None
    patch = frame[top:bottom, left:right].permute(2, 0, 1).float()
    ring = torch.cat([patch[:, 0], patch[:, -1], patch[:, :, 0], patch[:, :, -1]], 1)
    background = ring.median(1).values.view(-1, 1, 1)
    difference = patch - background
    # noise level of the border: a pixel counts as object where it stands out of it clearly
    spread = (ring - background.view(-1, 1)).abs().median(1).values.max()
    strength = difference.abs().amax(0, keepdim=True)
    matte = ((strength - 3 * spread - 3) / (3 * spread + 10)).clamp(0, 1)
    inside = torch.zeros_like(matte)   # only within the labeled box (one pixel of slack)
    inside[:, max(int(y1) - top - 1, 0):int(math.ceil(y2)) - top + 1,
           max(int(x1) - left - 1, 0):int(math.ceil(x2)) - left + 1] = 1
    return difference, matte * inside, (x1 - left, y1 - top)


def paste_into(image: torch.Tensor, frame: torch.Tensor, box: np.ndarray, paste: dict) -> bool:
    """Add one object to ``image`` (3 x S x S float 0-255, in place) as ``paste`` says; False when it cannot
    be seen there (a faint source object, or a hot one on a saturated background): no label for it then."""
    cut = cut_object(frame, box)
    if cut is None:
        return False
    difference, matte, (box_left, box_top) = cut
    factor = paste["factor"]
    size = (max(round(difference.shape[1] * factor), 1), max(round(difference.shape[2] * factor), 1))
    both = torch.cat([difference, matte])[None]
    both = F.interpolate(both, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)[0]
    if paste["flip"]:
        both = both.flip(2)
        box_left = difference.shape[2] - box_left - (box[3] - box[1])
    difference, matte = both[:-1], both[-1:]
    top, left = round(paste["y1"] - box_top * factor), round(paste["x1"] - box_left * factor)
    crop = image.shape[1]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size[0], crop), min(left + size[1], crop)
    if y1 <= y0 or x1 <= x0:
        return False
    part = (difference * matte * paste["gain"])[:, y0 - top:y1 - top, x0 - left:x1 - left]
    before = image[:, y0:y1, x0:x1].clone()
    after = (before + part.to(image.device)).clamp(0, 255)
    image[:, y0:y1, x0:x1] = after
    # seen: some pixel changes by MIN_CONTRAST and by 3x the texture's spread there (not lost in noise)
    if before[0].numel() < 2:
        return False
    change, spread = float((after - before).abs().max()), float(before.std(dim=(1, 2)).max())
    return change >= max(MIN_CONTRAST, 3 * spread)
