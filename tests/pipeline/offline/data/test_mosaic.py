"""pipeline.offline.data.mosaic: clips laid out on HD canvases with their labels shifted, and synthetic HD clips."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.offline.data import dataset, mosaic
from pipeline.offline.data.dataset import DEFAULT_ROOT

requires_real_data = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"real dataset absent at {DEFAULT_ROOT}")


def _cell(boxes, classes, value=0):
    image = np.full((512, 640, 3), value, np.uint8)
    return mosaic.CellFrame(image, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64))


def _clips(root, names):
    by_name = {clip.name: clip for clip in dataset.find_clips(root)}
    return [by_name[name] for name in names]


def test_a_box_in_cell_1_0_lands_640_px_right():
    layout = mosaic.grid_layout(1080)
    cells = [_cell([], []), _cell([[10, 10, 30, 20]], [0]), _cell([], []), _cell([[5, 6, 7, 8]], [2])]
    frame = mosaic.compose(cells, layout)
    assert frame.boxes.tolist() == [[650, 10, 670, 20], [5, 518, 7, 520]]   # cell (1, 0), then cell (0, 1)
    assert frame.classes.tolist() == [0, 2]


@pytest.mark.parametrize("size, wh, grid", [(1080, (1920, 1080), (3, 2)), (2160, (3840, 2160), (6, 4))])
def test_canvas_sizes_and_grid(size, wh, grid):
    layout = mosaic.grid_layout(size)
    assert layout.canvas_wh == wh and layout.cells == grid[0] * grid[1]
    assert layout.offsets[-1] == ((grid[0] - 1) * 640, (grid[1] - 1) * 512)
    frame = mosaic.compose([_cell([], [], value=200)] * layout.cells, layout)
    assert frame.image.shape == (wh[1], wh[0], 3)
    assert (frame.image[:grid[1] * 512] == 200).all()
    assert (frame.image[grid[1] * 512:] == mosaic.PAD_GREY).all()   # the padding below the cells


def test_cell_at_finds_cells_and_padding():
    layout = mosaic.grid_layout(1080)
    assert layout.cell_at([[650, 10], [10, 520], [1919, 1023], [10, 1050]]).tolist() == [1, 3, 5, -1]


def test_blurred_padding_continues_the_cells_above():
    layout = mosaic.grid_layout(1080)
    cells = [_cell([], [], value=40 * (i + 1)) for i in range(layout.cells)]
    grey, blurred = (mosaic.compose(cells, layout, fill) for fill in ("grey", "blur"))
    assert np.array_equal(grey.image[:1024], blurred.image[:1024])
    # below cell (1, 1) (value 200) the mirrored, blurred border is near 200, not the grey 114
    assert abs(float(blurred.image[1040:, 800:1100].mean()) - 200) < 10
    with pytest.raises(ValueError):
        mosaic.compose(cells, layout, "black")


def test_empty_cells_stay_grey_and_too_many_cells_are_refused():
    layout = mosaic.grid_layout(1080)
    frame = mosaic.compose([_cell([[1, 2, 3, 4]], [1], value=9)], layout)
    assert (frame.image[:512, 640:] == mosaic.PAD_GREY).all() and len(frame.boxes) == 1
    with pytest.raises(ValueError):
        mosaic.compose([_cell([], [])] * 7, layout)


def test_mosaic_of_dataset_clips_shifts_and_scales_their_labels(synthetic_dataset_root):
    """V_DRONE_900 (640x512) in cell 1 at (640, 0); IR_DRONE_902 (320x256) in cell 2, enlarged 2x."""
    clips = _clips(synthetic_dataset_root, ["V_BIRD_901", "V_DRONE_900", "IR_DRONE_902"])
    frame = next(mosaic.iter_mosaic(clips, 1080, frames=1))
    _, visible = next(dataset.iter_frames(clips[1]))
    assert np.array_equal(frame.image[:512, 640:1280], visible)
    expected = []
    for clip, (dx, dy), scale in zip(clips, [(0, 0), (640, 0), (1280, 0)], [1, 1, 2]):
        for class_id, x, y, w, h in dataset.read_labels(clip)[0]:
            expected.append([class_id, x * scale + dx, y * scale + dy, (x + w) * scale + dx, (y + h) * scale + dy])
    got = np.column_stack([frame.classes, frame.boxes])
    assert np.allclose(got, np.array(expected), atol=0.01)


def test_shortest_clip_ends_the_mosaic_unless_it_loops(synthetic_dataset_root):
    clips = _clips(synthetic_dataset_root, ["V_DRONE_900", "IR_DRONE_902"])   # 30 frames each
    assert sum(1 for _ in mosaic.iter_mosaic(clips, 1080)) == 30
    looped = list(mosaic.iter_cell_rows(clips, frames=32, loop=True))
    assert len(looped) == 32
    assert np.array_equal(looped[30][0].image, looped[0][0].image)   # started over
    assert np.array_equal(looped[31][1].boxes, looped[1][1].boxes)
    with pytest.raises(ValueError):
        next(mosaic.iter_cell_rows(clips, loop=True))


def test_tight_visible_boxes_shrink_loose_visible_labels_only(loose_visible_dataset_root):
    clips = _clips(loose_visible_dataset_root, ["V_DRONE_900", "IR_DRONE_902"])
    loose = next(mosaic.iter_cell_rows(clips, frames=1))
    tight = next(mosaic.iter_cell_rows(clips, frames=1, visible_boxes="tight"))

    def areas(cell):
        return np.prod(cell.boxes[:, 2:] - cell.boxes[:, :2], axis=1)

    assert (areas(tight[0]) < areas(loose[0])).any() and (areas(tight[0]) <= areas(loose[0]) + 1e-3).all()
    assert np.array_equal(tight[1].boxes, loose[1].boxes)   # thermal boxes are tight already


def test_choose_clips_is_seeded_and_ignores_the_input_order(synthetic_dataset_root):
    clips = dataset.find_clips(synthetic_dataset_root)
    first = mosaic.choose_clips(clips, 2, seed=5)
    assert first == mosaic.choose_clips(list(reversed(clips)), 2, seed=5)
    assert len(first) == 2 and len(mosaic.choose_clips(clips, 10)) == 3
    orders = {tuple(c.name for c in mosaic.choose_clips(clips, 3, seed)) for seed in range(8)}
    assert len(orders) > 1


def test_write_mosaic_writes_video_and_coco(synthetic_dataset_root, tmp_path):
    import av

    clips = _clips(synthetic_dataset_root, ["V_DRONE_900"])
    frames = list(mosaic.iter_mosaic(clips, 1080, frames=3))
    video = mosaic.write_mosaic(tmp_path, iter(frames), "m")
    with av.open(str(video)) as container:
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (1080, 1920, 3)
    coco = json.loads((tmp_path / "m.json").read_text())
    assert len(coco["images"]) == 3 and coco["images"][0]["width"] == 1920
    assert len(coco["annotations"]) == sum(len(f.boxes) for f in frames)


def test_synthetic_hd_is_deterministic_with_small_targets_inside_the_frame():
    first, again = (list(mosaic.render_hd(seed=3, frames=3, size=1080)) for _ in range(2))
    other = next(mosaic.render_hd(seed=4, frames=1, size=1080))
    for a, b in zip(first, again):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(first[0].image, other.image)
    drones, birds = mosaic.hd_target_counts(1080)
    for frame in first:
        assert frame.image.shape == (1080, 1920, 3)
        assert 0 < len(frame.boxes) <= drones + birds and set(frame.classes.tolist()) <= {0, 1}
        sides = np.max(frame.boxes[:, 2:] - frame.boxes[:, :2], axis=1)
        assert (sides >= 3).all() and (sides <= 40).all()
        assert (frame.boxes[:, :2] >= 0).all() and (frame.boxes[:, 2] <= 1920).all() and (frame.boxes[:, 3] <= 1080).all()


def test_synthetic_4k_has_four_times_the_targets():
    assert mosaic.hd_target_counts(2160) == (4 * mosaic.HD_DRONES, 4 * mosaic.HD_BIRDS)
    frame = next(mosaic.render_hd(seed=1, frames=1, size=2160, modality="IR"))
    assert frame.image.shape == (2160, 3840, 3)
    assert len(frame.boxes) > mosaic.HD_DRONES + mosaic.HD_BIRDS   # more than a 1080p frame could hold
    assert (frame.boxes[:, 2] <= 3840).all() and (frame.boxes[:, 3] <= 2160).all()


@requires_real_data
def test_mosaic_of_the_real_test_split():
    clips = mosaic.choose_clips(dataset.load_split("test"), 6, seed=0)
    frame = next(mosaic.iter_mosaic(clips, 1080, frames=1))
    assert frame.image.shape == (1080, 1920, 3)
    labels = [dataset.read_labels(clip).get(0, []) for clip in clips]
    assert len(frame.boxes) == sum(len(rows) for rows in labels)
    cells = mosaic.grid_layout(1080).cell_at((frame.boxes[:, :2] + frame.boxes[:, 2:]) / 2)
    assert np.bincount(cells, minlength=6).tolist() == [len(rows) for rows in labels]
