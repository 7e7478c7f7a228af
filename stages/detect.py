"""Detect: YOLOX-GSSAM on letterboxed frames, batched across streams, tiled where a source is large.

Frames normally arrive letterboxed by the preprocess stage (buffer ``input``, ``meta["ratio"]``); a
frame path without preprocess is letterboxed here. A frame larger than the model input (see
``stages.detect.tiling``, stages.tiling) is also examined in tiles at the source's own scale; the
whole-frame pass and the tiles of all frames of a batch go through the model together, and their
detections are merged into one set in source pixels (models.tiling). The class names sent on with
every frame are the checkpoint's own, so the track stage never guesses them; ``meta["object_scores"]``
holds the head's objectness per detection (is something there, whatever class it was given). Only this process
loads a model runtime (models.backends); the ONNX-based backends need no torch once their export is
cached, so the process is up in well under a second.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

import models
from models.backends import (
    BACKEND_CHOICES,
    BackendError,
    backend_class,
    check_available,
    check_backend,
    resolve_backend,
)
from models.letterbox import letterbox
from models.tiling import merge_regions, region_input, to_frame
from pipeline.runtime.config import ConfigError, PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.schema import setting
from pipeline.runtime.stage import Stage
from stages.model_input import (check_weights_value, model_input_size, weights_path,
                                weights_problems_as_config_errors)
from stages.tiling import FramePace, TilingConfig, planner_for

MODEL_BATCH = 8  # inputs per model call: the whole-frame passes and tiles of a batch of frames
MAX_TILE_MOTION = 4096  # entries of meta "tile_motion" accepted (far more than MAX_TILES_PER_FRAME)


class Job(NamedTuple):
    """One model input of a batch: a frame's whole-frame pass (tile None) or one of its tiles."""
    msg: FrameMessage
    tile: int | None
    region: tuple
    letterboxed: np.ndarray | None  # the whole-frame pass's input, made by preprocess; tiles are cut in _run
    ratio: float

log = logging.getLogger("stages.detect")


@dataclass
class DetectConfig:
    # a checkpoint path, or the name of a shipped one (models/weights/NAME.pt): "default" the field
    # model, "demo" the one trained with synthetic renders (scripts/make_synthetic.py)
    weights: str = "default"
    # models.backends: onnx, openvino, torch (CPU or CUDA), ..., or auto (the fastest this machine runs
    # at the fp32 mAP, measured: openvino-bf16 where the CPU has bf16 and openvino is installed, else onnx)
    backend: str = setting("onnx", choices=BACKEND_CHOICES)
    device: str = "cpu"
    fp16: bool = False
    batch_size: int = setting(4, gt=0)
    threads: int = setting(2, ge=1, le=256)  # intra-op threads of the CPU runtimes (per worker)
    # copies of the model that run the images of a batch side by side: for several streams or tiles,
    # two 1-thread workers outrun one 2-thread copy on 2 cores; one image runs on one worker alone
    workers: int = setting(1, ge=1, le=16)
    # ONNX Runtime's threads spin between runs (faster alone, but on a small machine they take the CPU
    # the other stages need; docs/benchmarks.md "Backends in the pipeline")
    spin: bool = True
    conf_threshold: float = setting(0.25, ge=0.0, le=1.0)
    nms_threshold: float = setting(0.45, ge=0.0, le=1.0)
    # one box per object for the operator and the tracker: a drone that also scores as a bird at the same
    # place is kept once, as its best class (offline mAP keeps COCO's class-aware NMS)
    class_agnostic_nms: bool = True
    tiling: TilingConfig = setting(factory=TilingConfig)

    def validate(self, where: str) -> None:
        try:  # what the detector would refuse only after loading the weights (and restarting)
            check_backend(self.backend, self.device, self.fp16)
        except BackendError as exc:
            raise ConfigError(f"config key '{where}.{exc.key}': {exc}") from None


