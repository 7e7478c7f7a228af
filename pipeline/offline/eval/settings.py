"""What one evaluation is asked to do: ``EvalSettings`` (checked when built) and ``EvalError``.

Field names are the command line's option names (``--max-frames`` -> ``max_frames``);
``pipeline.offline.eval.cli`` turns argv into settings, ``pipeline.offline.eval.report.evaluate`` runs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.offline.data.dataset import DEFAULT_ROOT, MODALITIES

METRIC_LIBRARIES = ("faster", "pycocotools")


class EvalError(Exception):
    """A problem that stops the evaluation, reported as one line (exit 2)."""


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """Options of ``python -m pipeline eval`` (see ``cli.build_parser`` for each one's help)."""
    data: Path = DEFAULT_ROOT
    split: str | None = None                # train | val | test | all; None: test, or all of another format
    format: str = "auto"                    # label format of --data (pipeline.offline.data.formats)
    classes: str | None = None              # class map "uav=drone,plane=airplane" onto the model's classes
    modality: tuple[str, ...] = MODALITIES
    weights: Path | None = None             # None: the shipped default model
    backend: str = "torch"                  # one of models.backends.BACKENDS
    device: str = "cpu"
    conf: float = 0.001                     # low: mAP needs the whole PR curve
    nms: float = 0.65
    stride: int = 1                         # score every stride-th frame
    max_frames: int | None = None           # at most this many scored frames per clip
    out: Path = Path("out/eval")
    cache_dir: Path | None = None           # dataset.iter_frames' lossless frame cache
    visible_boxes: str = "dataset"          # dataset | tight (pipeline.offline.data.tighten)
    metrics: str = "faster"                 # one of METRIC_LIBRARIES
    tiling: str = "auto"                    # off | on | auto: the pipeline's stages.detect.tiling.mode
    tile_min_scale: float = 1.0             # ... and its min_scale (models.tiling.tile_size_for)
    export_yolo: Path | None = None         # also write the predictions as a YOLO folder (formats.export)
    export_cvat: Path | None = None         # ... and/or as CVAT for images 1.1 (formats.export)
    export_conf: float = 0.25               # ... those scored at least this
    through_pipeline: bool = False
    pipeline_timeout: float = 3600          # seconds, with through_pipeline

    def __post_init__(self):
        if self.stride < 1:
            raise EvalError("--stride must be >= 1")
        if self.max_frames is not None and self.max_frames < 1:
            raise EvalError("--max-frames must be >= 1")
        if not 0 < self.tile_min_scale <= 1:  # (NaN fails too)
            raise EvalError(f"--tile-min-scale must be in (0, 1], got {self.tile_min_scale}")
        if self.metrics not in METRIC_LIBRARIES:
            raise EvalError(f"unknown metrics library {self.metrics!r}; valid: {', '.join(METRIC_LIBRARIES)}")

    @property
    def tight_visible_boxes(self) -> bool:
        return self.visible_boxes == "tight"
