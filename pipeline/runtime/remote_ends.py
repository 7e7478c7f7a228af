"""Ends of stream confirmed across hosts.

A frame link between hosts runs on DEALER (the sender) and ROUTER (the receiver) instead of
PUSH/PULL, so the receiving stage can answer: for every end of stream it took (a repeat included) it
sends the sender one small JSON confirmation. The sender, once its streams ended, waits for the
confirmation of each and sends the ends again every ``RESEND_S`` until it has them: a receiving stage
restarted in between (its queue, and the end of stream in it, gone with the killed process) gets
them again, and a replay ends as soon as the other host has its ends, never a timeout later. No
confirmation within the drain timeout is a one-line error on the sender, never a silent exit 0.
"""
from __future__ import annotations

import json
import time
from typing import Callable

import zmq

from pipeline.runtime.messages import FrameMessage

RESEND_S = 1.0  # how often a sender still waiting for confirmations sends its ends of stream again
MAX_CONFIRMATION_BYTES = 256


def confirmation(stream_id: str, frame_count: int) -> bytes:
    return json.dumps({"confirmed": stream_id, "frame_count": frame_count}).encode()


def parse_confirmation(parts: list[bytes], streams: set[str]) -> str | None:
    """The stream a confirmation is for, or None for anything else (untrusted: never raises)."""
    if len(parts) != 1 or len(parts[0]) > MAX_CONFIRMATION_BYTES:
        return None
    try:
        body = json.loads(parts[0])
    except (ValueError, UnicodeDecodeError):
        return None
    stream_id = body.get("confirmed") if isinstance(body, dict) else None
    return stream_id if isinstance(stream_id, str) and stream_id in streams else None


def parse_ended(text: str) -> dict[str, int]:
    """``cam0=150,cam1=0`` -> {"cam0": 150, "cam1": 0} (what ``pipeline stage --ended`` takes)."""
    ended = {}
    for item in filter(None, text.split(",")):
        stream_id, _, count = item.rpartition("=")
        if not stream_id or not count.isdigit():
            raise ValueError(f"--ended takes id=frame_count,..., got {item[:60]!r}")
        ended[stream_id] = int(count)
    return ended


class EndReceipts:
    """Receiver side: the ends of stream taken from each sender, confirmed once the stage handled them.

    Only ends the stage really received are confirmed (``finished``: by an EOS from the sender, or by an
    earlier process of the stage): a stream the stage cut short itself (a drain here) is not, so its
    sender learns that its frames after the cut went nowhere."""

    def __init__(self):
        # (sender's routing id, stream id), each once: a sender repeating ends cannot grow it past
        # senders x streams (the stage drops ends of streams it was not configured for)
        self.due: dict[tuple[bytes, str], None] = {}
        self.finished: dict[str, int] = {}  # stream id -> frame count of the end received

    def took(self, sender: bytes, msg: FrameMessage) -> None:
        if msg.is_eos:
            self.due[(sender, msg.stream_id)] = None

    def confirm(self, sock: zmq.Socket) -> None:
        """Answer every due end the stage has finished; one whose answer cannot go now stays due."""
        for sender, stream_id in list(self.due):
            if stream_id not in self.finished:
                continue
            try:  # (the ROUTER is mandatory: a full queue is EAGAIN, never a silent drop)
                sock.send_multipart([sender, confirmation(stream_id, self.finished[stream_id])], zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError:
                pass  # that sender left (EHOSTUNREACH): it sends the end again and is answered then
            del self.due[(sender, stream_id)]


def await_confirmations(sock: zmq.Socket, ended: dict[str, int], send_end: Callable[[str, int], None],
                        beat: Callable[[], None], timeout_s: float,
                        give_up: Callable[[], bool] = lambda: False,
                        connections: Callable[[], int] = lambda: 0) -> set[str]:
    """Sender side: wait until the other host confirmed every ended stream, sending the ends again
    every RESEND_S; returns the streams left unconfirmed after ``timeout_s`` without progress (a
    confirmation, or a new connection: a restarted receiver) or when ``give_up()`` says so."""
    pending = set(ended)
    deadline = time.monotonic() + timeout_s
    next_resend = time.monotonic() + RESEND_S
    seen = connections()
    while pending and time.monotonic() < deadline and not give_up():
        if connections() != seen:
            seen, deadline = connections(), time.monotonic() + timeout_s
        if sock.poll(100, zmq.POLLIN):
            stream_id = parse_confirmation(sock.recv_multipart(), pending)
            if stream_id is not None:
                pending.discard(stream_id)
                deadline = time.monotonic() + timeout_s
        if pending and time.monotonic() >= next_resend:  # (whatever else keeps arriving meanwhile)
            for stream_id in sorted(pending):
                send_end(stream_id, ended[stream_id])
            next_resend = time.monotonic() + RESEND_S
        beat()
    return pending
