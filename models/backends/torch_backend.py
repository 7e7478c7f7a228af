"""``torch``: eager PyTorch with every BatchNorm folded, on the CPU or CUDA (fp16 + channels_last there)."""
from __future__ import annotations

import numpy as np

from models.backends import Backend


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    package = "torch"
    summary = "eager PyTorch, CPU or CUDA (fp16 on CUDA)"

    def __init__(self, weights, input_size, **options):
        super().__init__(weights, input_size, **options)
        import torch

        from models.checkpoint import load_checkpoint
        from models.postprocess import STRIDES
        from models.yolox_gssam import fuse_for_inference

        self._torch = torch
        if self.device == "cpu":
            torch.set_num_threads(self.threads)  # stages.detect.threads, as for the other CPU runtimes
        model, _ = load_checkpoint(self.weights, device="cpu")
        if tuple(model.head.strides) != STRIDES:
            raise ValueError(f"{self.weights}: head strides {model.head.strides}, models.postprocess decodes {STRIDES}")
        self._device = torch.device(self.device)
        model = fuse_for_inference(model).to(self._device)
        model.head.decode_in_inference = False  # decoded by models.postprocess, as for every backend
        if self.fp16:
            model = model.half().to(memory_format=torch.channels_last)
        self.model = model

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            images = torch.from_numpy(batch).to(self._device)
            if self.fp16:
                images = images.half().contiguous(memory_format=torch.channels_last)
            return self.model(images).float().cpu().numpy()
