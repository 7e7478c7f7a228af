"""models.tiling: the tile geometry, the letterbox of a region, the merge across tile borders, and
tiled detection with the shipped model finding targets that the letterboxed frame loses."""
import itertools

import numpy as np
import pytest
import supervision as sv

from models.tiling import (axis_starts, cut_mask, detect_tiled, fitted_tile_size, frame_regions, merge, merge_regions,
                           region_input, tile_count, tile_grid, tile_ratio, tile_size_for, to_frame, wants_tiles)


@pytest.mark.parametrize("length,tile,overlap", [(1920, 640, 64), (1080, 512, 64), (3840, 640, 0), (2160, 512, 100),
                                                 (641, 640, 64), (1001, 333, 17), (7, 5, 1)])
def test_axis_tiles_cover_the_axis_with_at_least_the_overlap(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length  # first at 0, last ends at the edge
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))  # neighbours share >= overlap
    assert all(b > a for a, b in itertools.pairwise(starts))  # no tile twice


def test_an_axis_shorter_than_a_tile_has_one_tile_and_the_overlap_is_at_most_half_a_tile():
    assert axis_starts(400, 640, 64) == [0]
    assert axis_starts(640, 640, 64) == [0]
    assert axis_starts(2000, 640, 640) == axis_starts(2000, 640, 320) == [0, 272, 544, 816, 1088, 1360]


def test_grid_of_1080p_and_4k_and_an_odd_frame():
    grid = tile_grid((1080, 1920), (512, 640), 64)
    assert len(grid) == 12 and grid[0] == (0, 0, 640, 512) and grid[-1] == (1280, 568, 1920, 1080)
    assert len(tile_grid((2160, 3840), (512, 640), 64)) == 35
    odd = tile_grid((300, 1000), (512, 640), 64)  # lower than a tile: clipped to the frame, two columns
    assert odd == [(0, 0, 640, 300), (360, 0, 1000, 300)]
    covered = np.zeros((1081, 1921), bool)[:1080, :1920]
    for x0, y0, x1, y1 in grid:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_fitted_tiles_cover_1080p_in_half_the_tiles_and_4k_in_fewer_never_below_the_scale():
    assert tile_size_for((1080, 1920), (512, 640)) == (512, 640)  # the default: the source's own scale
    fitted = tile_size_for((1080, 1920), (512, 640), None, 64, 0.85)
    assert tile_count((1080, 1920), fitted, 64) == 6 and tile_ratio(fitted, (512, 640)) >= 0.85
    assert tile_count((2160, 3840), tile_size_for((2160, 3840), (512, 640), None, 64, 0.85), 64) == 24
    assert tile_size_for((1080, 1920), (512, 640), (256, 320), 64, 0.5) == (256, 320)  # a set size wins
    assert tile_size_for((512, 640), (512, 640), None, 64, 0.5) == (512, 640)  # nothing to save


@pytest.mark.parametrize("image_hw,input_hw", [((1080, 1920), (512, 640)), ((2160, 3840), (512, 640)),
                                               ((720, 1280), (512, 640)), ((1440, 2560), (512, 640)),
                                               ((1000, 777), (512, 640)), ((256, 320), (64, 96))])
