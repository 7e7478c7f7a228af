"""Alerts to an MQTT broker (paho-mqtt), for home-automation, VMS and SCADA systems that listen there.

Topics (``<prefix>`` is ``topic_prefix``, default ``lss``):
    <prefix>/availability                       "online" / "offline", retained; "offline" is also the
                                                last will, so a crashed or cut-off pipeline reads offline
    <prefix>/<stream_id>/<event type>           the alert as JSON (QoS ``qos``, default 1, not retained)
    <prefix>/<stream_id>/<event type>/snapshot  with ``snapshots``: the track_confirmed thumbnail, JPEG

The sink's thread hands alerts to paho only while connected, at most WINDOW unacknowledged at a
time; paho resends those after a reconnect (QoS 1: at least once). A broker that is away leaves the
alerts in the outbox (bounded: the oldest go, counted); paho reconnects with a growing wait.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from pipeline.runtime.schema import ConfigError, setting
from stages.alerts.alert import Alert
from stages.alerts.outbox import Outbox

log = logging.getLogger("stages.alerts.mqtt")
WINDOW = 20  # alerts handed to paho and not yet acknowledged by the broker
RECONNECT_NOTE_S = 30.0  # a broker that stays away is mentioned again this often


@dataclass
class MqttConfig:
    host: str = ""
    port: int = setting(1883, ge=1, le=65535)
    topic_prefix: str = "lss"
    client_id: str | None = None  # default lss-alerts-<hostname>
    username: str | None = None
    password_file: str | None = None  # the password is read from a file: secrets stay out of the config
    tls_ca: str | None = None  # CA certificate (PEM) of the broker: connect with TLS and verify it
    qos: int = setting(1, choices=[0, 1, 2])
    keepalive_s: int = setting(30, ge=5, le=3600)
    snapshots: bool = False  # publish the track_confirmed thumbnail to <topic>/snapshot
    queue: int = setting(1000, ge=1)  # alerts held while the broker is away; then the oldest go
    reconnect_min_s: int = setting(1, ge=1)  # paho's reconnect wait starts here and doubles
    reconnect_max_s: int = setting(30, ge=1)

    def validate(self, where: str) -> None:
        if not self.host:
            raise ConfigError(f"config key '{where}.host' is required (the broker's host name or address)")
        levels = self.topic_prefix.split("/")
        if any(not level or "+" in level or "#" in level for level in levels):
            raise ConfigError(f"config key '{where}.topic_prefix' must be topic levels without '+', '#' or "
                              f"empty levels, got {self.topic_prefix!r}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError(f"config key '{where}.reconnect_max_s' must be >= reconnect_min_s")
        if self.password_file and not self.username:
            raise ConfigError(f"config key '{where}.password_file' needs '{where}.username'")


class MqttSink:
    def __init__(self, cfg: MqttConfig, password: str | None):
        import paho.mqtt.client as mqtt

        self.cfg, self.key, self.label = cfg, "mqtt", f"mqtt {cfg.host}:{cfg.port}"
        self.availability = f"{cfg.topic_prefix}/availability"
        self.outbox = Outbox(cfg.queue)
        self.sent = self.undelivered = 0
        self.connected = False
        self.outstanding: dict[int, bool] = {}  # mid -> whether it is an alert (not a snapshot)
        self.unacked = 0  # alerts among them (read by the stage's thread: an int, not the dict)
        self.acks: deque[int] = deque()  # mids paho's thread saw acknowledged, taken by ours
        self.stopping = threading.Event()
        self.noted_down = 0.0
        client_id = cfg.client_id or f"lss-alerts-{socket.gethostname()}"[:64]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if cfg.username:
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls_ca:
            self.client.tls_set(ca_certs=cfg.tls_ca)
        self.client.will_set(self.availability, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.client.on_connect, self.client.on_disconnect = self._on_connect, self._on_disconnect
        self.client.on_connect_fail, self.client.on_publish = self._on_connect_fail, self._on_publish
        self.thread = threading.Thread(target=self._work, name=self.label, daemon=True)

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self.thread.start()

    def offer(self, alert: Alert) -> None:
        self.outbox.put(alert)

    def pending(self) -> int:
        return len(self.outbox) + self.unacked

    def counters(self) -> dict:
        return {"sent": self.sent, "dropped": self.outbox.dropped, "pending": self.pending(),
                "undelivered": self.undelivered, "connected": int(self.connected)}

    def close(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (monotonic), say "offline", disconnect; what is
        left is counted as undelivered."""
        while self.pending() and self.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stopping.set()
        self.thread.join(timeout=2)
        self._settle()
        self.undelivered += len(self.outbox.close()) + self.unacked
        if self.connected:
            self.client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(
                timeout=max(0.5, deadline - time.monotonic()))
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------ our thread
    def _work(self) -> None:
        while not self.stopping.is_set():
            self._settle()
            if not self.connected or len(self.outstanding) >= WINDOW:
                time.sleep(0.05)
                continue
            alert = self.outbox.take(0.1)
            if alert is not None:
                self._publish(alert)

    def _publish(self, alert: Alert) -> None:
        topic = f"{self.cfg.topic_prefix}/{alert.stream_id}/{alert.kind}"
        self._note(self.client.publish(topic, alert.body(False), qos=self.cfg.qos), is_alert=True)
        if self.cfg.snapshots and alert.snapshot is not None:
            self._note(self.client.publish(f"{topic}/snapshot", alert.snapshot, qos=self.cfg.qos), is_alert=False)

    def _note(self, info, is_alert: bool) -> None:
        if self.cfg.qos == 0:  # nothing will be acknowledged: handed to the socket is all there is
            self.sent += int(is_alert)
        else:  # its ack, even one already in, is counted by _settle, which runs on this thread after us
            self.outstanding[info.mid] = is_alert
            self.unacked += int(is_alert)

    def _settle(self) -> None:
        """Count the acknowledgements paho's thread has seen (others are the availability messages)."""
        while self.acks:
            is_alert = self.outstanding.pop(self.acks.popleft(), None)
            if is_alert is not None:
                self.sent += int(is_alert)
                self.unacked -= int(is_alert)

    # ------------------------------------------------------------ paho's thread (never takes our locks)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._down(f"the broker refused the connection: {reason_code}")
            return
        self.connected = True
        log.info("%s: connected", self.label)
        client.publish(self.availability, "online", qos=1, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        if not self.stopping.is_set():
            self._down(f"disconnected ({reason_code}); reconnecting")

    def _on_connect_fail(self, client, userdata) -> None:
        self._down("cannot connect; retrying")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acks.append(mid)

    def _down(self, why: str) -> None:
        now = time.monotonic()
        if now - self.noted_down >= RECONNECT_NOTE_S:
            self.noted_down = now
            log.warning("%s: %s (%d alerts queued)", self.label, why, self.pending())
