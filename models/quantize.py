"""INT8 models for the ``onnx-int8`` and ``openvino-int8`` backends, made once from the cached fp32
ONNX export and calibration frames, and cached beside it.

Only the convolutions are quantized (per-channel weights). What must stay in float, measured
(docs/benchmarks.md, "Backends"): GSSAM (``attend_output``: its comparison counts which sampled
points lie below each pixel, and quantized inputs tie where floats did not) and the head's last
convolutions (``cls/reg/obj_preds``: a quantized box regression moves 5-40 px boxes by pixels).
Calibration frames come from the caller (``python -m pipeline quantize`` takes training frames of
both modalities), letterboxed N x 3 x H x W float32 as the detector feeds them.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .onnx_export import ensure_onnx

KINDS = {"onnx-int8": ".int8.onnx", "openvino-int8": ".ov-int8.xml"}
RUNTIMES = {"onnx-int8": ("onnxruntime",), "openvino-int8": ("openvino", "nncf")}  # their releases key the model
FLAVOR = {"onnx-int8": "onnxruntime", "openvino-int8": "openvino"}  # the fp32 export each is made from
FLOAT_NODES = re.compile(r"attend_output|/head/(cls|reg|obj)_preds")  # node names kept in float


class QuantizeError(RuntimeError):
    """Calibration frames that cannot serve (one line)."""


def quantized_path(weights, input_size: tuple[int, int], cache_dir=None, kind: str = "onnx-int8",
                   must_exist: bool = False) -> Path:
    """Where the INT8 model of ``weights`` lives: beside its fp32 export, which it is made from
    (so new weights, code or torch mean a new INT8 model). ``must_exist``: BackendError if absent."""
    from .onnx_export import cached_onnx_path

    fp32 = cached_onnx_path(weights, input_size, cache_dir, flavor=FLAVOR[kind])
    path = fp32.with_name(f"{fp32.stem}-{_recipe_digest(kind)}{KINDS[kind]}")
    if must_exist and not path.is_file():
        from .backends import BackendError

        raise BackendError("backend", missing_model(weights, input_size, cache_dir, kind))
    return path


def _recipe_digest(kind: str) -> str:
    """Changes with this module (which nodes stay in float, the settings) and the quantizer's releases."""
    from .onnx_export import package_version

    digest = hashlib.sha256(Path(__file__).read_bytes())
    for package in RUNTIMES[kind]:
        digest.update(package_version(package).encode())
    return digest.hexdigest()[:8]


def missing_model(weights, input_size: tuple[int, int], cache_dir, kind: str) -> str | None:
    """The one line that says how to make the ``kind`` model of ``weights``, or None if it exists."""
    if quantized_path(weights, input_size, cache_dir, kind).is_file():
        return None
    h, w = input_size
    return (f"no {kind} model of {weights} at {h}x{w} yet: make it once with "
            f"python -m pipeline quantize --weights {weights} --backend {kind} --input {h}x{w}")


class QuantizedModel:
    """Mixin of a backend that runs the INT8 model ``python -m pipeline quantize`` made for its ``name``."""

    def model_path(self) -> Path:
        return quantized_path(self.weights, self.input_size, self.cache_dir, self.name, must_exist=True)

    @classmethod
    def missing(cls, weights, input_size, cache_dir=None) -> str | None:
        return missing_model(weights, input_size, cache_dir, cls.name)


def _check_frames(frames: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[1:] != (3, *input_size) or len(frames) < 1:
        raise QuantizeError(f"calibration frames must be N x 3 x {input_size[0]} x {input_size[1]}, "
                            f"got {list(frames.shape)}")
    return frames


def quantize(weights, input_size: tuple[int, int], frames: np.ndarray, kind: str = "onnx-int8",
             cache_dir=None) -> Path:
    """Make (or remake) the ``kind`` INT8 model of ``weights`` from calibration ``frames``."""
    frames = _check_frames(frames, input_size)
    source = ensure_onnx(weights, input_size, cache_dir, flavor=FLAVOR[kind])
    path = quantized_path(weights, input_size, cache_dir, kind)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # two runs at once do not collide
    try:
        if kind == "onnx-int8":
            _quantize_onnxruntime(source, temporary, frames)
        else:
            _quantize_openvino(source, temporary, frames)
            temporary.with_suffix(".bin").replace(path.with_suffix(".bin"))  # weights first: the .xml names them
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
        temporary.with_suffix(".bin").unlink(missing_ok=True)
    return path


def _quantize_onnxruntime(source: Path, out: Path, frames: np.ndarray) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.rest = iter(frames)

        def get_next(self):
            frame = next(self.rest, None)
            return None if frame is None else {"images": frame[None]}

    prepared = out.with_name(out.stem + ".prepared.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # the sampling's shapes defeat it
        names = [node.name for node in onnx.load(str(prepared)).graph.node]
        quantize_static(str(prepared), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["Conv"], nodes_to_exclude=[n for n in names if FLOAT_NODES.search(n)],
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)


def _quantize_openvino(source: Path, out: Path, frames: np.ndarray) -> None:
    import logging

    import nncf
    import openvino as ov

    nncf.set_log_level(logging.ERROR)  # it logs every node it leaves in float
    model = ov.Core().read_model(str(source))
    scope = nncf.IgnoredScope(patterns=[f".*({FLOAT_NODES.pattern}).*"], validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(list(frames), lambda frame: frame[None]),
                              subset_size=len(frames), ignored_scope=scope)
    ov.save_model(quantized, str(out))
