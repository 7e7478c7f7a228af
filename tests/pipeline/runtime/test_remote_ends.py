"""Ends of stream confirmed across hosts: the DEALER/ROUTER link, the receiver's receipts and the
sender's wait, on real ZeroMQ sockets."""
import json
import threading
import time

import pytest
import zmq

from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.remote_ends import (EndReceipts, await_confirmations, confirmation, parse_confirmation,
                                          parse_ended)
from pipeline.runtime.transport import EndpointError, open_socket
from tests.conftest import free_port


@pytest.fixture
def link():
    """A routed frame link as two hosts open it: the receiver binds (ROUTER), the sender connects (DEALER)."""
    ctx = zmq.Context()
    port = free_port()
    receiver = open_socket(ctx, f"pull+bind:tcp://127.0.0.1:{port}", routed=True)
    sender = open_socket(ctx, f"push+connect:tcp://127.0.0.1:{port}", routed=True)
    yield sender, receiver
    for sock in (sender, receiver):
        sock.close(0)
    ctx.term()


def _eos(stream_id: str, frames: int) -> list:
    return FrameMessage.end_of_stream(stream_id, frames).encode()


def test_a_routed_link_carries_frames_with_the_senders_id_and_answers_back(link):
    sender, receiver = link
    sender.send_multipart(_eos("cam0", 7))
    parts = receiver.recv_multipart()
    sender_id, msg = parts[0], FrameMessage.decode(parts[1:])
    assert msg.is_eos and msg.stream_id == "cam0" and msg.frame_index == 7
    receipts = EndReceipts()
    receipts.took(sender_id, msg)
    receipts.finished["cam0"] = 7
    receipts.confirm(receiver)
    assert parse_confirmation(sender.recv_multipart(), {"cam0"}) == "cam0"
    assert not receipts.due


def test_only_finished_streams_are_confirmed_and_frames_never(link):
    sender, receiver = link
    receipts = EndReceipts()
    receipts.took(b"peer", FrameMessage.decode(_eos("cam0", 3)))
    receipts.took(b"peer", FrameMessage("cam1", 0, 0.0, time.time()))
    assert list(receipts.due) == [(b"peer", "cam0")]
    receipts.confirm(receiver)                # not handled yet (or cut short here by a drain): kept
    assert list(receipts.due) == [(b"peer", "cam0")]
    receipts.finished["cam0"] = 3
    receipts.confirm(receiver)                # a sender that is gone: skipped, never raises
    assert not receipts.due


def test_every_end_of_a_many_camera_edge_is_confirmed_at_the_tightest_queue():
    """Live links queue one message (hwm 1): the ends of 40 streams answered back to back must all
    arrive; a full reply queue keeps the rest due rather than dropping them silently."""
    ctx = zmq.Context()
    port = free_port()
    receiver = open_socket(ctx, f"pull+bind:tcp://127.0.0.1:{port}", hwm=1, routed=True)
    sender = open_socket(ctx, f"push+connect:tcp://127.0.0.1:{port}", hwm=1, routed=True)
    try:
        streams = {f"cam{i}": i for i in range(40)}
        receipts = EndReceipts()
        for stream_id, frames in streams.items():
            sender.send_multipart(_eos(stream_id, frames))
            parts = receiver.recv_multipart()
            receipts.took(parts[0], FrameMessage.decode(parts[1:]))
        receipts.finished.update(streams)
        receipts.confirm(receiver)
        assert not receipts.due
        left = await_confirmations(sender, streams, lambda sid, n: None, lambda: None, timeout_s=3)
        assert left == set()
    finally:
        for sock in (sender, receiver):
            sock.close(0)
        ctx.term()


