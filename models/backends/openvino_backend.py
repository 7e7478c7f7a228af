"""``openvino``: OpenVINO's CPU plugin on the cached ONNX export, fp32; ``openvino-bf16``: the same
with bf16 inference precision (CPUs with AVX-512 BF16 or AMX); ``openvino-int8``: NNCF's INT8 model
(models.quantize; made once by ``python -m pipeline quantize``). Compiled blobs are cached beside
the exports, so a restart compiles nothing."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from models.backends import Backend
from models.quantize import QuantizedModel


def _content_digest(path: Path) -> str:
    """Digest of a model file and, for OpenVINO IR, of its weights file beside it."""
    from models.onnx_export import file_digest

    parts = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return hashlib.sha256("".join(file_digest(part) for part in parts).encode()).hexdigest()[:16]


class OpenVinoBackend(Backend):
    name = "openvino"
    package = "openvino"
    precision = "f32"
    summary = "OpenVINO fp32 on the CPU"

    def __init__(self, weights, input_size, **options):
        super().__init__(weights, input_size, **options)
        import openvino as ov

        from models.onnx_export import ensure_onnx

        self.onnx_path = ensure_onnx(self.weights, self.input_size, self.cache_dir, flavor="openvino")
        path = self.model_path()
        # OpenVINO names its compiled blobs by the model's path and options, not its content: a model
        # remade in place (python -m pipeline quantize again) gets a folder of its own
        blobs = path.parent / "openvino" / _content_digest(path)
        # no pinning: OpenVINO pins its threads to cores by default, so two 1-thread copies (Detector
        # workers) both ran on the first core (12.7 ms an image vs 6.4 unpinned), and a pinned detect
        # process takes cores from the other stage processes
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                  "INFERENCE_PRECISION_HINT": self.precision, "CACHE_DIR": str(blobs)}
        core = ov.Core()
        model = core.read_model(str(path))
        # compiled for one image of a fixed shape: a dynamic batch measured 1.5x slower (16 vs 25 ms
        # a frame), and batching gains nothing on a CPU (docs/benchmarks.md), so a batch runs image by image
        model.reshape({model.inputs[0].any_name: [1, 3, *self.input_size]})
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def model_path(self):
        return self.onnx_path

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Image by image (the model is compiled for one); each result copied once, into its row (the
        request reuses its output memory on the next call)."""
        if not len(batch):
            raise ValueError("an empty batch: nothing to run")
        out = None
        for i, image in enumerate(batch):
            result = self.request.infer({0: image[None]})[0]
            if out is None:
                out = np.empty((len(batch), *result.shape[1:]), dtype=np.float32)
            out[i] = result[0]
        return out


class OpenVinoBf16Backend(OpenVinoBackend):
    name = "openvino-bf16"
    precision = "bf16"
    cpu_flags = ("avx512_bf16", "amx_bf16")
    agreement = (0.9, 0.8)  # measured 86-94 %, 95-100 % on the OpenVINO export: near the fp32 bar of 95 %
    summary = "OpenVINO with bf16 inference precision"


class OpenVinoInt8Backend(QuantizedModel, OpenVinoBackend):
    name = "openvino-int8"
    agreement = (0.5, 0.5)  # far from fp32: 26 % at IoU 0.9, mAP50:95 halved (docs/benchmarks.md)
    summary = "OpenVINO on NNCF's INT8 model (GSSAM and the head's outputs in float)"
