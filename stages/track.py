"""Track + annotate: ByteTrack per stream, a class vote over each track's life, alert events, and the
operator's picture.

Tracking is `trackers.ByteTrackTracker` (supervision moved ByteTrack there in 0.31). Each update gets
the frame's time as ``frame_index / frame_rate``: frame indices count source frames, so a gap left by
frames dropped upstream is passed as real elapsed time and the Kalman filter predicts across it.

``msg.detections`` stays exactly what the detector said (offline scoring reads it back); the tracker's
ids (1-based, -1 = none) go to ``msg.track_ids`` aligned with it, and ``msg.meta`` gets
``track_class_ids`` (the voted class per detection, -1 = none) and ``alert_track_ids`` (confirmed
alert-class tracks in view: the recorder's event trigger).

Side channel (the ``events`` PUB endpoint, bound here, never blocking): ``frame/<stream_id>`` with the
annotated frame as buffer ``image``, and ``event`` with JSON ``track_confirmed`` (once per track,
when its vote makes it an alert class; with a JPEG thumbnail) and ``track_lost`` (for confirmed
tracks). Events are also appended to ``<output_dir>/events.jsonl``.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
import supervision as sv
import zmq
from trackers import ByteTrackTracker

from pipeline.runtime.config import PipelineConfig, TrackConfig
from pipeline.offline.data.dataset import CLASSES
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage, curve_keys
from pipeline.runtime.storage import append_line, is_storage_full
from pipeline.runtime.transport import close_context, open_socket
from stages.annotate import FrameAnnotator, FrameFacts, crop_square, hud_text

log = logging.getLogger("stages.track")


def make_tracker(s: TrackConfig) -> ByteTrackTracker:
    return ByteTrackTracker(lost_track_buffer=s.lost_track_buffer, frame_rate=s.frame_rate,
                            track_activation_threshold=s.track_activation_threshold,
                            minimum_consecutive_frames=s.minimum_consecutive_frames,
                            minimum_iou_threshold=s.minimum_iou_threshold,
                            high_conf_det_threshold=s.high_conf_det_threshold)


def track_detections(tracker: ByteTrackTracker, dets: np.ndarray, timestamp: float) -> np.ndarray:
    """Track id per detector box (1-based, -1 = not a confirmed track); the boxes are not changed."""
    ids = np.full(len(dets), -1, dtype=np.int64)
    sv_dets = sv.Detections(xyxy=dets[:, :4].astype(np.float32), confidence=dets[:, 4].astype(np.float32),
                            class_id=dets[:, 5].astype(int), data={"row": np.arange(len(dets))})
    tracked = tracker.update(sv_dets, timestamp=timestamp)
    if len(tracked):  # the tracker reorders its output; the carried row index maps it back exactly
        tracker_ids = np.asarray(tracked.tracker_id)
        ids[tracked.data["row"]] = np.where(tracker_ids >= 0, tracker_ids + 1, -1)
    return ids


@dataclass
class TrackLife:
    """What one track has shown so far: the class vote is a confidence-weighted sum over its life, so a
    drone seen as a bird for a frame or two stays a drone."""

    votes: np.ndarray
    first_frame: int
    last_frame: int = 0
    observations: int = 0
    last_box: list[float] = field(default_factory=list)
    last_confidence: float = 0.0
    confirmed: bool = False  # track_confirmed was sent

    @property
    def voted_class(self) -> int:
        return int(np.argmax(self.votes))


class StreamState:
    """One stream's tracker, track lives, rate meter and drawing."""

    def __init__(self, settings: TrackConfig):
        self.tracker = make_tracker(settings)
        self.lives: dict[int, TrackLife] = {}
        self.last_index: int | None = None
        self.frames_missing = 0
        self.done_times: deque[float] = deque(maxlen=60)
        self.annotator: FrameAnnotator | None = None
        self.class_names: list[str] = list(CLASSES)  # the detector's, from msg.meta

    def fps(self) -> float:
        t = self.done_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0


