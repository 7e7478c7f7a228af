"""The training device: which one (``resolve_device``), mixed precision on it (``autocast``), whether the
frames fit on it (``frames_fit_on_device``) and how log.json names it (``describe_hardware``)."""
from __future__ import annotations

import contextlib

import torch

from pipeline.offline.train.settings import TrainError


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainError(f"unknown --device {name!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda given but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise TrainError(f"unsupported --device {name!r}; use cpu or cuda")
    return device


def autocast(device: torch.device, amp: str):
    """CUDA autocast in the ``amp`` dtype (fp16 | bf16); a no-op on CPU or with amp "off"."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def frames_fit_on_device(frames_on: str, gpu_reserve_gb: float, device: torch.device, frame_bytes: int) -> bool:
    """Keep the frames on the GPU? ``frames_on`` auto: only if ``gpu_reserve_gb`` stays free after them."""
    if device.type != "cuda" or frames_on == "host":
        return False
    if frames_on == "device":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return free - frame_bytes > gpu_reserve_gb * 2**30


def describe_hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU x{torch.get_num_threads()} threads (torch {torch.__version__})"
