"""Predictions out in a format people can correct in their labeling tool (CVAT, Label Studio and the
like import YOLO) and bring back through ``pipeline.offline.data.formats``:

    labels/<clip>/<frame>.txt   one ``class cx cy w h`` line per prediction at or above ``conf``
    images/<clip>/<frame>.<ext> the scored frame: a link to the source image of an image sequence
                                (a video's frames are not written out: export them with ffmpeg)
    data.yaml                   ``names``: the model's classes

``write_cvat`` writes the same predictions as CVAT for images 1.1 (``annotations.xml`` beside the same
``images/`` links; CVAT's "Upload annotations" takes it, ``formats.cvat`` reads it back).

Both take the evaluation's COCO ground truth (its images name clip and frame) and COCO results, as
``python -m pipeline eval --export-yolo DIR`` / ``--export-cvat DIR`` do.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import yaml

from pipeline.offline.data.dataset import CLASSES


def write_yolo(predictions: list[dict], ground_truth: dict, out: Path, conf: float = 0.25) -> int:
    """Write the YOLO folder; returns the number of boxes written."""
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "data.yaml").write_text(yaml.safe_dump({"names": list(CLASSES)}))
    per_image = _confident(predictions, conf)
    written = 0
    for image in ground_truth["images"]:
        stem = Path(_safe(image["clip"])) / f"{int(image['frame_index']):06d}"
        lines = [_line(p, image["width"], image["height"]) for p in per_image.get(image["id"], ())]
        label = out / "labels" / stem.with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(lines))
        written += len(lines)
        if image.get("source"):
            _link(Path(image["source"]), out / "images" / stem.with_suffix(Path(image["source"]).suffix))
    return written


def write_cvat(predictions: list[dict], ground_truth: dict, out: Path, conf: float = 0.25) -> int:
    """Write ``annotations.xml`` (CVAT for images 1.1) and the image links; returns the boxes written.
    Images of a video's frames are named but not written (export the frames with ffmpeg)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_image = _confident(predictions, conf)
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    labels = ElementTree.SubElement(ElementTree.SubElement(ElementTree.SubElement(root, "meta"), "task"), "labels")
    for name in CLASSES:
        ElementTree.SubElement(ElementTree.SubElement(labels, "label"), "name").text = name
    written = 0
    for number, image in enumerate(ground_truth["images"]):
        source = Path(image["source"]) if image.get("source") else None
        relative = Path(_safe(image["clip"])) / f"{int(image['frame_index']):06d}{source.suffix if source else '.png'}"
        element = ElementTree.SubElement(root, "image", id=str(number), name=relative.as_posix(),
                                         width=str(image["width"]), height=str(image["height"]))
        for prediction in per_image.get(image["id"], ()):
            x, y, w, h = prediction["bbox"]
            ElementTree.SubElement(element, "box", label=CLASSES[int(prediction["category_id"]) - 1], source="auto",
                                   occluded="0", xtl=f"{x:.2f}", ytl=f"{y:.2f}", xbr=f"{x + w:.2f}",
                                   ybr=f"{y + h:.2f}", z_order="0")
            written += 1
        if source is not None:
            _link(source, out / "images" / relative)
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(out / "annotations.xml", encoding="utf-8", xml_declaration=True)
    return written


def _confident(predictions: list[dict], conf: float) -> dict[int, list[dict]]:
    per_image: dict[int, list[dict]] = {}
    for p in predictions:
        if p["score"] >= conf:
            per_image.setdefault(p["image_id"], []).append(p)
    return per_image


def _line(prediction: dict, width: int, height: int) -> str:
    x, y, w, h = prediction["bbox"]
    cx, cy = min(max((x + w / 2) / width, 0.0), 1.0), min(max((y + h / 2) / height, 0.0), 1.0)
    return f"{int(prediction['category_id']) - 1} {cx:.6f} {cy:.6f} {min(w / width, 1.0):.6f} {min(h / height, 1.0):.6f}\n"


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    os.symlink(source.resolve(), target)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name)).strip(".") or "clip"
