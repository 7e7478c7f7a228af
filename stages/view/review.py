"""Review: where a drone track's moment lies in the recording, so the page can play it.

The recorder indexes every segment it opens (``<stream>/segments.jsonl``, pipeline.runtime.records); a
``track_confirmed`` event carries the ``source_ts`` of its frame. The link is the segment holding that
moment and the offset into it, started ``pre_roll_s`` earlier so the operator sees the drone arrive.
The event reaches the view before its frame reaches the recorder, so a link is looked for again at
each page state until the segment is there; once found it is kept.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path
from urllib.parse import quote

from pipeline.runtime.records import SEGMENT_INDEX, locate, read_segment_index


class Reviews:
    def __init__(self, output_root: Path, pre_roll_s: float = 2.0):
        self.root, self.pre_roll_s = output_root, pre_roll_s
        self.lock = threading.Lock()
        self.indexes: dict[str, tuple[tuple[int, int], list]] = {}  # stream -> ((mtime_ns, size), entries)
        self.found: dict[tuple[str, float], dict] = {}

    def link(self, stream_id: str, source_ts) -> dict | None:
        """{"url", "segment", "t" (where to start playing, s), "at" (the moment itself, s)} or None (not recorded yet,
        not recorded at all, or no such stream folder)."""
        if not isinstance(source_ts, (int, float)) or not math.isfinite(source_ts) or not _safe(stream_id):
            return None
        key = (stream_id, float(source_ts))
        with self.lock:
            if key in self.found:  # found before; retention may have deleted it since
                return self.found[key] if (self.root / stream_id / self.found[key]["segment"]).is_file() else None
            hit = locate(self._entries(stream_id), float(source_ts))
            if hit is None or not (self.root / stream_id / hit[0]).is_file():
                return None
            name, offset = hit
            link = {"url": f"recordings/{quote(stream_id, safe='')}/{name}", "segment": name,
                    "t": round(max(0.0, offset - self.pre_roll_s), 3), "at": round(offset, 3)}
            if len(self.found) > 10_000:
                self.found.clear()
            self.found[key] = link
            return link

    def _entries(self, stream_id: str) -> list:
        path = self.root / stream_id / SEGMENT_INDEX
        try:
            stat = path.stat()
        except OSError:
            return []
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self.indexes.get(stream_id)
        if cached is None or cached[0] != stamp:
            cached = (stamp, read_segment_index(path))
            self.indexes[stream_id] = cached
        return cached[1]


def _safe(stream_id) -> bool:
    return isinstance(stream_id, str) and bool(stream_id) and "/" not in stream_id and stream_id not in (".", "..")
