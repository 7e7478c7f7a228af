"""The worked example of docs/architecture.md, "Add a stage": one file, registered from outside the
project's own packages, put into the frame path by one YAML line:

    frame_path: [capture, preprocess, detect, track, "tests.pipeline.runtime.example_stage:frame_log", record]

It writes one line per frame it passes on to ``<output_dir>/<stream>/frame_log.txt``, with the number
of detections, and counts the frames in its heartbeat.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.schema import setting
from pipeline.runtime.stage import Stage


@dataclass
class FrameLogConfig:  # the stages.frame_log section: its checks are declared with its fields
    file_name: str = "frame_log.txt"
    every: int = setting(1, ge=1)  # log every N-th frame


class FrameLogStage(Stage):
    name = "frame_log"
    section = FrameLogConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.counters = {"frames_logged": 0}
        self.files = {}

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        if msg.frame_index % self.settings.every == 0:
            self._file(msg.stream_id).write(f"{msg.frame_index} {len(msg.detections)}\n")
            self.counters["frames_logged"] += 1
        return [msg]

    def _file(self, stream_id: str):
        if stream_id not in self.files:
            folder = self.cfg.resolve(self.cfg.output_dir) / stream_id
            folder.mkdir(parents=True, exist_ok=True)
            self.files[stream_id] = open(folder / self.settings.file_name, "a", buffering=1)
        return self.files[stream_id]

    def close(self) -> None:
        for f in self.files.values():
            f.close()
