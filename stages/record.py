"""Record: H.264 segments per stream (PyAV/libx264), per-frame detections and tracks as JSONL and
MOTChallenge txt, event-triggered clips with pre- and post-roll, and retention.

Crash safety: MP4 segments are fragmented with one fragment per frame and every packet flushed to the
OS, so a recorder killed with SIGKILL leaves each segment playable up to the last frame or two it
wrote (MKV and MPEG-TS are written packet by packet too). Text outputs are line-buffered.

Files per stream, under ``<output_dir>/<stream_id>/``: ``segment_NNNNN.<ext>`` (annotated frames, or
raw ones when ``annotated`` is false), ``raw_segment_NNNNN.<ext>`` (with ``also_raw``),
``tracks.jsonl`` and ``tracks_mot.txt`` (``frame(1-based),track_id,x,y,w,h,score,-1,-1,-1``).

A full disk (ENOSPC, EDQUOT) never stops a live run: detection, tracking, alerts and the view go on,
the recorder closes what it had open (everything written so far stays playable/readable), counts the
frames it could not record (``frames_unrecorded``, shown as ``unrecorded=N``), frees space by
retention where that is configured, and tries again every ``DISK_RETRY_S`` seconds, in new segment
files. In replay, whose output must be complete, a full disk stops the run with one line (exit 3).
A text log whose last line was cut (a full disk, a crash mid-write) is trimmed to its last whole line
when it is opened again, so appended records never follow a partial one.

Event mode keeps the last ``pre_roll_s`` of source time as yuv420p frames in a ring buffer (the
format the encoder needs anyway): at 640x512 a 3 s pre-roll is ~44 MB, at 1920x1080 ~280 MB.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dataclasses import dataclass

from pipeline.runtime.config import PipelineConfig
from pipeline.runtime.schema import setting
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage, StageFatalError
from pipeline.runtime.books import DROPPED, OWN_DROPPED, REMOTE_DROPPED, FrameBooks
from pipeline.runtime.records import (SEGMENT_INDEX, SESSION, frame_record, frame_session, last_record, mot_lines,
                                      segment_entry)
from pipeline.runtime.storage import is_storage_full, open_line_log, trim_partial_line

log = logging.getLogger("stages.record")
FORMATS = {"mp4": "mp4", "mkv": "matroska", "ts": "mpegts"}
CONTAINER_OPTIONS = {"mp4": {"movflags": "frag_every_frame+empty_moov+default_base_moof", "flush_packets": "1"},
                     "mkv": {"flush_packets": "1"}, "ts": {"flush_packets": "1"}}
TIME_BASE = Fraction(1, 1000)  # pts in ms of source time: dropped frames keep real timing
TIME_EPS = 1e-4  # s; roll windows compare source times far below a frame period
RETENTION_CHECK_S = 10.0
MAX_SOURCE_FPS = 240  # the pre-roll ring holds at most pre_roll_s of frames at this rate
DISK_RETRY_S = 5.0


@dataclass
class RecordConfig:
    segment_seconds: float = setting(60.0, gt=0)
    container: str = setting("mp4", choices=("mp4", "mkv", "ts"))  # fragmented mp4: playable after a crash
    codec: str = "libx264"
    preset: str = "ultrafast"
    crf: int = setting(23, ge=0, le=51)
    gop_frames: int = setting(30, ge=1)  # keyframe interval (seek granularity)
    video: bool = True  # false: only tracks.jsonl / tracks_mot.txt (e.g. offline scoring)
    annotated: bool = True  # segment_NNNNN.* holds the annotated frames (else the raw ones)
    also_raw: bool = False  # with annotated: the raw frames too, in raw_segment_NNNNN.*
    mode: str = setting("continuous", choices=("continuous", "event"))  # event: only around triggers
    trigger: str = setting("alert", choices=("alert", "detection"))  # alert: a confirmed alert-class track in view
    pre_roll_s: float = setting(3.0, ge=0)  # event mode: source seconds kept before a trigger (yuv420p ring)
    post_roll_s: float = setting(5.0, ge=0)  # event mode: source seconds recorded after the last trigger
    retention_max_age_s: float | None = setting(None, gt=0)  # closed segments older than this are deleted
    retention_max_total_mb: float | None = setting(None, gt=0)  # oldest closed segments deleted beyond this total
    mot_txt: bool = True  # <stream>/tracks_mot.txt (MOTChallenge) beside tracks.jsonl


def video_frame(image: np.ndarray) -> av.VideoFrame:
    """BGR image -> yuv420p frame (even size, as yuv420p needs), converted once, here."""
    even = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(even), format="bgr24").reformat(format="yuv420p")


class SegmentWriter:
    """One video of one stream, cut into segments of `segment_seconds` of source time."""

    def __init__(self, folder: Path, settings: RecordConfig, prefix: str = "segment"):
        self.folder, self.settings, self.prefix = folder, settings, prefix
        self.container = self.stream = None
        # a restarted recorder (or a second run into the same folder) continues the numbering:
        # segments already on disk are never reopened for writing, which would truncate them
        self.segment_index, self.segment_start, self.last_pts = self._next_free_index(), 0.0, -1
        self.frames_written, self.last_source_ts = 0, float("-inf")
        self.segments: list[Path] = []
        self.frames_per_segment: list[int] = []

    def _next_free_index(self) -> int:
        taken = [int(m.group(1)) for path in self.folder.glob(f"{self.prefix}_*.*")
                 if (m := re.fullmatch(rf"{re.escape(self.prefix)}_(\d+)\.\w+", path.name))]
        return max(taken, default=-1) + 1

    @property
    def open_path(self) -> Path | None:
        return self.segments[-1] if self.container is not None else None

    def write(self, frame: av.VideoFrame, source_ts: float) -> None:
        went_back = source_ts < self.last_source_ts - TIME_EPS  # the source's clock restarted: a new segment
        full = source_ts - self.segment_start >= self.settings.segment_seconds - TIME_EPS
        if self.container is None or went_back or full:
            self._open_segment(frame, source_ts)
        self.last_source_ts = source_ts
        pts = max(int(round((source_ts - self.segment_start) * 1000)), self.last_pts + 1)
        frame.pts, frame.time_base, self.last_pts = pts, TIME_BASE, pts
        self.container.mux(self.stream.encode(frame))
        self.frames_written += 1
        self.frames_per_segment[-1] += 1

    def _open_segment(self, frame: av.VideoFrame, source_ts: float) -> None:
        self.close()
        ext = self.settings.container
        path = self.folder / f"{self.prefix}_{self.segment_index:05d}.{ext}"
        self.container = av.open(str(path), mode="w", format=FORMATS[ext], options=CONTAINER_OPTIONS[ext])
        self.stream = self.container.add_stream(self.settings.codec, rate=30)
        self.stream.time_base = TIME_BASE
        self.stream.codec_context.time_base = TIME_BASE
        self.stream.width, self.stream.height, self.stream.pix_fmt = frame.width, frame.height, "yuv420p"
        # zerolatency: no lookahead or B-frames, so each frame is muxed (and flushed) as it is written
        self.stream.options = {"preset": self.settings.preset, "crf": str(self.settings.crf),
                               "g": str(self.settings.gop_frames), "tune": "zerolatency"}
        self.segment_index += 1
        self.segment_start, self.last_pts = source_ts, -1
        self.segments.append(path)
        self.frames_per_segment.append(0)
        self._index(path.name, source_ts)
        log.info("recording %s", path)

    def _index(self, name: str, source_ts: float) -> None:
        """One line in segments.jsonl: where the view finds a moment of the stream (records.locate)."""
        path = self.folder / SEGMENT_INDEX
        try:
            trim_partial_line(path)
            with open(path, "a") as f:
                f.write(segment_entry(name, source_ts) + "\n")
        except OSError as error:
            if not is_storage_full(error):
                raise
            log.warning("%s: disk full, %s not indexed (the view cannot link events into it)", path, name)

    def close(self) -> None:
        """Finish the open segment (a later write starts the next one)."""
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None

    def abandon(self) -> None:
        """Drop the open segment after a failed write, ignoring further errors: what reached the disk
        stays playable (fragmented MP4: up to its last whole fragment); a segment with no byte is removed."""
        if self.container is None:
            return
        for finish in (lambda: self.container.mux(self.stream.encode(None)), self.container.close):
            try:
                finish()
            except (OSError, av.FFmpegError):
                pass
        self.container = None
        path = self.segments[-1]
        if path.exists() and path.stat().st_size == 0:
            path.unlink()


class RollGate:
    """Event mode: which frames go to video. Keeps frames of the last `pre_roll_s` of source time; a
    trigger at t writes those with time >= t - pre_roll_s, then every frame until the first one later
    than (last trigger + post_roll_s). Exact in source time, whatever the frame rate or gaps."""

    def __init__(self, pre_roll_s: float, post_roll_s: float):
        self.pre_roll_s, self.post_roll_s = pre_roll_s, post_roll_s
        # bounded in frames too: a source whose clock stalls (the same time again and again) would
        # otherwise never age a frame out of the ring
        self.ring: deque[tuple[float, object]] = deque(maxlen=int(pre_roll_s * MAX_SOURCE_FPS) + 2)
        self.last_trigger: float | None = None
        self.latest: float | None = None

    @property
    def active(self) -> bool:
        return self.last_trigger is not None

    def push(self, source_ts: float, item, triggered: bool) -> tuple[list, bool]:
        """-> (items to write now, in order; whether a clip just ended before this frame)."""
        cut = self._clock_went_back(source_ts)
        if triggered:
            starting = self.last_trigger is None
            self.last_trigger = source_ts
            if starting:
                pre = [it for ts, it in self.ring if ts >= source_ts - self.pre_roll_s - TIME_EPS]
                self.ring.clear()
                return pre + [item], cut
            return [item], cut
        if self.active and source_ts <= self.last_trigger + self.post_roll_s + TIME_EPS:
            return [item], False
        ended = self.active or cut
        self.last_trigger = None
        self.ring.append((source_ts, item))
        while self.ring and self.ring[0][0] < source_ts - self.pre_roll_s - TIME_EPS:
            self.ring.popleft()  # too old for any later trigger's pre-roll
        return [], ended

    def _clock_went_back(self, source_ts: float) -> bool:
        """A source clock that restarted (a new capture process) would keep the ring from ever being
        trimmed and a clip from ever ending: start afresh; True if that cut a clip short."""
        went_back = self.latest is not None and source_ts < self.latest - TIME_EPS
        self.latest = source_ts
        if not went_back:
            return False
        self.ring.clear()
        clip_cut, self.last_trigger = self.last_trigger is not None, None
        return clip_cut


class Retention:
    """Deletes closed segments older than max_age_s, then the oldest beyond max_total_mb (all streams)."""

    def __init__(self, root: Path, max_age_s: float | None, max_total_mb: float | None):
        self.root, self.max_age_s = root, max_age_s
        self.max_bytes = None if max_total_mb is None else max_total_mb * 1e6
        self.deleted = 0

    @property
    def enabled(self) -> bool:
        return self.max_age_s is not None or self.max_bytes is not None

    def enforce(self, open_paths: set[Path], now: float | None = None) -> list[Path]:
        if not self.enabled:
            return []
        now = time.time() if now is None else now
        files = []
        for path in self.root.glob("*/*segment_*.*"):
            if path in open_paths or path.suffix.lstrip(".") not in FORMATS:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        files.sort()  # oldest first
        total = sum(size for _, size, _ in files) + sum(p.stat().st_size for p in open_paths if p.exists())
        removed = []
        for mtime, size, path in files:
            too_old = self.max_age_s is not None and now - mtime > self.max_age_s
            too_big = self.max_bytes is not None and total > self.max_bytes
            if not (too_old or too_big):
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed.append(path)
        if removed:
            self.deleted += len(removed)
            log.info("retention: deleted %d segment(s), oldest %s", len(removed), removed[0].name)
        return removed


class StreamRecorder:
    """One stream's outputs: video writers (annotated and/or raw), roll gate, JSONL and MOT logs."""

    def __init__(self, folder: Path, settings: RecordConfig):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.settings = folder, settings
        self.writers: dict[str, SegmentWriter] = {}
        if settings.video:
            self.writers["annotated" if settings.annotated else "raw"] = SegmentWriter(folder, settings, "segment")
            if settings.annotated and settings.also_raw:
                self.writers["raw"] = SegmentWriter(folder, settings, "raw_segment")
        self.gate = RollGate(settings.pre_roll_s, settings.post_roll_s) if settings.mode == "event" else None
        self.jsonl = open_line_log(folder / "tracks.jsonl")
        self.mot = open_line_log(folder / "tracks_mot.txt") if settings.mot_txt else None

    def record(self, msg: FrameMessage) -> None:
        self.jsonl.write(json.dumps(frame_record(msg), separators=(",", ":")) + "\n")
        if self.mot is not None:
            self.mot.write(mot_lines(msg))
        if not self.writers:
            return
        frames = {kind: video_frame(self._image(msg, kind)) for kind in self.writers}
        if self.gate is None:
            self._write(frames, msg.source_ts)
            return
        to_write, clip_ended = self.gate.push(msg.source_ts, (msg.source_ts, frames), self._triggered(msg))
        if clip_ended:
            self.close_video()  # one clip, one (or more) segment files
        for source_ts, clip_frames in to_write:
            self._write(clip_frames, source_ts)

    def _image(self, msg: FrameMessage, kind: str) -> np.ndarray:
        return msg.buffers["annotated"] if kind == "annotated" and "annotated" in msg.buffers else msg.image

    def _triggered(self, msg: FrameMessage) -> bool:
        if self.settings.trigger == "detection":
            return msg.detections is not None and len(msg.detections) > 0
        return bool(msg.meta.get("alert_track_ids"))

    def _write(self, frames: dict, source_ts: float) -> None:
        for kind, writer in self.writers.items():
            writer.write(frames[kind], source_ts)

    @property
    def open_paths(self) -> set[Path]:
        return {w.open_path for w in self.writers.values() if w.open_path is not None}

    def close_video(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def close(self) -> None:
        self.close_video()
        self.jsonl.close()
        if self.mot is not None:
            self.mot.close()

    def abandon(self) -> None:
        """Close everything after a failed write, ignoring further write errors; the logs are cut back
        to their last whole line, so every file stays readable to its end."""
        for writer in self.writers.values():
            writer.abandon()
        for log_file in (self.jsonl, self.mot):
            try:
                if log_file is not None:
                    log_file.close()
            except OSError:
                pass
        for name in ("tracks.jsonl", "tracks_mot.txt"):
            trim_partial_line(self.folder / name)


class RecordStage(Stage):
    name = "record"
    section = RecordConfig
    port_offset = 3

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.root = cfg.resolve(cfg.output_dir)
        s = cfg.stages.record
        self.recorders: dict[str, StreamRecorder] = {}
        self.retention = Retention(self.root, s.retention_max_age_s, s.retention_max_total_mb)
        self.last_retention = 0.0
        self.counters = {"frames_recorded": 0, "duplicates": 0, "segments_deleted": 0, "frames_missing": 0,
                         "frames_dropped_upstream": 0, "frames_unrecorded": 0}
        self.books = FrameBooks()
        self.last_index: dict[str, int] = {}
        self.sessions: dict[str, str | None] = {}  # per stream, the capture session of its frames
        self.disk_full_since: float | None = None   # live: recording paused by a full disk since then
        self.next_disk_try = 0.0

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        self._new_session(msg)
        if msg.stream_id not in self.last_index:
            self._resume(msg)
        last = self.last_index.get(msg.stream_id, -1)
        if msg.frame_index <= last:
            self.counters["duplicates"] += 1  # a restarted capture may resend its last frames
            return []
        # a gap is frames dropped upstream by the live policy, or lost (a killed stage's queue)
        gap = self.books.arrive(msg.stream_id, msg.frame_index, msg.meta.get(DROPPED, 0))
        self.counters["frames_missing"] += gap.lost
        self.counters["frames_dropped_upstream"] += gap.dropped
        self.last_index[msg.stream_id] = msg.frame_index
        if self.disk_full_since is not None and time.monotonic() < self.next_disk_try:
            self.counters["frames_unrecorded"] += 1
            return []
        try:
            if msg.stream_id not in self.recorders:
                self.recorders[msg.stream_id] = StreamRecorder(self.root / msg.stream_id, self.cfg.stages.record)
            self.recorders[msg.stream_id].record(msg)
        except (OSError, av.FFmpegError) as error:
            if not is_storage_full(error):
                raise
            self._disk_full(msg.stream_id, error)
            return []
        if self.disk_full_since is not None:
            log.warning("disk space is back: recording again after %.0f s (%d frames unrecorded so far)",
                        time.monotonic() - self.disk_full_since, self.counters["frames_unrecorded"])
            self.disk_full_since = None
        self.counters["frames_recorded"] += 1
        self._retain()
        return []

    def _new_session(self, msg: FrameMessage) -> None:
        """A source that restarted on another host numbers its frames from 0 again: new books."""
        session, known = frame_session(msg), self.sessions.get(msg.stream_id)
        if None not in (session, known) and session != known:
            log.info("stream %s: a new capture session: its frame numbering starts again", msg.stream_id)
            self.last_index.pop(msg.stream_id, None)
            self.books.last.pop(msg.stream_id, None)
        self.sessions[msg.stream_id] = session or known

    def _resume(self, msg: FrameMessage) -> None:
        """A recorder continues where the records of the same frames end: a restarted one after its
        predecessor's (this run), or a new run on this host while the source on another host went on
        (the same capture session). Frames that died in a killed queue show as lost, frames already
        recorded as duplicates."""
        record = last_record(self.root / msg.stream_id / "tracks.jsonl")
        last = _count(record.get("frame_index")) if record is not None else None
        if last is None:
            return
        this_run, recorded, incoming = self._this_run(record), record.get(SESSION), frame_session(msg)
        same = recorded == incoming if None not in (recorded, incoming) else bool(self.restarts) and this_run
        if not same:
            return  # the folder holds earlier runs' records of other frames
        self.last_index[msg.stream_id] = last
        # this host's own stages count their drops from 0 in a new run; the other host's go on; and a
        # restarted recorder counts its own stale drops from 0: upstream's part is what goes on
        base = max(0, (_count(record.get(DROPPED)) or 0) - (_count(record.get(OWN_DROPPED)) or 0)) if this_run \
            else _count(record.get(REMOTE_DROPPED)) or 0
        self.books.resume(msg.stream_id, last, base)
        log.info("stream %s: resuming after frame %d, the last one recorded", msg.stream_id, last)

    def _this_run(self, record: dict) -> bool:
        """Whether a record was written since this run's supervisor started (it writes run_config.yaml)."""
        try:
            started = (self.root / "run_config.yaml").stat().st_mtime
        except OSError:
            return False
        recorded = record.get("recorded_wall")
        return isinstance(recorded, (int, float)) and recorded >= started

    def _disk_full(self, stream_id: str, error: OSError, frame_lost: bool = True) -> None:
        recorder = self.recorders.pop(stream_id, None)
        if recorder is not None:
            recorder.abandon()
        if not self.cfg.live:
            raise StageFatalError(f"disk full under {self.root} ({error.strerror}): the replay's recording "
                                  f"would be incomplete; free space and run it again")
        self.counters["frames_unrecorded"] += int(frame_lost)
        if self.disk_full_since is None:
            self.disk_full_since = time.monotonic()
            log.error("disk full under %s (%s): recording paused, the pipeline goes on; retrying every %.0f s",
                      self.root, error.strerror, DISK_RETRY_S)
        self.next_disk_try = time.monotonic() + DISK_RETRY_S
        self._retain(force=True)

    def _retain(self, force: bool = False) -> None:
        now = time.time()
        if self.retention.enabled and (force or now - self.last_retention >= RETENTION_CHECK_S):
            self.last_retention = now
            open_paths = set().union(*(r.open_paths for r in self.recorders.values()))
            self.retention.enforce(open_paths, now)
            self.counters["segments_deleted"] = self.retention.deleted

    def end_stream(self, stream_id: str, frame_count: int = 0) -> list[FrameMessage]:
        last = self.last_index.get(stream_id)
        if not self.cfg.live and last is not None:  # frames lost after the last one that arrived
            self.counters["frames_missing"] += max(0, frame_count - last - 1)
        recorder = self.recorders.pop(stream_id, None)
        if recorder is not None:
            try:
                recorder.close()
            except (OSError, av.FFmpegError) as error:
                if not is_storage_full(error):
                    raise
                self.recorders[stream_id] = recorder  # _disk_full abandons it
                self._disk_full(stream_id, error, frame_lost=False)
            for writer in recorder.writers.values():
                log.info("stream %s: %d frames in %d segment(s) under %s", stream_id, writer.frames_written,
                         len(writer.segments), writer.folder)
            self._retain(force=True)
        return []

    def close(self) -> None:
        """End every open stream; a full disk (replay) is raised once all of them are closed."""
        fatal = None
        for stream_id in list(self.recorders):
            try:
                self.end_stream(stream_id)
            except StageFatalError as error:
                fatal = fatal or error
        if fatal is not None:
            raise fatal


def _count(value) -> int | None:
    """A frame index or count read back from a file: a whole number in range, else None."""
    return value if type(value) is int and 0 <= value < 2 ** 53 else None
