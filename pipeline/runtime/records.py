"""The record formats the track and record stages write and offline work reads back: one row per frame
in ``tracks.jsonl``, MOTChallenge rows in ``tracks_mot.txt``, the segment index ``segments.jsonl``. Offline scoring reads them with
``read_frame_records``, so writer and reader share this one module (never a stage's)."""
from __future__ import annotations

import json
import math
import re
import time
from typing import Iterator

import numpy as np

from pipeline.runtime.books import DROPPED, OWN_DROPPED, REMOTE_DROPPED
from pipeline.runtime.messages import FrameMessage

# meta key the source stamps on every frame: the id of the supervisor run that captured it. Frame
# indices continue within one such run (across stage restarts), so a recorder whose records end
# with the same session (its host restarted, the source's did not) books the frames in between.
SESSION = "session"


def frame_session(msg: FrameMessage) -> str | None:
    value = msg.meta.get(SESSION)
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def frame_record(msg: FrameMessage) -> dict:
    dets = msg.detections if msg.detections is not None else np.zeros((0, 6), np.float32)
    return {"stream_id": msg.stream_id, "frame_index": msg.frame_index, "source_ts": round(msg.source_ts, 4),
            "capture_wall": msg.capture_wall, "recorded_wall": time.time(),  # capture-to-record latency
            # where the books of a restarted recorder go on from (pipeline.runtime.books)
            "session": frame_session(msg), DROPPED: msg.meta.get(DROPPED, 0),
            REMOTE_DROPPED: msg.meta.get(REMOTE_DROPPED, 0), OWN_DROPPED: msg.meta.get(OWN_DROPPED, 0),
            "detections": dets.tolist(),  # full precision: scored later
            "track_ids": [] if msg.track_ids is None else msg.track_ids.tolist(),
            "track_class_ids": msg.meta.get("track_class_ids", []),
            "alert_track_ids": msg.meta.get("alert_track_ids", [])}


def mot_lines(msg: FrameMessage) -> str:
    """MOTChallenge rows of the frame's tracked boxes: frame(1-based),id,x,y,w,h,score,-1,-1,-1."""
    if msg.detections is None or msg.track_ids is None:
        return ""
    rows = []
    for (x1, y1, x2, y2, score, _), track_id in zip(msg.detections.tolist(), msg.track_ids.tolist()):
        if track_id >= 0:
            rows.append(f"{msg.frame_index + 1},{track_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                        f"{score:.4f},-1,-1,-1\n")
    return "".join(rows)


def read_frame_records(path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a tracks.jsonl written by this stage; blank lines skipped. A line that is
    not JSON raises ValueError naming the file and line (a crash leaves whole lines only)."""
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_number}: not a JSON record ({exc.msg})") from None


def last_record(path, tail_bytes: int = 1 << 16) -> dict | None:
    """The last whole record of a tracks.jsonl (None: no file or no record), read from its tail, so a
    restarted recorder knows where its predecessor stopped without reading hours of records."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().splitlines()[(1 if size else 0):]  # the first may be cut by the seek
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a cut last line (the predecessor was killed mid-write)
        if isinstance(record, dict) and isinstance(record.get("frame_index"), int):
            return record
    return None


# ---------------------------------------------------------------- the segment index
# ``<stream>/segments.jsonl``: one line per video segment the recorder opens, with the source time of
# its first frame, so a moment of the stream (an event's ``source_ts``) can be found in the recording:
# segment = the last one that starts at or before it, offset = source_ts - its start (segment
# timestamps count from the segment's first frame).
SEGMENT_INDEX = "segments.jsonl"
SEGMENT_NAME = re.compile(r"^(raw_)?segment_\d{5}\.(mp4|mkv|ts)$")


def segment_entry(name: str, source_ts: float) -> str:
    return json.dumps({"segment": name, "source_ts": round(source_ts, 4), "opened_wall": round(time.time(), 3)},
                      separators=(",", ":"))


def read_segment_index(path, max_bytes: int = 16 << 20) -> list[tuple[str, float]]:
    """(segment file name, source time of its first frame) per line, in order; a line that is not one
    (cut by a crash, edited by hand) is skipped: the index is read by the view, never trusted."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        name, start = entry.get("segment"), entry.get("source_ts")
        if isinstance(name, str) and SEGMENT_NAME.match(name) and isinstance(start, (int, float)) \
                and not isinstance(start, bool) and math.isfinite(start):
            entries.append((name, float(start)))
    return entries


def locate(entries: list[tuple[str, float]], source_ts: float, prefix: str = "segment") -> tuple[str, float] | None:
    """The segment (of ``prefix``) holding the moment ``source_ts`` and the offset into it, or None.
    A source whose clock went back starts a new segment: the last segment at or before wins."""
    found = None
    for name, start in entries:
        if name.startswith(prefix + "_") and start <= source_ts + 1e-6:
            found = (name, max(0.0, source_ts - start))
    return found