@pytest.mark.parametrize("min_scale", [0.95, 0.85, 0.7, 0.5])
def test_the_fitted_size_needs_no_more_tiles_than_any_scale_allowed_and_is_the_largest_that_few(image_hw, input_hw,
                                                                                              min_scale):
    fitted = fitted_tile_size(image_hw, input_hw, 64, min_scale)  # (64 px tiles: overlap capped at half a tile)
    count, scale = tile_count(image_hw, fitted, 64), tile_ratio(fitted, input_hw)
    assert scale >= min_scale - 1e-9
    tiles = {(int(np.ceil(input_hw[0] / s)), int(np.ceil(input_hw[1] / s))) for s in np.linspace(min_scale, 1.0, 400)}
    scanned = [(tile_ratio(tile, input_hw), tile_count(image_hw, tile, 64)) for tile in tiles]  # (scale, count)
    assert count == min(n for _, n in scanned)  # as few as the finest scan of allowed scales finds
    assert not any(n == count and s > scale + 1e-9 for s, n in scanned)  # at the largest scale that few
    overlaps = [a + fitted[1] - b for a, b in itertools.pairwise(axis_starts(image_hw[1], fitted[1], 64))]
    assert all(o >= min(64, fitted[1] // 2) for o in overlaps)  # neighbours still share the overlap


def test_auto_tiles_only_frames_larger_than_the_input_by_the_factor():
    assert not wants_tiles("auto", (512, 640), (512, 640), 1.5)
    assert not wants_tiles("auto", (720, 960), (512, 640), 1.5)  # 1.5 x: not more than the factor
    assert wants_tiles("auto", (1080, 1920), (512, 640), 1.5)
    assert wants_tiles("on", (512, 640), (512, 640), 1.5) and not wants_tiles("off", (2160, 3840), (512, 640), 1.5)


def test_a_tile_of_the_input_size_passes_unscaled_and_an_edge_tile_is_not_enlarged():
    image = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    padded, ratio = region_input(image, (427, 284, 1067, 796), (512, 640), 1.0)
    assert ratio == 1.0 and np.array_equal(padded, image[284:796, 427:1067])
    small, ratio = region_input(image, (0, 0, 300, 200), (512, 640), tile_ratio((512, 640), (512, 640)))
    assert ratio == 1.0 and np.array_equal(small[:200, :300], image[:200, :300]) and (small[200:] == 114).all()
    assert tile_ratio((1024, 1280), (512, 640)) == 0.5  # larger tiles are scaled down like the whole frame


def test_boxes_return_to_frame_pixels_and_cut_boxes_are_those_on_inner_borders():
    dets = np.array([[0, 10, 20, 30, 0.9, 0], [620, 5, 640, 25, 0.8, 0]], np.float32)
    region = (427, 284, 1067, 796)
    moved = to_frame(dets, region)
    assert moved[0, :4].tolist() == [427, 294, 447, 314] and moved[1, :4].tolist() == [1047, 289, 1067, 309]
    assert cut_mask(moved, region, (1080, 1920)).tolist() == [True, True]  # left and right borders are inner
    corner = to_frame(dets[:1], (0, 0, 640, 512))
    assert cut_mask(corner, (0, 0, 640, 512), (1080, 1920)).tolist() == [False]  # the frame's own edge


def test_an_object_split_by_a_border_gives_one_box_the_whole_one():
    whole = [600, 100, 660, 130, 0.70, 0]  # inside the right tile
    part = [600, 100, 640, 130, 0.90, 0]  # the left tile's view, cut at its border x=640, scored higher
    merged = merge(np.array([whole, part], np.float32), np.array([False, True]))
    assert merged.shape == (1, 6)
    assert merged[0, :4].tolist() == [600, 100, 660, 130] and merged[0, 4] == pytest.approx(0.90)


def test_objectness_columns_travel_through_the_merge_the_surest_view_kept():
    whole = [600, 100, 660, 130, 0.70, 0, 0.75]   # 7th column: the head's objectness (Detector objectness=True)
    part = [600, 100, 640, 130, 0.90, 0, 0.95]
    merged = merge(np.array([whole, part], np.float32), np.array([False, True]))
    assert merged.shape == (1, 7) and merged[0, 6] == pytest.approx(0.95)
    assert to_frame(np.zeros((0, 7), np.float32), (10, 20, 100, 100)).shape == (0, 7)
    assert merge(np.zeros((0, 7), np.float32), np.zeros(0, bool)).shape == (0, 7)


def test_an_uncut_sharp_box_is_not_widened_by_a_coarse_overlapping_one():
    sharp = [100, 100, 110, 108, 0.9, 0]
    coarse = [98, 97, 113, 111, 0.5, 0]  # the downscaled whole-frame pass's box of the same object
    merged = merge(np.array([sharp, coarse], np.float32), np.array([False, False]))
    assert merged.tolist() == [pytest.approx(sharp)]


def test_neighbours_stay_two_and_class_aware_merge_keeps_other_classes():
    a, b = [100, 100, 110, 110, 0.9, 0], [112, 100, 122, 110, 0.8, 0]  # side by side, not overlapping
    assert len(merge(np.array([a, b], np.float32), np.zeros(2, bool))) == 2
    bird = [101, 100, 111, 110, 0.7, 1]
    assert len(merge(np.array([a, bird], np.float32), np.zeros(2, bool), class_agnostic=True)) == 1
    assert len(merge(np.array([a, bird], np.float32), np.zeros(2, bool), class_agnostic=False)) == 2
    assert merge(np.zeros((0, 6), np.float32), np.zeros(0, bool)).shape == (0, 6)


def test_merge_regions_over_a_grid_joins_a_border_object_seen_by_two_tiles():
    regions = frame_regions((1080, 1920), (512, 640), None, 64, whole_frame=False)
    # an object at x 600-620 lies in the overlap of tiles 0 (0-640) and 1 (427-1067): seen whole by both
    per_region = [np.zeros((0, 6), np.float32) for _ in regions]
    per_region[0] = np.array([[600, 100, 620, 112, 0.8, 0]], np.float32)
    per_region[1] = np.array([[600.5, 100, 620, 112.5, 0.7, 0]], np.float32)
    merged = merge_regions(per_region, regions, (1080, 1920), whole_first=False)
    assert len(merged) == 1 and merged[0, 4] == pytest.approx(0.8)


def test_tiled_detection_finds_small_drones_the_letterboxed_frame_loses():
    """The demo model (trained with such renders) on a synthetic 1920x1080 sky with 7-13 px drones: tiles at
    scale 1 see them."""
    from models import Detector, shipped_weights
    from pipeline.offline.data.synthetic import render_clip

    detector = Detector(shipped_weights("demo"), backend="onnx", conf_threshold=0.25, class_agnostic_nms=True)
    image, boxes = next(iter(render_clip(2, frames=1, size=(1920, 1080), n_drones=4, n_birds=0, background="sky")))
    truth = np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in boxes], np.float32)
    assert truth.shape == (4, 4) and (truth[:, 2:] - truth[:, :2]).max() < 16
    whole, tiled = detector([image])[0], detect_tiled(detector, image)
    assert (_matches(whole, truth) > 0).sum() <= 1
    assert _matches(tiled, truth).tolist() == [1, 1, 1, 1]  # each drone found, once: the merge left no twin


