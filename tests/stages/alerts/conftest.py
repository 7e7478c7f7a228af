"""A real MQTT broker (Debian's mosquitto) on 127.0.0.1 and a real subscriber to it."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.conftest import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """mosquitto on a free loopback port, no persistence, anonymous clients; ``kill``/``start`` again on
    the same port (what a broker restart looks like to its clients)."""

    def __init__(self, folder):
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import socket

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    if not shutil.which(MOSQUITTO):
        pytest.skip("needs the mosquitto broker (apt-get install mosquitto)")
    b = Broker(tmp_path).start()
    yield b
    b.kill()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A paho client subscribed to ``<prefix>/#`` (QoS 1), re-subscribing after every reconnect."""

    port: int
    prefix: str = "lss"
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self):
        import paho.mqtt.client as mqtt

        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{self.port}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{self.prefix}/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(Received(m.topic, m.payload, m.retain))
        self.client.reconnect_delay_set(1, 1)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber was not subscribed"

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def wait_for(self, topic: str, count: int, timeout_s: float = 15) -> list[Received]:
        deadline = time.time() + timeout_s
        while len(self.on(topic)) < count and time.time() < deadline:
            time.sleep(0.05)
        return self.on(topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def subscriber(broker):
    sub = Subscriber(broker.port)
    yield sub
    sub.close()
