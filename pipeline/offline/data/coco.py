"""COCO ground truth and results: the one builder behind every COCO file the offline code writes or scores.

``dataset.to_coco`` (the labeled clips), ``synthetic.make_clip`` (a rendered clip's ``<name>.json``) and
training's validation (``pipeline.offline.train.validation``) all build their ground truth with
``CocoBuilder``, so image ids, category ids (class index + 1), ``bbox`` = [x, y, w, h] and ``area`` follow
one rule. ``coco_result`` is the matching detection record (COCO results format). No numpy, no torch.
"""
from __future__ import annotations

from typing import Sequence


def category_id(class_id: int) -> int:
    """COCO category id of a 0-based class index (COCO ids start at 1)."""
    return class_id + 1


def categories(class_names: Sequence[str]) -> list[dict]:
    """The ``categories`` list of a COCO file for classes in index order."""
    return [{"id": category_id(i), "name": name, "supercategory": "object"} for i, name in enumerate(class_names)]


def bbox_from_xyxy(x1, y1, x2, y2) -> list[float]:
    """COCO's [x, y, w, h] of a box given by its corners."""
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def coco_result(image_id: int, category: int, xyxy, score) -> dict:
    """One detection in COCO results format; ``category`` is a COCO category id, ``xyxy`` the corners."""
    return {"image_id": image_id, "category_id": category, "bbox": bbox_from_xyxy(*xyxy), "score": float(score)}


class CocoBuilder:
    """Collects images and their labeled boxes into a COCO ground-truth dict.

    Ids are given in insertion order starting at 1 (images and annotations each). Extra keyword
    arguments are stored on the record as they are (images: ``clip``, ``frame_index``, ``modality``;
    annotations: ``track_id``).
    """

    def __init__(self, class_names: Sequence[str]):
        self.class_names = list(class_names)
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, file_name: str, width: int, height: int, **extra) -> int:
        """Append an image; returns its id."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height, **extra})
        return image_id

    def add_box(self, image_id: int, class_id: int, bbox: Sequence[float], **extra) -> None:
        """Append a labeled box: ``class_id`` is the 0-based class index, ``bbox`` COCO's [x, y, w, h]."""
        x, y, w, h = bbox
        self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id,
                                 "category_id": category_id(int(class_id)), "bbox": [x, y, w, h],
                                 "area": w * h, "iscrowd": 0, **extra})

    def build(self, info: dict | None = None) -> dict:
        """The COCO dict (``info`` first when given); the lists are the builder's own, not copies."""
        ground_truth = {} if info is None else {"info": info}
        ground_truth.update(images=self.images, annotations=self.annotations, categories=categories(self.class_names))
        return ground_truth
