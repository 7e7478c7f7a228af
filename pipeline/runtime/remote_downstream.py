"""The sending side of a link to a downstream stage on another host.

No supervisor on this host sees that stage, so the sender watches the link itself: a restarted
receiver (a new handshake) is sent the ends of stream its predecessor took, frames that wait on a
link down for longer than ``transport.remote_wait_s`` end the run with one line instead of a hang,
and at the end the sender waits until the other host confirms every ended stream
(``pipeline.runtime.remote_ends``). Problems come back as lines; the stage loop decides what they
cost (``StageFatalError``: exit 3).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import zmq

from pipeline.runtime.config import PipelineConfig
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.remote_ends import await_confirmations
from pipeline.runtime.transport import LinkWatch

log = logging.getLogger("pipeline.runtime.remote_downstream")


class RemoteDownstream:
    def __init__(self, sock: zmq.Socket, watch: LinkWatch | None, cfg: PipelineConfig, name: str, label: str):
        self.sock, self.watch, self.cfg = sock, watch, cfg
        self.name, self.label = name, label  # the downstream stage; this stage's instance (for log lines)
        self.down_since: float | None = None  # when the link went down with frames waiting on it
        self.handshakes_seen = 1  # connections so far (the first is no reconnect)

    @property
    def connected(self) -> bool:
        return self.watch is None or self.watch.connected

    def waiting_problem(self, msg: FrameMessage) -> str | None:
        """Called while ``msg`` waits for room: a line once the link has been down for longer than
        transport.remote_wait_s (at least the drain timeout, so that a restart of the other side
        fits in whatever the start-up wait), else None."""
        if self.connected:
            self.down_since = None
            return None
        self.down_since = self.down_since or time.monotonic()
        limit = max(self.cfg.transport.remote_wait_s, self.cfg.supervisor.drain_timeout_s)
        if time.monotonic() - self.down_since <= limit:
            return None
        return (f"{self.name} on the other host has been unreachable for {limit:g} s (transport.remote_wait_s, "
                f"at least supervisor.drain_timeout_s) with {msg.stream_id}#{msg.frame_index} waiting to go")

    def sent(self) -> None:
        self.down_since = None

    def reconnected(self) -> bool:
        """True once per new handshake: a restarted receiver lacks the ends its predecessor took."""
        if self.watch is None or self.watch.handshakes <= self.handshakes_seen:
            return False
        self.handshakes_seen = self.watch.handshakes
        return True

    def send_ends_again(self, frame_counts: dict[str, int]) -> None:
        sent = sum(self.send_end(stream_id, frame_counts[stream_id]) for stream_id in sorted(frame_counts))
        log.info("%s: sent the end of %d of %d finished stream(s) again to the reconnected %s", self.label,
                 sent, len(frame_counts), self.name)

    def send_end(self, stream_id: str, frame_count: int) -> bool:
        """Sent when there is room within a moment (live links queue one message); else the next round."""
        if not self.sock.poll(200, zmq.POLLOUT):
            return False
        try:
            self.sock.send_multipart(FrameMessage.end_of_stream(stream_id, frame_count).encode(), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def await_confirmations(self, frame_counts: dict[str, int], beat: Callable[[], None],
                            give_up: Callable[[], bool]) -> str | None:
        """Wait until the other host confirms the end of every ended stream; a line if it does not
        within supervisor.drain_timeout_s of the last progress, else None."""
        log.info("%s: waiting for %s on the other host to confirm the end of %d stream(s)", self.label, self.name,
                 len(frame_counts))
        started = time.monotonic()
        left = await_confirmations(self.sock, dict(frame_counts), self.send_end, beat,
                                   self.cfg.supervisor.drain_timeout_s, give_up=give_up,
                                   connections=lambda: self.watch.handshakes if self.watch else 0)
        if left:
            return (f"{self.name} on the other host did not confirm the end of {', '.join(sorted(left))} within "
                    "supervisor.drain_timeout_s: its output may be incomplete")
        log.info("%s: %s on the other host confirmed the end of %d stream(s) (%.1f s)", self.label, self.name,
                 len(frame_counts), time.monotonic() - started)
        return None

    def state(self) -> dict:
        """Beat fields: whether the downstream is connected."""
        return {} if self.watch is None else {"downstream_connected": self.watch.connected}
