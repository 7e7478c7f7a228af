"""Per-source zones: polygons, in source pixels, where detections are ignored (``ignore``) or where
alone alerts are raised (``require``), as configured under ``sources[].zones``.

A detection or a track is placed by its box centre: a box is in a zone when its centre lies inside
the polygon or on its boundary (boundaries count as inside, so a centre exactly on the line between
two zones is in both). Polygons may be concave; inside is decided by the even-odd rule (a vectorised
ray cast), which is the ordinary inside for a simple polygon.

The detect stage asks ``covers(region)`` to skip tiles no detection would survive in, the track stage
``keep_mask`` / ``allows_alert``, and the annotator ``draw``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("ignore", "require")
ON_EDGE_PX = 1e-6  # a point this close to an edge is on the boundary (float noise of computed centres)
IGNORE_FILL_BGR = (40, 40, 40)  # dark grey, blended: the operator still sees what moves there
IGNORE_FILL_ALPHA = 0.45
IGNORE_OUTLINE_BGR = (110, 110, 110)
REQUIRE_OUTLINE_BGR = (0, 230, 230)  # yellow: none of the class colours of stages.annotate


@dataclass(frozen=True)
class Zone:
    kind: str  # "ignore" or "require"
    polygon: np.ndarray  # P x 2 float64, source pixels, in drawing order
    name: str | None = None


def points_inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point (N x 2), whether it lies inside ``polygon`` (P x 2) or on its boundary."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    start = np.asarray(polygon, np.float64)
    end = np.roll(start, -1, axis=0)
    px, py = points[:, :1], points[:, 1:]  # N x 1, against the E edges along axis 1
    straddles = (start[:, 1] > py) != (end[:, 1] > py)  # the edge crosses the horizontal line through the point
    rise = np.where(end[:, 1] == start[:, 1], 1.0, end[:, 1] - start[:, 1])  # horizontal edges never straddle
    crossing_x = start[:, 0] + (py - start[:, 1]) * (end[:, 0] - start[:, 0]) / rise
    odd = (straddles & (px < crossing_x)).sum(axis=1) % 2 == 1
    return odd | _on_boundary(start, end, points)


def _on_boundary(start: np.ndarray, end: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point, whether it lies within ON_EDGE_PX of any edge (start[i] -> end[i])."""
    direction = end - start  # E x 2
    length2 = np.maximum((direction ** 2).sum(axis=1), 1e-300)  # a repeated vertex: its "edge" is the point
    offset = points[:, None, :] - start[None]  # N x E x 2
    along = np.clip((offset * direction).sum(axis=2) / length2, 0.0, 1.0)
    nearest = start[None] + along[..., None] * direction[None]
    distance2 = ((points[:, None, :] - nearest) ** 2).sum(axis=2)
    return (distance2 <= ON_EDGE_PX ** 2).any(axis=1)


