"""Track + annotate: ByteTrack per stream, a class vote over each track's life, alert events, and the
operator's picture.

Tracking is `trackers.ByteTrackTracker` (supervision moved ByteTrack there in 0.31). Each update gets
the frame's time as ``frame_index / frame_rate``: frame indices count source frames, so a gap left by
frames dropped upstream is passed as real elapsed time and the Kalman filter predicts across it.

``msg.meta["object_scores"]`` (from the detect stage: the head's objectness per detection, class-agnostic)
gives each track its ``object_score``, the mean over its life; with ``alert_on: object`` the tracker's
thresholds apply to it too, so an object whose class guesses split (a low detection score) is tracked.

``msg.detections`` stays exactly what the detector said (offline scoring reads it back), less the
boxes whose centre lies in one of the stream's ``ignore`` zones (``sources[].zones``; counted as
``detections_ignored``, never tracked, drawn or recorded); the tracker's ids (1-based, -1 = none) go
to ``msg.track_ids`` aligned with it, and ``msg.meta`` gets
``track_class_ids`` (the voted class per detection, -1 = none) and ``alert_track_ids`` (confirmed
alert-class tracks in view: the recorder's event trigger).

Side channel (the ``events`` PUB endpoint, bound here, never blocking): ``frame/<stream_id>`` with the
annotated frame as buffer ``image``, and ``event`` with JSON ``track_confirmed`` (once per track,
when its vote makes it an alert class; with a JPEG thumbnail) and ``track_lost`` (for confirmed
tracks). Events are also appended to ``<output_dir>/events.jsonl``.

Where a stream has ``require`` zones, a track alerts only while its box centre is in one of them: a
track whose vote reaches an alert class outside all of them is counted once as
``alerts_outside_zones`` and sends nothing; if it later enters a require zone (still voted an alert
class) its ``track_confirmed`` fires then, once, and from then on it is an alert track wherever it
flies (``alert_track_ids``, insets, ``track_lost``). Tracks that never alerted are not reported lost.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import zmq

from pipeline.runtime.books import DROPPED, FrameBooks
from pipeline.runtime.config import ConfigError, PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.records import frame_session
from pipeline.runtime.meter import Meter
from pipeline.runtime.schema import setting
from pipeline.runtime.stage import Stage, curve_keys
from pipeline.runtime.storage import append_line, is_storage_full, replace_file
from pipeline.runtime.transport import close_context, open_socket
from pipeline.runtime.zones import Zones

log = logging.getLogger("stages.track")
# supervision and trackers are imported where they are used: this module is read by every process
# that loads the config (for the sections below), and only the track process needs them
NO_ZONES = Zones()  # of a stream that no configured source names


@dataclass
class AnnotateConfig:
    """What the track stage draws for the operator. Pixel sizes are for a 512-px-high frame and scale
    with the frame, so the picture reads the same at 640x512 and 1920x1080."""
    boxes: bool = True
    labels: bool = True  # "#<track> <voted class> <confidence>"
    trace_length: int = setting(30, ge=0)  # frames of trajectory drawn per track; 0: none
    insets: bool = True  # magnified picture-in-picture of each confirmed alert-class track
    inset_scale: float = setting(4.0, ge=1.0)  # magnification (nearest neighbour: the target's pixels stay sharp)
    inset_context_px: int = setting(32, ge=4)  # side of the source square around the target shown in an inset
    max_insets: int = setting(4, ge=0)
    hud: bool = True  # stream, wall time, fps, latency, dropped frames
    box_padding_px: int = setting(3, ge=0)  # boxes drawn this far outside the target so lines do not cover it
    # frames lower than this are drawn on a canvas enlarged by a whole factor (nearest neighbour, at most
    # 4x), so a 320x256 thermal camera's text, lines and insets read as on a 640x512 one; the annotated
    # video and the view get the enlarged picture, the raw frame and every box stay in source pixels. 0: off
    upscale_below_px: int = setting(480, ge=0)


@dataclass
class TrackConfig:
    # trackers.ByteTrackTracker (ByteTrack of the supervision ecosystem), tuned for 30 fps small targets
    track_activation_threshold: float = setting(0.3, ge=0.0, le=1.0)  # min score that starts a track (trackers': 0.7)
    high_conf_det_threshold: float = setting(0.5, ge=0.0, le=1.0)  # first association pass; lower join in the second
    minimum_iou_threshold: float = setting(0.1, ge=0.0, le=1.0)  # tiny boxes overlap little from frame to frame
    lost_track_buffer: int = setting(30, ge=0)  # frames (at frame_rate) a lost track waits to be matched again
    minimum_consecutive_frames: int = setting(3, ge=1)  # frames before a track gets an id: clutter gets none
    frame_rate: float = setting(30.0, ge=1e-3)  # nominal rate; a gap in frame_index is passed on as elapsed frames
    vote_min_frames: int = setting(5, ge=0)  # observations before a track's class vote may raise an alert
    alert_classes: list[str] = setting(factory=lambda: ["drone"])  # voted classes that alert
    # what raises an alert: "class" (its vote is an alert class) or "object" (any aerial object whose
    # object score reaches alert_min_object_score, unless its vote is confidently a class that does not
    # alert: a new camera's class guesses are shaky, the presence of an object is not)
    alert_on: str = setting("class", choices=("class", "object"))
    alert_min_object_score: float = setting(0.3, ge=0.0, le=1.0)  # mean objectness over the track's life
    dismiss_confidence: float = setting(0.8, gt=0.0, le=1.0)  # "object": a vote this sure of a non-alert class
    thumbnail_px: int = setting(96, ge=8)  # side of the JPEG thumbnail in track_confirmed events
    publish_frames: bool = True  # annotated frames on the events PUB socket (topic frame/<stream>)
    events_hwm: int = setting(8, ge=1)  # PUB queue per subscriber: a slow subscriber loses messages, never slows us
    annotate: bool = True
    annotation: AnnotateConfig = setting(factory=AnnotateConfig)


def _scores_of(values, detections) -> bool:
    """Whether ``values`` is one number in [0, 1] per detection (meta 'object_scores' from the network)."""
    count = 0 if detections is None else len(detections)
    return (isinstance(values, list) and len(values) == count and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values))


def make_tracker(s: TrackConfig):
    from trackers import ByteTrackTracker

    return ByteTrackTracker(lost_track_buffer=s.lost_track_buffer, frame_rate=s.frame_rate,
                            track_activation_threshold=s.track_activation_threshold,
                            minimum_consecutive_frames=s.minimum_consecutive_frames,
                            minimum_iou_threshold=s.minimum_iou_threshold,
                            high_conf_det_threshold=s.high_conf_det_threshold)


def track_detections(tracker, dets: np.ndarray, timestamp: float, first_id: int = 1,
                     confidence: np.ndarray | None = None) -> np.ndarray:
    """Track id per detector box (from ``first_id`` on, -1 = not a confirmed track); the boxes are not changed.
    ``confidence``: what the tracker's thresholds apply to (default the detection scores)."""
    import supervision as sv

    ids = np.full(len(dets), -1, dtype=np.int64)
    confidence = dets[:, 4] if confidence is None else confidence
    sv_dets = sv.Detections(xyxy=dets[:, :4].astype(np.float32), confidence=np.asarray(confidence, np.float32),
                            class_id=dets[:, 5].astype(int), data={"row": np.arange(len(dets))})
    tracked = tracker.update(sv_dets, timestamp=timestamp)
    if len(tracked):  # the tracker reorders its output; the carried row index maps it back exactly
        tracker_ids = np.asarray(tracked.tracker_id)
        ids[tracked.data["row"]] = np.where(tracker_ids >= 0, tracker_ids + first_id, -1)
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
    objectness: float = 0.0  # summed over the track's observations (object_score is its mean)
    confirmed: bool = False  # track_confirmed was sent
    held_outside: bool = False  # its alert waits for a require zone (counted once in alerts_outside_zones)

    @property
    def voted_class(self) -> int:
        return int(np.argmax(self.votes))

    @property
    def object_score(self) -> float:
        """Class-agnostic: how surely something is there, the mean of the detector's objectness over the
        track's life (it does not fall when the class guesses split between drone, bird and airplane)."""
        return self.objectness / max(self.observations, 1)

    @property
    def class_confidence(self) -> float:
        """The voted class's share of the votes: 1.0 when every detection agreed."""
        total = float(self.votes.sum())
        return float(self.votes[self.voted_class]) / total if total > 0 else 0.0

    def alerts(self, settings: "TrackConfig", alert_ids: set[int]) -> bool:
        """Whether this track, once observed long enough, raises an alert (settings.alert_on)."""
        if self.observations < settings.vote_min_frames:
            return False
        if settings.alert_on == "class":
            return self.voted_class in alert_ids
        dismissed = self.voted_class not in alert_ids and self.class_confidence >= settings.dismiss_confidence
        return self.object_score >= settings.alert_min_object_score and not dismissed


