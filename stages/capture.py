"""Capture: one process per source (video file, image folder, RTSP camera, webcam) -> frames.

RTSP runs over TCP with open/read timeouts passed to OpenCV's FFmpeg backend at construction (the
only way it honours them), and reconnects with capped exponential backoff, so a dead or hung camera
never blocks the process: the stall is reported in the heartbeat ("stream": "down").
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from pipeline.runtime.config import PipelineConfig, SourceConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage

log = logging.getLogger("stages.capture")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SKIP_BEAT_FRAMES = 50  # a capture resuming mid-file yields (beats) this often while it skips frames

# RTSP over TCP: UDP loses packets (smeared frames) on busy links; set before any capture opens.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class SourceError(RuntimeError):
    pass


def source_kind(uri: str) -> str:
    if uri.startswith(("rtsp://", "rtsps://", "http://", "https://")):
        return "stream"
    if uri.startswith("webcam:"):
        return "webcam"
    return "folder" if Path(uri).is_dir() else "file"


class ImageFolderReader:
    """Sorted images of a folder as a stream at a nominal fps."""

    def __init__(self, folder: Path, fps: float):
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.fps, self.index = fps, 0

    @property
    def frame_count(self) -> int:
        return len(self.paths)

    def read(self) -> tuple[np.ndarray | None, float]:
        while self.index < len(self.paths):
            path = self.paths[self.index]
            self.index += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image, (self.index - 1) / self.fps
            log.warning("skipping unreadable image %s", path)
        return None, 0.0

    def release(self) -> None:
        pass


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


class VideoReader:
    """A video file, RTSP URL or webcam through OpenCV, with timeouts for network sources."""

    def __init__(self, src: SourceConfig, location: str):
        kind = source_kind(src.uri)
        if kind == "webcam":
            self.cap = cv2.VideoCapture(int(src.uri.split(":", 1)[1]))
        else:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(src.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(src.read_timeout_s * 1000)]
            self.cap = cv2.VideoCapture(location, cv2.CAP_FFMPEG, params)
        if not self.cap.isOpened():
            raise SourceError(f"cannot open {src.uri}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else src.fps
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "file" else 0
        self.index = 0

    def read(self) -> tuple[np.ndarray | None, float]:
        ok, image = self.cap.read()
        if not ok:
            return None, 0.0
        self.index += 1
        pos_ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        return image, pos_ms / 1000.0 if pos_ms > 0 else (self.index - 1) / self.fps

    def release(self) -> None:
        self.cap.release()


class CaptureStage(Stage):
    name = "capture"
    output_key = "preprocess_in"

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
        self.kind = source_kind(self.src.uri)
        self.location = self.src.uri if self.kind in ("stream", "webcam") else str(cfg.resolve(self.src.uri))
        self.counters = {"reconnects": 0, "frames_total": 0}
        self.stream_state = "starting"
        self.reader = None
        self.next_frame = start_frame
        self.timeline = Timeline()

    def status(self) -> dict:
        return {"stream": self.stream_state, "next_frame": self.next_frame}

    def stream_frame_count(self, stream_id: str) -> int:
        return self.next_frame if self.stream_state == "ended" else 0

    def _open(self):
        if self.kind == "folder":
            return ImageFolderReader(Path(self.location), self.src.fps)
        return VideoReader(self.src, self.location)

    def frames(self) -> Iterator[FrameMessage | None]:
        frame_index = self.start_frame if self.kind in ("stream", "webcam") else 0
        backoff, failures = self.src.reconnect_initial_s, 0
        while True:
            try:
                self.reader = self._open()
            except SourceError as exc:
                if self.kind in ("file", "folder"):
                    raise  # a file that cannot be opened will not open later either
                failures += 1
                self._mark_down(f"{exc}; retry in {backoff:.1f}s")
                if 0 <= self.src.max_reconnects < failures:
                    log.error("%s: giving up after %d attempts", self.src.id, failures)
                    return
                yield from self._sleep(backoff)
                backoff = min(backoff * 2, self.src.reconnect_max_s)
                continue
            self.stream_state = "up"  # failures count on until a frame arrives: a camera that accepts
                                      # the connection but sends nothing still hits max_reconnects
            self.counters["frames_total"] = getattr(self.reader, "frame_count", 0)
            self.timeline.reopened()
            log.info("%s: opened %s", self.src.id, self.src.uri)
            start_clock, first_ts, frames_this_pass = time.monotonic(), None, 0  # monotonic: NTP steps
            while True:
                image, reader_ts = self.reader.read()
                if image is None:
                    break
                frames_this_pass += 1
                if frame_index < self.start_frame and self.kind in ("file", "folder"):
                    frame_index += 1
                    if frame_index % SKIP_BEAT_FRAMES == 0:
                        yield None  # skipping to the resume frame can take long: keep beating
                    continue
                source_ts = self.timeline(reader_ts, 1.0 / self.reader.fps)
                if self._pacing():
                    first_ts = source_ts if first_ts is None else first_ts
                    yield from self._sleep(start_clock + (source_ts - first_ts) - time.monotonic())
                # next_frame moves on only once the frame was taken and sent: a capture killed while its
                # send waits resumes at this frame (the recorder drops it if it did arrive)
                self.next_frame = frame_index
                yield FrameMessage(self.src.id, frame_index, source_ts, time.time(), {"image": image})
                frame_index += 1
                self.next_frame = frame_index
                backoff, failures = self.src.reconnect_initial_s, 0
            self.reader.release()
            if self.kind in ("file", "folder"):
                if not frames_this_pass:
                    raise SourceError(f"no readable frame in {self.location}")
                if self.src.loop and self.cfg.live:
                    continue
                self.stream_state = "ended"
                return
            failures += 1
            if 0 <= self.src.max_reconnects < failures:
                self._mark_down("read failed or timed out")
                log.error("%s: giving up after %d attempts", self.src.id, failures)
                return
            self.counters["reconnects"] += 1
            self._mark_down(f"read failed or timed out; reconnect in {backoff:.1f}s")
            yield from self._sleep(backoff)
            backoff = min(backoff * 2, self.src.reconnect_max_s)

    def _pacing(self) -> bool:
        return self.kind in ("file", "folder") and (self.src.pace or self.cfg.live)

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
