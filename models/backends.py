"""Which inference backends exist and the device rules they follow: one copy, read by the detect
stage's config check (at load, before any process starts) and by Detector. No torch here."""
from __future__ import annotations

BACKENDS = ("onnx", "torch")  # onnx: ONNX Runtime on the CPU; torch: CPU or CUDA


class BackendError(ValueError):
    """A combination the detector cannot run; ``key`` names the setting at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_backend(backend: str, device: str, fp16: bool) -> None:
    """BackendError (one line) for a combination the detector cannot run."""
    if backend not in BACKENDS:
        raise BackendError("backend", f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise BackendError("device", f"device must be cpu or cuda[:N], got {device!r}")
    if backend == "onnx" and kind != "cpu":
        raise BackendError("device", f"the onnx backend runs on cpu only, got device {device!r}")
    if fp16 and kind != "cuda":
        raise BackendError("fp16", f"fp16 needs a cuda device, got device {device!r}")
