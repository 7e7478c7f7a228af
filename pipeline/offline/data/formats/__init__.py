"""Labeled footage in the formats other tools write, read into this dataset's ``Clip``s.

    clips = read_clips(root, fmt="auto", class_map=parse_class_map("uav=drone,plane=airplane"))

Formats (one module each, registering itself): ``dataset`` (this dataset's own layout, see
``pipeline.offline.data.dataset``), ``yolo`` (images/ + labels/ txt, with or without a data.yaml),
``coco`` (an instances JSON beside the images), ``mot`` (MOTChallenge ``gt/gt.txt`` beside ``img1/`` or
beside a video), ``cvat`` (CVAT XML 1.1 for video or for images). ``detect_format`` names the first whose layout the folder has.

Every format gives clips (so splits and scores stay per clip): a YOLO or COCO folder's images are
grouped by their sub-folder, else by the name before the frame number (``clipA_000123.jpg``); a MOT
sequence is one clip. Boxes come out in source pixels (x, y of the top-left corner, w, h) and class
indices of ``dataset.CLASSES``; ``class_map`` maps the format's class names onto them (a name not
mapped must be one of CLASSES; ``name=-`` drops that class). A malformed or mismatched file is a
``FormatError`` naming the file, the line and the problem.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from pipeline.offline.data.dataset import CLASSES, DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DROP = "-"


class FormatError(DatasetError):
    """A label file of another format that cannot be used (one line: file, line, problem)."""


# ---------------------------------------------------------------- the registry
_READERS: dict[str, tuple[Callable[[Path], bool], Callable]] = {}


def register(name: str, detect: Callable[[Path], bool], read: Callable) -> None:
    _READERS[name] = (detect, read)


def formats() -> tuple[str, ...]:
    _load()
    return ("auto", "dataset", *_READERS)


def _load() -> None:
    from pipeline.offline.data.formats import coco_json, cvat, mot, yolo  # noqa: F401  (they register)


def detect_format(root: Path) -> str:
    """The format of the folder ``root``: "dataset" for this dataset's own layout, else the first
    reader that recognises it; FormatError when none does."""
    _load()
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"dataset path not found: {root}")
    if any((root / f"Video_{m}").is_dir() for m in ("V", "IR")):
        return "dataset"
    for name, (detect, _) in _READERS.items():
        if detect(root):
            return name
    raise FormatError(f"{root}: no known label format here (this dataset's Video_V/labels_V, YOLO images/ + "
                      f"labels/, a COCO instances .json, MOTChallenge <seq>/gt/gt.txt, CVAT annotations.xml); "
                      "name one with --format")


def load_clips(split: str | None, root: Path, modalities=("V", "IR"), fmt: str = "auto",
               class_map: dict[str, str | None] | None = None) -> list:
    """The clips every reader of labeled data starts from: this dataset's split (``dataset.load_split``)
    or, for a folder in another format, all its clips of ``modalities`` (the split manifest names this
    dataset's clips only, so another format's folder is scored whole: ``split`` must be "all").
    ``split`` None: "test" of this dataset, all of another format's folder."""
    from pipeline.offline.data.dataset import load_split

    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "dataset":
        return load_split(split or "test", root, modalities)
    if split not in (None, "all"):
        raise FormatError(f"--split {split}: the split manifest names this dataset's clips; a {fmt} folder is "
                          "scored whole (--split all), or split it into folders of its own")
    clips = [clip for clip in read_clips(root, fmt, class_map) if clip.modality in modalities]
    if not clips:
        raise FormatError(f"{root}: no clip of modalities {','.join(modalities)} in this {fmt} folder")
    return clips


def read_clips(root: Path, fmt: str = "auto", class_map: dict[str, str | None] | None = None) -> list:
    """The clips of a folder in another format (``fmt`` "auto": detected). Not for "dataset"."""
    _load()
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in _READERS:
        raise FormatError(f"unknown label format {fmt!r}; known: {', '.join(formats())}")
    clips = _READERS[fmt][1](Path(root), ClassMap(class_map or {}))
    if not clips:
        raise FormatError(f"{root}: no labeled images or videos found in {fmt} format")
    return clips


# ---------------------------------------------------------------- class names
def parse_class_map(text: str | None) -> dict[str, str | None]:
    """"uav=drone,plane=airplane,kite=-" -> {"uav": "drone", "plane": "airplane", "kite": None}."""
    mapping: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        source, sep, target = (s.strip() for s in item.partition("="))
        if not sep or not source or not target:
            raise FormatError(f"class map entry {item!r} is not <name>=<model class> (or <name>=- to drop it)")
        if target != DROP and target.lower() not in CLASSES:
            raise FormatError(f"class map entry {item!r}: {target!r} is not a model class ({', '.join(CLASSES)})")
        mapping[source.lower()] = None if target == DROP else target.lower()
    return mapping


