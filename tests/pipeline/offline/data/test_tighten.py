import numpy as np
import pytest
import supervision as sv

from pipeline.offline.data import synthetic
from pipeline.offline.data.tighten import tighten_box, tighten_xyxy


def iou(a, b) -> float:
    """IoU of two (x, y, w, h) boxes."""
    return float(sv.box_iou_batch(sv.xywh_to_xyxy(np.array([a])), sv.xywh_to_xyxy(np.array([b])))[0, 0])


def test_loose_boxes_around_rendered_drones_shrink_to_the_renderer_box():
    rng = np.random.default_rng(0)
    loose_iou, tight_iou = [], []
    for seed in range(6):
        for image, boxes in synthetic.render_clip(seed, frames=1, modality="V", background="sky"):
            for box in boxes:
                truth = (box.x, box.y, box.w, box.h)
                loose = synthetic.loose_visible_box(truth, rng)
                loose_iou.append(iou(loose, truth))
                tight_iou.append(iou(tighten_box(image, loose)[0], truth))
    assert len(tight_iou) >= 8
    assert np.mean(loose_iou) < 0.35
    assert np.mean(tight_iou) > 0.65 and np.median(tight_iou) > 0.7


SKY = (200.0, 170.0, 140.0)


def sky_with_blob(rng, contrast=120.0):
    frame = np.full((120, 160, 3), SKY) + rng.normal(0, 1.5, (120, 160, 3))
    frame[50:56, 70:78] -= contrast                        # a 8 x 6 dark object at (70, 50)
    return np.clip(frame, 0, 255).astype(np.uint8)


def test_a_dark_blob_in_a_loose_box_gets_its_exact_extent():
    frame = sky_with_blob(np.random.default_rng(1))
    box, changed = tighten_box(frame, (60.0, 42.0, 28.0, 22.0))
    assert changed and box == (70.0, 50.0, 8.0, 6.0)


@pytest.mark.parametrize("case", ["flat", "busy", "already tight", "spans the box", "faint"])
def test_boxes_that_cannot_be_read_reliably_stay_as_labeled(case):
    rng = np.random.default_rng(2)
    box = (60.0, 42.0, 28.0, 22.0)
    if case == "flat":                     # nothing inside
        frame = np.full((120, 160, 3), 180, np.uint8)
    elif case == "busy":                   # branches / roofs everywhere: the border is no background
        frame = rng.integers(0, 255, (120, 160, 3)).astype(np.uint8)
    elif case == "already tight":          # the object fills the box, touching its opposite sides
        frame = sky_with_blob(rng)
        frame[46:60, 66:82] = 30
        box = (66.0, 46.0, 16.0, 14.0)
    elif case == "spans the box":          # a wire or a wing reaching both sides: the label may be right
        frame = sky_with_blob(rng, contrast=0)
        frame[52:54, 60:88] = 30
    else:                                  # below the contrast a compressed video can be trusted with
        frame = sky_with_blob(rng, contrast=8)
    assert tighten_box(frame, box) == (box, False)


def test_boxes_cut_by_the_frame_edge_and_grey_frames_are_handled():
    frame = sky_with_blob(np.random.default_rng(3))[..., 0]          # one channel
    box, changed = tighten_box(frame, (62.0, -5.0, 30.0, 70.0))      # reaches above the frame
    assert changed and box == (70.0, 50.0, 8.0, 6.0)
    assert tighten_box(frame, (158.0, 118.0, 10.0, 10.0)) == ((158.0, 118.0, 10.0, 10.0), False)


def test_xyxy_rows_keep_their_class_and_count_changes():
    frame = sky_with_blob(np.random.default_rng(4))
    rows = np.array([[1, 60, 42, 88, 64], [0, 0, 0, 10, 10]], np.float32)
    out, changed = tighten_xyxy(frame, rows)
    assert changed == 1
    np.testing.assert_array_equal(out[0], [1, 70, 50, 78, 56])
    np.testing.assert_array_equal(out[1], rows[1])
    assert rows[0, 1] == 60                                          # the input is not modified


def test_label_tightener_reads_only_the_scored_frames_of_visible_clips(synthetic_dataset_root,
                                                                       loose_visible_dataset_root):
    from pipeline.offline.data import dataset
    from pipeline.offline.data.tighten import LabelTightener

    tightener = LabelTightener(stride=5)
    truth = {clip.name: dataset.read_labels(clip) for clip in dataset.find_clips(synthetic_dataset_root)}
    ious = []
    for clip in dataset.find_clips(loose_visible_dataset_root):
        loose, tight = dataset.read_labels(clip), tightener(clip)
        assert tight.keys() == loose.keys()
        for index, rows in loose.items():
            if clip.modality == "IR" or index % 5:       # thermal, or a frame nobody scores: as labeled
                assert tight[index] == rows
                continue
            assert [r[0] for r in tight[index]] == [r[0] for r in rows]
            ious += [iou(t[1:], true[1:]) for t, true in zip(tight[index], truth[clip.name][index])]
    assert np.mean(ious) > 0.6
    assert tightener.boxes == len(ious) and tightener.changed >= 0.8 * len(ious)
