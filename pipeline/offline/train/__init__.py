"""Training: ``python -m pipeline train`` (also ``python -m pipeline.offline.train``).

A lean loop around the yolox model's own train-mode loss (SimOTA), on CPU or CUDA; yolox's Trainer is
not used because it assumes CUDA. Frames are decoded once into memory (uint8, on the GPU when it fits),
crops are cut and augmented on the training device, so data loading stays off the critical path.

Data sources: the real dataset (``--data``, split manifest configs/splits.json), a compact bundle made
by ``scripts/make_train_bundle.py`` (``--bundle``), plus optional synthetic clips (``--synthetic N``).
Budget: ``--epochs`` or ``--minutes`` (the cosine schedule then spans the number of steps that the
measured step rate fits into the budget). Every epoch: validation mAP50:95 on the val split with the EMA
weights (pipeline.offline.eval.coco_metrics), ``last.pt`` (exact-resume state) and ``best.pt`` (model
checkpoint, models.save_checkpoint) in ``--out``; also ``log.json`` and ``curve.png``. See docs/training.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import io
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("pipeline.offline.train")

REPO_ROOT = Path(__file__).resolve().parents[3]
PAD_VALUE = 114.0                   # yolox letterbox padding
MAX_BOXES = 64                      # labels per crop kept (the densest real frames hold < 10)


class TrainError(Exception):
    """A problem reported as one line (bad argument, missing data, unusable checkpoint)."""


# ----------------------------------------------------------------------------------------------- data
@dataclass
class ClipFrames:
    """Decoded frames of one clip with their boxes. frame_ids are the ORIGINAL frame indices."""
    name: str
    modality: str
    frames: np.ndarray              # N x H x W x C uint8 BGR; C = 1 for gray (IR, stored once)
    frame_ids: list[int]
    boxes: list[np.ndarray]         # per frame: K x 5 float32 [class, x1, y1, x2, y2] in pixels


def xywh_rows_to_xyxy(rows) -> np.ndarray:
    if not rows:
        return np.zeros((0, 5), np.float32)
    array = np.asarray(rows, np.float32).reshape(-1, 5)
    array[:, 3] += array[:, 1]
    array[:, 4] += array[:, 2]
    return array


def _store_channels(frame: np.ndarray, gray: bool) -> np.ndarray:
    return frame[..., :1] if gray else frame


def decode_video(path: Path, count: int, gray: bool) -> np.ndarray:
    """Decode ``count`` frames of a bundle video (OpenCV, which every target machine has)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise TrainError(f"cannot open bundle video {path}")
    frames = []
    try:
        while len(frames) < count:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(_store_channels(frame, gray))
    finally:
        capture.release()
    if len(frames) != count:
        raise TrainError(f"{path.name}: decoded {len(frames)} frames, bundle manifest says {count}")
    return np.stack(frames)


def _decode_bundle_entry(task) -> tuple[str, np.ndarray | str]:
    """Pool worker: decode one bundle clip; with a cache dir, write <name>.npy there and return its path."""
    video, count, gray, cache_file = task
    if cache_file is not None and Path(cache_file).is_file():
        return video, cache_file
    frames = decode_video(Path(video), count, gray)
    if cache_file is None:
        return video, frames
    temporary = f"{cache_file}.{os.getpid()}.tmp.npy"
    np.save(temporary, frames)
    os.replace(temporary, cache_file)
    return video, cache_file


def read_bundle_manifest(bundle: Path) -> dict:
    path = Path(bundle) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TrainError(f"cannot read bundle manifest {path}: {error}") from None
    if manifest.get("format") != "train-bundle/1":
        raise TrainError(f"{path}: not a train bundle (format {manifest.get('format')!r})")
    return manifest


def _pool_map(function, tasks, workers: int):
    if workers <= 1 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        return pool.map(function, tasks, chunksize=1)


def load_bundle(bundle: Path, split: str, cache_dir: Path | None, workers: int,
                max_clips: int | None = None) -> tuple[list[ClipFrames], list[str]]:
    """Clips of ``split`` from a bundle, decoded in parallel (once: cached as .npy when cache_dir is set)."""
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle)
    entries = [c for c in manifest["clips"] if c["split"] == split][:max_clips]
    if not entries:
        raise TrainError(f"bundle {bundle} holds no clip of split {split!r}")
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tasks = [(str(bundle / c["video"]), len(c["frame_ids"]), c["modality"] == "IR",
              str(Path(cache_dir) / f"{c['name']}.npy") if cache_dir else None) for c in entries]
    cached = [t for t in tasks if t[3] is not None and Path(t[3]).is_file()]   # no pool start when all cached
    decoded = {t[0]: t[3] for t in cached}
    decoded.update(_pool_map(_decode_bundle_entry, [t for t in tasks if t not in cached], workers))
    clips = []
    for entry, task in zip(entries, tasks):
        frames = decoded[task[0]]
        if isinstance(frames, str):
            frames = np.load(frames, mmap_mode="r")
        labels = entry["labels"]
        boxes = [xywh_rows_to_xyxy(labels.get(str(i), [])) for i in entry["frame_ids"]]
        clips.append(ClipFrames(entry["name"], entry["modality"], frames, list(entry["frame_ids"]), boxes))
    return clips, list(manifest["classes"])


