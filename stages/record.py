"""Record: H.264 segments per stream (PyAV/libx264) plus per-frame detections as JSONL.

Segments are fragmented MP4 (a self-contained fragment per keyframe, one a second), MKV or MPEG-TS:
a recorder killed mid-segment leaves a file that plays up to the last fragment written.
"""
from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.config import PipelineConfig, RecordConfig
from pipeline.messages import FrameMessage
from pipeline.stage import Stage

log = logging.getLogger("stages.record")
CONTAINER_OPTIONS = {"mp4": {"movflags": "frag_keyframe+empty_moov+default_base_moof"}, "mkv": {}, "ts": {}}
TIME_BASE = Fraction(1, 1000)  # pts in ms of source time: dropped frames keep real timing


class SegmentWriter:
    """One stream's video, cut into segments of `segment_seconds` of source time."""

    def __init__(self, folder: Path, settings: RecordConfig):
        self.folder, self.settings = folder, settings
        self.container = self.stream = None
        self.segment_index, self.segment_start, self.last_pts = 0, 0.0, -1
        self.frames_written = 0
        self.segments: list[Path] = []

    def write(self, image: np.ndarray, source_ts: float) -> None:
        if self.container is None or source_ts - self.segment_start >= self.settings.segment_seconds:
            self._open_segment(image.shape, source_ts)
        pts = max(int(round((source_ts - self.segment_start) * 1000)), self.last_pts + 1)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        frame.pts, frame.time_base, self.last_pts = pts, TIME_BASE, pts
        self.container.mux(self.stream.encode(frame))
        self.frames_written += 1

    def _open_segment(self, shape, source_ts: float) -> None:
        self.close()
        ext = self.settings.container
        path = self.folder / f"segment_{self.segment_index:05d}.{ext}"
        self.container = av.open(str(path), mode="w", format={"mp4": "mp4", "mkv": "matroska", "ts": "mpegts"}[ext],
                                 options=CONTAINER_OPTIONS[ext])
        self.stream = self.container.add_stream(self.settings.codec, rate=30)
        self.stream.time_base = TIME_BASE
        self.stream.codec_context.time_base = TIME_BASE
        self.stream.height, self.stream.width = shape[0] - shape[0] % 2, shape[1] - shape[1] % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": self.settings.preset, "crf": str(self.settings.crf), "g": "30",
                               "tune": "zerolatency"}
        self.segment_index += 1
        self.segment_start, self.last_pts = source_ts, -1
        self.segments.append(path)
        log.info("recording %s", path)

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None


class RecordStage(Stage):
    name = "record"
    input_key = "record_in"

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.root = cfg.resolve(cfg.output_dir)
        self.writers: dict[str, SegmentWriter] = {}
        self.logs: dict[str, object] = {}
        self.counters = {"frames_recorded": 0, "duplicates": 0}
        self.last_index: dict[str, int] = {}

    def _open(self, stream_id: str) -> SegmentWriter:
        if stream_id not in self.writers:
            folder = self.root / stream_id
            folder.mkdir(parents=True, exist_ok=True)
            self.writers[stream_id] = SegmentWriter(folder, self.cfg.stages.record)
            self.logs[stream_id] = open(folder / "tracks.jsonl", "a", buffering=1)  # line-buffered: whole lines survive a crash
        return self.writers[stream_id]

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        if msg.frame_index <= self.last_index.get(msg.stream_id, -1):
            self.counters["duplicates"] += 1  # a restarted capture may resend its last frames
            return []
        self.last_index[msg.stream_id] = msg.frame_index
        writer = self._open(msg.stream_id)
        use_annotated = self.cfg.stages.record.annotated and "annotated" in msg.buffers
        writer.write(msg.buffers["annotated"] if use_annotated else msg.image, msg.source_ts)
        self.logs[msg.stream_id].write(json.dumps(frame_record(msg), separators=(",", ":")) + "\n")
        self.counters["frames_recorded"] += 1
        return []

    def end_stream(self, stream_id: str) -> list[FrameMessage]:
        writer = self.writers.pop(stream_id, None)
        if writer is not None:
            writer.close()
            self.logs.pop(stream_id).close()
            log.info("stream %s: %d frames in %d segment(s) under %s", stream_id, writer.frames_written,
                     len(writer.segments), writer.folder)
        return []

    def close(self) -> None:
        for stream_id in list(self.writers):
            self.end_stream(stream_id)


def frame_record(msg: FrameMessage) -> dict:
    dets = msg.detections if msg.detections is not None else np.zeros((0, 6), np.float32)
    return {"stream_id": msg.stream_id, "frame_index": msg.frame_index, "source_ts": round(msg.source_ts, 4),
            "capture_wall": msg.capture_wall, "detections": dets.tolist(),  # full precision: scored later
            "track_ids": [] if msg.track_ids is None else msg.track_ids.tolist()}
