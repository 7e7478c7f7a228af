"""Frames that did not arrive, split into the two kinds an operator must tell apart:

- dropped: a live-mode stage let a stale frame go on purpose (the latency policy), counted where it
  happened (``drop=`` in the status line) and carried in every later frame of the stream as
  ``meta["dropped_upstream"]``, the running count of such drops before the stage holding the frame
  (a stage's own stale drops are stamped as the next frame arrives, before its own books see the gap);
- lost: every other missing index (a killed stage's queue, a network hiccup): ``lost=``.

A stage that sees a gap between two frames of a stream subtracts what the upstream stages dropped in
between; what is left was lost. The one copy of that rule is ``FrameBooks.arrive``.
"""
from __future__ import annotations

from dataclasses import dataclass

DROPPED = "dropped_upstream"  # meta key: frames of this stream dropped on purpose so far, before here
# meta key: the part of DROPPED made on another host (stamped by the stage fed from there); a host
# that restarts counts its own drops from 0 again, the other host's go on
REMOTE_DROPPED = "dropped_remote"
# meta key: the part of DROPPED made by the stage now holding the frame (its own stale drops); a
# restarted stage counts its own from 0 again, so its books resume from DROPPED less this part
OWN_DROPPED = "dropped_here"


@dataclass
class Gap:
    lost: int = 0
    dropped: int = 0


class FrameBooks:
    """Per stream: the last frame index that arrived and the upstream drop count it carried."""

    def __init__(self):
        self.last: dict[str, tuple[int, int]] = {}

    def resume(self, stream_id: str, frame_index: int, dropped_upstream: int = 0) -> None:
        """A restarted stage starts from what its predecessor wrote (the frames after it are counted)."""
        self.last[stream_id] = (frame_index, dropped_upstream)

    def arrive(self, stream_id: str, frame_index: int, dropped_upstream: int) -> Gap:
        """The frames missing between the previous arrival of the stream and this one."""
        previous = self.last.get(stream_id)
        self.last[stream_id] = (frame_index, dropped_upstream)
        if previous is None:
            return Gap()
        missing = max(0, frame_index - previous[0] - 1)
        # a count that went down: an upstream stage restarted and counts from 0 again
        base = previous[1] if dropped_upstream >= previous[1] else 0
        dropped = min(missing, dropped_upstream - base)
        return Gap(lost=missing - dropped, dropped=dropped)


def stamp(meta: dict, own_drops: int) -> None:
    """Add this stage's drops of the stream so far to the count the frame carries on."""
    meta[DROPPED] = int(meta.get(DROPPED, 0)) + own_drops
