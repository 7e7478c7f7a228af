"""The alerts stage in a real run: `python -m pipeline run` on a replay with the shipped weights,
alerts to a real mosquitto and a real local webhook receiver; and its handling of untrusted events."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from pipeline.runtime.config import config_from_dict
from stages.alerts import AlertsStage
from tests.conftest import REPO_ROOT
from tests.stages.alerts.test_webhook import Receiver

pytestmark = pytest.mark.slow


def test_a_replay_publishes_one_track_confirmed_per_confirmed_track_to_mqtt_and_the_webhook(
        tmp_path, synthetic_clip, broker, subscriber):
    receiver = Receiver(statuses=[500])  # the first POST fails: retried
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "mode": "replay", "sources": [{"id": "cam0", "uri": str(synthetic_clip.video)}], "output_dir": str(out),
        "transport": {"ipc_dir": str(tmp_path / "ipc")},
        "stages": {"detect": {"weights": "demo", "backend": "onnx"},
                   "alerts": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "snapshots": True},
                              "webhooks": [{"url": receiver.url, "backoff_s": 0.1}]}}}))
    try:
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    finally:
        receiver.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    tracks = sorted(e["track_id"] for e in logged if e["type"] == "track_confirmed")
    assert tracks, "the replay confirmed no track: nothing to alert on"
    by_mqtt = subscriber.wait_for("lss/cam0/track_confirmed", len(tracks), timeout_s=5)
    assert sorted(m.json()["track_id"] for m in by_mqtt) == tracks  # exactly one per track
    assert len(subscriber.on("lss/cam0/track_confirmed/snapshot")) == len(tracks)
    lost = sorted(e["track_id"] for e in logged if e["type"] == "track_lost")
    assert sorted(m.json()["track_id"] for m in subscriber.on("lss/cam0/track_lost")) == lost
    hooked = [a for a in receiver.delivered() if a["type"] == "track_confirmed"]
    assert sorted(a["track_id"] for a in hooked) == tracks
    assert subscriber.on("lss/availability")[-1].payload == b"offline"  # said at the end of the run
    forwarded = sum(e["type"] in ("track_confirmed", "track_lost") for e in logged)
    assert re.search(rf"mqtt 127.0.0.1:{broker.port}: {forwarded} alerts delivered, 0 not", result.stderr)
    assert re.search(rf"webhook\[0\] 127.0.0.1: {forwarded} alerts delivered, 0 not", result.stderr)
    print(result.stderr[-1500:])


class Collecting:
    key, label = "collect", "collect"

    def __init__(self):
        self.alerts = []

    def offer(self, alert):
        self.alerts.append(alert)


def test_malformed_and_foreign_events_are_counted_and_never_forwarded(tmp_path):
    cfg = config_from_dict({"sources": [{"id": "cam0", "uri": "unused.mp4"}], "output_dir": str(tmp_path),
                            "stages": {"alerts": {"webhooks": [{"url": "http://127.0.0.1:9/"}],
                                                  "events": ["track_confirmed"]}}}, check_files=False)
    stage, sink = AlertsStage(cfg), Collecting()
    good = json.dumps({"type": "track_confirmed", "stream_id": "cam0", "track_id": 1}).encode()
    for parts in ([b"event", good], [b"event", b"[" * 100_000], [b"event", b'{"type": NaN}'], [b"event"],
                  [b"event", json.dumps({"type": "track_confirmed", "stream_id": "cam9"}).encode()],
                  [b"event", json.dumps({"type": "track_lost", "stream_id": "cam0"}).encode()],
                  [b"event", b"\xff\xfe"], [b"event", good]):
        stage._handle(parts, [sink])
    assert [a.fields["track_id"] for a in sink.alerts] == [1, 1]
    assert stage.counters == {"events": 4, "forwarded": 2, "malformed": 5}
    stage._handle([b"status", json.dumps({"track": {"alive": False}, "alerts": {"alive": True}}).encode()], [sink])
    assert stage.stopping  # the run is over: flush and exit


def test_the_alerts_stage_is_off_unless_a_sink_is_configured(tmp_path):
    base = {"sources": [{"id": "cam0", "uri": "unused.mp4"}], "output_dir": str(tmp_path)}
    assert not AlertsStage.enabled(config_from_dict(base, check_files=False))
    on = config_from_dict({**base, "stages": {"alerts": {"mqtt": {"host": "127.0.0.1"}}}}, check_files=False)
    assert AlertsStage.enabled(on)


def test_a_killed_alerts_stage_leaves_offline_on_the_availability_topic(tmp_path, broker, subscriber):
    """SIGKILL: no goodbye is sent, so the broker's last will has to say it (a receiver must not believe
    in an alerts feed that died)."""
    (tmp_path / "cam0.mp4").write_bytes(b"")  # the config check wants the source; the stage never reads it
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"id": "cam0", "uri": str(tmp_path / "cam0.mp4")}], "output_dir": str(tmp_path / "out"),
        "transport": {"ipc_dir": str(tmp_path / "ipc")},
        "stages": {"alerts": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "keepalive_s": 5}}}}))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "stage", "alerts", str(config)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        online = subscriber.wait_for("lss/availability", 1)
        assert online and online[-1].payload == b"online", proc.stderr.read() if proc.poll() is not None else ""
    finally:
        proc.kill()
        proc.wait(10)
    said = subscriber.wait_for("lss/availability", 2, timeout_s=10)
    assert said[-1].payload == b"offline", [m.payload for m in said]
