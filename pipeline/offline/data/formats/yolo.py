"""YOLO (Ultralytics/Darknet): ``images/**/<name>.<ext>`` and ``labels/**/<name>.txt`` with one line
``class cx cy w h`` per box, normalised to [0, 1]; class names from ``data.yaml`` (``names``: a list or
an index -> name map), ``classes.txt`` or ``obj.names``, else the class numbers themselves (map them
with ``--classes 0=drone``). An image without a label file has no objects."""
from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.offline.data.dataset import _image_size
from pipeline.offline.data.formats import (ClassMap, FormatError, finite_box, group_images, list_images, make_clip,
                                           register)


def detect(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir()


def read(root: Path, classes: ClassMap) -> list:
    names = class_names(root)
    clips = []
    for name, images in sorted(group_images(root / "images", list_images(root / "images")).items()):
        boxes = {}
        for frame, image in enumerate(images):
            rows = _read_label_file(label_path(root, image), image, names, classes)
            if rows:
                boxes[frame] = rows
        clips.append(make_clip(name, images[0].parent, root / "labels", images, boxes))
    return clips


def label_path(root: Path, image: Path) -> Path:
    return (root / "labels" / image.relative_to(root / "images")).with_suffix(".txt")


def class_names(root: Path) -> dict[int, str]:
    for yaml_name in ("data.yaml", "dataset.yaml"):
        path = root / yaml_name
        if path.is_file():
            return _names_from_yaml(path)
    for text_name in ("classes.txt", "obj.names"):
        path = root / text_name
        if path.is_file():
            lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
            return {i: name for i, name in enumerate(line for line in lines if line)}
    return {}


def _names_from_yaml(path: Path) -> dict[int, str]:
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        return {int(k): str(v) for k, v in names.items()}
    raise FormatError(f"{path}: 'names' must be a list of class names or a map of class numbers to names")


def _read_label_file(path: Path, image: Path, names: dict[int, str], classes: ClassMap) -> list[tuple]:
    if not path.is_file():
        return []
    width, height = _image_size(image)
    rows = []
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        fields = line.split()
        if len(fields) != 5:
            raise FormatError(f"{where}: expected 'class cx cy w h' (5 numbers), got {len(fields)} fields")
        try:
            number = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise FormatError(f"{where}: not numbers: {line.strip()[:80]!r}") from None
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise FormatError(f"{where}: YOLO boxes are normalised to [0, 1], got {line.strip()[:80]!r}")
        if names and number not in names:
            raise FormatError(f"{where}: class {number} is not in the class names ({len(names)} named)")
        class_id = classes.index(names.get(number, str(number)), where)
        if class_id is None:
            continue
        box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
        finite_box(box, where)
        rows.append((class_id, *box))
    return rows


register("yolo", detect, read)
