"""Detector: letterbox -> a backend (models.backends) -> models.postprocess -> original pixels."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from . import DEFAULT_WEIGHTS
from .backends import BackendError, backend_class, check_available, check_backend, resolve_backend
from .letterbox import check_input_size, letterbox, to_source_pixels
from .meta import checkpoint_meta
from .postprocess import decode, select


class Detector:
    """Run a checkpoint on BGR uint8 images; results are K x 6 [x1, y1, x2, y2, score, class_id].

    ``backend`` names one of models.backends (``BACKENDS``): "torch" (device "cpu" or "cuda[:i]";
    fp16=True on CUDA runs half precision with channels_last), "onnx" (ONNX Runtime), "openvino", ...,
    or "auto": the fastest this machine runs at the fp32 mAP, measured (``resolve_backend``; ``self.backend``
    holds the one chosen).
    ``onnx_threads`` intra-op threads for the CPU runtimes (``spin``: ONNX Runtime's threads wait
    spinning between runs); their exports (one per input size) are cached in ``cache_dir`` (see
    models.onnx_export). ``input_size`` (h, w) defaults to the checkpoint's. ``workers`` copies of the
    model, each with ``onnx_threads`` threads, run the images of a batch side by side (see ``infer``).
    """

    def __init__(self, weights=None, backend: str = "torch", device: str = "cpu", fp16: bool = False,
                 conf_threshold: float = 0.25, nms_threshold: float = 0.45, onnx_threads: int = 2,
                 cache_dir=None, input_size: tuple[int, int] | None = None, class_agnostic_nms: bool = False,
                 spin: bool = True, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
        check_backend(backend, device, fp16)
        backend = resolve_backend(backend, device)
        check_available(backend)
        self.device = device
        self.weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.backend = backend
        self.fp16 = fp16
        self.conf_threshold = conf_threshold
        self.nms_threshold = nms_threshold
        self.class_agnostic_nms = class_agnostic_nms
        self.meta = checkpoint_meta(self.weights)  # without torch: an ONNX-based backend may never need it
        self.model_name = self.meta["name"]
        self.class_names = list(self.meta["class_names"])
        self.input_size = check_input_size(input_size or self.meta["input_size"])  # fully convolutional
        engine = backend_class(backend)
        problem = engine.missing(self.weights, self.input_size, cache_dir)
        if problem is not None:
            raise BackendError("backend", problem)
        self.engines = [engine(self.weights, self.input_size, device=device, fp16=fp16, threads=onnx_threads,
                               spin=spin, cache_dir=cache_dir) for _ in range(workers)]
        self.engine = self.engines[0]
        self.onnx_path = getattr(self.engine, "onnx_path", None)
        self._pool = None if workers == 1 else ThreadPoolExecutor(workers - 1, thread_name_prefix="detector")

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """yolox letterbox: keep aspect, top-left, pad 114 -> (3 x H x W float32, ratio)."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            shape = getattr(image_bgr, "shape", type(image_bgr).__name__)
            raise ValueError(f"expected an H x W x 3 BGR image, got {shape}")
        padded, ratio = letterbox(image_bgr, self.input_size)
        return padded.transpose(2, 0, 1).astype(np.float32), ratio

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x A x (5 + C) decoded predictions (float32)."""
        return decode(self._run(np.ascontiguousarray(batch, dtype=np.float32)), self.input_size)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """The batch split across the workers, run side by side (the runtimes release the GIL): on a
        2-core CPU two 1-thread copies measured ~1.5x the images per second of one 2-thread copy
        whose threads sleep between runs, and ~1.1x one whose threads spin (docs/benchmarks.md).
        One image still runs on one copy alone, with its threads only."""
        if self._pool is None or len(batch) <= 1:
            return self.engine.run(batch)
        parts = [part for part in np.array_split(batch, len(self.engines)) if len(part)]
        pending = [self._pool.submit(engine.run, np.ascontiguousarray(part))
                   for engine, part in zip(self.engines[1:], parts[1:])]
        try:
            first = self.engine.run(np.ascontiguousarray(parts[0]))  # this thread is the first worker
        finally:  # no engine is handed out again while a copy still runs (an error here or there)
            wait(pending)
        return np.concatenate([first] + [future.result() for future in pending])

    def close(self) -> None:
        """Stop the workers' threads (the engines go with the Detector)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def warm_up(self) -> None:
        """One run on a blank input per worker: the runtimes' first call sets up kernels and memory (a
        slow first frame otherwise)."""
        self.infer(np.full((len(self.engines), 3, *self.input_size), 114, np.float32))

    def postprocess(self, raw: np.ndarray, ratios, image_shapes, objectness: bool = False) -> list[np.ndarray]:
        """yolox NMS (class-aware unless class_agnostic_nms), boxes rescaled to and clipped into each image:
        K x 6 [x1, y1, x2, y2, score, class]; with ``objectness`` a 7th column, the head's objectness
        (class-agnostic: is something there, whatever it is; score = objectness x class score)."""
        kept = select(np.asarray(raw, dtype=np.float32), len(self.class_names), self.conf_threshold,
                      self.nms_threshold, class_agnostic=self.class_agnostic_nms)
        return [self._to_image(k, r, s, objectness) for k, r, s in zip(kept, ratios, image_shapes)]

    @staticmethod
    def _to_image(kept, ratio: float, image_shape, objectness: bool = False) -> np.ndarray:
        if kept is None:
            return np.zeros((0, 7 if objectness else 6), dtype=np.float32)
        boxes = to_source_pixels(kept[:, :4], ratio, image_shape)
        columns = [boxes, kept[:, 4] * kept[:, 5], kept[:, 6]] + ([kept[:, 4]] if objectness else [])
        return np.column_stack(columns).astype(np.float32)

    def __call__(self, images) -> list[np.ndarray]:
        if len(images) == 0:
            return []
        prepared = [self.preprocess(image) for image in images]
        batch = np.stack([chw for chw, _ in prepared])
        raw = self.infer(batch)
        return self.postprocess(raw, [r for _, r in prepared], [image.shape for image in images])
