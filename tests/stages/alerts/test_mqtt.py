"""MQTT (stages/alerts/mqtt.py) against a real mosquitto: the documented topics and payloads, the
retained availability, and a broker that is killed and comes back."""
from __future__ import annotations

import time

from pipeline.runtime.schema import ConfigError, build
from stages.alerts.alert import EVENT_KINDS, from_event
from stages.alerts.mqtt import MqttConfig, MqttSink
from tests.stages.alerts.test_alert import jpeg_b64

import pytest


def alert(track_id: int, kind: str = "track_confirmed", stream_id: str = "cam0"):
    return from_event({"type": kind, "stream_id": stream_id, "track_id": track_id, "t": time.time(),
                       "thumbnail_jpeg_b64": jpeg_b64()}, set(EVENT_KINDS), {"cam0", "cam1"})


def sink_for(port: int, **settings) -> MqttSink:
    sink = MqttSink(build(MqttConfig, {"host": "127.0.0.1", "port": port, **settings}, "m"), None)
    sink.start()
    return sink


def wait_until(condition, timeout_s: float = 15) -> bool:
    deadline = time.time() + timeout_s
    while not condition() and time.time() < deadline:
        time.sleep(0.05)
    return condition()


def test_alerts_go_to_their_stream_and_kind_topics_with_a_snapshot_and_a_retained_availability(broker, subscriber):
    sink = sink_for(broker.port, snapshots=True)
    try:
        assert wait_until(lambda: sink.connected)
        sink.offer(alert(7))
        sink.offer(alert(7, "track_lost", "cam1"))
        confirmed = subscriber.wait_for("lss/cam0/track_confirmed", 1)
        assert [m.json()["track_id"] for m in confirmed] == [7] and "thumbnail_jpeg_b64" not in confirmed[0].json()
        assert subscriber.wait_for("lss/cam0/track_confirmed/snapshot", 1)[0].payload.startswith(b"\xff\xd8\xff")
        assert subscriber.wait_for("lss/cam1/track_lost", 1)[0].json()["stream_id"] == "cam1"
        assert subscriber.wait_for("lss/availability", 1)[-1].payload == b"online"
        assert wait_until(lambda: sink.sent == 2)  # both acknowledged (the snapshot is not an alert of its own)
    finally:
        sink.close(time.monotonic() + 2)
    assert subscriber.wait_for("lss/availability", 2)[-1].payload == b"offline"
    assert sink.counters() == {"sent": 2, "dropped": 0, "pending": 0, "undelivered": 0, "connected": 0}


def test_a_broker_that_restarts_gets_what_was_queued_while_it_was_away(broker, tmp_path):
    from tests.stages.alerts.conftest import Subscriber

    sink = sink_for(broker.port, reconnect_min_s=2, reconnect_max_s=2)
    subscriber = Subscriber(broker.port)
    try:
        assert wait_until(lambda: sink.connected)
        sink.offer(alert(1))
        assert len(subscriber.wait_for("lss/cam0/track_confirmed", 1)) == 1
        # acknowledged first: an alert the broker took but had not yet acked stays queued (QoS 1 resends)
        assert wait_until(lambda: sink.sent == 1 and sink.counters()["pending"] == 0)
        broker.kill()
        assert wait_until(lambda: not sink.connected)
        for track_id in (2, 3, 4):
            sink.offer(alert(track_id))
        assert sink.counters()["pending"] == 3
        broker.start()  # the test subscriber is back within 1 s, the sink after 2 s
        got = subscriber.wait_for("lss/cam0/track_confirmed", 4, timeout_s=30)
        assert sorted({m.json()["track_id"] for m in got}) == [1, 2, 3, 4]
        assert wait_until(lambda: sink.sent == 4) and sink.counters()["pending"] == 0
    finally:
        sink.close(time.monotonic() + 2)
        subscriber.close()


def test_alerts_queued_for_a_broker_that_never_comes_are_counted_at_the_end(tmp_path):
    from tests.conftest import free_port

    sink = sink_for(free_port(), queue=2)
    for track_id in range(3):
        sink.offer(alert(track_id))
    sink.close(time.monotonic() + 0.3)
    assert sink.counters() == {"sent": 0, "dropped": 1, "pending": 0, "undelivered": 2, "connected": 0}


@pytest.mark.parametrize("settings, problem", [
    ({"host": ""}, "'m.host' is required"),
    ({"host": "b", "topic_prefix": "lss/#"}, "'m.topic_prefix' must be topic levels"),
    ({"host": "b", "topic_prefix": "a//b"}, "'m.topic_prefix' must be topic levels"),
    ({"host": "b", "qos": 3}, r"'m.qos' must be one of \[0, 1, 2\]"),
    ({"host": "b", "password_file": "p"}, "'m.password_file' needs 'm.username'"),
])
def test_bad_mqtt_settings_are_one_line_config_errors(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        build(MqttConfig, settings, "m")
