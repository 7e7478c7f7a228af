"""``onnx``: ONNX Runtime on the CPU on the cached export; ``onnx-int8``: the same on its INT8 model
(models.quantize; made once by ``python -m pipeline quantize``)."""
from __future__ import annotations

import numpy as np

from models.backends import Backend
from models.quantize import QuantizedModel


def onnx_session(path, threads: int = 2, spin: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads.

    With ``spin`` (ONNX Runtime's default) its threads keep spinning a while after each run: measured
    here, a lone nano session runs in 14.8 ms spinning vs 20.5 ms sleeping. Two sessions run in turn
    steal each other's CPU that way (scripts/model_report.py times them in blocks for this reason),
    and so do the other stage processes of a pipeline on a 2-core machine: ``spin=False`` lets them
    have the cores between runs (``stages.detect.spin``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeBackend(Backend):
    name = "onnx"
    package = "onnxruntime"
    summary = "ONNX Runtime fp32 on the CPU"

    def __init__(self, weights, input_size, **options):
        super().__init__(weights, input_size, **options)
        self.onnx_path = self.model_path()
        self.session = onnx_session(self.onnx_path, self.threads, self.spin)

    def model_path(self):
        from models.onnx_export import ensure_onnx

        return ensure_onnx(self.weights, self.input_size, self.cache_dir)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": batch})[0]


class OnnxRuntimeInt8Backend(QuantizedModel, OnnxRuntimeBackend):
    name = "onnx-int8"
    agreement = (0.5, 0.5)  # far from fp32: 13 % at IoU 0.9, mAP50:95 halved (docs/benchmarks.md)
    summary = "ONNX Runtime, static QDQ INT8 convolutions (GSSAM and the head's outputs in float)"
