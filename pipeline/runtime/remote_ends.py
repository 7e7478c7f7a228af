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
    """Receiver side: the ends of stream taken from each sender, confirmed once the stage handled them."""

    def __init__(self):
        self.due: list[tuple[bytes, str]] = []  # (sender's routing id, stream id)

    def took(self, sender: bytes, msg: FrameMessage) -> None:
        if msg.is_eos:
            self.due.append((sender, msg.stream_id))

    def confirm(self, sock: zmq.Socket, frame_counts: dict[str, int]) -> None:
        """Answer every end of stream the stage has finished (a sender gone meanwhile is skipped)."""
        still_due = []
        for sender, stream_id in self.due:
            if stream_id not in frame_counts:
                still_due.append((sender, stream_id))
                continue
            try:
                sock.send_multipart([sender, confirmation(stream_id, frame_counts[stream_id])], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # that sender left (or its queue is full): it sends the end again and is answered then
        self.due = still_due


def await_confirmations(sock: zmq.Socket, ended: dict[str, int], send_end: Callable[[str, int], None],
                        beat: Callable[[], None], timeout_s: float) -> set[str]:
    """Sender side: wait until the other host confirmed every ended stream, sending the ends again
    every RESEND_S; returns the streams left unconfirmed after ``timeout_s`` without progress."""
    pending = set(ended)
    deadline = time.monotonic() + timeout_s
    next_resend = time.monotonic() + RESEND_S
    while pending and time.monotonic() < deadline:
        if sock.poll(100, zmq.POLLIN):
            stream_id = parse_confirmation(sock.recv_multipart(), pending)
            if stream_id is not None:
                pending.discard(stream_id)
                deadline = time.monotonic() + timeout_s
        elif time.monotonic() >= next_resend:
            for stream_id in sorted(pending):
                send_end(stream_id, ended[stream_id])
            next_resend = time.monotonic() + RESEND_S
        beat()
    return pending