def _decode_dataset_clip(task) -> ClipFrames:
    from pipeline.offline.data import dataset

    clip, stride, max_frames = task
    labels = dataset.read_labels(clip)
    gray = clip.modality == "IR"
    ids, frames = [], []
    for index, frame in dataset.iter_frames(clip, stride=stride, max_frames=max_frames):
        ids.append(index)
        frames.append(_store_channels(frame, gray))
    if not frames:
        raise TrainError(f"{clip.name}: no decodable frame in {clip.video_path}")
    boxes = [xywh_rows_to_xyxy(labels.get(i, [])) for i in ids]
    return ClipFrames(clip.name, clip.modality, np.stack(frames), ids, boxes)


def load_dataset(root: Path | None, split: str, stride: int, workers: int, max_clips: int | None = None,
                 max_frames: int | None = None, manifest: Path | None = None) -> tuple[list[ClipFrames], list[str]]:
    from pipeline.offline.data import dataset

    try:
        clips = dataset.load_split(split, root, manifest=manifest)[:max_clips]
    except dataset.DatasetError as error:
        raise TrainError(str(error)) from None
    return _pool_map(_decode_dataset_clip, [(c, stride, max_frames) for c in clips], workers), list(dataset.CLASSES)


def _synthetic_modality(seed: int) -> str:
    return "IR" if seed % 3 == 2 else "V"          # the real data's V:IR ratio is about 1:2 by clip


def _read_synthetic_cache(meta_path: Path, seed: int) -> ClipFrames:
    meta = json.loads(meta_path.read_text())
    boxes = [np.asarray(b, np.float32).reshape(-1, 5) for b in meta["boxes"]]
    frames = np.load(meta_path.with_suffix(".npy"), mmap_mode="r")
    return ClipFrames(meta_path.stem, _synthetic_modality(seed), frames, meta["frame_ids"], boxes)


def _render_synthetic(task) -> ClipFrames | None:
    """Pool worker: render one synthetic clip; with a cache dir, store it there and return None
    (the parent memory-maps the file instead of receiving the frames through a pipe)."""
    from pipeline.offline.data import synthetic

    seed, frames, stride, cache_dir = task
    modality = _synthetic_modality(seed)
    size = (640, 512) if modality == "V" else (320, 256)
    ids, images, boxes = [], [], []
    for index, (image, frame_boxes) in enumerate(synthetic.render_clip(seed, frames, size, modality)):
        if index % stride:
            continue
        ids.append(index)
        images.append(_store_channels(image, modality == "IR"))
        boxes.append(xywh_rows_to_xyxy([(b.class_id, b.x, b.y, b.w, b.h) for b in frame_boxes]))
    clip = ClipFrames(f"synthetic_{seed:05d}", modality, np.stack(images), ids, boxes)
    if cache_dir is None:
        return clip
    meta_path = Path(cache_dir) / f"{clip.name}.json"
    temporary = meta_path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(temporary, clip.frames)
    os.replace(temporary, meta_path.with_suffix(".npy"))
    meta_path.write_text(json.dumps({"frame_ids": ids, "boxes": [b.tolist() for b in boxes]}))
    return None


def load_synthetic(count: int, frames: int, stride: int, workers: int, first_seed: int,
                   cache_dir: Path | None = None) -> list[ClipFrames]:
    """``count`` clips from pipeline.offline.data.synthetic (seeds first_seed.., disjoint from the demo's low seeds)."""
    try:
        import pipeline.offline.data.synthetic  # noqa: F401
    except ImportError as error:
        raise TrainError(f"--synthetic needs pipeline.offline.data.synthetic: {error}") from None
    seeds = range(first_seed, first_seed + count)
    if cache_dir is None:
        return _pool_map(_render_synthetic, [(seed, frames, stride, None) for seed in seeds], workers)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    meta = {seed: Path(cache_dir) / f"synthetic_{seed:05d}.json" for seed in seeds}
    missing = [(seed, frames, stride, str(cache_dir)) for seed in seeds if not meta[seed].is_file()]
    _pool_map(_render_synthetic, missing, workers)
    return [_read_synthetic_cache(meta[seed], seed) for seed in seeds]


