"""Capture: one process per source (video file, image folder, RTSP camera, webcam) -> frames.

How a URI is read is its source kind's business (stages/sources/: one class per kind). Cameras
reconnect with capped exponential backoff, so a dead or hung camera never blocks the process: the
stall is reported in the heartbeat ("stream": "down").
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from pipeline.runtime.config import PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.records import SESSION
from pipeline.runtime.stage import Stage
from stages.sources import SourceError, SourceKind, kind_for

log = logging.getLogger("stages.capture")
SKIP_BEAT_FRAMES = 50
REPLAY_RECONNECTS = 5  # a camera source in replay mode without max_reconnects: attempts before exit 3  # a capture resuming mid-file yields (beats) this often while it skips frames

__all__ = ["CaptureStage", "SourceError", "Timeline"]


class Timeline:
    """Source timestamps that keep rising across reopens. Every new reader (a reconnected camera, the
    next pass of a looped file) starts its clock near 0 again; its frames continue one frame period
    after the last one sent, so recordings and their pre-roll never see time run backwards."""

    def __init__(self):
        self.offset, self.last, self.rebase = 0.0, None, False

    def reopened(self) -> None:
        self.rebase = self.last is not None

    def __call__(self, reader_ts: float, period: float) -> float:
        if self.rebase:
            self.offset, self.rebase = self.last + period - reader_ts, False
        self.last = reader_ts + self.offset
        return self.last


class CaptureStage(Stage):
    name = "capture"
    role = "source"

    @classmethod
    def check_config(cls, cfg: PipelineConfig, check_files: bool) -> None:
        for i, src in enumerate(cfg.sources):
            kind_for(src.uri, str(cfg.resolve(src.uri))).validate(src, f"sources[{i}].uri", cfg, check_files)

    def __init__(self, cfg: PipelineConfig, source_id: str, start_frame: int = 0):
        super().__init__(cfg)
        # a restarted capture resumes the numbering: a file skips the frames already sent, a camera
        # continues from there, so downstream stages never see old frame indices again
        self.start_frame = start_frame
        matches = [s for s in cfg.sources if s.id == source_id]
        if not matches:
            raise SourceError(f"no source with id {source_id!r} in config")
        self.src = matches[0]
        self.stream_ids = [source_id]
        path = str(cfg.resolve(self.src.uri))
        self.kind: type[SourceKind] = kind_for(self.src.uri, path)
        self.location = path if self.kind.local else self.src.uri
        self.counters = {"reconnects": 0, "frames_total": 0}
        self.stream_state = "starting"
        self.reader: SourceKind | None = None
        self.next_frame = start_frame
        self.frame_index = start_frame if not self.kind.finite else 0  # a file counts from its start
        self.timeline = Timeline()
        self.backoff, self.failures = self.src.reconnect_initial_s, 0

    def status(self) -> dict:
        return {"stream": self.stream_state, "next_frame": self.next_frame}

    def stream_frame_count(self, stream_id: str) -> int:
        return self.next_frame if self.stream_state == "ended" else 0

    def frames(self) -> Iterator[FrameMessage | None]:
        while True:
            self.reader = yield from self._connect()
            if self.reader is None:
                return  # gave up: max_reconnects
            frames_this_pass = yield from self._read_pass()
            self.reader.release()
            if self.kind.finite:
                if not frames_this_pass:
                    raise SourceError(f"no readable frame in {self.location}")
                if self.src.loop and self.cfg.live:
                    continue
                self.stream_state = "ended"
                self._check_complete(frames_this_pass)
                return
            if not (yield from self._after_read_failure()):
                return

    def _check_complete(self, frames_read: int) -> None:
        """A replay's output must be whole: a file that ends well before the frame count its container
        states (truncated, damaged) stops the run with exit 3 once its frames went downstream."""
        if not self.kind.stated_count:
            return  # an image folder skips unreadable files (logged): fewer frames than files is no fault
        expected = self.reader.frame_count
        short = expected - frames_read
        self.counters["frames_short"] = max(0, short)
        if short > max(2, expected // 50):  # containers estimate their count: allow a frame or two
            message = f"{self.location} ended after {frames_read} of the {expected} frames its container states"
            if not self.cfg.live:
                raise SourceError(f"{message} (truncated or damaged); the replay is incomplete")
            log.warning("%s: %s", self.src.id, message)

    def _connect(self) -> Iterator[None]:
        """Open the source (retrying a camera with backoff); returns the reader, None on giving up."""
        while True:
            try:
                reader = self.kind(self.src, self.location)
            except SourceError as exc:
                if self.kind.finite:
                    raise  # a file that cannot be opened will not open later either
                self.failures += 1
                self._mark_down(f"{exc}; retry in {self.backoff:.1f}s")
                if self._gave_up():
                    return None
                yield from self._back_off()
                continue
            self.stream_state = "up"  # failures count on until a frame arrives: a camera that accepts
                                      # the connection but sends nothing still hits max_reconnects
            self.counters["frames_total"] = reader.frame_count
            self.timeline.reopened()
            log.info("%s: opened %s", self.src.id, self.src.uri)
            return reader

    def _read_pass(self) -> Iterator[FrameMessage | None]:
        """Frames until the reader ends or fails; returns how many it read."""
        start_clock, first_ts, frames_this_pass = time.monotonic(), None, 0  # monotonic: NTP steps
        while True:
            image, reader_ts = self.reader.read()
            if image is None:
                return frames_this_pass
            frames_this_pass += 1
            if self.frame_index < self.start_frame and self.kind.finite:
                self.frame_index += 1
                if self.frame_index % SKIP_BEAT_FRAMES == 0:
                    yield None  # skipping to the resume frame can take long: keep beating
                continue
            source_ts = self.timeline(reader_ts, 1.0 / self.reader.fps)
            if self._pacing():
                first_ts = source_ts if first_ts is None else first_ts
                yield from self._sleep(start_clock + (source_ts - first_ts) - time.monotonic())
            # next_frame moves on only once the frame was taken and sent: a capture killed while its
            # send waits resumes at this frame (the recorder drops it if it did arrive)
            self.next_frame = self.frame_index
            msg = FrameMessage(self.src.id, self.frame_index, source_ts, time.time(), {"image": image})
            if self.session:  # which run of this capture the frame belongs to (see records.SESSION)
                msg.meta[SESSION] = self.session
            yield msg
            self.frame_index += 1
            self.next_frame = self.frame_index
            self.backoff, self.failures = self.src.reconnect_initial_s, 0

    def _after_read_failure(self) -> Iterator[None]:
        """A camera stopped sending: back off before reconnecting; returns False on giving up."""
        self.failures += 1
        if self._gave_up():
            self._mark_down("read failed or timed out")
            return False
        self.counters["reconnects"] += 1
        self._mark_down(f"read failed or timed out; reconnect in {self.backoff:.1f}s")
        yield from self._back_off()
        return True

    def _gave_up(self) -> bool:
        budget = self.src.max_reconnects
        if budget < 0 and not self.cfg.live:
            budget = REPLAY_RECONNECTS  # a replay must end: a camera that never answers cannot hold it forever
        if not 0 <= budget < self.failures:
            return False
        log.error("%s: giving up after %d attempts", self.src.id, self.failures)
        if not self.cfg.live:
            raise SourceError(f"{self.src.uri}: no frames after {self.failures} attempts; the replay is incomplete")
        return True

    def _back_off(self) -> Iterator[None]:
        yield from self._sleep(self.backoff)
        self.backoff = min(self.backoff * 2, self.src.reconnect_max_s)

    def _pacing(self) -> bool:
        return self.kind.finite and (self.src.pace or self.cfg.live)

    def _mark_down(self, why: str) -> None:
        self.stream_state = "down"
        log.warning("%s: stream down: %s", self.src.id, why)

    def _sleep(self, seconds: float) -> Iterator[None]:
        """Sleep in slices, yielding so the runner keeps beating and can stop."""
        end = time.monotonic() + max(0.0, seconds)
        while time.monotonic() < end:
            time.sleep(max(0.0, min(0.1, end - time.monotonic())))
            yield None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.release()
