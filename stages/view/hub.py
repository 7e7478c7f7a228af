"""The newest frame of each stream, handed from the view's subscriber thread to the browsers' coroutines.

The subscriber thread only swaps in the newest frame and wakes the event loop (it never waits for a
browser); each video connection takes the newest frame when it is ready for one (a queue of one per
client), so a slow browser just gets fewer frames. A frame is JPEG-encoded once, in a worker thread
(OpenCV lets go of the GIL), by the first connection that wants it; the others await the same result.
Frames nobody asked for are never encoded.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.runtime.meter import Meter


@dataclass(eq=False)
class LatestFrame:
    """The newest frame of one stream; ``jpeg`` is filled once, on first demand."""

    stream_id: str
    seq: int  # hub-wide, increasing
    number: int  # frames of this stream received so far
    image: np.ndarray | None
    frame_index: int
    capture_wall: float
    arrived: float
    jpeg: bytes | None = None
    encoding: asyncio.Future | None = None  # set while a worker thread encodes it
    delivered: bool = False


class ViewStats(Meter):
    """The view's meter: frames in (their rate), frames out to browsers (latency since capture, and what
    the view itself adds after arrival), clients, rejections, connections the guard closed."""

    def __init__(self):
        super().__init__(("received", "processed", "dropped_stale", "dropped_full", "malformed", "clients",
                          "rejected", "connections", "refused_connections", "timed_out"),
                         series=("latency_ms", "added_ms"))
        self.lock = threading.Lock()  # counted from the subscriber thread and the event loop

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            super().count(key, n)

    def received(self, stream_id: str, now: float) -> None:
        with self.lock:
            super().count("received")
            self.tick(stream_id, now)

    def delivered(self, frame: LatestFrame) -> None:
        now = time.time()
        with self.lock:
            super().count("processed")
            self.observe("latency_ms", (now - frame.capture_wall) * 1000)  # capture -> delivery to a browser
            self.observe("added_ms", (now - frame.arrived) * 1000)  # arrival on our SUB socket -> delivery

    def snapshot(self, now: float | None = None) -> dict:
        with self.lock:
            return super().snapshot(now)


class Notifier:
    """Wakes coroutines of one event loop from any thread: ``marker()`` before looking, then
    ``wait(marker, timeout)`` returns at the first ``wake()`` after the marker was taken (or at timeout)."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # replaced at every wake: waiters hold the old one

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the event loop once it runs: from now on ``wake`` reaches its waiters."""
        self.loop, self._changed = loop, asyncio.Event()

    def wake(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # the loop closed in between: nobody is waiting any more
                pass

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def marker(self) -> asyncio.Event:
        return self._changed

    @staticmethod
    async def wait(marker: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(marker.wait(), timeout)
        except TimeoutError:
            pass


class FrameHub:
    """Newest frame per stream; ``put`` from any thread, the rest on the event loop (``changed.bind`` first)."""

    def __init__(self, quality: int, stats: ViewStats):
        self.quality, self.stats = quality, stats
        self.lock = threading.Lock()
        self.latest: dict[str, LatestFrame] = {}
        self.received: dict[str, int] = {}
        self.seq = 0
        self.closed = False
        self.changed = Notifier()

    def put(self, stream_id: str, image: np.ndarray, frame_index: int, capture_wall: float) -> None:
        """Called by the subscriber thread: replace, wake waiters, never wait for a browser."""
        with self.lock:
            self.seq += 1
            self.received[stream_id] = self.received.get(stream_id, 0) + 1
            self.latest[stream_id] = LatestFrame(stream_id, self.seq, self.received[stream_id], image, frame_index,
                                                 capture_wall, time.time())
        self.changed.wake()

    def newest(self, stream_id: str) -> LatestFrame | None:
        with self.lock:
            return self.latest.get(stream_id)

    def _newer(self, stream_ids: list[str], seen: dict[str, int]) -> list[LatestFrame]:
        with self.lock:
            frames = (self.latest.get(s) for s in stream_ids)
            return [f for f in frames if f is not None and f.seq > seen.get(f.stream_id, 0)]

    async def wait_newer(self, stream_ids: list[str], seen: dict[str, int], timeout: float) -> list[LatestFrame]:
        """The newest frame of each stream whose sequence number is above what this client has seen;
        [] after ``timeout`` seconds without one (so the caller can check its client is still there)."""
        marker = self.changed.marker()
        frames = self._newer(stream_ids, seen)
        if not frames and not self.closed:
            await self.changed.wait(marker, timeout)
            frames = self._newer(stream_ids, seen)
        return [] if self.closed else frames

    async def jpeg(self, frame: LatestFrame) -> bytes:
        """The frame as JPEG: encoded once, off the event loop; the others share the bytes."""
        if frame.jpeg is None:
            if frame.encoding is None:
                frame.encoding = asyncio.ensure_future(asyncio.to_thread(self._encode, frame.image))
            jpeg = await asyncio.shield(frame.encoding)  # a client leaving mid-encode leaves it to the rest
            frame.jpeg, frame.image = jpeg, None  # the raw frame is no longer needed
        if not frame.delivered:
            frame.delivered = True
            self.stats.delivered(frame)
        return frame.jpeg

    def _encode(self, image: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return buf.tobytes()

    def close(self) -> None:
        self.closed = True
        self.changed.wake()
