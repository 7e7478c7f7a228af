"""Inference backends: each is a class in a module of this package and registers itself by its
``name`` (adding one is one file; ``stages.detect.backend`` and ``--backend`` offer it at once).

A backend takes a checkpoint and an input size and runs N x 3 x H x W float32 batches to the head's
undecoded outputs (B x A x (5 + C)); models.postprocess decodes them and runs the NMS, the same for
all. Nothing heavy is imported here or at the top of a backend module: the config check reads
``BACKENDS`` and ``check_backend`` before any process starts, and a detect process imports only
the runtime its backend needs (the ONNX-based ones never import torch once their file is cached).
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

REGISTRY: dict[str, type["Backend"]] = {}


class BackendError(ValueError):
    """A combination the detector cannot run; ``key`` names the setting at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Backend:
    """Subclass per backend. Declare ``name``, ``devices`` (device kinds it runs on), ``package``
    (the module it needs, with ``pip`` the package to install), ``cpu_flags`` (any one of them
    suffices: instruction sets from /proc/cpuinfo it needs) and ``agreement``: its documented
    tolerance against the fp32 reference (ONNX Runtime), (IoU, share): at least that share of the
    reference's detections above conf 0.3 on real frames is found at that IoU or better
    (tests/models/backends/test_agreement.py; measured in docs/benchmarks.md, "Backends")."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    package: ClassVar[str | None] = None
    pip: ClassVar[str | None] = None
    cpu_flags: ClassVar[tuple[str, ...]] = ()
    agreement: ClassVar[tuple[float, float]] = (0.9, 0.95)  # fp32: boxes all but identical
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    def __init__(self, weights: Path, input_size: tuple[int, int], *, device: str = "cpu", fp16: bool = False,
                 threads: int = 2, spin: bool = True, cache_dir=None):
        self.weights, self.input_size, self.device, self.fp16 = Path(weights), input_size, device, fp16
        self.threads, self.spin, self.cache_dir = threads, spin, cache_dir  # spin: CPU runtimes that offer it

    def run(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 (contiguous) -> N x A x (5 + C) undecoded head outputs, float32."""
        raise NotImplementedError

    @classmethod
    def missing(cls, weights, input_size: tuple[int, int], cache_dir=None) -> str | None:
        """What must be made before this backend can run these weights (one line), else None. Read
        before any process starts, without loading anything."""
        return None


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_discover()
BACKENDS = tuple(sorted(REGISTRY))


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction sets /proc/cpuinfo lists (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def backend_class(backend: str) -> type[Backend]:
    if backend == AUTO:  # a caller's slip, not the user's: "auto" names a choice, not a class
        raise BackendError("backend", "'auto' must be resolved first (models.backends.resolve_backend)")
    if backend not in REGISTRY:
        raise BackendError("backend", f"unknown backend {backend!r}; valid: {AUTO}, {', '.join(BACKENDS)}")
    return REGISTRY[backend]


# "auto": the fastest backend this machine can run that kept the fp32 mAP when measured (docs/benchmarks.md,
# "Backends": OpenVINO bf16 1.13x ONNX Runtime fp32 at the same mAP), in this order; torch on CUDA
AUTO = "auto"
AUTO_CPU_ORDER = ("openvino-bf16", "onnx")
BACKEND_CHOICES = (AUTO, *BACKENDS)  # what a config or a --backend option may name


def _auto_fallback(device: str) -> str:
    """What "auto" runs where nothing faster can: torch on CUDA, else the last of AUTO_CPU_ORDER."""
    return "torch" if device.startswith("cuda") else AUTO_CPU_ORDER[-1]


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """The backend ``backend`` names here: itself, or for "auto" the first of AUTO_CPU_ORDER this
    machine can run (its package installed, its instruction set present), "torch" on a CUDA device."""
    if backend != AUTO:
        return backend
    if device.startswith("cuda"):
        return _auto_fallback(device)
    for name in AUTO_CPU_ORDER:
        try:
            check_available(name)
            return name
        except BackendError:
            continue
    return _auto_fallback(device)


def check_backend(backend: str, device: str, fp16: bool) -> None:
    """BackendError (one line) for a combination no machine can run: the rules a config is checked
    against wherever it is loaded (on every host of a split run). What this machine lacks is
    ``check_available``'s."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise BackendError("device", f"device must be cpu or cuda[:N], got {device!r}")
    if backend == AUTO:  # judged as what it falls back to: each of its choices runs where that does
        backend = _auto_fallback(device)
    cls = backend_class(backend)
    if kind not in cls.devices:
        raise BackendError("device", f"the {backend} backend runs on {' or '.join(cls.devices)} only, "
                                     f"got device {device!r}")
    if fp16 and kind != "cuda":
        raise BackendError("fp16", f"fp16 needs a cuda device, got device {device!r}")


def check_available(backend: str) -> None:
    """BackendError (one line) when this machine cannot run ``backend``: its package is not installed
    or the CPU lacks the instruction set it needs. Checked where the detector runs (the detect
    stage's preflight, Detector), not on a host that only reads the config."""
    cls = backend_class(backend)
    if cls.package and importlib.util.find_spec(cls.package) is None:
        raise BackendError("backend", f"the {backend} backend needs the Python package {cls.pip or cls.package} "
                                      f"(pip install {cls.pip or cls.package}), which is not installed")
    if cls.cpu_flags and not cpu_flags() & set(cls.cpu_flags):
        raise BackendError("backend", f"the {backend} backend needs a CPU with {' or '.join(cls.cpu_flags)}; "
                                      "this one has none of them")


__all__ = ["AUTO", "AUTO_CPU_ORDER", "BACKEND_CHOICES", "BACKENDS", "REGISTRY", "Backend", "BackendError",
           "backend_class", "check_available", "check_backend", "cpu_flags", "resolve_backend"]
