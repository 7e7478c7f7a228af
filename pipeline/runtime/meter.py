"""The one meter: counters, frame rates and latency percentiles for a stage's heartbeat.

Every stage process and consumer reports the same fields (``fps``, ``latency_ms_p50``/``_p99`` and
its counters), read by the supervisor, the status line and Prometheus. Thread-safe: the view's
HTTP threads and its ZeroMQ loop share one.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Iterable

import numpy as np

FPS_WINDOW_S = 5.0  # the frame rate is taken over this much recent time
KEEP = 512  # samples kept per latency series


class Meter:
    def __init__(self, counters: Iterable[str], series: Iterable[str] = ("latency_ms",)):
        self.counts = dict.fromkeys(counters, 0)
        self._series = {name: deque(maxlen=KEEP) for name in series}
        self._ticks: dict[str, deque] = {}
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def tick(self, stream_id: str, now: float | None = None) -> None:
        """A frame of ``stream_id`` went through at ``now`` (for the frame rate)."""
        with self._lock:
            self._ticks.setdefault(stream_id, deque(maxlen=KEEP)).append(time.time() if now is None else now)

    def observe(self, series: str, ms: float) -> None:
        with self._lock:
            self._series[series].append(ms)

    def fps(self, stream_id: str | None = None, now: float | None = None) -> float:
        """Frames per second over the last FPS_WINDOW_S, of one stream or of all of them (the sum)."""
        now = time.time() if now is None else now
        with self._lock:
            recent = {key: [t for t in ticks if now - t <= FPS_WINDOW_S] for key, ticks in self._ticks.items()
                      if stream_id in (None, key)}
        return sum(_rate(times) for times in recent.values())

    def snapshot(self, now: float | None = None) -> dict:
        with self._lock:
            out = dict(self.counts)
            series = {name: np.array(values or [0.0]) for name, values in self._series.items()}
        out["fps"] = round(self.fps(None, now), 2)
        for name, values in series.items():
            out[f"{name}_p50"] = round(float(np.percentile(values, 50)), 1)
            out[f"{name}_p99"] = round(float(np.percentile(values, 99)), 1)
        return out


def _rate(times: list[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])
