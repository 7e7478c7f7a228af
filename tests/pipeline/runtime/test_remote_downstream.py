"""pipeline/runtime/remote_downstream.py: the sender's watch on a downstream stage on another host,
over real ZeroMQ sockets and a real LinkWatch (the 'other host' is a socket bound here)."""
import time

import pytest
import zmq

from pipeline.runtime.config import config_from_dict
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.remote_downstream import RemoteDownstream
from pipeline.runtime.remote_ends import confirmation
from pipeline.runtime.transport import open_socket, open_watched_socket
from tests.conftest import free_port


def _config(tmp_path, remote_wait_s=0.0, drain_timeout_s=0.3):
    return config_from_dict({"sources": [{"id": "a", "uri": "x.mp4"}], "output_dir": str(tmp_path),
                             "transport": {"ipc_dir": str(tmp_path / "ipc"), "remote_wait_s": remote_wait_s},
                             "supervisor": {"drain_timeout_s": drain_timeout_s}}, check_files=False)


@pytest.fixture
def sender(tmp_path):
    """A watched DEALER connecting to a port; ``bind()`` opens the receiver there (the other host)."""
    ctx = zmq.Context()
    port = free_port()
    sock, watch = open_watched_socket(ctx, f"push+connect:tcp://127.0.0.1:{port}", "client", hwm=16, routed=True)
    receivers = []

    def bind():
        deadline = time.monotonic() + 5
        while True:  # (a receiver closed just before frees its port in ZeroMQ's I/O thread, a moment later)
            try:
                receivers.append(open_socket(ctx, f"pull+bind:tcp://127.0.0.1:{port}", routed=True))
                return receivers[-1]
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    remote = RemoteDownstream(sock, watch, _config(tmp_path), "detect", "preprocess")
    yield remote, bind
    watch.close()
    for s in (sock, *receivers):
        s.close(0)
    ctx.term()


def _until(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_link_down_longer_than_the_limit_is_one_line_and_a_send_resets_it(sender):
    remote, _ = sender
    msg = FrameMessage("a", 7, 0.0, time.time())
    assert remote.waiting_problem(msg) is None          # the clock starts: not yet over the drain timeout
    time.sleep(0.35)
    problem = remote.waiting_problem(msg)
    assert problem.startswith("detect on the other host has been unreachable for 0.3 s") and "a#7" in problem
    remote.sent()
    assert remote.waiting_problem(msg) is None          # a frame went: the wait starts over


def test_a_connected_link_never_times_out_and_its_state_is_in_the_beat(sender):
    remote, bind = sender
    assert remote.state() == {"downstream_connected": False}
    bind()
    assert _until(lambda: remote.watch.problem() is None and remote.connected)
    remote.down_since = time.monotonic() - 100
    assert remote.waiting_problem(FrameMessage("a", 0, 0.0, time.time())) is None and remote.down_since is None
    assert remote.state() == {"downstream_connected": True}


def test_only_a_new_handshake_counts_as_a_reconnect(sender):
    remote, bind = sender
    receiver = bind()
    assert _until(lambda: (remote.watch.problem(), remote.connected)[1])
    assert not remote.reconnected()                      # the first connection is no reconnect
    receiver.close(0)
    bind()
    assert _until(lambda: (remote.watch.problem(), remote.watch.handshakes)[1] >= 2)
    assert remote.reconnected() and not remote.reconnected()   # once per handshake


def test_ends_go_again_to_a_receiver_and_confirmations_end_the_wait(sender):
    remote, bind = sender
    receiver = bind()
    assert _until(lambda: (remote.watch.problem(), remote.connected)[1])
    remote.send_ends_again({"a": 12})
    assert receiver.poll(2000), "no end of stream came"
    parts = receiver.recv_multipart()
    peer, msg = parts[0], FrameMessage.decode(parts[1:])
    assert msg.is_eos and (msg.stream_id, msg.frame_index) == ("a", 12)
    receiver.send_multipart([peer, confirmation("a", 12)])
    assert remote.await_confirmations({"a": 12}, beat=lambda: None, give_up=lambda: False) is None


def test_no_confirmation_within_the_drain_timeout_is_a_line_naming_the_streams(sender):
    remote, _ = sender
    started = time.monotonic()
    problem = remote.await_confirmations({"a": 3}, beat=lambda: None, give_up=lambda: False)
    assert problem == ("detect on the other host did not confirm the end of a within supervisor.drain_timeout_s: "
                       "its output may be incomplete")
    assert time.monotonic() - started < 3
    assert remote.await_confirmations({"a": 3}, beat=lambda: None, give_up=lambda: True) is not None


def test_the_wait_sends_the_ends_again_until_one_is_confirmed(sender):
    """The first end may go to a connection that broke: the wait repeats it (RESEND_S) and a receiver
    that answers only the repeat still ends the wait."""
    remote, bind = sender
    remote.cfg.supervisor.drain_timeout_s = 5.0
    receiver = bind()
    assert _until(lambda: (remote.watch.problem(), remote.connected)[1])
    seen = []

    def answer_the_second_end():
        while receiver.poll(0):
            parts = receiver.recv_multipart()
            seen.append(FrameMessage.decode(parts[1:]).stream_id)
            if len(seen) == 2:
                receiver.send_multipart([parts[0], confirmation("a", 4)])

    assert remote.await_confirmations({"a": 4}, beat=answer_the_second_end, give_up=lambda: False) is None
    assert seen == ["a", "a"]


def test_a_new_connection_during_the_wait_gives_the_wait_a_new_deadline(sender):
    """A receiver restarted on the other host (a new handshake) is progress: the drain timeout starts
    again, so a restart that takes most of it does not fail the run."""
    remote, bind = sender
    remote.cfg.supervisor.drain_timeout_s = 2.0
    receiver = bind()
    assert _until(lambda: (remote.watch.problem(), remote.connected)[1])
    started, state = time.monotonic(), {}

    def restart_once_then_answer():
        remote.watch.problem()                                  # the stage's beat reads the link's events
        if "receiver" not in state and time.monotonic() - started > 0.5:
            receiver.close(0)
            state["receiver"] = bind()
        elif "receiver" in state and time.monotonic() - started > 2.3 and state["receiver"].poll(0):
            parts = state["receiver"].recv_multipart()
            state["receiver"].send_multipart([parts[0], confirmation("a", 4)])

    assert remote.await_confirmations({"a": 4}, beat=restart_once_then_answer, give_up=lambda: False) is None
    assert time.monotonic() - started > 2.3                     # past the first deadline: the new connection moved it
