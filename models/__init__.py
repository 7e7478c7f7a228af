"""YOLOX-GSSAM model family: build by name, checkpoints, Detector (torch / ONNX Runtime).

See models/README.md and the docstrings of models.yolox_gssam (names, train/eval outputs, GSSAM
placement, n/r rule) and models.gssam (the module and ``sampled_contrast``).

Names load on first use (PEP 562), so ``import models`` costs nothing: ``models.checkpoint_meta``,
``models.letterbox`` and ``models.DEFAULT_WEIGHTS`` never import torch, the rest does.
"""
from __future__ import annotations

import re
from pathlib import Path

from .lazy import lazy_names

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "default.pt"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")   # no folder, no suffix: "default.pt" or "./demo" are paths


def shipped_names() -> list[str]:
    """The names of the shipped checkpoints (models/weights/NAME.pt)."""
    return sorted(path.stem for path in WEIGHTS_DIR.glob("*.pt") if _NAME.fullmatch(path.stem))


def is_weights_name(value: str) -> bool:
    """Whether a weights value has the form of a shipped name rather than of a path."""
    return bool(_NAME.fullmatch(value or ""))


def shipped_weights(name: str) -> Path | None:
    """The shipped checkpoint a bare name stands for ("default", "demo", "yolox-nano-baseline":
    models/weights/NAME.pt), else None. Matched exactly against the files there, whatever the
    file system's case rules."""
    return WEIGHTS_DIR / f"{name}.pt" if is_weights_name(name) and name in shipped_names() else None


def weights_file(value: str | Path) -> Path:
    """A --weights argument: a shipped name (shipped_weights) or a path."""
    return shipped_weights(str(value)) or Path(value)


_HOMES = {
    "CheckpointError": "meta", "checkpoint_meta": "meta",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "load_weights_into": "checkpoint",
    "blend_checkpoints": "checkpoint",
    "Detector": "detector",
    "Gssam": "gssam", "GssamConfigError": "gssam", "sampled_contrast": "gssam",
    "export_onnx": "onnx_export",
    "build_model": "yolox_gssam", "model_names": "yolox_gssam", "parse_model_name": "yolox_gssam",
}
__all__ = ["DEFAULT_WEIGHTS", "WEIGHTS_DIR", "is_weights_name", "shipped_names", "shipped_weights", "weights_file", *_HOMES]
__getattr__ = lazy_names(__name__, _HOMES)