class EventSink:
    """track events and annotated frames out: ZeroMQ PUB (NOBLOCK, small HWM) + events.jsonl."""

    def __init__(self, cfg: PipelineConfig, hwm: int):
        self.ctx = zmq.Context()
        self.pub = open_socket(self.ctx, cfg.endpoint("events"), hwm=hwm, curve=curve_keys(cfg))
        self.path = cfg.resolve(cfg.output_dir) / "events.jsonl"
        self.fd: int | None = None
        self._open()  # the file exists from the start (a full disk may delay it to a later event)
        self.sent = 0  # a PUB socket drops silently for a subscriber over its HWM; events.jsonl keeps all
        self.unlogged = 0  # events a full disk kept out of events.jsonl (they are still published)

    def event(self, payload: dict) -> None:
        line = json.dumps(payload, separators=(",", ":"))
        if not self._log(line):
            if not self.unlogged:
                log.error("disk full: events are published but not written to events.jsonl until space returns")
            self.unlogged += 1
        self._send([b"event", line.encode()])

    def _open(self) -> bool:
        """O_APPEND and one write() per event: whole lines, even beside the supervisor's stream events."""
        try:
            if self.fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: see append_line
            return True
        except OSError as error:
            if is_storage_full(error):
                return False
            raise

    def _log(self, line: str) -> bool:
        return self._open() and append_line(self.fd, line)

    def frame(self, msg: FrameMessage) -> None:
        self._send([f"frame/{msg.stream_id}".encode(), *msg.encode()])

    def _send(self, parts: list) -> None:
        try:
            self.pub.send_multipart(parts, zmq.NOBLOCK, copy=False)
            self.sent += 1
        except zmq.Again:
            pass

    def close(self) -> None:
        self.pub.close(linger=0)
        close_context(self.ctx)
        if self.fd is not None:
            os.close(self.fd)


