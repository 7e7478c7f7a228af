"""What the operator sees: supervision's annotators (box, label, trace) plus a magnified inset of each
alert track and a HUD line, all sized from the frame so the picture reads the same at 640x512 and at
1920x1080. Frames lower than ``upscale_below_px`` (a 320x256 thermal camera) are first enlarged by a
whole factor, nearest neighbour, and drawn on at the enlarged size: text there would be 4 px high.

An 8-pixel drone is a speck on a monitor; the inset shows a square around it enlarged with nearest
neighbour (pixels stay sharp, nothing is invented), stacked down the right edge with a thin line to
the target.

The stream's zones (pipeline.runtime.zones) are drawn first, under everything else: ignore zones
greyed out, require zones outlined.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import supervision as sv

from pipeline.runtime.zones import Zones

REFERENCE_HEIGHT = 512  # the annotation settings' pixel sizes are for a frame this high
CLASS_COLORS = ("#FF4040", "#4CFB12", "#00C4FF", "#FFB633", "#CD3AFF", "#FFFFFF")  # drone, bird, airplane, heli
UNTRACKED_COLOR = sv.Color.from_hex("#B0B0B0")


@dataclass
class FrameFacts:
    """Everything drawn on one frame, aligned with the detector's boxes."""

    detections: np.ndarray  # N x 6 [x1, y1, x2, y2, score, class_id]
    track_ids: np.ndarray  # N, -1 where no confirmed track
    display_class_ids: np.ndarray  # N: the track's voted class, else the detector's
    alert_track_ids: list[int] = field(default_factory=list)  # tracks that get an inset
    hud: str = ""


MAX_CANVAS_FACTOR = 4


