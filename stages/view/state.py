"""What the page shows besides video: the status snapshot, drone tracks, stream events.

Events as the track stage and supervisor publish them (untrusted: every field is checked or
defaulted): {"type": "track_confirmed" | "track_lost" | "stream_down" | "stream_up", "stream_id",
"t" (wall time), "track_id", "class", "thumbnail_jpeg_b64"}.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

from pipeline.runtime.messages import event_thumbnail
from stages.view.hub import LatestFrame


class ViewState:
    """Thread-safe: the subscriber thread adds, the event loop reads."""

    def __init__(self, max_events: int):
        self.lock = threading.Lock()
        self.snapshot: dict = {}
        self.snapshot_time = 0.0
        self.tracks: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self.thumbs: dict[int, bytes] = {}
        self.events: deque = deque(maxlen=max_events)
        self.max_events = max_events
        self.stream_flags: dict[str, str] = {}  # from stream_down / stream_up events
        self.ended: set[str] = set()
        self.next_id = 1

    def set_snapshot(self, snapshot: dict) -> None:
        with self.lock:
            self.snapshot, self.snapshot_time = snapshot, time.time()

    def add_event(self, event: dict) -> None:
        kind, stream_id = event.get("type"), str(event.get("stream_id", ""))
        with self.lock:
            if kind == "track_confirmed":
                self._confirm(event, stream_id)
            elif kind == "track_lost":
                row = self.tracks.get((stream_id, _int(event.get("track_id"))))
                if row is not None:
                    row["end"] = _float(event.get("t"), time.time())
            elif kind in ("stream_down", "stream_up"):
                self.stream_flags[stream_id] = kind.split("_")[1]
                self.events.appendleft({"type": kind, "stream_id": stream_id,
                                        "time": _float(event.get("t"), time.time())})

    def _confirm(self, event: dict, stream_id: str) -> None:
        key = (stream_id, _int(event.get("track_id")))
        row = {"id": self.next_id, "stream_id": stream_id, "track_id": key[1], "class": str(event.get("class", "")),
               "start": _float(event.get("t"), time.time()), "end": None, "thumb": None,
               "source_ts": _float(event.get("source_ts"), None)}  # where the recording holds it (review)
        self.next_id += 1
        thumb = event_thumbnail(event)
        if thumb is not None:
            self.thumbs[row["id"]] = thumb
            row["thumb"] = f"thumb/{row['id']}.jpg"
        self.tracks.pop(key, None)
        self.tracks[key] = row
        while len(self.tracks) > self.max_events:
            _, old = self.tracks.popitem(last=False)
            self.thumbs.pop(old["id"], None)

    def thumb(self, row_id: int) -> bytes | None:
        with self.lock:
            return self.thumbs.get(row_id)

    def stream_state(self, stream_id: str, frame: LatestFrame | None, stale_after_s: float, now: float) -> str:
        """live | waiting (no frame yet) | down | ended: never 'live' on a frame that stopped coming."""
        with self.lock:
            beat = self.snapshot.get(f"capture:{stream_id}", {})
            flag = self.stream_flags.get(stream_id)
            ended = stream_id in self.ended or stream_id in beat.get("ended", [])
        if ended:
            return "ended"
        if beat.get("stream") == "down" or flag == "down" or beat.get("alive") is False:
            return "down"
        if frame is None:
            return "waiting"
        return "live" if now - frame.arrived <= stale_after_s else "down"

    def page_data(self) -> dict:
        with self.lock:
            return {"stages": self.snapshot, "status_age_s": round(time.time() - self.snapshot_time, 1)
                    if self.snapshot_time else None,
                    "tracks": [dict(row) for row in reversed(self.tracks.values())], "events": list(self.events)}


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows
        return -1


def _float(value, default: float | None) -> float | None:
    """A finite number from the network, else ``default`` (1e400 parses as inf, which no page can read)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default