class DetectStage(Stage):
    name = "detect"
    section = DetectConfig
    port_offset = 1

    @classmethod
    def check_config(cls, cfg: PipelineConfig, check_files: bool) -> None:
        if check_files:
            check_weights_value(cfg, cfg.stages.detect.weights)

    @classmethod
    def preflight(cls, cfg: PipelineConfig) -> None:
        """The weights must hold a readable checkpoint meta (read without torch) and the backend must
        have what it runs on (an INT8 backend its quantized model); the detect process itself checks
        the weights against the model when it loads them."""
        input_size = model_input_size(cfg)
        backend = resolve_backend(cfg.stages.detect.backend, cfg.stages.detect.device)
        try:
            check_available(backend)  # here, where detect runs: a host that only reads the config needs no runtime
        except BackendError as exc:
            raise ConfigError(f"config key 'stages.detect.{exc.key}': {exc}") from None
        problem = backend_class(backend).missing(weights_path(cfg), input_size)
        if problem is not None:
            raise ConfigError(f"config key 'stages.detect.backend': {problem}")

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        det = self.settings
        self.batch_size = det.batch_size
        with weights_problems_as_config_errors():
            self.detector = models.Detector(
                weights_path(cfg), backend=det.backend, device=det.device, fp16=det.fp16,
                conf_threshold=det.conf_threshold, nms_threshold=det.nms_threshold,
                class_agnostic_nms=det.class_agnostic_nms, input_size=model_input_size(cfg),
                onnx_threads=det.threads, spin=det.spin, workers=det.workers)
        self.detector.warm_up()  # before the first beat: the first frame is not the one that waits for it
        log.info("detector %s (%s on %s), classes %s", weights_path(cfg), self.detector.backend, det.device,
                 self.detector.class_names)
        self.planner = planner_for(cfg, self.detector.input_size)
        self.pace = FramePace()  # the load signal of the live tile budget

    def accept(self, msg: FrameMessage) -> str | None:
        problem = _motion_problem(msg.meta.get("tile_motion"))
        if problem is not None or "input" not in msg.buffers:  # no input buffer: letterboxed here
            return problem
        shape, ratio = msg.buffers["input"].shape, msg.meta.get("ratio")
        if msg.buffers["input"].dtype != np.uint8 or shape != (*self.detector.input_size, 3):
            return f"buffer 'input' must be uint8 {[*self.detector.input_size, 3]}, got {list(shape)}"
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio < 1e4:
            return f"meta 'ratio' must be a positive number, got {str(ratio)[:40]}"
        return None

    def _input(self, msg: FrameMessage) -> np.ndarray:
        if "input" not in msg.buffers:  # no preprocess stage in this frame path, or a live tiled frame
            msg.buffers["input"], msg.meta["ratio"] = letterbox(msg.image, self.detector.input_size)
        return msg.buffers.pop("input")

    def process_batch(self, msgs: list[FrameMessage]) -> list[FrameMessage]:
        jobs, grids, now = [], {}, time.time()  # grids: id(msg) -> the tile grid its frame was planned with
        for msg in msgs:
            whole = (0, 0, msg.image.shape[1], msg.image.shape[0])
            tiles = self.planner.plan(msg.stream_id, msg.image.shape[:2], msg.meta.pop("tile_motion", None),
                                      msg.frame_index, self.planner.live and self.pace.late(msg, now))
            grid = grids[id(msg)] = self.planner.grid_of(msg.stream_id, msg.image.shape[:2])  # None: not tiled
            if grid is None or grid.schedule.whole_now:  # (a stage behind may examine nothing of a frame)
                letterboxed = self._input(msg)
                jobs.append(Job(msg, None, whole, letterboxed, msg.meta["ratio"]))
            msg.buffers.pop("input", None)  # (sent on by a preprocess stage of other settings: not needed)
            jobs += [Job(msg, index, region, None, grid.scale) for index, region in tiles]
        found = self._run(jobs)
        for msg in msgs:
            mine = [(job, dets) for job, dets in zip(jobs, found) if job.msg is msg]
            merged = self._merged(msg, mine, grids.get(id(msg)))
            msg.detections = np.ascontiguousarray(merged[:, :6])
            msg.meta["object_scores"] = [round(float(v), 4) for v in merged[:, 6]]
            msg.meta["class_names"] = self.detector.class_names
        return msgs

    def _run(self, jobs: list[Job]) -> list[np.ndarray]:
        """Each job's detections in its frame's pixels, MODEL_BATCH inputs per model call (tiles are
        cut per call, so a batch of large frames never holds all its tiles at once)."""
        found = []
        for start in range(0, len(jobs), MODEL_BATCH):
            chunk = jobs[start:start + MODEL_BATCH]
            inputs = [job.letterboxed if job.tile is None else
                      region_input(job.msg.image, job.region, self.detector.input_size, job.ratio)[0] for job in chunk]
            batch = np.ascontiguousarray(np.stack(inputs).transpose(0, 3, 1, 2), dtype=np.float32)
            shapes = [(r[3] - r[1], r[2] - r[0], 3) for r in (job.region for job in chunk)]
            results = self.detector.postprocess(self.detector.infer(batch), [job.ratio for job in chunk], shapes,
                                                objectness=True)
            found += [to_frame(dets, job.region) for job, dets in zip(chunk, results)]
        return found

    def _merged(self, msg: FrameMessage, mine: list, grid) -> np.ndarray:
        """One frame's detections: the whole-frame pass alone, or merged with its tiles' (models.tiling)
        of ``grid`` (stages.tiling.StreamGrid)."""
        if grid is None:
            return np.asarray(mine[0][1], dtype=np.float32).reshape(-1, 7)
        if not mine:  # a tiled frame of a stage behind, none of whose regions was due
            return np.zeros((0, 7), dtype=np.float32)
        regions, per_region = [job.region for job, _ in mine], [dets for _, dets in mine]
        merged = merge_regions(per_region, regions, msg.image.shape[:2], self.settings.tiling.merge_ios,
                               self.settings.class_agnostic_nms, whole_first=mine[0][0].tile is None)
        self.planner.saw(msg.stream_id, grid, merged)
        return merged

    def close(self) -> None:
        self.detector.close()

    def status(self) -> dict:
        coverage = self.planner.coverage()
        if not coverage:
            return {}
        return {"tiling": coverage, "tile_motion_mismatched": self.planner.motion_mismatched}


def _motion_problem(motion) -> str | None:
    if motion is None:
        return None
    if (not isinstance(motion, list) or len(motion) > MAX_TILE_MOTION
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e6 for v in motion)):
        return f"meta 'tile_motion' must be a list of at most {MAX_TILE_MOTION} numbers >= 0, got {str(motion)[:40]}"
    return None