def canvas_factor(shape: tuple[int, ...], upscale_below_px: int) -> int:
    """The whole factor a frame is enlarged by before drawing: 1 at or above ``upscale_below_px`` rows;
    below, the smallest that reaches REFERENCE_HEIGHT (320x256 -> 2, 160x128 -> 4), at most 4."""
    height = shape[0]
    if not upscale_below_px or height >= upscale_below_px or height <= 0:
        return 1
    return int(min(MAX_CANVAS_FACTOR, max(1, -(-REFERENCE_HEIGHT // height))))


def ui_scale(shape: tuple[int, ...]) -> float:
    """Multiplier for line widths and fonts: 1 at 640x512, ~2.1 at 1920x1080."""
    return max(0.5, min(shape[0] / REFERENCE_HEIGHT, shape[1] / 640))


def hud_text(stream_id: str, fps: float, latency_ms: float, dropped: int, wall: float | None = None) -> str:
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() if wall is None else wall))
    return f"{stream_id}  {clock}  {fps:4.1f} fps  latency {latency_ms:4.0f} ms  dropped {dropped}"


class FrameAnnotator:
    """One stream's drawing state (supervision's trace history is per annotator, so one per stream).
    ``settings``: the stages.track.annotation section (stages.track.AnnotateConfig); ``zones``: the
    stream's source's zones, drawn on every frame."""

    def __init__(self, settings, class_names: list[str], shape: tuple[int, ...], zones: Zones | None = None):
        self.settings, self.class_names = settings, list(class_names)
        self.zones = zones if zones is not None else Zones()
        self.insets_on_left = False     # the inset column starts at the right edge
        self.factor = canvas_factor(shape, getattr(settings, "upscale_below_px", 0))
        if self.factor > 1:  # everything is drawn on the enlarged canvas, in its pixels
            shape = (shape[0] * self.factor, shape[1] * self.factor, *shape[2:])
            self.zones = self.zones.scaled(self.factor)
        self.scale = ui_scale(shape)
        self.thickness = max(1, round(1.5 * self.scale))
        self.text_scale = 0.4 * self.scale
        self.text_thickness = max(1, round(self.scale))
        palette = sv.ColorPalette.from_hex(list(CLASS_COLORS))
        self.palette = palette
        self.boxes = sv.BoxAnnotator(color=palette, thickness=self.thickness)
        self.labels = sv.LabelAnnotator(color=palette, text_scale=self.text_scale, text_thickness=self.text_thickness,
                                        text_padding=max(2, round(3 * self.scale)), text_color=sv.Color.BLACK)
        # anchored below the padded box, so the trace never covers the target itself
        self.trace = sv.TraceAnnotator(color=palette, trace_length=max(1, settings.trace_length),
                                       thickness=self.thickness, position=sv.Position.BOTTOM_CENTER)

    def draw(self, image: np.ndarray, facts: FrameFacts) -> np.ndarray:
        """A new annotated image (``factor`` times the size of ``image``); ``image`` itself is left
        untouched (it is recorded raw too)."""
        s = self.settings
        if self.factor > 1:
            image = cv2.resize(image, None, fx=self.factor, fy=self.factor, interpolation=cv2.INTER_NEAREST)
            facts = replace(facts, detections=_scaled_boxes(facts.detections, self.factor))
        scene = image.copy()
        self.zones.draw(scene, self.scale)  # under the boxes: a target at a zone's edge stays visible
        shown = self._sv_detections(facts, pad=round(s.box_padding_px * self.scale))
        tracked = shown[shown.tracker_id >= 0]
        if s.trace_length > 0:
            self.trace.annotate(scene, tracked)  # also records the history, so call it every frame
        if s.boxes and len(shown):
            self._draw_boxes(scene, shown)
        if s.labels and len(shown):
            self.labels.annotate(scene, shown, labels=self._label_texts(shown))
        if s.insets and facts.alert_track_ids:
            self._draw_insets(scene, image, facts)
        if s.hud and facts.hud:
            self._draw_hud(scene, facts.hud)
        return scene

    # ------------------------------------------------------------------ pieces
    def _sv_detections(self, facts: FrameFacts, pad: int) -> sv.Detections:
        dets = facts.detections
        if not len(dets):
            empty = sv.Detections.empty()
            empty.tracker_id = np.zeros(0, dtype=int)
            return empty
        xyxy = sv.pad_boxes(dets[:, :4].astype(np.float32), px=pad) if pad else dets[:, :4]
        return sv.Detections(xyxy=xyxy.astype(np.float32), confidence=dets[:, 4].astype(np.float32),
                             class_id=np.clip(facts.display_class_ids.astype(int), 0, len(CLASS_COLORS) - 1),
                             tracker_id=facts.track_ids.astype(int))

    def _draw_boxes(self, scene: np.ndarray, shown: sv.Detections) -> None:
        tracked = shown.tracker_id >= 0
        if tracked.any():
            self.boxes.annotate(scene, shown[tracked])
        for x1, y1, x2, y2 in shown.xyxy[~tracked].astype(int):  # not (yet) a track: thin grey
            cv2.rectangle(scene, (x1, y1), (x2, y2), UNTRACKED_COLOR.as_bgr(), 1)

    def _label_texts(self, shown: sv.Detections) -> list[str]:
        texts = []
        for track_id, class_id, conf in zip(shown.tracker_id, shown.class_id, shown.confidence):
            name = self.class_names[class_id] if class_id < len(self.class_names) else str(class_id)
            texts.append(f"{'#%d ' % track_id if track_id >= 0 else ''}{name} {conf:.2f}")
        return texts

    def _draw_insets(self, scene: np.ndarray, source: np.ndarray, facts: FrameFacts) -> None:
        s = self.settings
        tile = max(16, round(s.inset_context_px * s.inset_scale * self.scale))
        height, width = source.shape[:2]
        margin = max(2, round(4 * self.scale))
        left = self._inset_column(facts.detections[:, :4], width, tile, margin)
        if left < 0:
            return
        on_right = not self.insets_on_left
        first_top = margin if on_right or not (s.hud and facts.hud) else margin + self._hud_height()  # under the HUD
        slots = min(s.max_insets, max(0, (height - first_top) // (tile + margin)))
        tracks = sorted(facts.alert_track_ids)[:slots]
        for slot, track_id in enumerate(tracks):
            hits = np.flatnonzero(facts.track_ids == track_id)
            if not len(hits):
                continue
            x1, y1, x2, y2 = facts.detections[hits[0], :4]
            side = int(max(s.inset_context_px * self.factor, 2 * max(x2 - x1, y2 - y1)))
            crop = crop_square(source, (x1 + x2) / 2, (y1 + y2) / 2, side)
            top = first_top + slot * (tile + margin)
            scene[top:top + tile, left:left + tile] = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_NEAREST)
            color = self.palette.by_idx(int(facts.display_class_ids[hits[0]])).as_bgr()
            cv2.rectangle(scene, (left, top), (left + tile - 1, top + tile - 1), color, self.thickness)
            # the leader line leaves the tile on the side facing the picture
            start = (left, top + tile // 2) if on_right else (left + tile - 1, top + tile // 2)
            end = (int(x2) + 2, int((y1 + y2) / 2)) if on_right else (int(x1) - 2, int((y1 + y2) / 2))
            cv2.line(scene, start, end, color, 1, cv2.LINE_AA)
            zoom = tile * self.factor / side  # against the source pixels, whatever the canvas
            self._text(scene, f"#{track_id} x{zoom:.0f}", (left + margin, top + tile - margin), color)

    def _inset_column(self, boxes: np.ndarray, width: int, tile: int, margin: int) -> int:
        """Left x of the inset column, at the right edge or the left one: it moves only when it would hide
        more detections than the other side (an inset must not cover the very drone it magnifies, and
        must not flicker from side to side). -1: no room."""
        def hidden(left: int) -> int:
            return int(((boxes[:, 2] > left) & (boxes[:, 0] < left + tile)).sum())

        right = width - tile - margin
        if right < margin:
            return -1
        here, there = (margin, right) if self.insets_on_left else (right, margin)
        if hidden(there) < hidden(here):
            self.insets_on_left = not self.insets_on_left
        return margin if self.insets_on_left else right

    def _hud_box(self, text: str) -> tuple[int, int, int, int]:
        """(pad, text width, text height, box height) of the HUD line."""
        pad = max(2, round(3 * self.scale))
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, self.text_scale, self.text_thickness)
        return pad, w, h, h + base + 2 * pad

    def _hud_height(self) -> int:
        return self._hud_box("Hg")[3]

    def _draw_hud(self, scene: np.ndarray, text: str) -> None:
        pad, w, h, box_height = self._hud_box(text)
        cv2.rectangle(scene, (0, 0), (w + 2 * pad, box_height), (0, 0, 0), -1)
        self._text(scene, text, (pad, pad + h), (255, 255, 255))

    def _text(self, scene: np.ndarray, text: str, origin: tuple[int, int], color) -> None:
        cv2.putText(scene, text, origin, cv2.FONT_HERSHEY_SIMPLEX, self.text_scale, color, self.text_thickness,
                    cv2.LINE_AA)


def _scaled_boxes(dets: np.ndarray, factor: int) -> np.ndarray:
    scaled = np.array(dets, np.float32, copy=True).reshape(-1, 6)
    scaled[:, :4] *= factor
    return scaled


def crop_square(image: np.ndarray, cx: float, cy: float, side: int) -> np.ndarray:
    """A side x side window centred on (cx, cy), shifted to stay inside the image (a copy-free view)."""
    height, width = image.shape[:2]
    side = int(min(side, height, width))
    left = int(np.clip(round(cx - side / 2), 0, width - side))
    top = int(np.clip(round(cy - side / 2), 0, height - side))
    return image[top:top + side, left:left + side]
