"""What a stage's heartbeat may say, read as untrusted input: ``parse_beat`` (a forged or broken beat is
dropped and counted by the supervisor, never a crash of it), and what a restart takes from the last
beat of the process it replaces (``ended_streams``, ``resume_frame``).
"""
from __future__ import annotations

import json
import math

from pipeline.runtime.remote_ends import parse_ended

BEAT_NUMBERS = ("t", "pid", "fps", "latency_ms_p50", "latency_ms_p99", "received", "processed", "sent",
                "dropped_stale", "dropped_full", "malformed", "frames_missing", "frames_unrecorded",
                "frames_total", "next_frame")  # what the supervisor reads of a beat as a number
MAX_BEAT_BYTES = 64 << 10


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_beat(raw: bytes) -> tuple[dict, str | None]:
    """(heartbeat, None), or ({...}, the reason it is not one): a JSON object under MAX_BEAT_BYTES whose
    stage is a string, whose numbers are finite numbers and whose other fields are plain values."""
    if len(raw) > MAX_BEAT_BYTES:
        return {}, f"{len(raw)} bytes, over {MAX_BEAT_BYTES}"
    try:
        beat = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return {}, f"not JSON ({type(exc).__name__})"
    if not isinstance(beat, dict) or not isinstance(beat.get("stage"), str):
        return {}, "not an object with a stage name"
    for key in BEAT_NUMBERS:
        value = beat.get(key, 0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not abs(value) < 1e15:  # NaN fails too
            return beat, f"field {key!r} is not a finite number: {str(value)[:40]}"
    if not isinstance(beat.get("pid"), int):
        return beat, "no pid"
    if not all(isinstance(v, (str, int, float, bool, type(None), list)) for v in beat.values()):
        return beat, "a field holds a nested object"
    return beat, None


def ended_streams(argv: list[str], last_beat: dict, stream_ids: list[str]) -> dict[str, int]:
    """The streams a stage's processes so far had finished, with the frame count of each: those named
    to its last process (``--ended=id=count,...``) and those its last beat reported (``ended_at``, a
    list of [stream id, frame count]; an untrusted beat, so anything else in it is ignored)."""
    ended: dict[str, int] = {}
    for arg in argv:
        if arg.startswith("--ended="):
            try:
                ended.update(parse_ended(arg[len("--ended="):]))
            except ValueError:
                pass
    for pair in last_beat.get("ended_at", []) if isinstance(last_beat.get("ended_at"), list) else []:
        if (isinstance(pair, list) and len(pair) == 2 and pair[0] in stream_ids and isinstance(pair[1], int)
                and not isinstance(pair[1], bool) and 0 <= pair[1] < 2 ** 53):
            ended[pair[0]] = pair[1]
    return {sid: count for sid, count in ended.items() if sid in stream_ids}


def resume_frame(last_beat: dict, live: bool, now: float) -> int:
    """Where a restarted capture starts numbering (and, for a file, reading). Replay resumes at the
    last reported frame: the few frames sent after that beat come again and the recorder drops
    them, nothing is lost. Live skips past every frame that may have been sent since the beat, so
    a restarted camera never reuses an index (track and record would take the new frames for old
    ones and drop them until the count caught up)."""
    next_frame = int(last_beat.get("next_frame", last_beat.get("sent", 0)))
    if not live:
        return next_frame
    since_beat = max(0.0, now - float(last_beat.get("t", now)))
    return next_frame + math.ceil(float(last_beat.get("fps", 0.0)) * since_beat) + 1