def _edge_enters_open_box(start: np.ndarray, end: np.ndarray, box: Sequence[float]) -> bool:
    """Whether any edge (start[i] -> end[i]) has a point strictly inside the box (x0, y0, x1, y1).
    Liang-Barsky clipping with strict bounds: an edge running along the box's side or touching it at a
    corner does not enter it."""
    t_low = np.zeros(len(start))
    t_high = np.ones(len(start))
    enters = np.ones(len(start), bool)
    for axis, low, high in ((0, box[0], box[2]), (1, box[1], box[3])):
        origin, step = start[:, axis], end[:, axis] - start[:, axis]
        still = step == 0
        enters &= ~still | ((origin > low) & (origin < high))
        safe = np.where(still, 1.0, step)
        to_low, to_high = (low - origin) / safe, (high - origin) / safe
        t_in = np.where(still, -np.inf, np.minimum(to_low, to_high))
        t_out = np.where(still, np.inf, np.maximum(to_low, to_high))
        t_low, t_high = np.maximum(t_low, t_in), np.minimum(t_high, t_out)
    # the strict bounds make the parameter set open: (t_in, t_out) within [0, 1] is empty when they meet
    return bool((enters & (t_low < t_high)).any())


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """N x 2 centres of N x 4 boxes [x1, y1, x2, y2]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


class Zones:
    """One source's zones. Built from its ``sources[].zones`` entries (pipeline.runtime.config.ZoneConfig,
    or anything with ``kind``, ``polygon``, ``name``); with none, every query answers as if zones did
    not exist (keep everything, allow every alert, cover nothing, draw nothing)."""

    def __init__(self, configs: Iterable = ()):
        zones = [Zone(c.kind, np.asarray(c.polygon, np.float64).reshape(-1, 2), getattr(c, "name", None))
                 for c in configs]
        unknown = sorted({z.kind for z in zones} - set(KINDS))
        if unknown:
            raise ValueError(f"zone kinds must be one of {list(KINDS)}, got {unknown}")
        self.ignore = [z for z in zones if z.kind == "ignore"]
        self.require = [z for z in zones if z.kind == "require"]
        self._fills: dict[tuple[int, int], list] = {}  # image size -> ignore zones' fill masks (zones never move)

    def __bool__(self) -> bool:
        return bool(self.ignore or self.require)

    def scaled(self, factor: float) -> "Zones":
        """The same zones in the pixels of a picture ``factor`` times larger (an upscaled drawing canvas)."""
        return Zones(Zone(z.kind, z.polygon * factor, z.name) for z in [*self.ignore, *self.require])

    def keep_mask(self, dets: np.ndarray) -> np.ndarray:
        """Per detection (K x 6 [x1, y1, x2, y2, score, class]), False where its box centre is in an ignore zone."""
        dets = np.asarray(dets).reshape(-1, 6) if np.size(dets) else np.zeros((0, 6))
        keep = np.ones(len(dets), bool)
        if self.ignore and len(dets):
            centres = box_centres(dets[:, :4])
            for zone in self.ignore:
                keep &= ~points_inside(zone.polygon, centres)
        return keep

    def allows_alert(self, box: Sequence[float]) -> bool:
        """True without require zones; otherwise whether the box's (x1, y1, x2, y2) centre is in one of them."""
        if not self.require:
            return True
        centre = box_centres(box[:4])
        return any(bool(points_inside(zone.polygon, centre)[0]) for zone in self.require)

    def covers(self, region: Sequence[float]) -> bool:
        """Whether the rectangle (x0, y0, x1, y1) lies entirely inside one ignore polygon (its boundary
        included), so no box centre in it could survive ``keep_mask``. Exact for concave polygons too: no
        edge may enter the rectangle's open interior, and its centre must be inside. The interior then
        holds no boundary point, so it is wholly inside or wholly outside, and the centre says which.
        (Corners alone are not enough: a concave notch can touch all four.) A rectangle covered only by
        the union of several zones is not covered; an empty one (x1 <= x0 or y1 <= y0) never is."""
        x0, y0, x1, y1 = (float(v) for v in region)
        if x1 <= x0 or y1 <= y0:
            return False
        centre = np.array([[(x0 + x1) / 2, (y0 + y1) / 2]])
        for zone in self.ignore:
            start = zone.polygon
            if points_inside(start, centre)[0] and not _edge_enters_open_box(start, np.roll(start, -1, axis=0),
                                                                              (x0, y0, x1, y1)):
                return True
        return False

    def draw(self, image: np.ndarray, scale: float = 1.0) -> None:
        """Draws the zones onto ``image`` (BGR uint8) in place: ignore zones dark grey, half transparent,
        outlined; require zones a thin yellow outline; each zone's name beside its first point.
        ``scale`` multiplies line widths and text (stages.annotate.ui_scale)."""
        if not self:
            return
        for top, left, mask in self._fill_masks(image.shape[:2]):
            patch = image[top:top + mask.shape[0], left:left + mask.shape[1]]
            blended = patch[mask] * (1 - IGNORE_FILL_ALPHA) + np.array(IGNORE_FILL_BGR) * IGNORE_FILL_ALPHA
            patch[mask] = blended.astype(np.uint8)
        for zone in [*self.ignore, *self.require]:
            ignore = zone.kind == "ignore"
            color = IGNORE_OUTLINE_BGR if ignore else REQUIRE_OUTLINE_BGR
            thickness = max(1, round((1.5 if ignore else 1.0) * scale))
            # LINE_8, not anti-aliased: the outline keeps its exact colour, and no half-tone edge smears into the zone
            cv2.polylines(image, [np.round(zone.polygon).astype(np.int32)], True, color, thickness, cv2.LINE_8)
            if zone.name:
                x, y = (round(float(v)) for v in zone.polygon[0])
                origin = (x + thickness + 2, y + round(14 * scale))  # inside the corner, clear of the outline
                cv2.putText(image, zone.name, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale, color,
                            max(1, round(scale)), cv2.LINE_AA)

    def _fill_masks(self, size: tuple[int, int]) -> list[tuple[int, int, np.ndarray]]:
        """(top, left, bool mask) of each ignore zone's pixels within the image, kept for the last image size."""
        if size not in self._fills:
            height, width = size
            masks = []
            for zone in self.ignore:
                corner_low = np.clip(np.floor(zone.polygon.min(axis=0)).astype(int), 0, [width, height])
                corner_high = np.clip(np.ceil(zone.polygon.max(axis=0)).astype(int) + 1, 0, [width, height])
                (left, top), (right, bottom) = corner_low, corner_high
                if right <= left or bottom <= top:
                    continue  # wholly outside this image
                mask = np.zeros((bottom - top, right - left), np.uint8)
                cv2.fillPoly(mask, [np.round(zone.polygon - [left, top]).astype(np.int32)], 1)
                masks.append((top, left, mask.astype(bool)))
            self._fills = {size: masks}  # only the last size: a stream whose size keeps changing holds one set
        return self._fills[size]
