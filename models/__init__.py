"""YOLOX-GSSAM model family: build by name, checkpoints, Detector (torch / ONNX Runtime).

See models/README.md and the docstrings of models.yolox_gssam (names, train/eval outputs, GSSAM
placement, n/r rule) and models.gssam (the module and ``sampled_contrast``).

Names load on first use (PEP 562), so ``import models`` costs nothing: ``models.checkpoint_meta``,
``models.letterbox`` and ``models.DEFAULT_WEIGHTS`` never import torch, the rest does.
"""
from __future__ import annotations

from pathlib import Path

from .lazy import lazy_names

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.pt"

_HOMES = {
    "CheckpointError": "meta", "checkpoint_meta": "meta",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "load_weights_into": "checkpoint",
    "Detector": "detector",
    "Gssam": "gssam", "GssamConfigError": "gssam", "sampled_contrast": "gssam",
    "export_onnx": "onnx_export",
    "build_model": "yolox_gssam", "model_names": "yolox_gssam", "parse_model_name": "yolox_gssam",
}
__all__ = ["DEFAULT_WEIGHTS", *_HOMES]
__getattr__ = lazy_names(__name__, _HOMES)
