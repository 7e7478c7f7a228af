"""What makes a run resumable and safe beside others: the training state file (``load_training_state``,
``atomic_save``), every random generator's state (``rng_state``, ``set_rng_state``), the SIGTERM/SIGINT
flag the loop polls (``StopFlag``) and a cross-process lock (``file_lock``)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import random
import signal
from pathlib import Path

import numpy as np
import torch

STATE_FORMAT = "pipeline.offline.train/1"


def load_training_state(path: Path, device: torch.device) -> dict:
    """torch.load with weights_only=True: tensors and plain values only. States written before
    2026-11-27 hold numpy's legacy RNG state as an ndarray; only numpy's array types are admitted
    besides, and only for those."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        numpy_array_types = [np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]
        with torch.serialization.safe_globals(numpy_array_types):
            return torch.load(path, map_location=device, weights_only=True)


def rng_state(sampler_rng: np.random.Generator, device: torch.device) -> dict:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {"sampler": sampler_rng.bit_generator.state, "python": random.getstate(),
            "numpy": [kind, keys.tolist(), position, has_gauss, cached_gaussian],  # plain: weights_only loads it
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def set_rng_state(state: dict, sampler_rng: np.random.Generator, device: torch.device) -> None:
    sampler_rng.bit_generator.state = state["sampler"]
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: Path) -> None:
    """torch.save through a temporary name: a run killed while saving leaves the previous file intact."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


class StopFlag:
    """SIGTERM / SIGINT ask the loop to save and stop at the next step boundary."""

    def __init__(self):
        self.raised = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, the caller stops us otherwise
                pass
        return self

    def _handle(self, signum, frame):
        self.raised = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive flock on ``path`` (created) for the block: one process at a time across runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
