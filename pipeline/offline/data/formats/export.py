"""Predictions out in a format people can correct in their labeling tool (CVAT, Label Studio and the
like import YOLO) and bring back through ``pipeline.offline.data.formats``:

    labels/<clip>/<frame>.txt   one ``class cx cy w h`` line per prediction at or above ``conf``
    images/<clip>/<frame>.<ext> the scored frame: a link to the source image of an image sequence
                                (a video's frames are not written out: export them with ffmpeg)
    data.yaml                   ``names``: the model's classes

``write_yolo`` takes the evaluation's COCO ground truth (its images name clip and frame) and COCO
results, as ``python -m pipeline eval --export-yolo DIR`` does.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from pipeline.offline.data.dataset import CLASSES


def write_yolo(predictions: list[dict], ground_truth: dict, out: Path, conf: float = 0.25) -> int:
    """Write the YOLO folder; returns the number of boxes written."""
    out = Path(out)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    (out / "data.yaml").write_text(yaml.safe_dump({"names": list(CLASSES)}))
    per_image: dict[int, list[dict]] = {}
    for p in predictions:
        if p["score"] >= conf:
            per_image.setdefault(p["image_id"], []).append(p)
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
