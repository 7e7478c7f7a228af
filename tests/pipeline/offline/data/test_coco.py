"""pipeline.offline.data.coco: the one COCO ground-truth builder and the results record."""
from __future__ import annotations

import json

import numpy as np

from pipeline.offline.data import coco, dataset, synthetic


def test_builder_numbers_images_and_boxes_from_one_and_maps_classes_to_categories():
    builder = coco.CocoBuilder(["drone", "bird"])
    first = builder.add_image("c/000000", 640, 512, modality="V")
    second = builder.add_image("c/000003", 640, 512, modality="V", frame_index=3)
    builder.add_box(first, 1, (10.0, 20.0, 4.0, 5.0))
    builder.add_box(second, 0, (1.0, 2.0, 3.0, 3.0), track_id=7)
    truth = builder.build({"description": "test"})
    assert list(truth) == ["info", "images", "annotations", "categories"]
    assert [image["id"] for image in truth["images"]] == [1, 2] and truth["images"][1]["frame_index"] == 3
    assert truth["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 4.0, 5.0], "area": 20.0, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 3.0], "area": 9.0, "iscrowd": 0,
         "track_id": 7}]
    assert truth["categories"] == [{"id": 1, "name": "drone", "supercategory": "object"},
                                   {"id": 2, "name": "bird", "supercategory": "object"}]
    assert "info" not in builder.build()


def test_corners_become_coco_boxes_and_results():
    corners = np.array([3.5, 4.0, 10.5, 6.0], np.float32)
    assert coco.bbox_from_xyxy(*corners) == [3.5, 4.0, 7.0, 2.0]
    assert coco.coco_result(5, 2, corners, np.float32(0.25)) == {"image_id": 5, "category_id": 2,
                                                                 "bbox": [3.5, 4.0, 7.0, 2.0], "score": 0.25}


def test_dataset_and_synthetic_ground_truth_share_the_categories(synthetic_dataset_root, tmp_path):
    truth = dataset.to_coco(dataset.find_clips(synthetic_dataset_root), stride=10)
    clip = json.loads(synthetic.make_clip(tmp_path, seed=1, frames=3, size=(96, 64)).coco.read_text())
    assert truth["categories"] == clip["categories"] == coco.categories(dataset.CLASSES)
    assert dataset.coco_categories() == coco.categories(dataset.CLASSES)
    assert [image["id"] for image in clip["images"]] == [1, 2, 3]
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] for a in truth["annotations"] + clip["annotations"])