def _matches(dets: np.ndarray, truth: np.ndarray, iou: float = 0.3) -> np.ndarray:
    """Per true box, how many detections overlap it by IoU >= iou."""
    if not len(dets):
        return np.zeros(len(truth), int)
    return (sv.box_iou_batch(dets[:, :4].astype(float), truth.astype(float)) >= iou).sum(axis=0)


def test_a_small_object_keeps_its_sharp_tile_box_over_a_higher_scored_coarse_whole_frame_box():
    regions = [(0, 0, 1920, 1080), (0, 0, 640, 512)]
    whole = np.array([[96, 95, 118, 115, 0.9, 1]], np.float32)  # the 1/3-scale pass: blurred, wrong class
    tile = np.array([[100, 100, 112, 109, 0.6, 0]], np.float32)
    merged = merge_regions([whole, tile], regions, (1080, 1920))
    assert merged[:, :4].tolist() == [[100, 100, 112, 109]] and merged[0, 5] == 0
    assert merged[0, 4] == pytest.approx(0.6)  # a bird's score does not make the drone surer
    whole[0, 5] = 0
    assert merge_regions([whole, tile], regions, (1080, 1920))[0, 4] == pytest.approx(0.9)  # its class's best


def test_a_drone_in_front_of_an_airplane_stays_two_objects():
    regions = [(0, 0, 1920, 1080), (0, 0, 640, 512)]
    airplane_whole = np.array([[100, 100, 400, 300, 0.6, 2]], np.float32)
    tile = np.array([[100, 100, 400, 300, 0.5, 2], [200, 150, 212, 160, 0.8, 0]], np.float32)
    merged = merge_regions([airplane_whole, tile], regions, (1080, 1920))
    assert sorted(merged[:, 5].tolist()) == [0, 2]  # the 12-px drone inside the airplane's box is kept
    same_tile = merge(tile, np.zeros(2, bool), region_ids=np.array([1, 1]))
    assert len(same_tile) == 2  # boxes of one region were NMSed there already


def test_a_large_object_split_by_tiles_keeps_the_whole_frame_box_over_higher_scored_parts():
    regions = [(0, 0, 1920, 1080), (0, 0, 640, 512), (427, 0, 1067, 512)]
    whole = np.array([[300, 200, 1000, 300, 0.5, 2]], np.float32)  # a 700-px airplane: no tile holds it whole
    left = np.array([[300, 200, 640, 300, 0.8, 2]], np.float32)  # cut at x=640
    right = np.array([[427, 200, 1000, 300, 0.7, 2]], np.float32)  # cut at x=427
    merged = merge_regions([whole, left, right], regions, (1080, 1920))
    assert merged[:, :4].tolist() == [[300, 200, 1000, 300]]


def test_an_object_a_tile_holds_whole_keeps_the_tiles_sharp_box_over_a_long_whole_frame_box():
    regions = [(0, 0, 1920, 1080), (0, 0, 640, 512), (427, 0, 1067, 512)]
    whole = np.array([[552, 194, 770, 306, 0.9, 2]], np.float32)  # 218 px, blurred at a third of the scale
    inside = np.array([[560, 200, 760, 300, 0.7, 2]], np.float32)  # the second tile holds it whole
    merged = merge_regions([whole, np.zeros((0, 6), np.float32), inside], regions, (1080, 1920))
    assert merged[:, :4].tolist() == [[560, 200, 760, 300]] and merged[0, 4] == pytest.approx(0.9)


def test_a_frame_that_would_need_too_many_tiles_is_examined_whole():
    assert frame_regions((1, 2_000_000), (512, 640), None, 64) == [(0, 0, 2_000_000, 1)]
    assert frame_regions((1, 2_000_000), (512, 640), None, 64, whole_frame=False) == [(0, 0, 2_000_000, 1)]
    assert len(frame_regions((2160, 3840), (512, 640), None, 64)) == 1 + 35
    assert len(frame_regions((4320, 7680), (512, 640), None, 64)) == 1  # 140 tiles: set a larger tile_size
    assert len(frame_regions((4320, 7680), (512, 640), (1024, 1280), 64)) == 1 + 35