# ---------------------------------------------------------------------------------------- frame store
class FrameGroup:
    """All frames of one shape, indexable by a global row number; on the device or in host memory."""

    def __init__(self, clips: list[ClipFrames], device: torch.device, on_device: bool, base_scale: float):
        self.height, self.width, self.channels = clips[0].frames.shape[1:]
        self.base_scale = base_scale
        self.boxes = [b for c in clips for b in c.boxes]
        self.on_device = on_device
        count = len(self.boxes)
        if on_device:
            self.frames = torch.empty((count, self.height, self.width, self.channels), dtype=torch.uint8,
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


SMALL_OBJECT_SIDE = 16.0   # px at inference: below this every object weighs the same (COCO-tiny-like)


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
        shapes: dict[tuple, list[ClipFrames]] = {}
        for clip in clips:
            shapes.setdefault(clip.frames.shape[1:], []).append(clip)
        self.groups = []
        for shape, members in sorted(shapes.items()):
            ratio = min(input_size[0] / shape[0], input_size[1] / shape[1])
            self.groups.append(FrameGroup(members, device, on_device, ratio))
        sizes = np.array([len(g) for g in self.groups])
        self.frame_offsets = np.concatenate([[0], np.cumsum(sizes)])
        # every labeled box, as (global frame, box row): positive crops pick one (see _pick_object)
        self.objects = np.array([(self.frame_offsets[gi] + fi, bi) for gi, g in enumerate(self.groups)
                                 for fi, b in enumerate(g.boxes) for bi in range(len(b))], np.int64).reshape(-1, 2)
        self.frame_count = int(sizes.sum())
        self.object_cdf = self._object_cdf(augment.small_object_power)

    def _object_cdf(self, power: float) -> np.ndarray | None:
        """Cumulative pick weights of self.objects, or None for uniform picks (the original draw)."""
        if power == 0 or not len(self.objects):
            return None
        # longest side in inference pixels, in the order self.objects lists them (group, frame, box)
        sides = np.concatenate([np.maximum(b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]) * g.base_scale
                                for g in self.groups for b in g.boxes if len(b)])
        weights = (SMALL_OBJECT_SIDE / np.maximum(sides, SMALL_OBJECT_SIDE)) ** power
        cdf = np.cumsum(weights)
        return cdf / cdf[-1]

    def _pick_object(self, rng: np.random.Generator) -> np.ndarray:
        if self.object_cdf is None:
            return self.objects[rng.integers(len(self.objects))]
        pick = int(np.searchsorted(self.object_cdf, rng.random(), side="right"))
        return self.objects[min(pick, len(self.objects) - 1)]

    def _locate(self, frame: int) -> tuple[int, int]:
        group = int(np.searchsorted(self.frame_offsets, frame, side="right") - 1)
        return group, frame - int(self.frame_offsets[group])

    def draw(self, batch: int, rng: np.random.Generator) -> list[dict]:
        """The random parameters of a batch of crops (all numpy; cheap)."""
        a = self.augment
        plans = []
        for _ in range(batch):
            positive = len(self.objects) > 0 and rng.random() < a.positive_fraction
            frame, box = self._pick_object(rng) if positive else (
                rng.integers(self.frame_count), -1)
            group, row = self._locate(int(frame))
            g = self.groups[group]
            scale = g.base_scale * math.exp(rng.uniform(math.log(a.scale_range[0]), math.log(a.scale_range[1])))
            half = a.crop / (2 * scale)           # half the crop's side in frame pixels
            if positive:
                _, x1, y1, x2, y2 = g.boxes[row][box]
                jitter = rng.uniform(-0.7, 0.7, 2) * np.maximum(half - np.array([x2 - x1, y2 - y1]) / 2, 0)
                cx, cy = (x1 + x2) / 2 + jitter[0], (y1 + y2) / 2 + jitter[1]
            else:
                cx, cy = rng.uniform(0, g.width), rng.uniform(0, g.height)
            plans.append({"group": group, "row": row, "scale": scale, "cx": float(cx), "cy": float(cy),
                          "flip": bool(rng.random() < a.flip),
                          "contrast": rng.uniform(*a.contrast), "brightness": rng.uniform(-a.brightness, a.brightness),
                          "gray": bool(g.channels == 3 and rng.random() < a.gray)})
        return plans

    def _targets(self, plan: dict) -> np.ndarray:
        """The frame's boxes mapped into the crop: rows [class, cx, cy, w, h] in crop pixels."""
        a = self.augment
        boxes = self.groups[plan["group"]].boxes[plan["row"]]
        if not len(boxes):
            return np.zeros((0, 5), np.float32)
        s, crop = plan["scale"], a.crop
        x1 = (boxes[:, 1] - plan["cx"]) * s + crop / 2
        x2 = (boxes[:, 3] - plan["cx"]) * s + crop / 2
        y1 = (boxes[:, 2] - plan["cy"]) * s + crop / 2
        y2 = (boxes[:, 4] - plan["cy"]) * s + crop / 2
        if plan["flip"]:
            x1, x2 = crop - x2, crop - x1
        area = (x2 - x1) * (y2 - y1)
        cx1, cx2, cy1, cy2 = (np.clip(v, 0, crop) for v in (x1, x2, y1, y2))
        w, h = cx2 - cx1, cy2 - cy1
        keep = (w >= a.min_side) & (h >= a.min_side) & (w * h >= a.min_visible * np.maximum(area, 1e-6))
        rows = np.stack([boxes[:, 0], (cx1 + cx2) / 2, (cy1 + cy2) / 2, w, h], 1)[keep]
        return rows[:MAX_BOXES].astype(np.float32)

    def render(self, plans: list[dict]) -> torch.Tensor:
        """B x 3 x crop x crop float32 (0-255 BGR) on the device."""
        crop = self.augment.crop
        out = torch.empty((len(plans), 3, crop, crop), device=self.device)
        for gi, g in enumerate(self.groups):
            members = [i for i, p in enumerate(plans) if p["group"] == gi]
            if not members:
                continue
            frames = g.gather(np.array([plans[i]["row"] for i in members]), self.device)
            frames = frames.permute(0, 3, 1, 2).float() - PAD_VALUE
            theta = torch.zeros((len(members), 2, 3))
            for k, i in enumerate(members):
                p = plans[i]
                sign = -1.0 if p["flip"] else 1.0
                theta[k, 0, 0] = sign * crop / (p["scale"] * g.width)
                theta[k, 0, 2] = 2 * p["cx"] / g.width - 1
                theta[k, 1, 1] = crop / (p["scale"] * g.height)
                theta[k, 1, 2] = 2 * p["cy"] / g.height - 1
            grid = F.affine_grid(theta.to(self.device), [len(members), g.channels, crop, crop], align_corners=False)
            sampled = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            sampled = (sampled + PAD_VALUE).expand(-1, 3, -1, -1)
            out[torch.as_tensor(members, device=self.device)] = sampled
        return self._photometric(out, plans)

    def _photometric(self, images: torch.Tensor, plans: list[dict]) -> torch.Tensor:
        contrast = torch.tensor([p["contrast"] for p in plans], device=self.device).view(-1, 1, 1, 1)
        brightness = torch.tensor([p["brightness"] for p in plans], device=self.device).view(-1, 1, 1, 1)
        gray = torch.tensor([p["gray"] for p in plans], device=self.device).view(-1, 1, 1, 1)
        # BGR -> luma, used for the grayscale option
        luma = (images * torch.tensor([0.114, 0.587, 0.299], device=self.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        images = torch.where(gray, luma.expand_as(images), images)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        return ((images - mean) * contrast + mean + brightness).clamp_(0, 255)

    def batch(self, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        plans = self.draw(size, rng)
        images = self.render(plans)
        rows = [self._targets(p) for p in plans]
        targets = np.zeros((size, max(1, max(len(r) for r in rows)), 5), np.float32)
        for i, r in enumerate(rows):
            targets[i, :len(r)] = r
        return images, torch.from_numpy(targets).to(self.device)


# ------------------------------------------------------------------------------------------ evaluation
def letterbox_batch(frames: torch.Tensor, input_size: tuple[int, int]) -> tuple[torch.Tensor, float]:
    """N x H x W x C uint8 (one shape) -> N x 3 x h x w float like yolox preproc (resize, pad 114 top-left)."""
    height, width = frames.shape[1:3]
    ratio = min(input_size[0] / height, input_size[1] / width)
    images = frames.permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1)
    size = (int(height * ratio), int(width * ratio))
    if size != (height, width):
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    out = torch.full((len(frames), 3, *input_size), PAD_VALUE, device=frames.device)
    out[:, :, :size[0], :size[1]] = images
    return out, ratio


def coco_map(gt: dict, detections: list[dict]) -> dict:
    """mAP50:95 / mAP50 overall and per modality through the evaluation code (pipeline.offline.eval)."""
    from pipeline.offline.eval import coco_metrics

    if not detections or not gt["annotations"]:
        return {"map50_95": 0.0, "map50": 0.0, "per_modality": {}}
    metrics = coco_metrics(gt, detections)
    per_modality = {m: round(v["map50_95"] or 0.0, 4) for m, v in metrics["per_modality"].items()}
    return {"map50_95": metrics["map50_95"] or 0.0, "map50": metrics["map50"] or 0.0, "per_modality": per_modality}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, clips: list[ClipFrames], class_names: list[str],
                   input_size: tuple[int, int], device: torch.device, batch: int, amp: str,
                   per_clip: int) -> dict:
    """mAP of ``model`` on up to ``per_clip`` evenly spaced frames of each clip (full frames, letterboxed)."""
    from yolox.utils import postprocess

    was_training = model.training
    model.eval()
    images, annotations, detections = [], [], []
    for clip in clips:
        picks = np.unique(np.linspace(0, len(clip.frames) - 1, min(per_clip, len(clip.frames))).round().astype(int))
        for start in range(0, len(picks), batch):
            chunk = picks[start:start + batch]
            frames = torch.from_numpy(np.ascontiguousarray(clip.frames[chunk])).to(device)
            inputs, ratio = letterbox_batch(frames, input_size)
            with _autocast(device, amp):
                raw = model(inputs)
            kept = postprocess(raw.float(), len(class_names), 0.001, 0.65, class_agnostic=False)
            for k, index in enumerate(chunk):
                image_id = len(images) + 1
                height, width = clip.frames.shape[1:3]
                images.append({"id": image_id, "width": int(width), "height": int(height),
                               "file_name": f"{clip.name}/{clip.frame_ids[index]:06d}", "modality": clip.modality})
                for c, x1, y1, x2, y2 in clip.boxes[index]:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c) + 1,
                                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                        "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
                if kept[k] is None:
                    continue
                found = kept[k].cpu().numpy()
                boxes = found[:, :4] / ratio
                for (x1, y1, x2, y2), score, cls in zip(boxes, found[:, 4] * found[:, 5], found[:, 6]):
                    detections.append({"image_id": image_id, "category_id": int(cls) + 1, "score": float(score),
                                       "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    model.train(was_training)
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
    metrics = coco_map(gt, detections)
    metrics.update(images=len(images), boxes=len(annotations))
    return metrics


# ------------------------------------------------------------------------------------ optimisation
def _autocast(device: torch.device, amp: str):
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not on norms and biases), as yolox does."""
    decay, no_decay = [], []
    for parameter_name, parameter in model.named_parameters():
        (decay if parameter.ndim > 1 and parameter_name.endswith("weight") else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def lr_factor(step: int, warmup: int, total: int, final: float = 0.05) -> float:
    """Linear warm-up, then cosine from 1 to ``final`` at ``total`` (total 0 = not known yet: flat)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


class ModelEMA:
    """Exponential moving average of weights and buffers; decay ramps up as d_max * (1 - exp(-n / tau))."""

    def __init__(self, model: torch.nn.Module, decay: float, tau: float):
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


def ema_settings(total_steps: int) -> tuple[float, float]:
    """Averaging window ~ a tenth of the run (a fixed 0.9998 would average over more than a short run)."""
    decay = min(0.9998, max(0.99, 1 - 10 / max(total_steps, 1)))
    return decay, max(20.0, total_steps / 20)


# --------------------------------------------------------------------------------------- run state
def _load_training_state(path: Path, device: torch.device) -> dict:
    """torch.load with weights_only=True: tensors and plain values only. States written before
    2026-11-27 hold numpy's legacy RNG state as an ndarray; only numpy's array types are admitted
    besides, and only for those."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        numpy_array_types = [np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        with torch.serialization.safe_globals(numpy_array_types):
            return torch.load(path, map_location=device, weights_only=True)


def _rng_state(sampler_rng: np.random.Generator, device: torch.device) -> dict:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"sampler": sampler_rng.bit_generator.state, "python": random.getstate(),
            "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],  # plain: weights_only loads it
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def _set_rng_state(state: dict, sampler_rng: np.random.Generator, device: torch.device) -> None:
    sampler_rng.bit_generator.state = state["sampler"]
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


class StopFlag:
    """SIGTERM / SIGINT ask the loop to save and stop at the next step boundary."""

    def __init__(self):
        self.raised = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, the caller stops us otherwise
                pass
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -------------------------------------------------------------------------------------------- train
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline train", description="Train a YOLOX(-GSSAM) model.")
    p.add_argument("--model", default="yolox-nano-gssam-sigres-p1", help="model name (models.model_names())")
    p.add_argument("--data", default=None, help="dataset root (default: pipeline.offline.data.dataset.DEFAULT_ROOT)")
    p.add_argument("--bundle", default=None, help="read a compact bundle (scripts/make_train_bundle.py) instead")
    p.add_argument("--splits", default=None, help="split manifest (default configs/splits.json)")
    p.add_argument("--cache", default=None, help="with --bundle: decode once into DIR/<clip>.npy, shared by runs")
    p.add_argument("--stride", type=int, default=3, help="keep every k-th frame of the real dataset")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None)
    budget.add_argument("--minutes", type=float, default=None, help="time budget of the training loop")
    p.add_argument("--end-by", type=float, default=None, help="with --minutes: also end by this UNIX time")
    p.add_argument("--epoch-steps", type=int, default=None, help="steps per epoch (default: one pass, "
                   "at most total/--evals with --minutes)")
    p.add_argument("--evals", type=int, default=5, help="with --minutes: number of epochs (= evaluations)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=320, help="training crop side (px)")
    p.add_argument("--input-size", default="512x640", help="eval/inference input HxW (multiples of 32)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=float, default=None, help="default 2e-3 (adamw) / 0.01*batch/64 (sgd)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0.05 (adamw) / 5e-4 (sgd)")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--amp", choices=("fp16", "bf16", "off"), default="fp16", help="CUDA autocast dtype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder: last.pt, best.pt, log.json, curve.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (same model name): "
                   "a fresh schedule on top of an earlier run")
    p.add_argument("--l1-loss", action="store_true", help="add yolox's L1 box loss (YOLOX turns it on for its "
                   "last epochs): tighter boxes, which tiny targets need for IoU 0.5")
    p.add_argument("--small-object-power", type=float, default=0.0, help="positive crops favour objects "
                   "under 16 px: pick weight (16/side)**P for larger ones (0: uniform)")
    p.add_argument("--visible-boxes", choices=("dataset", "tight"), default="dataset",
                   help="tight: shrink the visible camera's loose label boxes to the object (pipeline.offline.data.tighten), "
                        "the convention of the thermal and synthetic boxes")
    p.add_argument("--assignment", choices=("batched", "yolox"), default="batched",
                   help="SimOTA label assignment: batched (models/simota.py) or yolox's per-image loop")
    p.add_argument("--synthetic", type=int, default=0, help="mix N synthetic clips (pipeline.offline.data.synthetic) into train")
    p.add_argument("--synthetic-frames", type=int, default=150)
    p.add_argument("--val-per-clip", type=int, default=10, help="val frames per clip (evenly spaced)")
    p.add_argument("--max-clips", type=int, default=None, help="use only the first N clips per split (smoke)")
    p.add_argument("--max-frames", type=int, default=None, help="frames per real clip (smoke)")
    p.add_argument("--frames-on", choices=("auto", "device", "host"), default="auto")
    p.add_argument("--gpu-reserve-gb", type=float, default=20.0,
                   help="auto: keep frames on the GPU only if this much stays free after them")
    p.add_argument("--probe-steps", type=int, default=20, help="with --minutes: steps timed before planning")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: CPU count)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--prepare-only", action="store_true", help="decode/render into --cache, then exit")
    args = p.parse_args(argv)
    try:
        args.input_size = tuple(int(v) for v in args.input_size.lower().split("x"))
        assert len(args.input_size) == 2 and all(v > 0 and v % 32 == 0 for v in args.input_size)
    except (ValueError, AssertionError):
        raise TrainError(f"--input-size must be HxW, multiples of 32 (e.g. 512x640), got {args.input_size!r}") from None
    if args.epochs is None and args.minutes is None:
        raise TrainError("give a budget: --epochs N or --minutes M")
    for name in ("batch", "crop", "stride", "evals", "probe_steps", "warmup_steps"):
        if getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.small_object_power <= 8:
        raise TrainError("--small-object-power must be in 0..8")
    if args.crop % 32:
        raise TrainError(f"--crop must be a multiple of 32, got {args.crop}")
    if (args.epochs is not None and args.epochs < 1) or (args.minutes is not None and args.minutes <= 0):
        raise TrainError("the budget (--epochs / --minutes) must be positive")
    if args.lr is None:
        args.lr = 2e-3 if args.optimizer == "adamw" else 0.01 * args.batch / 64
    if args.weight_decay is None:
        args.weight_decay = 0.05 if args.optimizer == "adamw" else 5e-4
    return args


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown --device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda given but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise TrainError(f"unsupported --device {name!r}; use cpu or cuda")
    return device


def load_clips(args, split: str, workers: int) -> tuple[list[ClipFrames], list[str]]:
    if args.bundle:
        cache = Path(args.cache) / split if args.cache else None
        clips, class_names = load_bundle(Path(args.bundle), split, cache, workers, args.max_clips)
    else:
        root = Path(args.data) if args.data else None
        clips, class_names = load_dataset(root, split, args.stride, workers, args.max_clips, args.max_frames,
                                          args.splits)
    if args.visible_boxes == "tight":
        tighten_visible_boxes(clips, split)
    return clips, class_names


def tighten_visible_boxes(clips: list[ClipFrames], split: str) -> None:
    """Replace the visible camera's loose label boxes by the object they contain (pipeline.offline.data.tighten)."""
    from pipeline.offline.data.tighten import tighten_xyxy

    changed = total = 0
    for clip in clips:
        if clip.modality != "V":
            continue
        for index, boxes in enumerate(clip.boxes):
            if len(boxes):
                clip.boxes[index], count = tighten_xyxy(clip.frames[index], boxes)
                changed, total = changed + count, total + len(boxes)
    log.info("%s: %d of %d visible-camera boxes tightened", split, changed, total)


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _frames_on_device(args, device: torch.device, clips: list[ClipFrames]) -> bool:
    if device.type != "cuda" or args.frames_on == "host":
        return False
    if args.frames_on == "device":
        return True
    need = sum(c.frames.nbytes for c in clips)
    free, _ = torch.cuda.mem_get_info(device)
    return free - need > args.gpu_reserve_gb * 2**30


class Trainer:
    def __init__(self, args, device: torch.device, train_clips, val_clips, class_names):
        import models

        self.args, self.device, self.class_names, self.val_clips = args, device, class_names, val_clips
        self.out = Path(args.out)
        try:
            self.model = models.build_model(args.model, num_classes=len(class_names)).to(device)
        except ValueError as error:
            raise TrainError(str(error)) from None
        if args.init:
            self._load_init(args.init)
        self.model.head.use_l1 = args.l1_loss
        if args.assignment == "yolox":      # the same module with yolox's own loss (a fallback, and for comparison)
            from yolox.models.yolo_head import YoloxHead
            self.model.head.__class__ = YoloxHead
        self.model.train()
        self.optimizer = make_optimizer(self.model, args.optimizer, args.lr, args.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and args.amp == "fp16")
        # the cross-process lock keeps parallel runs from all claiming GPU memory for frames at once
        with _file_lock(Path(args.cache or self.out) / ".frames.lock"):
            on_device = _frames_on_device(args, device, train_clips)
            augment = Augment(crop=args.crop, small_object_power=args.small_object_power)
            self.sampler = CropSampler(train_clips, args.input_size, augment, device, on_device)
        self.frames_on_device = on_device
        self.rng = np.random.default_rng(args.seed)
        self.step, self.total_steps, self.steps_per_epoch, self.warmup = 0, 0, 0, args.warmup_steps
        self.ema = None
        self.history = {"loss": [], "epochs": []}
        self.best = -1.0
        self.images_seen = 0
        self.elapsed = 0.0                 # training-loop seconds before this process (resume)
        self.skipped_steps = 0

    def _load_init(self, path: str) -> None:
        import models

        try:
            model, meta = models.load_checkpoint(path)
        except models.CheckpointError as error:
            raise TrainError(f"--init: {error}") from None
        if meta["name"] != self.args.model or list(meta["class_names"]) != list(self.class_names):
            raise TrainError(f"--init: {path} holds {meta['name']} for {meta['class_names']}, not {self.args.model}")
        self.model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        log.info("%s: weights from %s", self.args.model, path)

    # -- planning
    def plan_epochs(self, frames: int) -> None:
        one_pass = max(1, math.ceil(frames / self.args.batch))
        self.steps_per_epoch = self.args.epoch_steps or one_pass
        self.total_steps = self.args.epochs * self.steps_per_epoch
        self._finish_plan()

    def plan_minutes(self, rate: float, budget_left: float) -> None:
        """Steps that fit the rest of the budget, 12 % kept for the evaluations."""
        self.total_steps = self.step + max(1, int(rate * budget_left * 0.88))
        one_pass = max(1, math.ceil(self.sampler.frame_count / self.args.batch))
        per_eval = math.ceil(self.total_steps / self.args.evals)
        self.steps_per_epoch = self.args.epoch_steps or min(one_pass, per_eval)
        self._finish_plan()

    def replan_minutes(self, rate: float, budget_left: float, eval_seconds: float) -> None:
        """Fit the remaining steps to the remaining time at the rate of the last epoch: runs started
        side by side slow each other down once all are running, so the first probe overestimates."""
        steps = rate * budget_left
        evals = max(1, math.ceil(steps / self.steps_per_epoch))
        steps = rate * max(0.0, budget_left - evals * eval_seconds) * 0.97
        self.total_steps = self.step + max(1, int(steps))

    def _finish_plan(self) -> None:
        self.warmup = max(1, min(self.args.warmup_steps, self.total_steps // 5))
        decay, tau = ema_settings(self.total_steps)
        self.ema.decay, self.ema.tau = decay, tau

    # -- state
    def state(self) -> dict:
        return {"format": "pipeline.offline.train/1", "model_name": self.args.model, "step": self.step,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "warmup": self.warmup,
                "model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "ema_meta": [self.ema.decay, self.ema.tau, self.ema.updates],
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": _rng_state(self.rng, self.device), "history": self.history, "best": self.best,
                "images_seen": self.images_seen, "elapsed": self.elapsed, "skipped_steps": self.skipped_steps,
                "recipe": self.recipe()}

    def recipe(self) -> dict:
        """Options that change what a step computes: a resumed run must use the same."""
        return {"l1_loss": bool(self.args.l1_loss), "small_object_power": float(self.args.small_object_power),
                "visible_boxes": self.args.visible_boxes}

    def load_state(self, path: Path) -> None:
        try:
            state = _load_training_state(path, self.device)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise TrainError(f"cannot resume from {path}: {str(error).splitlines()[0]}") from None
        if state.get("format") != "pipeline.offline.train/1" or state.get("model_name") != self.args.model:
            raise TrainError(f"{path}: not a training state of model {self.args.model!r}")
        started = {"visible_boxes": "dataset", **state.get("recipe", self.recipe())}  # older states: not checked
        if started != self.recipe():
            raise TrainError(f"--resume: {path} was trained with {started}, this command asks for {self.recipe()}; "
                             "resume with the same options")
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.decay, self.ema.tau, self.ema.updates = state["ema_meta"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], self.rng, self.device)
        for key in ("step", "total_steps", "steps_per_epoch", "warmup", "history", "best", "images_seen",
                    "elapsed", "skipped_steps"):
            setattr(self, key, state[key])

    # -- one step
    def train_step(self) -> dict:
        for group in self.optimizer.param_groups:
            group["lr"] = self.args.lr * lr_factor(self.step, self.warmup, self.total_steps)
        images, targets = self.sampler.batch(self.args.batch, self.rng)
        with _autocast(self.device, self.args.amp):
            outputs = self.model(images, targets)
        loss = outputs["total_loss"]
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.ema.update(self.model)
        else:  # never let one bad batch poison the weights; counted in the log
            self.skipped_steps += 1
        self.step += 1
        self.images_seen += len(images)
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in outputs.items()}


def _save_best(trainer: Trainer, metrics: dict, epoch: int) -> None:
    import models

    half = copy.deepcopy(trainer.ema.module).half()     # fp16 weights: half the file; loads into float models
    models.save_checkpoint(trainer.out / "best.pt", half, name=trainer.args.model,
                           input_size=trainer.args.input_size, class_names=trainer.class_names,
                           epoch=epoch, step=trainer.step, metrics=metrics, trained_with="pipeline.offline.train")


def write_curve(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = np.array(history["loss"], dtype=float)
    if len(losses):
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(np.arange(len(losses)), losses, alpha=0.25, color="tab:blue")
        left.plot(np.arange(window - 1, len(losses)), smooth, color="tab:blue")
    left.set(xlabel="step", ylabel="total loss", title="training loss")
    epochs = history["epochs"]
    right.plot([e["step"] for e in epochs], [e["map50_95"] for e in epochs], "o-", label="mAP50:95")
    right.plot([e["step"] for e in epochs], [e["map50"] for e in epochs], "s--", label="mAP50")
    right.set(xlabel="step", ylabel="val mAP (EMA)", title="validation")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU x{torch.get_num_threads()} threads (torch {torch.__version__})"


def run(args, step_callback=None) -> int:
    """Train per ``args`` (see parse_args). step_callback(trainer) runs after every step (tests)."""
    started = time.monotonic()
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").exists() and not args.resume and not args.prepare_only:
        raise TrainError(f"{out}/last.pt exists: pass --resume to continue it, or choose another --out")
    if args.resume and not (out / "last.pt").exists():
        raise TrainError(f"--resume: no {out}/last.pt to continue")
    workers = args.workers or os.cpu_count() or 1
    train_clips, class_names = load_clips(args, "train", workers)
    if args.synthetic:
        cache = Path(args.cache) / "synthetic" if args.cache else None
        train_clips += load_synthetic(args.synthetic, args.synthetic_frames, args.stride, workers, 10_000, cache)
    val_clips, _ = load_clips(args, "val", workers)
    load_seconds = time.monotonic() - started
    if args.prepare_only:
        print(f"prepared: {len(train_clips)} train clips ({sum(len(c.frames) for c in train_clips)} frames, "
              f"{sum(c.frames.nbytes for c in train_clips) / 2**30:.2f} GiB), {len(val_clips)} val clips "
              f"in {load_seconds:.1f}s")
        return 0
    trainer = Trainer(args, device, train_clips, val_clips, class_names)
    trainer.ema = ModelEMA(trainer.model, *ema_settings(10_000))
    if args.resume:
        trainer.load_state(out / "last.pt")
    elif args.epochs is not None:
        trainer.plan_epochs(trainer.sampler.frame_count)
    log.info("%s: %d train frames (%d objects), %d val clips, frames on %s, data ready in %.1fs",
             args.model, trainer.sampler.frame_count, len(trainer.sampler.objects), len(val_clips),
             "GPU" if trainer.frames_on_device else "host", load_seconds)
    with StopFlag() as stop:
        status = _loop(trainer, args, stop, step_callback)
    _write_log(trainer, args, device, load_seconds, status)
    return 0 if status == "done" else 143


def _loop(trainer: Trainer, args, stop: StopFlag, step_callback) -> str:
    from tqdm import tqdm

    budget = args.minutes * 60 if args.minutes is not None else None
    if budget is not None and args.end_by is not None:   # a wall-clock deadline shared by parallel runs
        budget = min(budget, trainer.elapsed + args.end_by - time.time())
    loop_start = time.monotonic() - trainer.elapsed
    eval_seconds = 0.0
    probe_start = None
    progress = tqdm(total=trainer.total_steps or None, initial=trainer.step, desc=args.model, unit="step",
                    disable=args.no_progress or None, dynamic_ncols=True)
    stopped_early = False
    epoch_started, epoch_first_step = time.monotonic(), trainer.step
    while trainer.total_steps == 0 or trainer.step < trainer.total_steps:
        if trainer.step == 2:
            probe_start = time.monotonic()       # steps 0-1 pay for cudnn autotuning and allocator growth
        losses = trainer.train_step()
        trainer.history["loss"].append(losses["total_loss"])
        trainer.elapsed = time.monotonic() - loop_start
        progress.update(1)
        progress.set_postfix(loss=f"{losses['total_loss']:.3f}", refresh=False)
        if trainer.total_steps == 0 and trainer.step >= max(args.probe_steps, 3):
            rate = (trainer.step - 2) / (time.monotonic() - probe_start)
            trainer.plan_minutes(rate, budget - trainer.elapsed)
            progress.total = trainer.total_steps
            log.info("%s: %.2f steps/s measured -> %d steps, %d per epoch", args.model, rate,
                     trainer.total_steps, trainer.steps_per_epoch)
        if step_callback is not None:
            step_callback(trainer)
        epoch_end = trainer.steps_per_epoch and trainer.step % trainer.steps_per_epoch == 0
        # the time budget ends the run early (final evaluation included) if the step rate dropped
        out_of_time = budget is not None and trainer.total_steps and \
            trainer.elapsed + max(eval_seconds, 5.0) > budget
        last = trainer.total_steps and (trainer.step >= trainer.total_steps or out_of_time)
        if epoch_end or last:
            eval_started = time.monotonic()
            _end_epoch(trainer, args)
            eval_seconds = time.monotonic() - eval_started
            if budget is not None and not last:
                rate = (trainer.step - epoch_first_step) / max(eval_started - epoch_started, 1e-6)
                trainer.replan_minutes(rate, budget - (eval_started - loop_start) - eval_seconds, eval_seconds)
                progress.total = trainer.total_steps
            trainer.elapsed = time.monotonic() - loop_start
            epoch_started, epoch_first_step = time.monotonic(), trainer.step
        if last:
            stopped_early = trainer.step < trainer.total_steps
            break
        if stop.raised is not None:
            _save_last(trainer)
            progress.close()
            log.warning("%s: stopped by signal %d at step %d; continue with --resume", args.model,
                        stop.raised, trainer.step)
            return "interrupted"
    progress.close()
    trainer.stopped_early = stopped_early
    return "done"


def _save_last(trainer: Trainer) -> None:
    _atomic_save(trainer.state(), trainer.out / "last.pt")


def _end_epoch(trainer: Trainer, args) -> None:
    epoch = math.ceil(trainer.step / trainer.steps_per_epoch)
    metrics = evaluate_model(trainer.ema.module, trainer.val_clips, trainer.class_names, args.input_size,
                             trainer.device, min(args.batch, 32), args.amp, args.val_per_clip)  # full frames: smaller batches
    window = trainer.history["loss"][-trainer.steps_per_epoch:]
    record = {"epoch": epoch, "step": trainer.step, "images_seen": trainer.images_seen,
              "elapsed_s": round(trainer.elapsed, 1), "loss": float(np.mean(window)) if window else None,
              "map50_95": metrics["map50_95"], "map50": metrics["map50"], "per_modality": metrics["per_modality"]}
    trainer.history["epochs"].append(record)
    if metrics["map50_95"] > trainer.best:
        trainer.best = metrics["map50_95"]
        _save_best(trainer, metrics, epoch)
    _save_last(trainer)
    write_curve(trainer.history, trainer.out / "curve.png", args.model)
    log.info("%s epoch %d step %d/%d: loss %.3f val mAP50:95 %.4f mAP50 %.4f (best %.4f) %.0fs",
             args.model, epoch, trainer.step, trainer.total_steps, record["loss"] or float("nan"),
             metrics["map50_95"], metrics["map50"], trainer.best, trainer.elapsed)


def _write_log(trainer: Trainer, args, device: torch.device, load_seconds: float, status: str) -> None:
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()}
    record = {"model": args.model, "status": status, "hardware": _hardware(device), "config": config,
              "data_load_s": round(load_seconds, 1), "train_loop_s": round(trainer.elapsed, 1),
              "steps": trainer.step, "total_steps": trainer.total_steps, "steps_per_epoch": trainer.steps_per_epoch,
              "images_seen": trainer.images_seen, "train_frames": trainer.sampler.frame_count,
              "frames_on_gpu": trainer.frames_on_device, "skipped_nonfinite_steps": trainer.skipped_steps,
              "stopped_early_by_budget": getattr(trainer, "stopped_early", False),
              "best_val_map50_95": trainer.best, "epochs": trainer.history["epochs"]}
    (trainer.out / "log.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
        return run(args)
    except TrainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
