"""Video files, network streams and webcams through OpenCV's VideoCapture.

RTSP runs over TCP with open/read timeouts passed to OpenCV's FFmpeg backend at construction (the
only way it honours them), so a dead or hung camera never blocks the capture process.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.runtime.config import ConfigError, PipelineConfig, SourceConfig
from stages.sources.base import SourceError, SourceKind

# RTSP over TCP: UDP loses packets (smeared frames) on busy links; set before any capture opens.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


class OpenCvSource(SourceKind):
    """What the OpenCV kinds share: reading, timestamps, the frame rate a source reports."""

    def __init__(self, src: SourceConfig, location: str):
        super().__init__(src, location)
        self.cap = self._open()
        if not self.cap.isOpened():
            raise SourceError(f"cannot open {src.uri}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else src.fps
        self.frame_count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self.finite else 0
        self.index = 0

    def _open(self) -> cv2.VideoCapture:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.src.open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.src.read_timeout_s * 1000)]
        return cv2.VideoCapture(self.location, cv2.CAP_FFMPEG, params)

    def read(self) -> tuple[np.ndarray | None, float]:
        ok, image = self.cap.read()
        if not ok:
            return None, 0.0
        self.index += 1
        pos_ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        return image, pos_ms / 1000.0 if pos_ms > 0 else (self.index - 1) / self.fps

    def release(self) -> None:
        self.cap.release()


class Camera(OpenCvSource):
    """What cameras share: they do not end, and may drop and come back (the capture reconnects)."""

    priority = 10
    finite = False
    local = False


class NetworkStream(Camera):
    """rtsp://, rtsps://, http(s):// cameras: reconnect with backoff when they drop."""

    name = "stream"

    @classmethod
    def matches(cls, uri: str, location: str) -> bool:
        return uri.startswith(NETWORK_SCHEMES)


class Webcam(Camera):
    """webcam:<index>, a local camera device."""

    name = "webcam"

    @classmethod
    def matches(cls, uri: str, location: str) -> bool:
        return uri.startswith("webcam:")

    @classmethod
    def validate(cls, src: SourceConfig, where: str, cfg: PipelineConfig, check_files: bool) -> None:
        if not src.uri[len("webcam:"):].isdigit():
            raise ConfigError(f"config key '{where}': a webcam is webcam:<index> (e.g. webcam:0), got {src.uri!r}")

    def _open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(int(self.src.uri.split(":", 1)[1]))


class VideoFile(OpenCvSource):
    """Any other URI: a video file, by path."""

    name = "file"
    priority = -100  # the catch-all
    stated_count = True

    @classmethod
    def matches(cls, uri: str, location: str) -> bool:
        return True

    @classmethod
    def validate(cls, src: SourceConfig, where: str, cfg: PipelineConfig, check_files: bool) -> None:
        if check_files and not Path(cfg.resolve(src.uri)).exists():
            raise ConfigError(f"config key '{where}': {src.uri} does not exist")
