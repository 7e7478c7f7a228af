"""Training batches on the device: frames grouped by shape (``FrameGroup``), random augmented crops
(``Augment``, ``CropSampler``) and the full-frame letterbox of validation (``letterbox_batch``).

The letterbox rule (scale, truncated size, padding 114) is models.letterbox's; only the resize itself
is done here, with torch on the training device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.letterbox import PAD_VALUE, letterbox_ratio, resized_size
from pipeline.offline.train.camera import LUMA_BGR, apply_effects, draw_effects, palette_tables
from pipeline.offline.train.paste import draw_pastes, paste_box, paste_into
from pipeline.offline.train.sources import ClipFrames

MAX_BOXES = 64                      # labels per crop kept (the densest real frames hold < 10)
SMALL_OBJECT_SIDE = 16.0   # px at inference: below this every object weighs the same (COCO-tiny-like)


class FrameGroup:
    """All frames of one shape, indexable by a global row number; on the device or in host memory."""

    def __init__(self, clips: list[ClipFrames], device: torch.device, on_device: bool, base_scale: float):
        self.height, self.width, self.channels = clips[0].frames.shape[1:]
        self.base_scale = base_scale
        self.boxes = [b for c in clips for b in c.boxes]
        self.weights = np.concatenate([np.full(len(c.boxes), c.weight, np.float64) for c in clips])
        # positive crops pick objects: a clip's objects share its weight, so that a clip's share of the
        # positive crops follows its weight however many objects its frames hold
        self.object_weights = np.concatenate([np.full(len(c.boxes), c.weight * len(c.boxes) /
                                                      max(sum(len(b) for b in c.boxes), 1)) for c in clips])
        self.on_device = on_device
        if on_device:
            self.frames = torch.empty((len(self.boxes), self.height, self.width, self.channels), dtype=torch.uint8,
                                      device=device)
            row = 0
            for clip in clips:
                n = len(clip.frames)
                self.frames[row:row + n] = torch.from_numpy(np.ascontiguousarray(clip.frames)).to(device)
                row += n
        else:  # host: keep per-clip (possibly memory-mapped) arrays, gather rows per batch
            self.parts = [c.frames for c in clips]
            self.starts = np.cumsum([0] + [len(c.frames) for c in clips])

    def __len__(self) -> int:
        return len(self.boxes)

    def gather(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        if self.on_device:
            return self.frames[torch.as_tensor(rows, device=self.frames.device)]
        parts = np.searchsorted(self.starts, rows, side="right") - 1
        batch = np.stack([self.parts[p][r - self.starts[p]] for p, r in zip(parts, rows)])
        return torch.from_numpy(batch).to(device, non_blocking=True)


@dataclass
class Augment:
    crop: int = 320
    positive_fraction: float = 0.7      # crops that contain at least one labeled object
    scale_range: tuple[float, float] = (0.75, 1.5)   # jitter on top of the letterbox scale
    flip: float = 0.5
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 25.0
    gray: float = 0.15                  # visible crops turned gray (bridges to the thermal camera)
    min_visible: float = 0.4            # a cut box is kept when this fraction of it stays in the crop
    min_side: float = 2.0               # ... and its sides stay at least this many pixels
    # positive crops pick an object with weight (SMALL_OBJECT_SIDE / max(side, SMALL_OBJECT_SIDE)) ** this
    # (side: longest, in inference pixels); 0 = uniform over objects
    small_object_power: float = 0.0
    camera_effects: float = 0.0         # share of crops shown as another camera would (train/camera.py)
    copy_paste: float = 0.0             # share of crops that get real objects pasted in (train/paste.py)


class CropSampler:
    """Random training crops cut and augmented on the device with one grid_sample per frame shape.

    A crop is an affine view of a frame: scale s = letterbox scale of the frame's shape (so IR frames are
    seen at the same magnification as at inference) times a log-uniform jitter, a centre on a random
    object (positive crops) or anywhere (background crops), and a horizontal flip. Out-of-frame pixels
    get the letterbox value 114. All random draws come from one numpy generator (state in last.pt).
    """

    def __init__(self, clips: list[ClipFrames], input_size: tuple[int, int], augment: Augment,
                 device: torch.device, on_device: bool):
        self.augment = augment
        self.device = device
        self.palettes = palette_tables() if augment.camera_effects else None
        shapes: dict[tuple, list[ClipFrames]] = {}
        for clip in clips:
            shapes.setdefault(clip.frames.shape[1:], []).append(clip)
        self.groups = [FrameGroup(members, device, on_device, letterbox_ratio(shape[:2], input_size))
                       for shape, members in sorted(shapes.items())]
        sizes = np.array([len(g) for g in self.groups])
        self.frame_offsets = np.concatenate([[0], np.cumsum(sizes)])
        # every labeled box, as (global frame, box row): positive crops pick one (see _pick_object)
        self.objects = np.array([(self.frame_offsets[group_index] + frame, box)
                                 for group_index, group in enumerate(self.groups)
                                 for frame, boxes in enumerate(group.boxes) for box in range(len(boxes))],
                                np.int64).reshape(-1, 2)
        self.frame_count = int(sizes.sum())
        frame_weights = np.concatenate([group.weights for group in self.groups])
        # clips weighted against each other (ClipFrames.weight, e.g. a user's clips against base data);
        # all equal: None, the original uniform draws (their order is part of the exact-resume contract)
        self.frame_cdf = _cdf(frame_weights) if len(np.unique(frame_weights)) > 1 else None
        object_weights = np.concatenate([group.object_weights for group in self.groups])
        self.object_cdf = self._object_cdf(augment.small_object_power, object_weights)

    def _object_cdf(self, power: float, object_weights: np.ndarray) -> np.ndarray | None:
        """Cumulative pick weights of self.objects, or None for uniform picks (the original draw)."""
        if (power == 0 and self.frame_cdf is None) or not len(self.objects):
            return None
        weights = object_weights[self.objects[:, 0]]
        if power:   # longest side in inference pixels, in the order self.objects lists them (group, frame, box)
            sides = np.concatenate([np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]) * group.base_scale
                                    for group in self.groups for boxes in group.boxes if len(boxes)])
            weights = weights * (SMALL_OBJECT_SIDE / np.maximum(sides, SMALL_OBJECT_SIDE)) ** power
        return _cdf(weights)

    def _pick_frame(self, rng: np.random.Generator) -> int:
        if self.frame_cdf is None:
            return int(rng.integers(self.frame_count))
        return min(int(np.searchsorted(self.frame_cdf, rng.random(), side="right")), self.frame_count - 1)

    def _pick_object(self, rng: np.random.Generator) -> np.ndarray:
        if self.object_cdf is None:
            return self.objects[rng.integers(len(self.objects))]
        pick = int(np.searchsorted(self.object_cdf, rng.random(), side="right"))
        return self.objects[min(pick, len(self.objects) - 1)]

    def _locate(self, frame: int) -> tuple[int, int]:
        group = int(np.searchsorted(self.frame_offsets, frame, side="right") - 1)
        return group, frame - int(self.frame_offsets[group])

    def draw(self, batch: int, rng: np.random.Generator) -> list[dict]:
        """The random parameters of a batch of crops (all numpy; cheap). The order of the draws is part
        of the exact-resume contract: changing it changes every run's crops."""
        return [self._draw_one(rng) for _ in range(batch)]

    def _draw_one(self, rng: np.random.Generator) -> dict:
        augment = self.augment
        positive = len(self.objects) > 0 and rng.random() < augment.positive_fraction
        frame, box = self._pick_object(rng) if positive else (self._pick_frame(rng), -1)
        group_index, row = self._locate(int(frame))
        group = self.groups[group_index]
        low, high = augment.scale_range
        scale = group.base_scale * math.exp(rng.uniform(math.log(low), math.log(high)))
        half = augment.crop / (2 * scale)           # half the crop's side in frame pixels
        if positive:   # the object stays inside the crop, anywhere in it
            _, x1, y1, x2, y2 = group.boxes[row][box]
            jitter = rng.uniform(-0.7, 0.7, 2) * np.maximum(half - np.array([x2 - x1, y2 - y1]) / 2, 0)
            cx, cy = (x1 + x2) / 2 + jitter[0], (y1 + y2) / 2 + jitter[1]
        else:
            cx, cy = rng.uniform(0, group.width), rng.uniform(0, group.height)
        plan = {"group": group_index, "row": row, "scale": scale, "cx": float(cx), "cy": float(cy),
                "flip": bool(rng.random() < augment.flip),
                "contrast": rng.uniform(*augment.contrast),
                "brightness": rng.uniform(-augment.brightness, augment.brightness),
                "gray": bool(group.channels == 3 and rng.random() < augment.gray),
                **self._draw_camera(rng, group.channels)}
        return self._draw_paste(rng, plan)

    def _draw_paste(self, rng: np.random.Generator, plan: dict) -> dict:
        """Objects pasted into the crop; no draw at all when pasting is off (older runs cut the same crops)."""
        if not self.augment.copy_paste or not len(self.objects):
            return plan
        if rng.random() >= self.augment.copy_paste:
            return {**plan, "paste": []}
        rows = self._frame_targets(plan)
        taken = np.stack([rows[:, 1] - rows[:, 3] / 2, rows[:, 2] - rows[:, 4] / 2,
                          rows[:, 1] + rows[:, 3] / 2, rows[:, 2] + rows[:, 4] / 2], 1)
        return {**plan, "paste": draw_pastes(rng, self._pick_object, self._box_size, self._frame_area(plan), taken)}

    def _frame_area(self, plan: dict) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) of the crop that shows the frame (the rest is letterbox padding), crop pixels."""
        group, crop, scale = self.groups[plan["group"]], self.augment.crop, plan["scale"]
        left, right = crop / 2 - plan["cx"] * scale, crop / 2 + (group.width - plan["cx"]) * scale
        if plan["flip"]:
            left, right = crop - right, crop - left
        top, bottom = crop / 2 - plan["cy"] * scale, crop / 2 + (group.height - plan["cy"]) * scale
        return max(left, 0.0), max(top, 0.0), min(right, crop), min(bottom, crop)

    def _source_box(self, frame: int, box: int) -> tuple[FrameGroup, int, np.ndarray]:
        group_index, row = self._locate(frame)
        group = self.groups[group_index]
        return group, row, group.boxes[row][box]

    def _box_size(self, frame: int, box: int) -> tuple[float, float]:
        row = self._source_box(frame, box)[2]
        return float(row[3] - row[1]), float(row[4] - row[2])

    def _draw_camera(self, rng: np.random.Generator, channels: int) -> dict:
        """Camera effects of one crop; no draw at all when they are off (older runs cut the same crops)."""
        if not self.augment.camera_effects:
            return {}
        if rng.random() >= self.augment.camera_effects:
            return {"camera": None}
        return {"camera": draw_effects(rng, len(self.palettes), thermal=channels == 1)}

    def _targets(self, plan: dict) -> np.ndarray:
        """The crop's labels, rows [class, cx, cy, w, h] in crop pixels: the frame's, then the pasted ones."""
        rows = self._frame_targets(plan)
        pasted = [paste_box(paste, self._source_box(paste["frame"], paste["box"])[2])
                  for paste in plan.get("paste", ()) if paste.get("visible", True)]
        if pasted:
            rows = np.concatenate([rows, np.stack(pasted)])
        return rows[:MAX_BOXES]

    def _frame_targets(self, plan: dict) -> np.ndarray:
        """The frame's boxes mapped into the crop: rows [class, cx, cy, w, h] in crop pixels."""
        augment = self.augment
        boxes = self.groups[plan["group"]].boxes[plan["row"]]
        if not len(boxes):
            return np.zeros((0, 5), np.float32)
        scale, crop = plan["scale"], augment.crop
        x1 = (boxes[:, 1] - plan["cx"]) * scale + crop / 2
        x2 = (boxes[:, 3] - plan["cx"]) * scale + crop / 2
        y1 = (boxes[:, 2] - plan["cy"]) * scale + crop / 2
        y2 = (boxes[:, 4] - plan["cy"]) * scale + crop / 2
        if plan["flip"]:
            x1, x2 = crop - x2, crop - x1
        area = (x2 - x1) * (y2 - y1)
        cx1, cx2, cy1, cy2 = (np.clip(v, 0, crop) for v in (x1, x2, y1, y2))
        w, h = cx2 - cx1, cy2 - cy1
        keep = (w >= augment.min_side) & (h >= augment.min_side) & (w * h >= augment.min_visible * np.maximum(area, 1e-6))
        rows = np.stack([boxes[:, 0], (cx1 + cx2) / 2, (cy1 + cy2) / 2, w, h], 1)[keep]
        return rows[:MAX_BOXES].astype(np.float32)

    def render(self, plans: list[dict]) -> torch.Tensor:
        """B x 3 x crop x crop float32 (0-255 BGR) on the device."""
        crop = self.augment.crop
        out = torch.empty((len(plans), 3, crop, crop), device=self.device)
        for group_index, group in enumerate(self.groups):
            members = [i for i, plan in enumerate(plans) if plan["group"] == group_index]
            if members:
                out[torch.as_tensor(members, device=self.device)] = self._render_group(group, [plans[i] for i in members])
        self._paste(out, plans)
        return self._photometric(out, plans)

    def _paste(self, images: torch.Tensor, plans: list[dict]) -> None:
        """Pastes into the crops (in place). Whether a paste could be seen is known only now, so it is
        written into its plan here and ``_targets`` labels only the visible ones: render before targets."""
        for image, plan in zip(images, plans):
            for paste in plan.get("paste", ()):
                group, row, box = self._source_box(paste["frame"], paste["box"])
                paste["visible"] = paste_into(image, group.gather(np.array([row]), self.device)[0], box, paste)

    def _render_group(self, group: FrameGroup, plans: list[dict]) -> torch.Tensor:
        """The crops of one frame shape: one affine grid_sample over the gathered frames."""
        crop = self.augment.crop
        # shifted by the pad value so that grid_sample's zero padding outside the frame becomes 114
        rows = np.array([plan["row"] for plan in plans])
        frames = group.gather(rows, self.device).permute(0, 3, 1, 2).float() - PAD_VALUE
        theta = torch.zeros((len(plans), 2, 3))   # crop -> frame, in grid_sample's [-1, 1] coordinates
        for k, plan in enumerate(plans):
            sign = -1.0 if plan["flip"] else 1.0
            theta[k, 0, 0] = sign * crop / (plan["scale"] * group.width)
            theta[k, 0, 2] = 2 * plan["cx"] / group.width - 1
            theta[k, 1, 1] = crop / (plan["scale"] * group.height)
            theta[k, 1, 2] = 2 * plan["cy"] / group.height - 1
        grid = F.affine_grid(theta.to(self.device), [len(plans), group.channels, crop, crop], align_corners=False)
        sampled = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return (sampled + PAD_VALUE).expand(-1, 3, -1, -1)

    def _photometric(self, images: torch.Tensor, plans: list[dict]) -> torch.Tensor:
        contrast = torch.tensor([p["contrast"] for p in plans], device=self.device).view(-1, 1, 1, 1)
        brightness = torch.tensor([p["brightness"] for p in plans], device=self.device).view(-1, 1, 1, 1)
        gray = torch.tensor([p["gray"] for p in plans], device=self.device).view(-1, 1, 1, 1)
        luma = (images * torch.tensor(LUMA_BGR, device=self.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        images = torch.where(gray, luma.expand_as(images), images)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * contrast + mean + brightness).clamp_(0, 255)
        for index, plan in enumerate(plans):
            if plan.get("camera"):
                effected = apply_effects(images[index], plan["camera"], self.palettes)
                # the letterbox padding stays the grey inference pads with, whatever the camera
                x1, y1, x2, y2 = (int(round(v)) for v in self._frame_area(plan))
                images[index] = torch.full_like(effected, PAD_VALUE)
                images[index, :, y1:y2, x1:x2] = effected[:, y1:y2, x1:x2]
        return images

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        plans = self.draw(size, rng)
        images = self.render(plans)
        rows = [self._targets(p) for p in plans]
        targets = np.zeros((size, max(1, max(len(r) for r in rows)), 5), np.float32)
        for i, r in enumerate(rows):
            targets[i, :len(r)] = r
        return images, torch.from_numpy(targets).to(self.device)


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def letterbox_batch(frames: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """N x H x W x C uint8 (one shape) -> N x 3 x h x w float like yolox preproc (resize, pad 114 top-left)."""
    height, width = frames.shape[1:3]
    ratio = letterbox_ratio((height, width), input_size)
    images = frames.permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)
    size = resized_size((height, width), ratio)
    if size != (height, width):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    out = torch.full((len(frames), 3, *input_size), float(PAD_VALUE), device=frames.device)
    out[:, :, :size[0], :size[1]] = images
    return out, ratio
