"""COCO: an instances JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h] in pixels,
``categories``) at the folder's top or in ``annotations/``, its images beside it or under ``images/``.
Clips: by ``video_id`` where images have one (COCO-VID, what CVAT exports for videos), else by
sub-folder or the name before the frame number. ``iscrowd`` regions are not objects to find."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.offline.data.formats import (ClassMap, FormatError, finite_box, group_images, make_clip, register)

MAX_JSON_BYTES = 2 << 30


def detect(root: Path) -> bool:
    return instances_file(root, sniff=True) is not None


def instances_file(root: Path, sniff: bool = False) -> Path | None:
    """The instances JSON: the first whose start names images or annotations; when reading (``sniff``
    False) also the only .json there is, so a damaged one is reported rather than overlooked."""
    candidates = [p for folder in (root, root / "annotations") if folder.is_dir() for p in sorted(folder.glob("*.json"))]
    for path in candidates:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if b'"images"' in head or b'"annotations"' in head:
            return path
    return candidates[0] if len(candidates) == 1 and not sniff else None


def read(root: Path, classes: ClassMap) -> list:
    path = instances_file(root)
    if path is None:
        raise FormatError(f"{root}: no COCO instances .json here or in annotations/")
    data = _load(path)
    names = {c.get("id"): str(c.get("name")) for c in _list(data, "categories", path)}
    images = {img.get("id"): img for img in _list(data, "images", path)}
    files = {image_id: _image_file(root, path, img, i) for i, (image_id, img) in enumerate(images.items())}
    per_image = _boxes(data, path, names, images, classes)
    clips = []
    for name, group in sorted(_clips(root, images, files).items()):
        boxes = {frame: per_image[image_id] for frame, image_id in enumerate(group) if per_image.get(image_id)}
        paths = [files[image_id] for image_id in group]
        clips.append(make_clip(name, paths[0].parent, path, paths, boxes))
    return clips


def _load(path: Path) -> dict:
    if path.stat().st_size > MAX_JSON_BYTES:
        raise FormatError(f"{path}: larger than {MAX_JSON_BYTES >> 30} GB")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: a COCO file is one JSON object with images, annotations, categories")
    return data


def _list(data: dict, key: str, path: Path) -> list[dict]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise FormatError(f"{path}: '{key}' must be a list of objects")
    return value


def _image_file(root: Path, path: Path, image: dict, index: int) -> Path:
    name = image.get("file_name")
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise FormatError(f"{path}: images[{index}] has no usable file_name ({str(name)[:60]!r})")
    for folder in (root, root / "images", path.parent, path.parent.parent / "images"):
        if (folder / name).is_file():
            return folder / name
    raise FormatError(f"{path}: images[{index}]: {name} not found under {root} or {root / 'images'}")


def _boxes(data: dict, path: Path, names: dict, images: dict, classes: ClassMap) -> dict:
    per_image: dict = {}
    for index, ann in enumerate(_list(data, "annotations", path)):
        where = f"{path}: annotations[{index}]"
        if ann.get("iscrowd"):
            continue
        image_id, bbox = ann.get("image_id"), ann.get("bbox")
        if image_id not in images:
            raise FormatError(f"{where}: image_id {str(image_id)[:40]!r} is not one of the images")
        if ann.get("category_id") not in names:
            raise FormatError(f"{where}: category_id {str(ann.get('category_id'))[:40]!r} is not a category")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise FormatError(f"{where}: bbox must be [x, y, width, height], got {str(bbox)[:60]}")
        class_id = classes.index(names[ann["category_id"]], where)
        if class_id is None:
            continue
        box = [float(v) for v in bbox]
        finite_box(box, where)
        per_image.setdefault(image_id, []).append((class_id, *box))
    return per_image


def _clips(root: Path, images: dict, files: dict) -> dict[str, list]:
    """Clip name -> image ids in frame order."""
    if images and all("video_id" in img for img in images.values()):
        groups: dict[str, list] = {}
        for image_id, img in images.items():
            groups.setdefault(f"video_{img['video_id']}", []).append(image_id)
        order = {image_id: (img.get("frame_id", 0), str(img.get("file_name"))) for image_id, img in images.items()}
        return {name: sorted(ids, key=lambda i: order[i]) for name, ids in groups.items()}
    by_file = {files[image_id]: image_id for image_id in images}
    base = root / "images" if (root / "images").is_dir() else root
    return {name: [by_file[p] for p in paths] for name, paths in group_images(base, list(by_file)).items()}


register("coco", detect, read)
