"""What one adaptation is asked to do: ``AdaptSettings`` (checked when built). No torch here."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from models import DEFAULT_WEIGHTS, weights_file
from pipeline.offline.adapt.blend import parse_shares
from pipeline.offline.data.dataset import DEFAULT_ROOT
from pipeline.offline.train.settings import TrainError

BACKENDS_SCORED_WITH = "onnx"   # the pipeline's CPU default: the before/after table is what the pipeline sees


@dataclass(kw_only=True)
class AdaptSettings:
    """Options of ``python -m pipeline adapt`` (see ``cli.build_parser`` for each one's help)."""
    data: Path                           # the user's labeled clips, any format pipeline.offline.data.formats reads
    format: str = "auto"
    classes: str | None = None           # class map onto the model's classes, e.g. "uav=drone"
    test_data: Path | None = None        # clips to report on; None: held out of --data
    weights: Path = DEFAULT_WEIGHTS      # the model to start from
    minutes: float = 15.0                # the training loop's budget
    out: Path | None = None              # None: out/adapt/<name of --data>
    base: str = "auto"                   # this dataset's root mixed in against forgetting; auto: if present; none
    base_share: float = 0.7              # of the training crops drawn from the base data (tuned: docs/generalisation.md)
    base_stride: int = 30                # every k-th frame of the base train clips (a few per clip)
    base_clips: int | None = None        # at most this many base train clips (smoke runs)
    stride: int = 2                      # every k-th frame of the user's clips
    max_frames: int | None = None        # per user clip (smoke runs)
    holdout: float = 0.3                 # share of --data's clips held out for the report (without --test-data)
    lr: float = 5e-5                     # tuned with base_share and camera_effects on the tuning split
    camera_effects: float = 0.5          # share of crops shown as another camera would, as the default was trained
    freeze_bn: bool = False              # keep the start model's BatchNorm statistics
    batch: int = 16
    crop: int = 256
    evals: int = 6
    patience: int = 3
    val_per_clip: int = 20
    backend: str = BACKENDS_SCORED_WITH
    seed: int = 0
    threads: int | None = None
    workers: int | None = None
    resume: bool = False
    no_progress: bool = False
    skip_base_check: bool = False        # do not score the base val split (quick runs): forgetting not measured
    blend: str = "auto"                  # shares of the fine-tune blended with the start to choose from (blend.py)
    max_forget: float = 1.0              # points of base val mAP50:95 a chosen blend may lose

    def __post_init__(self):
        self.data = Path(self.data)
        self.weights = weights_file(self.weights).resolve()   # a shipped name or a path
        self.test_data = Path(self.test_data) if self.test_data else None
        self.out = Path(self.out) if self.out else Path("out/adapt") / (self.data.resolve().name or "data")
        if self.minutes <= 0:
            raise TrainError("--minutes must be positive")
        if not 0 <= self.base_share < 1:
            raise TrainError("--base-share must be in [0, 1)")
        if not 0 <= self.camera_effects <= 1:
            raise TrainError("--camera-effects must be in 0..1")
        if not 0 < self.holdout < 1:
            raise TrainError("--holdout must be between 0 and 1")
        for name in ("base_stride", "stride", "batch", "crop", "evals", "patience", "val_per_clip"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("base_clips", "max_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
        try:
            parse_shares(self.blend)
        except ValueError as error:
            raise TrainError(str(error)) from None
        if not math.isfinite(self.max_forget) or self.max_forget < 0:
            raise TrainError("--max-forget must be a number >= 0 (points of base val mAP50:95)")
        if not self.weights.is_file():
            raise TrainError(f"--weights: no such file {self.weights}")
        if self.weights.is_relative_to(self.out.resolve()):   # adapted.pt and the blends are written there
            raise TrainError(f"--weights {self.weights} lies inside --out {self.out}, which adapt writes over: "
                             "start from a copy elsewhere, or give another --out")

    @property
    def blend_shares(self) -> tuple[float, ...]:
        return parse_shares(self.blend)

    def base_root(self) -> Path | None:
        """The base dataset's root, or None: not asked for, or (auto) not on this machine."""
        if self.base == "none":
            return None
        root = DEFAULT_ROOT if self.base == "auto" else Path(self.base)
        if self.base != "auto" and not root.is_dir():
            raise TrainError(f"--base: no dataset at {root}")
        return root if root.is_dir() else None

    def as_config(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
