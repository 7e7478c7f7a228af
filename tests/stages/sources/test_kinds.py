"""stages/sources/: each URI goes to one kind, refused at load where it can never open; a new kind is
one class."""
import re

import cv2
import numpy as np
import pytest

from pipeline.runtime.config import ConfigError, config_from_dict
from stages.capture import CaptureStage
from stages.sources import SourceKind, kind_for


@pytest.mark.parametrize("uri, kind", [
    ("rtsp://10.0.0.5/stream1", "stream"), ("https://cam/feed.mjpg", "stream"), ("webcam:0", "webcam"),
    ("clip.mp4", "file"), ("relative/name", "file"),
])
def test_a_uri_goes_to_its_kind(uri, kind):
    assert kind_for(uri, uri).name == kind


def test_a_folder_is_a_folder(tmp_path):
    assert kind_for(str(tmp_path), str(tmp_path)).name == "folder"


def test_cameras_are_endless_and_files_finite():
    assert not kind_for("rtsp://x/y", "").finite and not kind_for("webcam:1", "").finite
    assert kind_for("clip.mp4", "clip.mp4").finite


@pytest.mark.parametrize("uri, message", [
    ("webcam:/dev/video0", "'sources[0].uri': a webcam is webcam:<index>"),
    ("missing.mp4", "'sources[0].uri': missing.mp4 does not exist"),
])
def test_a_source_that_can_never_open_is_refused_at_load(tmp_path, uri, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict({"sources": [{"id": "a", "uri": uri}], "output_dir": str(tmp_path),
                          "base_dir": str(tmp_path)})


class Pattern(SourceKind):
    """A kind added by one class: test:<n> yields n grey frames (a stand-in for, say, a GigE camera SDK)."""

    name = "pattern"
    priority = 50

    @classmethod
    def matches(cls, uri: str, location: str) -> bool:
        return uri.startswith("pattern:")

    def __init__(self, src, location):
        super().__init__(src, location)
        self.fps, self.frame_count, self.sent = 10.0, int(src.uri.split(":")[1]), 0

    def read(self):
        if self.sent == self.frame_count:
            return None, 0.0
        self.sent += 1
        return np.full((4, 4, 3), self.sent, np.uint8), (self.sent - 1) / self.fps


def test_a_new_kind_is_one_class(tmp_path):
    cfg = config_from_dict({"sources": [{"id": "p", "uri": "pattern:3"}], "output_dir": str(tmp_path)},
                           check_files=False)
    stage = CaptureStage(cfg, "p")
    frames = [m for m in stage.frames() if m is not None]
    assert [m.image[0, 0, 0] for m in frames] == [1, 2, 3] and stage.counters["frames_total"] == 3
    assert stage.stream_frame_count("p") == 3


def test_an_unreadable_image_in_a_folder_is_skipped(tmp_path):
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "1.png").write_bytes(b"not a png")
    kind = kind_for(str(tmp_path), str(tmp_path))
    cfg = config_from_dict({"sources": [{"id": "f", "uri": str(tmp_path)}], "output_dir": str(tmp_path / "o")},
                           check_files=False)
    reader = kind(cfg.sources[0], str(tmp_path))
    assert reader.frame_count == 2 and reader.read()[0] is not None and reader.read()[0] is None