def test_answers_a_full_reply_queue_cannot_take_stay_due_until_it_can(monkeypatch):
    """The way back is mandatory: when the sender does not read, answers past its queue stay due
    (before, a ROUTER dropped them without a word) and go once it reads again, each exactly once."""
    from pipeline.runtime import transport

    monkeypatch.setattr(transport, "REPLY_HWM", 1)
    ctx = zmq.Context()
    receiver = open_socket(ctx, "pull+bind:inproc://ends", hwm=1, routed=True)  # inproc: no kernel buffers
    sender = open_socket(ctx, "push+connect:inproc://ends", hwm=1, routed=True)
    try:
        receipts = EndReceipts()
        for i in range(20):
            sender.send_multipart(_eos(f"cam{i}", i))
            parts = receiver.recv_multipart()
            receipts.took(parts[0], FrameMessage.decode(parts[1:]))
            receipts.finished[f"cam{i}"] = i
        receipts.confirm(receiver)
        assert 0 < len(receipts.due) < 20
        confirmed = []
        deadline = time.monotonic() + 5
        while len(confirmed) < 20 and time.monotonic() < deadline:
            while sender.poll(10):
                confirmed.append(parse_confirmation(sender.recv_multipart(), {f"cam{i}" for i in range(20)}))
            receipts.confirm(receiver)
        assert sorted(confirmed) == sorted(f"cam{i}" for i in range(20)) and not receipts.due
    finally:
        for sock in (sender, receiver):
            sock.close(0)
        ctx.term()


def test_the_sender_stops_waiting_when_told_to(link):
    sender, _ = link
    started = time.monotonic()
    left = await_confirmations(sender, {"cam0": 1}, lambda sid, n: None, lambda: None, timeout_s=30,
                               give_up=lambda: time.monotonic() - started > 0.3)
    assert left == {"cam0"} and time.monotonic() - started < 2


@pytest.mark.parametrize("parts", [
    [b"x" * 300], [b"not json"], [b"\xff\xfe"], [b"[1, 2]"], [b'{"confirmed": 5}'], [b'{"confirmed": "cam9"}'],
    [confirmation("cam0", 1), b"extra"], [],
])
def test_anything_but_a_confirmation_of_an_awaited_stream_is_ignored(parts):
    assert parse_confirmation(parts, {"cam0"}) is None


def test_the_sender_repeats_its_ends_until_a_restarted_receiver_confirms_them(link):
    sender, receiver = link
    first_seen = []

    def receiver_that_lost_the_first_end():  # the first end dies with a killed receiver's queue
        receipts = EndReceipts()
        while len(first_seen) < 2:
            parts = receiver.recv_multipart()
            first_seen.append(time.monotonic())
            if len(first_seen) == 2:
                msg = FrameMessage.decode(parts[1:])
                receipts.took(parts[0], msg)
                receipts.finished[msg.stream_id] = msg.frame_index
                receipts.confirm(receiver)

    thread = threading.Thread(target=receiver_that_lost_the_first_end, daemon=True)
    thread.start()
    sender.send_multipart(_eos("cam0", 30))
    resends = []
    left = await_confirmations(sender, {"cam0": 30}, lambda sid, n: (resends.append((sid, n)),
                                                                     sender.send_multipart(_eos(sid, n))),
                               beat=lambda: None, timeout_s=10)
    thread.join(5)
    assert left == set() and resends and set(resends) == {("cam0", 30)}  # (more than one on a slow machine)


def test_the_sender_gives_up_after_the_timeout_and_says_which_streams(link):
    sender, _ = link
    beats = []
    started = time.monotonic()
    left = await_confirmations(sender, {"cam0": 1, "cam1": 2}, lambda sid, n: None, lambda: beats.append(1), timeout_s=0.5)
    assert left == {"cam0", "cam1"}
    assert 0.5 <= time.monotonic() - started < 3 and beats


def test_ended_streams_round_trip_through_the_restart_argument():
    assert parse_ended("cam0=150,cam1=0") == {"cam0": 150, "cam1": 0}
    assert parse_ended("") == {}
    for bad in ("cam0", "=3", "cam0=-1", "cam0=x"):
        with pytest.raises(ValueError, match="--ended takes id=frame_count"):
            parse_ended(bad)


def test_only_push_and_pull_links_can_be_routed():
    ctx = zmq.Context()
    try:
        with pytest.raises(EndpointError, match="only push and pull links can run between hosts"):
            open_socket(ctx, f"pub+bind:tcp://127.0.0.1:{free_port()}", routed=True)
    finally:
        ctx.term()


def test_a_confirmation_is_small_json():
    body = confirmation("cam0", 12)
    assert json.loads(body) == {"confirmed": "cam0", "frame_count": 12} and len(body) < 64