class TrackStage(Stage):
    name = "track"
    input_key = "track_in"
    output_key = "record_in"

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.settings = cfg.stages.track
        self.streams: dict[str, StreamState] = {}
        self.sink = EventSink(cfg, self.settings.events_hwm)
        self.counters = {"tracks_confirmed": 0, "tracks_lost": 0, "frames_missing": 0, "frames_out_of_order": 0}

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        state = self.streams.setdefault(msg.stream_id, StreamState(self.settings))
        dets = msg.detections if msg.detections is not None else np.zeros((0, 6), np.float32)
        class_names = state.class_names = list(msg.meta.get("class_names") or state.class_names)
        if state.last_index is not None and msg.frame_index <= state.last_index:
            self.counters["frames_out_of_order"] += 1  # a resent frame: the tracker's clock cannot go back
            msg.track_ids = np.full(len(dets), -1, dtype=np.int64)
        else:
            self._count_gap(state, msg.frame_index)
            msg.track_ids = track_detections(state.tracker, dets, msg.frame_index / self.settings.frame_rate)
            self._update_lives(state, msg, dets, class_names)
        voted = np.array([state.lives[t].voted_class if t in state.lives else -1 for t in msg.track_ids.tolist()],
                         dtype=np.int64)
        msg.meta["track_class_ids"] = voted.tolist()
        msg.meta["alert_track_ids"] = sorted({int(t) for t in msg.track_ids if t in state.lives
                                              and state.lives[t].confirmed})
        state.done_times.append(time.time())
        if self.settings.annotate:
            display = np.where(voted >= 0, voted, dets[:, 5].astype(np.int64))
            msg.buffers["annotated"] = self._annotate(state, msg, dets, display, class_names)
        if self.settings.publish_frames:
            self.sink.frame(FrameMessage(msg.stream_id, msg.frame_index, msg.source_ts, msg.capture_wall,
                                         {"image": msg.buffers.get("annotated", msg.image)}, msg.detections,
                                         msg.track_ids, msg.meta))
        return [msg]

    def _count_gap(self, state: StreamState, frame_index: int) -> None:
        if state.last_index is not None:
            missing = frame_index - state.last_index - 1
            state.frames_missing += missing
            self.counters["frames_missing"] += missing
        state.last_index = frame_index

    # ------------------------------------------------------------------ votes and events
    def _update_lives(self, state: StreamState, msg: FrameMessage, dets: np.ndarray, class_names: list[str]) -> None:
        alert_ids = {i for i, name in enumerate(class_names) if name in self.settings.alert_classes}
        for row in np.flatnonzero(msg.track_ids >= 0):
            track_id = int(msg.track_ids[row])
            life = state.lives.setdefault(track_id, TrackLife(np.zeros(len(class_names)), msg.frame_index))
            class_id = int(dets[row, 5])
            if class_id >= len(life.votes):
                life.votes = np.pad(life.votes, (0, class_id + 1 - len(life.votes)))
            life.votes[class_id] += float(dets[row, 4])
            life.observations += 1
            life.last_frame, life.last_box = msg.frame_index, [round(float(v), 2) for v in dets[row, :4]]
            life.last_confidence = float(dets[row, 4])
            if (not life.confirmed and life.observations >= self.settings.vote_min_frames
                    and life.voted_class in alert_ids):
                life.confirmed = True
                self._confirmed(msg, track_id, life, class_names)
        alive = {t.tracker_id + 1 for t in state.tracker.tracks if t.tracker_id >= 0}
        for track_id in [t for t in state.lives if t not in alive]:
            self._lost(msg.stream_id, track_id, state.lives.pop(track_id), class_names, msg.frame_index, "expired")

    def _confirmed(self, msg: FrameMessage, track_id: int, life: TrackLife, class_names: list[str]) -> None:
        self.counters["tracks_confirmed"] += 1
        x1, y1, x2, y2 = life.last_box
        side = int(max(32, 3 * max(x2 - x1, y2 - y1)))
        thumb = cv2.resize(crop_square(msg.image, (x1 + x2) / 2, (y1 + y2) / 2, side),
                           (self.settings.thumbnail_px, self.settings.thumbnail_px), interpolation=cv2.INTER_NEAREST)
        jpeg = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 85])[1]
        self.sink.event({"type": "track_confirmed", **self._track_fields(msg.stream_id, track_id, life, class_names),
                         "frame_index": msg.frame_index, "source_ts": msg.source_ts,
                         "thumbnail_jpeg_b64": base64.b64encode(jpeg.tobytes()).decode()})

    def _lost(self, stream_id: str, track_id: int, life: TrackLife, class_names: list[str], frame_index: int,
              reason: str) -> None:
        if not life.confirmed:
            return  # only tracks that raised an alert are reported lost
        self.counters["tracks_lost"] += 1
        self.sink.event({"type": "track_lost", **self._track_fields(stream_id, track_id, life, class_names),
                         "frame_index": frame_index, "first_frame": life.first_frame, "last_frame": life.last_frame,
                         "reason": reason})

    @staticmethod
    def _track_fields(stream_id: str, track_id: int, life: TrackLife, class_names: list[str]) -> dict:
        voted = life.voted_class
        return {"stream_id": stream_id, "track_id": track_id, "t": time.time(), "class_id": voted,
                "class": class_names[voted] if voted < len(class_names) else str(voted), "box": life.last_box,
                "confidence": round(life.last_confidence, 4), "observations": life.observations}

    # ------------------------------------------------------------------ picture
    def _annotate(self, state: StreamState, msg: FrameMessage, dets: np.ndarray, display: np.ndarray,
                  class_names: list[str]) -> np.ndarray:
        if state.annotator is None:
            state.annotator = FrameAnnotator(self.settings.annotation, class_names, msg.image.shape)
        drops = state.frames_missing + int(msg.meta.get("dropped_upstream", 0))
        facts = FrameFacts(dets, msg.track_ids, display, msg.meta["alert_track_ids"],
                           hud_text(msg.stream_id, state.fps(), msg.age_ms(), drops))
        return state.annotator.draw(msg.image, facts)

    def end_stream(self, stream_id: str, frame_count: int = 0) -> list[FrameMessage]:
        state = self.streams.pop(stream_id, None)
        if state is not None:
            for track_id, life in state.lives.items():
                self._lost(stream_id, track_id, life, state.class_names, state.last_index or 0, "stream_end")
        return []

    def status(self) -> dict:
        return {"published": self.sink.sent, "events_unlogged": self.sink.unlogged}

    def close(self) -> None:
        self.sink.close()
