"""CVAT XML 1.1: ``annotations.xml`` at the folder's top.

- *CVAT for video*: ``<track label=...>`` of ``<box frame xtl ytl xbr ybr outside>`` (every frame, the
  interpolated ones included, as CVAT exports them; ``outside="1"``: not in view); the frames are the
  one video beside the file or the exported images (``images/frame_000000.png``...). One clip.
- *CVAT for images*: ``<image name width height>`` of ``<box label xtl ytl xbr ybr>``; the images beside
  the file or under ``images/``, in clips by sub-folder or the name before the frame number.
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from pipeline.offline.data.dataset import Clip
from pipeline.offline.data.formats import (ClassMap, FormatError, finite_box, group_images, make_clip, register,
                                           sequence_clip)

ANNOTATIONS = "annotations.xml"
MAX_XML_BYTES = 512 << 20


def detect(root: Path) -> bool:
    return (root / ANNOTATIONS).is_file()


def read(root: Path, classes: ClassMap) -> list:
    path = root / ANNOTATIONS
    document = _parse(path)
    if document.find("track") is not None:
        return [_video_clip(root, path, document, classes)]
    return _image_clips(root, path, document, classes)


def _parse(path: Path) -> ElementTree.Element:
    if path.stat().st_size > MAX_XML_BYTES:
        raise FormatError(f"{path}: larger than {MAX_XML_BYTES >> 20} MB")
    try:  # expat resolves no external entities and limits entity expansion (billion laughs)
        document = ElementTree.fromstring(path.read_bytes())
    except ElementTree.ParseError as exc:
        raise FormatError(f"{path}: not XML ({exc})") from None
    if document.tag != "annotations":
        raise FormatError(f"{path}: a CVAT file's root element is <annotations>, got <{document.tag[:40]}>")
    return document


def _box(element: ElementTree.Element, where: str) -> list[float]:
    try:
        x1, y1, x2, y2 = (float(element.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
    except ValueError:
        raise FormatError(f"{where}: a <box> needs numbers xtl, ytl, xbr, ybr") from None
    box = [x1, y1, x2 - x1, y2 - y1]
    finite_box(box, where)
    return box


def _video_clip(root: Path, path: Path, document: ElementTree.Element, classes: ClassMap) -> Clip:
    boxes: dict[int, list[tuple]] = {}
    for t, track in enumerate(document.iter("track")):
        class_id = classes.index(track.get("label", ""), f"{path}: track {track.get('id', t)}")
        for box in track.iter("box"):
            where = f"{path}: track {track.get('id', t)}, frame {box.get('frame')}"
            if box.get("outside") == "1" or class_id is None:
                continue
            try:
                frame = int(box.get("frame", ""))
            except ValueError:
                raise FormatError(f"{where}: a <box> needs a frame number") from None
            if frame < 0:
                raise FormatError(f"{where}: frame numbers start at 0")
            boxes.setdefault(frame, []).append((class_id, *_box(box, where)))
    return sequence_clip(root, root / "images", path, boxes)


def _image_clips(root: Path, path: Path, document: ElementTree.Element, classes: ClassMap) -> list:
    per_file: dict[Path, list[tuple]] = {}
    for i, image in enumerate(document.iter("image")):
        name = image.get("name", "")
        where = f"{path}: image {name[:60] or i}"
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise FormatError(f"{where}: no usable name")
        file = next((folder / name for folder in (root, root / "images") if (folder / name).is_file()), None)
        if file is None:
            raise FormatError(f"{where}: not found under {root} or {root / 'images'}")
        rows = per_file.setdefault(file, [])
        for box in image.iter("box"):
            class_id = classes.index(box.get("label", ""), where)
            if class_id is not None:
                rows.append((class_id, *_box(box, where)))
    base = root / "images" if (root / "images").is_dir() else root
    clips = []
    for clip_name, files in sorted(group_images(base, list(per_file)).items()):
        boxes = {frame: per_file[f] for frame, f in enumerate(files) if per_file[f]}
        clips.append(make_clip(clip_name, files[0].parent, path, files, boxes))
    return clips


register("cvat", detect, read)
