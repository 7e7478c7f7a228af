"""Zones (pipeline/runtime/zones.py): point in polygon with boundaries inside, concave polygons, the
track stage's keep_mask / allows_alert, the detect stage's covers, and the drawing."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.runtime.zones import (
    IGNORE_OUTLINE_BGR,
    REQUIRE_OUTLINE_BGR,
    Zones,
    points_inside,
)

SQUARE = [[10, 10], [50, 10], [50, 50], [10, 50]]
# a U opening upwards: two 10-px arms (x 0-10 and 30-40) joined by a base (y 30-40); the notch between
# the arms, x 10-30 and y 0-30, is outside
U_SHAPE = [[0, 0], [10, 0], [10, 30], [30, 30], [30, 0], [40, 0], [40, 40], [0, 40]]


def zone(kind: str, polygon, name=None):
    return SimpleNamespace(kind=kind, polygon=polygon, name=name)


def det(cx: float, cy: float, half: float = 3.0) -> list[float]:
    return [cx - half, cy - half, cx + half, cy + half, 0.9, 0]


@pytest.mark.parametrize("point, inside", [
    ((30, 30), True), ((5, 30), False), ((55, 30), False), ((30, 5), False), ((30, 55), False),
    ((10, 30), True), ((50, 30), True), ((30, 10), True), ((30, 50), True),  # on an edge
    ((10, 10), True), ((50, 50), True),  # on a vertex
    ((9.999, 30), False), ((50.001, 30), False),  # just outside
])
def test_points_inside_a_square_with_its_boundary(point, inside):
    assert points_inside(np.array(SQUARE, float), np.array([point], float)).tolist() == [inside]


@pytest.mark.parametrize("point, inside", [
    ((5, 20), True), ((35, 20), True), ((20, 35), True),  # left arm, right arm, base
    ((20, 15), False), ((20, 29.9), False),  # in the notch
    ((20, 30), True), ((10, 15), True),  # on the notch's floor and side
    ((20, -1), False), ((45, 20), False),
])
def test_points_inside_a_concave_polygon(point, inside):
    assert points_inside(np.array(U_SHAPE, float), np.array([point], float)).tolist() == [inside]


def test_points_inside_takes_many_points_at_once():
    points = np.array([[5, 20], [20, 15], [35, 20], [20, 35], [100, 100]], float)
    assert points_inside(np.array(U_SHAPE, float), points).tolist() == [True, False, True, True, False]


def test_keep_mask_drops_boxes_whose_centre_is_in_an_ignore_zone():
    far_square = [[60, 60], [100, 60], [100, 100], [60, 100]]
    zones = Zones([zone("ignore", far_square), zone("ignore", U_SHAPE), zone("require", [[0, 0], [99, 0], [0, 99]])])
    dets = np.array([det(80, 80), det(5, 30, half=8), det(20, 15), det(120, 20), det(58, 80)], np.float32)
    # in the square; centre in the U's arm (the box reaches beyond it); in the U's notch; nowhere;
    # centre outside the square though the box overlaps it
    assert zones.keep_mask(dets).tolist() == [False, False, True, True, True]
    assert zones.keep_mask(np.zeros((0, 6), np.float32)).tolist() == []


def test_without_ignore_zones_every_detection_is_kept():
    dets = np.array([det(30, 30), det(70, 70)], np.float32)
    assert Zones().keep_mask(dets).tolist() == [True, True]
    assert Zones([zone("require", SQUARE)]).keep_mask(dets).tolist() == [True, True]


def test_allows_alert_only_inside_a_require_zone_when_there_is_one():
    assert Zones().allows_alert([0, 0, 4, 4]) and Zones([zone("ignore", SQUARE)]).allows_alert([0, 0, 4, 4])
    zones = Zones([zone("require", SQUARE), zone("require", [[100, 100], [140, 100], [120, 140]])])
    assert zones.allows_alert([26, 26, 34, 34]) and zones.allows_alert([116, 110, 124, 118])
    assert zones.allows_alert([6, 26, 14, 34])  # centre on the square's left edge
    assert not zones.allows_alert([0, 0, 8, 8]) and not zones.allows_alert([60, 60, 90, 90])


@pytest.mark.parametrize("polygon, region, covered", [
    (SQUARE, (20, 20, 40, 40), True),
    (SQUARE, (10, 10, 50, 50), True),  # the polygon itself: its boundary counts as inside
    (SQUARE, (20, 20, 51, 40), False),  # one side sticks out
    (SQUARE, (0, 0, 60, 60), False),  # the rectangle holds the polygon
    (SQUARE, (60, 60, 80, 80), False),
    # concave: every corner of these rectangles is inside the U, yet they span the notch
    (U_SHAPE, (0, 20, 40, 40), False),
    (U_SHAPE, (5, 5, 35, 35), False),
    # the notch itself: its corners all lie on the U's boundary, its inside is outside
    (U_SHAPE, (10, 0, 30, 30), False),
    (U_SHAPE, (0, 0, 10, 40), True),  # the left arm down to the bottom
    (U_SHAPE, (0, 30, 40, 40), True),  # the base
    (U_SHAPE, (2, 2, 8, 38), True),
    (U_SHAPE, (20, 20, 20, 30), False),  # empty: nothing to skip
])
def test_covers_is_exact_for_convex_and_concave_polygons(polygon, region, covered):
    assert Zones([zone("ignore", polygon)]).covers(region) is covered


def test_covers_needs_one_ignore_zone_holding_the_whole_region():
    halves = Zones([zone("ignore", [[0, 0], [20, 0], [20, 40], [0, 40]]),
                    zone("ignore", [[20, 0], [40, 0], [40, 40], [20, 40]])])
    assert halves.covers((2, 2, 18, 38)) and not halves.covers((10, 10, 30, 30))  # only their union holds it
    assert not Zones([zone("require", SQUARE)]).covers((20, 20, 40, 40))  # require zones skip nothing


def test_a_zone_of_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="zone kinds must be one of"):
        Zones([zone("mask", SQUARE)])


def test_draw_greys_ignore_zones_and_outlines_require_zones_in_place():
    image = np.full((100, 200, 3), 200, np.uint8)
    zones = Zones([zone("ignore", [[10, 10], [60, 10], [60, 60], [10, 60]], name="trees"),
                   zone("require", [[100, 10], [190, 10], [190, 90], [100, 90]], name="runway")])
    zones.draw(image, scale=1.0)
    assert (image[30:45, 30:45] < 200).all() and (image[30:45, 30:45] > 40).all()  # blended, not painted over
    assert (image[35, 10] == IGNORE_OUTLINE_BGR).all()
    assert (image[50, 100] == REQUIRE_OUTLINE_BGR).all() and (image[10, 150] == REQUIRE_OUTLINE_BGR).all()
    assert (image[50, 145] == 200).all()  # a require zone's inside is left as it was
    assert (image[70:, :90] == 200).all()  # outside every zone
    label = image[13:30, 103:160]  # inside the corner by the first point
    assert (label != 200).any(axis=2).sum() > 30 and (label[..., 0] < label[..., 2]).any()  # "runway", yellow


def test_a_zone_without_a_name_gets_no_label():
    image = np.full((100, 200, 3), 200, np.uint8)
    Zones([zone("require", [[100, 10], [190, 10], [190, 90], [100, 90]])]).draw(image, scale=1.0)
    assert (image[13:30, 103:160] == 200).all()


def test_draw_scales_line_widths_and_without_zones_draws_nothing():
    thin, thick = (np.full((100, 100, 3), 200, np.uint8) for _ in range(2))
    zones = Zones([zone("require", [[20, 20], [80, 20], [80, 80], [20, 80]])])
    zones.draw(thin, 1.0)
    zones.draw(thick, 3.0)
    assert (thin[50, 10:30] != 200).any(axis=1).sum() < (thick[50, 10:30] != 200).any(axis=1).sum()
    untouched = np.full((100, 100, 3), 200, np.uint8)
    Zones().draw(untouched, 2.0)
    assert (untouched == 200).all()
