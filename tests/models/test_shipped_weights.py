"""The weights the project ships: each loads, carries its meta, has a model card; the default one
finds the drones of the embedded demo clip."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv

import models
from pipeline.dataset import CLASSES
from pipeline.synthetic import make_clip

WEIGHTS = sorted((Path(models.__file__).parent / "weights").glob("*.pt"))


@pytest.mark.parametrize("path", WEIGHTS, ids=[p.name for p in WEIGHTS])
def test_shipped_weights_load_with_meta_and_card(path):
    model, meta = models.load_checkpoint(path)
    assert meta["class_names"] == list(CLASSES) and meta["input_size"] == (512, 640)
    assert path.stat().st_size < 40 * 2**20
    card = path.with_suffix(".md")
    assert card.is_file(), f"{path.name} has no model card"
    assert meta["name"] in card.read_text()


def test_default_is_the_nano_sigres_p1():
    assert models.load_checkpoint(models.DEFAULT_WEIGHTS)[1]["name"] == "yolox-nano-gssam-sigres-p1"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="goal not met yet: the shipped default finds 47.5 % (drones < 12 px and "
                   "20-30 px boxed too large); see models/weights/default.md. Strict: passing flags the goal as met.")
def test_default_model_finds_the_drones_of_the_demo_clip(tmp_path):
    """The issue's bar: >= 90 % of the drones of `make demo`'s clip at IoU 0.5 (every 3rd frame)."""
    paths = make_clip(tmp_path, seed=7, frames=300, size=(640, 512))  # exactly what `make demo` replays
    coco = json.loads(paths.coco.read_text())
    drone = next(c["id"] for c in coco["categories"] if c["name"] == "drone")
    truth: dict[int, list] = {}
    for a in coco["annotations"]:
        if a["category_id"] == drone:
            x, y, w, h = a["bbox"]
            truth.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    frame_to_image = {im["frame_index"]: im["id"] for im in coco["images"]}
    detector = models.Detector(models.DEFAULT_WEIGHTS, backend="onnx")
    capture, found, total, index = cv2.VideoCapture(str(paths.video)), 0, 0, 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        boxes = truth.get(frame_to_image[index], []) if index % 3 == 0 else []
        if boxes:
            dets = detector([frame])[0]
            dets = dets[dets[:, 5] == CLASSES.index("drone")]
            total += len(boxes)
            if len(dets):
                found += int((sv.box_iou_batch(np.array(boxes, float), dets[:, :4].astype(float)).max(1) >= 0.5).sum())
        index += 1
    assert total > 100
    assert found / total >= 0.90, f"default model found {found}/{total} demo drones"
