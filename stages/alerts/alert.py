"""One alert: an event of the track stage (or the supervisor) as the sinks send it.

Events arrive over the network and are untrusted: ``from_event`` keeps only events of a configured
kind for a configured stream, and a thumbnail only if it is a small JPEG
(``pipeline.runtime.messages.event_thumbnail``, the rule the view applies too).
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

from pipeline.runtime.messages import event_thumbnail

EVENT_KINDS = ("track_confirmed", "track_lost", "stream_down", "stream_up", "tracker_restarted")


class AlertError(ValueError):
    """Why an event is not forwarded (counted, never raised out of the stage loop)."""


@dataclass(frozen=True)
class Alert:
    kind: str
    stream_id: str
    fields: dict  # the event as published, without its thumbnail
    snapshot: bytes | None  # the track_confirmed thumbnail, JPEG

    def body(self, with_snapshot: bool) -> bytes:
        """The JSON payload; ``sent`` is when it left this host (``t``: when the event happened)."""
        payload = {**self.fields, "sent": round(time.time(), 3)}
        if with_snapshot and self.snapshot is not None:
            payload["snapshot_jpeg_b64"] = base64.b64encode(self.snapshot).decode()
        return json.dumps(payload, separators=(",", ":")).encode()


def from_event(event: dict, kinds: set[str], streams: set[str]) -> Alert | None:
    """The alert for an event, None when its kind is not forwarded; AlertError when it is malformed
    or names a stream this run does not have."""
    kind = event.get("type")
    if not isinstance(kind, str):
        raise AlertError("an event without a 'type'")
    if kind not in kinds:
        return None
    stream_id = event.get("stream_id")
    if stream_id not in streams:
        raise AlertError(f"a {kind} event of a stream this run does not have: {str(stream_id)[:40]!r}")
    fields = {key: value for key, value in event.items() if key != "thumbnail_jpeg_b64"}
    return Alert(kind, stream_id, fields, event_thumbnail(event))
