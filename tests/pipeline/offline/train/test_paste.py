"""pipeline.offline.train.paste: real objects pasted onto other crops, with their boxes, repeatably."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.offline import train
from pipeline.offline.train import paste

PLAIN = {"contrast": (1, 1), "brightness": 0, "gray": 0, "flip": 0.0}   # no photometric change


def _object_clip() -> train.ClipFrames:
    """An IR frame: a 12x8 hot object (220) on a flat, slightly noisy 60 background."""
    frame = np.random.default_rng(0).normal(60, 1.5, (256, 320, 1)).clip(0, 255).astype(np.uint8)
    frame[100:108, 150:162] = 220
    return train.ClipFrames("hot", "IR", frame[None], [0], [np.array([[0, 150, 100, 162, 108]], np.float32)])


def _empty_clip(value: int = 100) -> train.ClipFrames:
    """A visible frame without objects: the background the objects land on."""
    frame = np.full((512, 640, 3), value, np.uint8)
    return train.ClipFrames("sky", "V", frame[None], [0], [np.zeros((0, 5), np.float32)])


def test_cut_object_mattes_the_object_not_its_background():
    clip = _object_clip()
    difference, matte, (left, top) = paste.cut_object(torch.from_numpy(clip.frames[0]), clip.boxes[0][0])
    rows, cols = matte.shape[1:]
    inner = matte[0, int(top) + 1:int(top) + 7, int(left) + 1:int(left) + 11]
    assert inner.min() > 0.99                              # the object itself is pasted whole
    outside = matte.clone()
    outside[0, int(top):int(top) + 8, int(left):int(left) + 12] = 0
    assert outside.max() < 0.05                             # its surroundings are not
    assert difference[0, int(top) + 4, int(left) + 6] == pytest.approx(160, abs=4)   # 220 over 60
    assert rows > 8 and cols > 12                           # a border ring was taken around the box


def test_pasted_objects_get_their_boxes_and_darken_or_brighten_the_new_background():
    """Background crops of an empty frame: every box a paste adds holds the object's contrast, scaled by
    its gain; outside the boxes the crop keeps its background (or the letterbox padding)."""
    augment = train.Augment(crop=128, positive_fraction=0.0, copy_paste=1.0, **PLAIN)
    sampler = train.CropSampler([_object_clip(), _empty_clip()], (512, 640), augment, torch.device("cpu"),
                                on_device=False)
    plans = [plan for plan in sampler.draw(40, np.random.default_rng(1)) if plan["group"] == 1]
    assert plans and all(1 <= len(plan["paste"]) <= paste.MAX_PASTES for plan in plans)
    images = sampler.render(plans)
    for image, plan in zip(images, plans):
        rows = sampler._targets(plan)
        assert len(rows) == len(plan["paste"])
        outside = torch.ones(128, 128, dtype=torch.bool)
        for (cls, cx, cy, w, h), pasted in zip(rows, plan["paste"]):
            assert cls == 0 and paste.SIDE_RANGE[0] - 0.01 <= max(w, h) <= paste.SIDE_RANGE[1] + 0.01
            x1, y1, x2, y2 = int(cx - w / 2), int(cy - h / 2), int(np.ceil(cx + w / 2)), int(np.ceil(cy + h / 2))
            outside[max(y1 - 1, 0):y2 + 1, max(x1 - 1, 0):x2 + 1] = False
            peak = image[0, y1:y2, x1:x2].max()
            if max(w, h) >= 8:   # big enough to keep its 160 contrast through the resize
                assert peak - 100 == pytest.approx(min(160 * pasted["gain"], 155), rel=0.15)
        untouched = image[:, outside]
        assert untouched.min() > 99 and untouched.max() < 115   # frame (100), padding (114), blends of them


def test_pastes_never_cover_labeled_objects_and_repeat_exactly():
    augment = train.Augment(crop=96, positive_fraction=1.0, copy_paste=1.0, **PLAIN)
    sampler = train.CropSampler([_object_clip()], (512, 640), augment, torch.device("cpu"), on_device=False)
    plans = sampler.draw(30, np.random.default_rng(2))
    again = sampler.draw(30, np.random.default_rng(2))
    assert plans == again
    torch.testing.assert_close(sampler.render(plans), sampler.render(again))
    for plan in plans:
        rows = sampler._targets(plan)
        boxes = np.stack([rows[:, 1] - rows[:, 3] / 2, rows[:, 2] - rows[:, 4] / 2,
                          rows[:, 1] + rows[:, 3] / 2, rows[:, 2] + rows[:, 4] / 2], 1)
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                overlap_w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                overlap_h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                assert overlap_w <= 1e-3 or overlap_h <= 1e-3


def test_paste_off_draws_nothing_and_cuts_the_original_crops():
    clips = [_object_clip(), _empty_clip()]
    off = train.CropSampler(clips, (512, 640), train.Augment(crop=64), torch.device("cpu"), on_device=False)
    plans = off.draw(20, np.random.default_rng(5))
    assert all("paste" not in plan for plan in plans)
    on = train.CropSampler(clips, (512, 640), train.Augment(crop=64, copy_paste=0.5), torch.device("cpu"),
                           on_device=False)
    assert sum(bool(plan["paste"]) for plan in on.draw(200, np.random.default_rng(5))) == pytest.approx(100, abs=25)


def test_flipped_paste_keeps_the_object_inside_its_box():
    """An object off-centre in its patch (cut at the frame's edge) must land in its box when mirrored."""
    frame = np.full((64, 64, 1), 50, np.uint8)
    frame[20:26, 0:10] = 230      # at the left edge: the patch has no ring on that side
    box = np.array([0, 0, 20, 10, 26], np.float32)
    for flip in (False, True):
        image = torch.full((3, 64, 64), 100.0)
        spec = {"frame": 0, "box": 0, "factor": 2.0, "x1": 20.0, "y1": 30.0, "gain": 1.0, "flip": flip}
        paste.paste_into(image, torch.from_numpy(frame), box, spec)
        cls, cx, cy, w, h = paste.paste_box(spec, box)
        inside = image[0, int(cy - h / 2) + 1:int(cy + h / 2) - 1, int(cx - w / 2) + 1:int(cx + w / 2) - 1]
        assert inside.min() > 250 * 0.9 and (image[0] > 150).sum() <= w * h * 1.1


def test_a_paste_that_cannot_be_seen_gets_no_label():
    """A hot object on a saturated background changes nothing: labeling it would teach the model to
    find drones where there is nothing to see."""
    augment = train.Augment(crop=96, positive_fraction=0.0, copy_paste=1.0, **PLAIN)
    sampler = train.CropSampler([_object_clip(), _empty_clip(value=255)], (512, 640), augment,
                                torch.device("cpu"), on_device=False)
    plans = [plan for plan in sampler.draw(40, np.random.default_rng(4)) if plan["group"] == 1]
    assert any(pasted["x1"] > 10 for plan in plans for pasted in plan["paste"])
    sampler.render(plans)
    inside = [plan for plan in plans if all(p["visible"] is False for p in plan["paste"])]
    assert inside and all(len(sampler._targets(plan)) == 0 for plan in inside)


def test_pastes_land_on_the_frame_not_on_the_letterbox_padding():
    augment = train.Augment(crop=128, positive_fraction=0.0, copy_paste=1.0, **PLAIN)
    sampler = train.CropSampler([_object_clip()], (512, 640), augment, torch.device("cpu"), on_device=False)
    plans = sampler.draw(60, np.random.default_rng(6))
    edge = 0
    for plan in plans:
        x1, y1, x2, y2 = sampler._frame_area(plan)
        edge += (x1, y1, x2, y2) != (0, 0, 128, 128)
        for pasted, row in zip(plan["paste"], [paste.paste_box(p, sampler.groups[0].boxes[0][0]) for p in plan["paste"]]):
            assert x1 - 1e-6 <= row[1] - row[3] / 2 and row[1] + row[3] / 2 <= x2 + 1e-6
            assert y1 - 1e-6 <= row[2] - row[4] / 2 and row[2] + row[4] / 2 <= y2 + 1e-6
    assert edge > 10


@pytest.mark.parametrize("box", [(0, 400, 300, 420, 310), (0, 50, 60, 50, 70), (0, -30, -30, -10, -10)])
def test_a_label_outside_its_frame_is_not_pasted_and_not_labeled(box):
    """User labels are untrusted: a box beyond the frame or of no width cuts nothing; no crash, no label."""
    frame = torch.full((128, 160, 1), 50, dtype=torch.uint8)
    image = torch.full((3, 64, 64), 100.0)
    spec = {"frame": 0, "box": 0, "factor": 1.0, "x1": 10.0, "y1": 10.0, "gain": 1.0, "flip": False}
    assert paste.paste_into(image, frame, np.array(box, np.float32), spec) is False
    assert (image == 100).all()