class TrackIds:
    """Track ids that never repeat in one output folder, across restarts of the track stage and new runs:
    a stream's ids start after the last block reserved in ``track_ids.json``, and each block is reserved
    on disk (atomically) before an id in it is handed out, so a crash can skip ids but never reuse one."""

    BLOCK = 1000

    def __init__(self, path):
        self.path = path
        self.reserved: dict[str, int] = self._read()
        self.first_free = dict(self.reserved)  # where this process starts each stream
        self.unsaved = False

    def _read(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s): track ids start at 1 again", self.path, exc)
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and v >= 0} \
            if isinstance(data, dict) else {}

    def first_id(self, stream_id: str) -> int:
        return self.first_free.get(stream_id, 0) + 1

    def start_after_reserved(self, stream_id: str) -> None:
        """A new tracker of the stream in this process starts after the last reserved block."""
        self.first_free[stream_id] = self.reserved.get(stream_id, 0)

    def handed_out(self, stream_id: str, highest: int) -> None:
        """Ids up to ``highest`` are in use: reserve the block holding it if it is not yet."""
        if highest <= self.reserved.get(stream_id, 0):
            return
        self.reserved[stream_id] = -(-highest // self.BLOCK) * self.BLOCK
        if not replace_file(self.path, json.dumps(self.reserved)) and not self.unsaved:
            self.unsaved = True
            log.error("disk full: track ids reserved up to %s are not saved; a restart now may repeat them",
                      self.reserved)


class StreamState:
    """One stream's tracker, track lives and drawing."""

    def __init__(self, settings: TrackConfig, first_id: int = 1, session: str | None = None):
        self.first_id = first_id  # the tracker counts from 0: its ids are shifted to start here
        self.session = session  # the capture session of its frames (records.SESSION)
        self.tracker = make_tracker(settings)
        self.lives: dict[int, TrackLife] = {}
        self.last_index: int | None = None
        self.frames_missing = 0
        self.annotator = None  # a stages.annotate.FrameAnnotator, made with the first frame
        self.class_names: list[str] = []  # the model's (the detect stage sends its checkpoint's names)


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


def _load_libraries() -> None:
    import supervision  # noqa: F401
    import trackers  # noqa: F401


class TrackStage(Stage):
    name = "track"
    section = TrackConfig
    port_offset = 2
    binds = {"events": ("pub", 5)}  # events and annotated frames for the view and other consumers

    @classmethod
    def preflight(cls, cfg: PipelineConfig) -> None:
        """The libraries it loads beside its first beat must be there: a missing one is one line
        before the run, not a crash at the first frame."""
        for package in ("supervision", "trackers"):
            if importlib.util.find_spec(package) is None:
                raise ConfigError(f"stage track needs the Python package {package!r} (pip install -r requirements.txt)")

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        # supervision and trackers take ~0.7 s to import: loaded beside the first beat, not before it
        # (the supervisor starts the sources once every stage beats, and the first frame needs capture,
        # preprocess and detect before it reaches this stage); a frame that comes sooner waits for the
        # import lock, never for a half-loaded module
        self.imports = threading.Thread(target=_load_libraries, name="track-imports", daemon=True)
        self.imports.start()

        self.meter = Meter(())  # per-stream frame rate for the HUD
        self.streams: dict[str, StreamState] = {}
        self.sink = EventSink(cfg, self.settings.events_hwm)
        self.ids = TrackIds(cfg.resolve(cfg.output_dir) / "track_ids.json")
        self.books = FrameBooks()
        self.zones = {src.id: Zones(src.zones) for src in cfg.sources}  # stream id -> its source's zones
        self.counters = {"tracks_confirmed": 0, "tracks_lost": 0, "frames_missing": 0, "frames_dropped_upstream": 0,
                         "frames_out_of_order": 0, "detections_ignored": 0, "alerts_outside_zones": 0}

    def accept(self, msg: FrameMessage) -> str | None:
        names = msg.meta.get("class_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return "meta 'class_names' must be a list of strings"
        objectness = msg.meta.get("object_scores")
        if objectness is not None and not _scores_of(objectness, msg.detections):
            return "meta 'object_scores' must be one number in [0, 1] per detection"
        return None

    def _stream(self, msg: FrameMessage) -> StreamState:
        stream_id, session = msg.stream_id, frame_session(msg)
        state = self.streams.get(stream_id)
        if state is not None and None not in (session, state.session) and session != state.session:
            # its source restarted on another host and numbers its frames from 0 again: new frames
            log.info("stream %s: a new capture session: tracking starts again", stream_id)
            self.books.last.pop(stream_id, None)
            del self.streams[stream_id]
            self.ids.start_after_reserved(stream_id)  # the new tracker's ids follow every id handed out
        if stream_id not in self.streams:
            self.imports.join()  # (at once after the first stream: the libraries are in)
            first_id = self.ids.first_id(stream_id)
            self.streams[stream_id] = StreamState(self.settings, first_id, session)
            if first_id > 1:  # ids of an earlier track process exist in this output folder
                self.sink.event({"type": "tracker_restarted", "stream_id": stream_id, "t": time.time(),
                                 "first_track_id": first_id})
        return self.streams[stream_id]

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        state = self._stream(msg)
        dets = self._outside_ignore_zones(msg)
        class_names = state.class_names = list(msg.meta.get("class_names") or state.class_names)
        if state.last_index is not None and msg.frame_index <= state.last_index:
            self.counters["frames_out_of_order"] += 1  # a resent frame: the tracker's clock cannot go back
            msg.track_ids = np.full(len(dets), -1, dtype=np.int64)
        else:
            self._count_gap(state, msg)
            msg.track_ids = track_detections(state.tracker, dets, msg.frame_index / self.settings.frame_rate,
                                             state.first_id, self._tracking_confidence(msg, dets))
            if len(msg.track_ids):
                self.ids.handed_out(msg.stream_id, int(msg.track_ids.max()))
            self._update_lives(state, msg, dets, class_names)
        voted = np.array([state.lives[t].voted_class if t in state.lives else -1 for t in msg.track_ids.tolist()],
                         dtype=np.int64)
        msg.meta["track_class_ids"] = voted.tolist()
        msg.meta["alert_track_ids"] = sorted({int(t) for t in msg.track_ids if t in state.lives
                                              and state.lives[t].confirmed})
        self.meter.tick(msg.stream_id)
        if self.settings.annotate:
            display = np.where(voted >= 0, voted, dets[:, 5].astype(np.int64))
            msg.buffers["annotated"] = self._annotate(state, msg, dets, display, class_names)
        if self.settings.publish_frames:
            self.sink.frame(FrameMessage(msg.stream_id, msg.frame_index, msg.source_ts, msg.capture_wall,
                                         {"image": msg.buffers.get("annotated", msg.image)}, msg.detections,
                                         msg.track_ids, msg.meta))
        return [msg]

    def _tracking_confidence(self, msg: FrameMessage, dets: np.ndarray) -> np.ndarray | None:
        """alert_on: object tracks by the detector's objectness, so that an object whose class guesses
        split (a low detection score) is still tracked; class mode by the detection score."""
        objectness = msg.meta.get("object_scores")
        if self.settings.alert_on != "object" or objectness is None:
            return None
        return np.asarray(objectness, np.float32).reshape(len(dets))

    def _outside_ignore_zones(self, msg: FrameMessage) -> np.ndarray:
        """The frame's detections less those in its stream's ignore zones (also taken out of ``msg``)."""
        dets = msg.detections if msg.detections is not None else np.zeros((0, 6), np.float32)
        keep = self._zones(msg.stream_id).keep_mask(dets)
        if not keep.all():
            self.counters["detections_ignored"] += int((~keep).sum())
            dets = msg.detections = dets[keep]
            if msg.meta.get("object_scores") is not None:
                msg.meta["object_scores"] = [v for v, kept in zip(msg.meta["object_scores"], keep) if kept]
        return dets

    def _zones(self, stream_id: str) -> Zones:
        return self.zones.get(stream_id, NO_ZONES)

    def _count_gap(self, state: StreamState, msg: FrameMessage) -> None:
        gap = self.books.arrive(msg.stream_id, msg.frame_index, msg.meta.get(DROPPED, 0))
        state.frames_missing += gap.lost + gap.dropped  # what the operator did not see, for the HUD
        self.counters["frames_missing"] += gap.lost
        self.counters["frames_dropped_upstream"] += gap.dropped
        state.last_index = msg.frame_index

    # ------------------------------------------------------------------ votes and events
    def _update_lives(self, state: StreamState, msg: FrameMessage, dets: np.ndarray, class_names: list[str]) -> None:
        alert_ids = {i for i, name in enumerate(class_names) if name in self.settings.alert_classes}
        # the detector's objectness where it sent it (class-agnostic), else the detection score
        objectness = msg.meta.get("object_scores") or dets[:, 4].tolist()
        for row in np.flatnonzero(msg.track_ids >= 0):
            track_id = int(msg.track_ids[row])
            life = state.lives.setdefault(track_id, TrackLife(np.zeros(len(class_names)), msg.frame_index))
            class_id = int(dets[row, 5])
            if class_id >= len(life.votes):
                life.votes = np.pad(life.votes, (0, class_id + 1 - len(life.votes)))
            life.votes[class_id] += float(dets[row, 4])
            life.objectness += float(objectness[row])
            life.observations += 1
            life.last_frame, life.last_box = msg.frame_index, [round(float(v), 2) for v in dets[row, :4]]
            life.last_confidence = float(dets[row, 4])
            if not life.confirmed and life.alerts(self.settings, alert_ids):
                self._alert(msg, track_id, life, class_names)
        alive = {t.tracker_id + state.first_id for t in state.tracker.tracks if t.tracker_id >= 0}
        for track_id in [t for t in state.lives if t not in alive]:
            self._lost(msg.stream_id, track_id, state.lives.pop(track_id), class_names, msg.frame_index, "expired")

    def _alert(self, msg: FrameMessage, track_id: int, life: TrackLife, class_names: list[str]) -> None:
        """An alert-class track alerts now, or waits (checked again every frame) until it is in a require zone."""
        if self._zones(msg.stream_id).allows_alert(life.last_box):
            life.confirmed = True
            self._confirmed(msg, track_id, life, class_names)
        elif not life.held_outside:
            life.held_outside = True
            self.counters["alerts_outside_zones"] += 1

    def _confirmed(self, msg: FrameMessage, track_id: int, life: TrackLife, class_names: list[str]) -> None:
        self.counters["tracks_confirmed"] += 1
        from stages.annotate import crop_square

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
                "confidence": round(life.last_confidence, 4), "observations": life.observations,
                "object_score": round(life.object_score, 4), "class_confidence": round(life.class_confidence, 4)}

    # ------------------------------------------------------------------ picture
    def _annotate(self, state: StreamState, msg: FrameMessage, dets: np.ndarray, display: np.ndarray,
                  class_names: list[str]) -> np.ndarray:
        from stages.annotate import FrameAnnotator, FrameFacts, hud_text

        if state.annotator is None:
            state.annotator = FrameAnnotator(self.settings.annotation, class_names, msg.image.shape,
                                             self._zones(msg.stream_id))
        drops = state.frames_missing
        facts = FrameFacts(dets, msg.track_ids, display, msg.meta["alert_track_ids"],
                           hud_text(msg.stream_id, self.meter.fps(msg.stream_id), msg.age_ms(), drops))
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
