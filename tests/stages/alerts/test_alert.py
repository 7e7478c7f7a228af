"""Events in, alerts out (stages/alerts/alert.py) and the outbox (stages/alerts/outbox.py)."""
from __future__ import annotations

import base64
import json

import cv2
import numpy as np
import pytest

from stages.alerts.alert import EVENT_KINDS, AlertError, from_event
from stages.alerts.outbox import Outbox

STREAMS = {"cam0"}


def jpeg_b64() -> str:
    return base64.b64encode(cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))[1].tobytes()).decode()


def confirmed(**fields) -> dict:
    return {"type": "track_confirmed", "stream_id": "cam0", "track_id": 3, "t": 1.5, "class": "drone",
            "thumbnail_jpeg_b64": jpeg_b64(), **fields}


def test_a_confirmed_track_becomes_an_alert_whose_json_leaves_the_thumbnail_out_unless_asked():
    alert = from_event(confirmed(), set(EVENT_KINDS), STREAMS)
    assert (alert.kind, alert.stream_id) == ("track_confirmed", "cam0")
    assert alert.snapshot.startswith(b"\xff\xd8\xff")
    plain = json.loads(alert.body(with_snapshot=False))
    assert plain["track_id"] == 3 and "thumbnail_jpeg_b64" not in plain and "snapshot_jpeg_b64" not in plain
    assert plain["sent"] >= plain["t"]
    full = json.loads(alert.body(with_snapshot=True))
    assert base64.b64decode(full["snapshot_jpeg_b64"]) == alert.snapshot


def test_kinds_not_forwarded_are_skipped_and_bad_events_are_errors():
    assert from_event({"type": "track_lost", "stream_id": "cam0"}, {"track_confirmed"}, STREAMS) is None
    with pytest.raises(AlertError, match="without a 'type'"):
        from_event({"stream_id": "cam0"}, set(EVENT_KINDS), STREAMS)
    with pytest.raises(AlertError, match="stream this run does not have: '../x'"):
        from_event(confirmed(stream_id="../x"), set(EVENT_KINDS), STREAMS)  # never a topic level of its own


@pytest.mark.parametrize("thumbnail", ["not base64!", base64.b64encode(b"GIF89a....").decode(), 17, "A" * 800_000])
def test_a_thumbnail_that_is_not_a_small_jpeg_is_left_out(thumbnail):
    assert from_event(confirmed(thumbnail_jpeg_b64=thumbnail), set(EVENT_KINDS), STREAMS).snapshot is None


def test_a_full_outbox_lets_the_oldest_go_and_counts_it():
    box = Outbox(2)
    for item in "abc":
        box.put(item)
    assert box.dropped == 1 and box.take(0) == "b"
    box.put_back("b")
    box.put("d")  # full again: b, c ... d pushes b out
    assert box.dropped == 2 and [box.take(0), box.take(0)] == ["c", "d"]
    assert box.take(0.05) is None
    box.put("e")
    assert box.close() == ["e"] and box.take(1) is None  # closed: no wait
