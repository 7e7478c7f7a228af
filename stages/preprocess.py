"""Preprocess: letterbox each frame to the detector's input size (models.letterbox, yolox's rule), or
for a tiled source in live mode a motion score per tile (``meta["tile_motion"]``, stages.tiling) that
the detect stage's pixel budget spends on (that stage letterboxes the few such frames that get the
whole-frame pass: measured at 1080p25, 4 in 5 frames do not).

Kept as uint8 HWC, so the hop to the detector moves a quarter of the bytes of float32; the detector
casts. Equality with yolox's own `preproc` is a test (tests/stages/test_preprocess.py). This process
needs no torch: the input size comes from the checkpoint's meta (models.meta reads it without).
"""
from __future__ import annotations

from dataclasses import dataclass

from models.letterbox import check_input_size, letterbox
from pipeline.runtime.config import ConfigError, PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import Stage
from stages.model_input import model_input_size
from stages.tiling import MotionMeter, planner_for

__all__ = ["PreprocessConfig", "PreprocessStage", "letterbox"]


@dataclass
class PreprocessConfig:
    input_size: list[int] | None = None  # [h, w]; default: the model checkpoint's

    def validate(self, where: str) -> None:
        if self.input_size is not None:
            try:
                check_input_size(self.input_size, f"config key '{where}.input_size'")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


class PreprocessStage(Stage):
    name = "preprocess"
    section = PreprocessConfig
    port_offset = 0

    @classmethod
    def preflight(cls, cfg: PipelineConfig) -> None:
        model_input_size(cfg)  # the checkpoint's input size, unless the config names one

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.input_size = model_input_size(cfg)  # the size the detect stage runs at
        self.planner = planner_for(cfg, self.input_size)  # the detect stage's tile grid, for motion per tile
        self.motion = MotionMeter()
        self.measures_motion = cfg.live and self.planner.settings.budget > 0  # replay examines every tile

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        size = msg.image.shape[:2]
        if self.measures_motion and self.planner.tiled(size):
            # a live tiled frame: the detect stage's schedule gives the whole-frame pass to few of them
            # (stages.tile_schedule), so it letterboxes those itself and this stage sends no input
            regions = self.planner.grid(msg.stream_id, size).regions
            msg.meta["tile_motion"] = self.motion.scores(msg.stream_id, msg.image, regions)
        else:
            msg.buffers["input"], msg.meta["ratio"] = letterbox(msg.image, self.input_size)
        return [msg]