class ClassMap:
    """A format's class names -> indices of CLASSES (None: dropped)."""

    def __init__(self, mapping: dict[str, str | None]):
        self.mapping = {k.lower(): v for k, v in mapping.items()}

    def index(self, name: str, where: str) -> int | None:
        key = str(name).strip().lower()
        target = self.mapping.get(key, key)
        if target is None:
            return None
        if target not in CLASSES:
            raise FormatError(f"{where}: class {name!r} is not a model class ({', '.join(CLASSES)}); "
                              f"map it with --classes {key}=drone (or {key}=- to leave it out)")
        return CLASSES.index(target)


# ---------------------------------------------------------------- clips of images
_FRAME_NUMBER = re.compile(r"^(.*?)[_\-. ]?(\d+)$")


def group_images(root: Path, images: list[Path]) -> dict[str, list[Path]]:
    """Clip name -> its images in frame order: by sub-folder under ``root``, else by the file name
    without its trailing frame number; images with no number form one clip named after ``root``."""
    groups: dict[str, list[Path]] = {}
    for image in images:
        relative = image.relative_to(root) if image.is_relative_to(root) else Path(image.name)
        if len(relative.parts) > 1:
            name = "_".join(relative.parts[:-1])
        else:
            match = _FRAME_NUMBER.match(image.stem)
            name = match.group(1) if match and match.group(1) else root.name
        groups.setdefault(_clip_name(name), []).append(image)
    return {name: sorted(paths, key=_frame_order) for name, paths in groups.items()}


def _clip_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "clip"


def _frame_order(path: Path):
    match = _FRAME_NUMBER.match(path.stem)
    return (match.group(1), int(match.group(2))) if match else (path.stem, -1)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def modality_of(image) -> str:
    """"IR" for a grey picture (every pixel's channels equal: a thermal camera), else "V".
    ``image``: a picture's path, or the picture (a NumPy array)."""
    import cv2

    picture = image if hasattr(image, "shape") else cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
    if picture is None:
        raise FormatError(f"{image}: cannot read image")
    if picture.ndim == 2 or picture.shape[2] == 1:
        return "IR"
    b, g, r = picture[..., 0], picture[..., 1], picture[..., 2]
    return "IR" if (b == g).all() and (g == r).all() else "V"


def make_clip(name: str, folder: Path, labels_path: Path, images: list[Path], boxes: dict):
    """A Clip of an image sequence with its boxes (frame index -> [(class, x, y, w, h)])."""
    from pipeline.offline.data.dataset import Clip

    return Clip(name, modality_of(images[0]), majority_class(boxes), folder, labels_path, images=tuple(images),
                boxes=boxes)


def majority_class(boxes: dict) -> str:
    """The clip's class (the dataset's clips are named by one): the most frequent of its boxes."""
    counts: dict[int, int] = {}
    for rows in boxes.values():
        for row in rows:
            counts[row[0]] = counts.get(row[0], 0) + 1
    return CLASSES[max(counts, key=counts.get)] if counts else CLASSES[0]


def finite_box(values: list[float], where: str) -> None:
    import math

    if not all(math.isfinite(v) for v in values) or values[2] <= 0 or values[3] <= 0:
        raise FormatError(f"{where}: box {values} is not a box (finite, width and height > 0)")


VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".ts")


def sequence_clip(folder: Path, frames_dir: Path, labels_path: Path, boxes: dict):
    """The one clip of a labeled sequence (a MOT sequence, a CVAT video task) named after ``folder``:
    its frames are the images in ``frames_dir``, else the one video in ``folder``."""
    from pipeline.offline.data.dataset import Clip

    images = list_images(frames_dir) if frames_dir.is_dir() else []
    if images:
        return make_clip(folder.name, frames_dir, labels_path, images, boxes)
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if len(videos) != 1:
        raise FormatError(f"{labels_path}: its frames are neither in {frames_dir} nor one video beside it "
                          f"({len(videos)} videos found)")
    return Clip(folder.name, video_modality(videos[0]), majority_class(boxes), videos[0], labels_path, boxes=boxes)


def video_modality(video: Path) -> str:
    import cv2

    capture = cv2.VideoCapture(str(video))
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise FormatError(f"{video}: cannot read its first frame")
    return modality_of(frame)
