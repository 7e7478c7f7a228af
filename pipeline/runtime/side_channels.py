"""What a consumer stage (the view, the alerts) shares: its subscriptions to the PUB links it follows,
its heartbeats to the supervisor, and the rule that tells it the run is over.

A consumer has its own ``run()`` loop instead of the frame path's StageRunner. ``SideChannels`` opens
one SUB socket per (link, topic) with its own queue length, so a flood of frames on one subscription
never pushes out an event on another, and beats the supervisor's control socket without ever
blocking on it.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import zmq

from pipeline.runtime.config import PipelineConfig, connect_side
from pipeline.runtime.stage import curve_keys
from pipeline.runtime.transport import close_context, open_socket

DRAIN_BATCH = 1000  # messages read from one socket per poll: heartbeats keep going under a flood


def run_is_over(snapshot: dict, me: str) -> bool:
    """The supervisor's status snapshot reports every other stage of this host as exited: nothing more
    will come (and the supervisor, which only asks sources to stop, is waiting for the consumers)."""
    others = [beat for label, beat in snapshot.items() if label != me and isinstance(beat, dict)]
    return bool(others) and all(beat.get("alive") is False for beat in others)


class SideChannels:
    """``subscriptions``: (link key, topic prefix, queue length) per SUB socket, e.g.
    ``[("events", b"event", 1000), ("status", b"", 1000)]``."""

    def __init__(self, cfg: PipelineConfig, label: str, subscriptions: list[tuple[str, bytes, int]]):
        self.cfg, self.label = cfg, label
        self.ctx = zmq.Context()
        curve = curve_keys(cfg)
        self.subs = [open_socket(self.ctx, connect_side(cfg.endpoint(key)), hwm=hwm, curve=curve, subscribe=topic,
                                 max_message_bytes=cfg.max_message_bytes) for key, topic, hwm in subscriptions]
        self.control = open_socket(self.ctx, connect_side(cfg.endpoint("control")), hwm=16, curve=curve)
        self.poller = zmq.Poller()
        for sock in self.subs:
            self.poller.register(sock, zmq.POLLIN)
        self.last_beat = 0.0

    def receive(self, timeout_ms: int) -> Iterator[list]:
        """The multipart messages that arrive within ``timeout_ms`` (a bounded batch per socket)."""
        for sock, _ in self.poller.poll(timeout_ms):
            for _ in range(DRAIN_BATCH):
                try:
                    yield sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break

    def beat_due(self) -> bool:
        return time.time() - self.last_beat >= self.cfg.supervisor.heartbeat_interval_s

    def beat(self, state: str, fields: dict) -> None:
        now = time.time()
        self.last_beat = now
        beat = {"stage": self.label, "pid": os.getpid(), "t": now, "state": state, **fields}
        try:
            self.control.send_string(json.dumps(beat), zmq.NOBLOCK)
        except zmq.Again:
            pass  # supervisor busy or absent: never block on it

    def close(self) -> None:
        for sock in self.subs:
            sock.close(linger=0)
        self.control.close(linger=500)  # the last beat ("exiting") still goes out
        close_context(self.ctx)
