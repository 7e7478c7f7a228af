"""Training data: clips decoded into memory (``ClipFrames``) from a bundle, the real dataset or synthetic renders.

Every source decodes in a pool of spawned processes and can leave ``.npy`` files in a cache folder that
later runs memory-map instead of decoding again. Thermal (IR) frames are stored as one gray channel.
Boxes are K x 5 float32 rows [class, x1, y1, x2, y2] in frame pixels, keyed by the ORIGINAL frame index.
No torch here: the pool workers import only this module's needs.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.offline.train.settings import TrainError, TrainSettings

log = logging.getLogger("pipeline.offline.train")

SYNTHETIC_V_SIZE, SYNTHETIC_IR_SIZE = (640, 512), (320, 256)   # (w, h): the real cameras' frame sizes
SYNTHETIC_FIRST_SEED = 10_000   # disjoint from the low seeds of the synthetic seed-7 clip and the test fixtures


@dataclass
class ClipFrames:
    """Decoded frames of one clip with their boxes. frame_ids are the ORIGINAL frame indices."""
    name: str
    modality: str
    frames: np.ndarray              # N x H x W x C uint8 BGR; C = 1 for gray (IR, stored once)
    frame_ids: list[int]
    boxes: list[np.ndarray]         # per frame: K x 5 float32 [class, x1, y1, x2, y2] in pixels
    weight: float = 1.0             # how often the crop sampler picks this clip's frames, relative to others


def label_rows_to_xyxy(rows) -> np.ndarray:
    """Label rows [(class, x, y, w, h)] -> K x 5 float32 [class, x1, y1, x2, y2].

    Written out rather than with supervision's xywh_to_xyxy: the GPU machine's image, where training runs,
    has no supervision (docs/training.md lists the wheels that travel)."""
    if not rows:
        return np.zeros((0, 5), np.float32)
    array = np.asarray(rows, np.float32).reshape(-1, 5)
    array[:, 3] += array[:, 1]
    array[:, 4] += array[:, 2]
    return array


def _store_channels(frame: np.ndarray, gray: bool) -> np.ndarray:
    return frame[..., :1] if gray else frame


def _pool_map(function, tasks, workers: int):
    if workers <= 1 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        return pool.map(function, tasks, chunksize=1)


def _save_npy(frames: np.ndarray, path: Path) -> None:
    """np.save through a temporary name: parallel runs sharing a cache never read a half-written file."""
    temporary = f"{path}.{os.getpid()}.tmp.npy"
    np.save(temporary, frames)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------- bundle
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
    """Pool worker: decode one bundle clip; with a cache file, write it there and return its path."""
    video, count, gray, cache_file = task
    if cache_file is not None and Path(cache_file).is_file():
        return video, cache_file
    frames = decode_video(Path(video), count, gray)
    if cache_file is None:
        return video, frames
    _save_npy(frames, Path(cache_file))
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


def load_bundle(bundle: Path, split: str, cache_dir: Path | None, workers: int,
                max_clips: int | None = None, modality: str | None = None) -> tuple[list[ClipFrames], list[str]]:
    """Clips of ``split`` from a bundle, decoded in parallel (once: cached as .npy when cache_dir is set)."""
    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle)
    entries = [c for c in manifest["clips"] if c["split"] == split and modality in (None, c["modality"])][:max_clips]
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
        boxes = [label_rows_to_xyxy(labels.get(str(i), [])) for i in entry["frame_ids"]]
        clips.append(ClipFrames(entry["name"], entry["modality"], frames, list(entry["frame_ids"]), boxes))
    return clips, list(manifest["classes"])


# --------------------------------------------------------------------------------------------- dataset
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
    if len({frame.shape for frame in frames}) > 1:
        raise TrainError(f"{clip.name}: its frames differ in size ({frames[0].shape[1]}x{frames[0].shape[0]} and "
                         f"others); one clip is one camera: put other sizes in a clip of their own")
    boxes = [label_rows_to_xyxy(labels.get(i, [])) for i in ids]
    return ClipFrames(clip.name, clip.modality, np.stack(frames), ids, boxes)


def decode_clips(clips: list, stride: int, workers: int, max_frames: int | None = None) -> list[ClipFrames]:
    """Every ``stride``-th frame of labeled clips (``dataset.Clip``s: this dataset's videos or another
    format's image sequences and videos, pipeline.offline.data.formats), decoded in parallel."""
    from pipeline.offline.data.dataset import DatasetError

    try:
        return _pool_map(_decode_dataset_clip, [(c, stride, max_frames) for c in clips], workers)
    except DatasetError as error:   # a label file or video that cannot be used: one line
        raise TrainError(str(error)) from None


def load_dataset(root: Path | None, split: str, stride: int, workers: int, max_clips: int | None = None,
                 max_frames: int | None = None, manifest: Path | None = None,
                 modality: str | None = None) -> tuple[list[ClipFrames], list[str]]:
    from pipeline.offline.data import dataset

    try:
        modalities = (modality,) if modality else dataset.MODALITIES   # one camera: decode only its clips
        clips = dataset.load_split(split, root, modalities, manifest=manifest)[:max_clips]
    except dataset.DatasetError as error:
        raise TrainError(str(error)) from None
    return decode_clips(clips, stride, workers, max_frames), list(dataset.CLASSES)


# ------------------------------------------------------------------------------------------- synthetic
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

    seed, frames, stride, varied, cache_dir = task
    modality = _synthetic_modality(seed)
    size = SYNTHETIC_V_SIZE if modality == "V" else SYNTHETIC_IR_SIZE
    ids, images, boxes = [], [], []
    for index, (image, frame_boxes) in enumerate(synthetic.render_clip(seed, frames, size, modality, varied=varied)):
        if index % stride:
            continue
        ids.append(index)
        images.append(_store_channels(image, modality == "IR"))
        boxes.append(label_rows_to_xyxy([(b.class_id, b.x, b.y, b.w, b.h) for b in frame_boxes]))
    clip = ClipFrames(_synthetic_name(seed, frames, stride, varied), modality, np.stack(images), ids, boxes)
    if cache_dir is None:
        return clip
    meta_path = Path(cache_dir) / f"{clip.name}.json"
    _save_npy(clip.frames, meta_path.with_suffix(".npy"))
    meta_path.write_text(json.dumps({"frame_ids": ids, "boxes": [b.tolist() for b in boxes]}))
    return None


def _synthetic_name(seed: int, frames: int, stride: int, varied: bool) -> str:
    """A rendered clip's name, also its cache file's: every option that changes its frames is in it."""
    return f"synthetic_{seed:05d}_{frames}f_{stride}s" + ("_varied" if varied else "")


def load_synthetic(count: int, frames: int, stride: int, workers: int, first_seed: int,
                   cache_dir: Path | None = None, varied: bool = False) -> list[ClipFrames]:
    """``count`` clips from pipeline.offline.data.synthetic (seeds first_seed.., disjoint from the demo's
    low seeds); ``varied``: each with its own sky, contrast, noise and blur (synthetic.render_clip)."""
    try:
        import pipeline.offline.data.synthetic  # noqa: F401
    except ImportError as error:
        raise TrainError(f"--synthetic needs pipeline.offline.data.synthetic: {error}") from None
    seeds = range(first_seed, first_seed + count)
    if cache_dir is None:
        return _pool_map(_render_synthetic, [(seed, frames, stride, varied, None) for seed in seeds], workers)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    meta = {seed: Path(cache_dir) / f"{_synthetic_name(seed, frames, stride, varied)}.json" for seed in seeds}
    missing = [(seed, frames, stride, varied, str(cache_dir)) for seed in seeds if not meta[seed].is_file()]
    _pool_map(_render_synthetic, missing, workers)
    return [_read_synthetic_cache(meta[seed], seed) for seed in seeds]


# ------------------------------------------------------------------------------------------ per split
def load_clips(settings: TrainSettings, split: str, workers: int) -> tuple[list[ClipFrames], list[str]]:
    """The real clips of ``split`` (bundle or dataset, per the settings), visible boxes tightened if asked."""
    if settings.bundle:
        cache = Path(settings.cache) / split if settings.cache else None
        clips, class_names = load_bundle(Path(settings.bundle), split, cache, workers, settings.max_clips,
                                         settings.modality)
    elif settings.data and _format_of(settings) != "dataset":
        if settings.modality:
            raise TrainError("--modality picks a camera of this project's dataset (V or IR clips); "
                             f"a {_format_of(settings)} folder has no such cameras")
        clips = decode_clips(_format_split(settings, split)[:settings.max_clips], settings.stride, workers,
                             settings.max_frames)
        class_names = list(_model_classes())
    else:
        root = Path(settings.data) if settings.data else None
        clips, class_names = load_dataset(root, split, settings.stride, workers, settings.max_clips,
                                          settings.max_frames, settings.splits, settings.modality)
    if settings.modality:
        clips = only_modality(clips, settings.modality, split)
    if settings.visible_boxes == "tight":
        tighten_visible_boxes(clips, split)
    return clips, class_names


def only_modality(clips: list[ClipFrames], modality: str, split: str) -> list[ClipFrames]:
    """The clips of one camera (--modality); none left is an error, not an empty run."""
    kept = [clip for clip in clips if clip.modality == modality]
    if not kept:
        raise TrainError(f"--modality {modality}: no {split} clip of that camera")
    log.info("%s: %d of %d clips are %s (--modality)", split, len(kept), len(clips), modality)
    return kept


def _model_classes() -> tuple[str, ...]:
    from pipeline.offline.data.dataset import CLASSES   # what formats map every label file's classes onto

    return CLASSES


def _format_of(settings: TrainSettings) -> str:
    from pipeline.offline.data import formats

    try:
        return formats.detect_format(Path(settings.data)) if settings.format == "auto" else settings.format
    except formats.FormatError as error:
        raise TrainError(str(error)) from None


def _format_split(settings: TrainSettings, split: str) -> list:
    """``split`` (train / val) of a folder in another label format: its clips held out by clip, as
    ``pipeline adapt`` does; the folder's labels are read once for both calls."""
    if split not in ("train", "val"):
        raise TrainError(f"a {settings.format} folder is split into train and val only, not {split!r}")
    return getattr(_format_parts(str(settings.data), _format_of(settings), settings.classes, settings.seed), split)


@lru_cache(maxsize=2)
def _format_parts(data: str, fmt: str, classes: str | None, seed: int):
    from pipeline.offline.data import formats
    from pipeline.offline.data.dataset import DatasetError
    from pipeline.offline.data.holdout import hold_out

    try:
        clips = formats.read_clips(Path(data), fmt, formats.parse_class_map(classes))
        return hold_out(clips, seed=seed, test_given=True)
    except DatasetError as error:
        raise TrainError(str(error)) from None


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


def load_training_clips(settings: TrainSettings, workers: int) -> tuple[list[ClipFrames], list[ClipFrames], list[str]]:
    """(train clips with the synthetic ones mixed in, val clips, class names)."""
    train_clips, class_names = load_clips(settings, "train", workers)
    if settings.synthetic:
        cache = Path(settings.cache) / "synthetic" if settings.cache else None
        synthetic = load_synthetic(settings.synthetic, settings.synthetic_frames, settings.stride, workers,
                                   SYNTHETIC_FIRST_SEED, cache, varied=settings.synthetic_look == "varied")
        train_clips += only_modality(synthetic, settings.modality, "synthetic") if settings.modality else synthetic
    val_clips, _ = load_clips(settings, "val", workers)
    return train_clips, val_clips, class_names
