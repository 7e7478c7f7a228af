"""YOLOX-GSSAM model family: build by name, checkpoints, Detector (torch / ONNX Runtime).

See models/README.md and the docstrings of models.yolox_gssam (names, train/eval outputs, GSSAM
placement, n/r rule) and models.gssam (the module and ``sampled_contrast``).
"""
from .checkpoint import CheckpointError, checkpoint_meta, load_checkpoint, save_checkpoint
from .detector import DEFAULT_WEIGHTS, Detector
from .gssam import Gssam, GssamConfigError, sampled_contrast
from .onnx_export import export_onnx
from .yolox_gssam import build_model, model_names, parse_model_name

__all__ = [
    "CheckpointError", "DEFAULT_WEIGHTS", "checkpoint_meta", "Detector", "Gssam", "GssamConfigError", "build_model",
    "export_onnx", "load_checkpoint", "model_names", "parse_model_name", "sampled_contrast",
    "save_checkpoint",
]
