"""What one training run is asked to do: ``TrainSettings`` (checked when built) and ``TrainError``.

The field names are the command line's option names (``--input-size`` -> ``input_size``); ``log.json``'s
``config`` lists them. ``pipeline.offline.train.cli`` turns argv into settings; tests and scripts can build
them directly. No torch here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from models.letterbox import STRIDE, check_input_size
from pipeline.offline.data.dataset import MODALITIES


class TrainError(Exception):
    """A problem reported as one line (bad argument, missing data, unusable checkpoint)."""


def _input_size_error(text: str) -> TrainError:
    return TrainError(f"--input-size must be HxW, multiples of {STRIDE} (e.g. 512x640), got {text!r}")


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"512x640"`` -> (512, 640); the sides are checked when the settings are built."""
    try:
        return tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise _input_size_error(text) from None


@dataclass(kw_only=True)
class TrainSettings:
    """Options of ``python -m pipeline train`` (see ``cli.build_parser`` for each one's help)."""
    model: str = "yolox-nano-gssam-sigres-p1"
    data: str | None = None               # dataset root (None: pipeline.offline.data.dataset.DEFAULT_ROOT)
    format: str = "auto"                  # label format of data (pipeline.offline.data.formats)
    classes: str | None = None            # class map of another format onto the model's classes
    bundle: str | None = None             # a compact bundle (scripts/make_train_bundle.py) instead of data
    splits: str | None = None             # split manifest (None: configs/splits.json)
    cache: str | None = None              # decoded bundle / rendered synthetic clips, shared by runs
    stride: int = 3                       # every k-th frame of the real dataset
    device: str = "cpu"
    epochs: int | None = None             # the budget: epochs or minutes, exactly one of them
    minutes: float | None = None
    end_by: float | None = None           # with minutes: also end by this UNIX time
    epoch_steps: int | None = None
    evals: int = 5
    batch: int = 16
    crop: int = 320
    input_size: tuple[int, int] = (512, 640)
    optimizer: str = "adamw"
    lr: float | None = None               # None: the optimizer's default (see _resolve_defaults)
    weight_decay: float | None = None     # None: likewise
    gssam_lr_scale: float = 1.0           # lr multiplier for the GSSAM modules' parameters
    warmup_steps: int = 100
    amp: str = "fp16"
    seed: int = 0
    out: str
    resume: bool = False
    init: str | None = None
    l1_loss: bool = False
    small_object_power: float = 0.0
    visible_boxes: str = "dataset"
    assignment: str = "batched"
    modality: str | None = None            # one camera only: "V" or "IR" (None: both)
    freeze_bn: bool = False                # keep the --init model's BatchNorm statistics (fine-tuning on little data)
    synthetic: int = 0
    synthetic_frames: int = 150
    synthetic_look: str = "plain"         # varied: each synthetic clip its own sky, contrast, noise, blur
    val_per_clip: int = 10
    max_clips: int | None = None
    max_frames: int | None = None
    frames_on: str = "auto"
    gpu_reserve_gb: float = 20.0
    probe_steps: int = 20
    workers: int | None = None
    threads: int | None = None
    no_progress: bool = False
    prepare_only: bool = False
    keep_epochs: bool = False   # every epoch's weights as epoch-N.pt, not only the best
    camera_effects: float = 0.0   # share of crops shown as another camera would (train/camera.py)
    copy_paste: float = 0.0       # share of crops with real objects pasted in (train/paste.py)
    patience: int | None = None  # stop when this many evaluations in a row did not beat the best

    def __post_init__(self):
        self._check()
        self._resolve_defaults()

    def _check(self) -> None:
        try:
            self.input_size = check_input_size(self.input_size, "--input-size")
        except ValueError:
            raise _input_size_error("x".join(str(v) for v in self.input_size)) from None
        if self.epochs is None and self.minutes is None:
            raise TrainError("give a budget: --epochs N or --minutes M")
        if self.epochs is not None and self.minutes is not None:
            raise TrainError("give one budget: --epochs or --minutes, not both")
        for name in ("batch", "crop", "stride", "evals", "probe_steps", "warmup_steps"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("camera_effects", "copy_paste"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrainError(f"--{name.replace('_', '-')} must be in 0..1")
        if self.modality is not None and self.modality not in MODALITIES:
            raise TrainError(f"--modality must be one of {', '.join(MODALITIES)}")
        if self.synthetic_look not in ("plain", "varied"):
            raise TrainError("--synthetic-look must be plain or varied")
        if not 0 < self.gssam_lr_scale <= 1000:
            raise TrainError("--gssam-lr-scale must be in (0, 1000]")
        if self.patience is not None and self.patience < 1:
            raise TrainError("--patience must be >= 1")
        if not 0 <= self.small_object_power <= 8:
            raise TrainError("--small-object-power must be in 0..8")
        try:   # crops are network inputs too: the same stride rule as the inference input
            check_input_size((self.crop, self.crop), "--crop")
        except ValueError:
            raise TrainError(f"--crop must be a multiple of {STRIDE}, got {self.crop}") from None
        if (self.epochs is not None and self.epochs < 1) or (self.minutes is not None and self.minutes <= 0):
            raise TrainError("the budget (--epochs / --minutes) must be positive")

    def _resolve_defaults(self) -> None:
        """yolox's SGD recipe scales the lr with the batch; AdamW's defaults suit training from scratch."""
        if self.lr is None:
            self.lr = 2e-3 if self.optimizer == "adamw" else 0.01 * self.batch / 64
        if self.weight_decay is None:
            self.weight_decay = 0.05 if self.optimizer == "adamw" else 5e-4

    def as_config(self) -> dict:
        """Plain JSON values, for log.json (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
