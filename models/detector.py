"""Detector: letterbox -> YOLOX(-GSSAM) on torch or ONNX Runtime -> yolox postprocess -> original pixels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from yolox.utils import postprocess

from . import DEFAULT_WEIGHTS
from .backends import check_backend
from .checkpoint import load_checkpoint
from .letterbox import check_input_size, letterbox, to_source_pixels
from .onnx_export import decode, ensure_onnx, onnx_session
from .yolox_gssam import fuse_for_inference



class Detector:
    """Run a checkpoint on BGR uint8 images; results are K x 6 [x1, y1, x2, y2, score, class_id].

    backend "torch": device "cpu" or "cuda[:i]"; fp16=True (CUDA only) runs half precision with
    channels_last. backend "onnx": ONNX Runtime on CPU with ``onnx_threads`` intra-op threads, the
    export (one per input size) cached in ``cache_dir`` (see models.onnx_export). ``input_size``
    (h, w) defaults to the checkpoint's.
    """

    def __init__(self, weights=None, backend: str = "torch", device: str = "cpu", fp16: bool = False,
                 conf_threshold: float = 0.25, nms_threshold: float = 0.45, onnx_threads: int = 2,
                 cache_dir=None, input_size: tuple[int, int] | None = None, class_agnostic_nms: bool = False):
        check_backend(backend, device, fp16)
        self.device = torch.device(device)
        self.weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.backend = backend
        self.fp16 = fp16
        self.conf_threshold = conf_threshold
        self.nms_threshold = nms_threshold
        self.class_agnostic_nms = class_agnostic_nms
        model, meta = load_checkpoint(self.weights, device="cpu")
        self.meta = meta
        self.model_name = meta["name"]
        self.class_names = list(meta["class_names"])
        self.input_size = check_input_size(input_size or meta["input_size"])  # fully convolutional
        self._head = model.head
        if backend == "onnx":
            self.onnx_path = ensure_onnx(self.weights, model, self.input_size, cache_dir)
            self._session = onnx_session(self.onnx_path, onnx_threads)
            self._model = None
        else:
            self._model = self._prepare_torch(model)

    def _prepare_torch(self, model):
        model = fuse_for_inference(model).to(self.device)
        if self.fp16:
            model = model.half().to(memory_format=torch.channels_last)
        return model

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """yolox letterbox: keep aspect, top-left, pad 114 -> (3 x H x W float32, ratio)."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            shape = getattr(image_bgr, "shape", type(image_bgr).__name__)
            raise ValueError(f"expected an H x W x 3 BGR image, got {shape}")
        padded, ratio = letterbox(image_bgr, self.input_size)
        return padded.transpose(2, 0, 1).astype(np.float32), ratio

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """N x 3 x H x W float32 -> N x A x (5 + C) decoded predictions (float32)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.backend == "onnx":
            raw = self._session.run(None, {"images": batch})[0]
            return decode(self._head, torch.from_numpy(raw), self.input_size).numpy()
        images = torch.from_numpy(batch).to(self.device)
        if self.fp16:
            images = images.half().contiguous(memory_format=torch.channels_last)
        return self._model(images).float().cpu().numpy()

    def postprocess(self, raw: np.ndarray, ratios, image_shapes) -> list[np.ndarray]:
        """yolox NMS (class-aware unless class_agnostic_nms), boxes rescaled to and clipped into each image."""
        predictions = torch.from_numpy(np.array(raw, dtype=np.float32))
        kept = postprocess(predictions, len(self.class_names), self.conf_threshold,
                           self.nms_threshold, class_agnostic=self.class_agnostic_nms)
        return [self._to_image(k, r, s) for k, r, s in zip(kept, ratios, image_shapes)]

    @staticmethod
    def _to_image(kept, ratio: float, image_shape) -> np.ndarray:
        if kept is None:
            return np.zeros((0, 6), dtype=np.float32)
        kept = kept.numpy()
        boxes = to_source_pixels(kept[:, :4], ratio, image_shape)
        scores = kept[:, 4] * kept[:, 5]
        return np.column_stack([boxes, scores, kept[:, 6]]).astype(np.float32)

    def __call__(self, images) -> list[np.ndarray]:
        if len(images) == 0:
            return []
        prepared = [self.preprocess(image) for image in images]
        batch = np.stack([chw for chw, _ in prepared])
        raw = self.infer(batch)
        return self.postprocess(raw, [r for _, r in prepared], [image.shape for image in images])
