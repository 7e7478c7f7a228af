import time

import numpy as np
import pytest
import zmq
import zmq.auth

from pipeline.runtime.transport import (CurveKeys, Endpoint, EndpointError, close_context, open_socket,
                                        open_watched_socket, refused_clients, remove_ipc_sockets)
from pipeline.runtime.transport import _ipc_listening
from tests.conftest import free_port


@pytest.mark.parametrize("spec", ["push+bind:ipc:///tmp/x", "pull+connect:tcp://10.0.0.5:5551", "pub+bind:tcp://127.0.0.1:1"])
def test_endpoint_round_trips(spec):
    assert str(Endpoint.parse(spec)) == spec


@pytest.mark.parametrize("spec, why", [
    ("push:ipc:///tmp/x", "is not"), ("req+bind:ipc:///tmp/x", "pattern"), ("push+listen:ipc:///x", "action"),
    ("push+bind:udp://1.2.3.4:5", "address"), ("push+bind:tcp://127.0.0.1", "needs a port"),
])
def test_bad_endpoints_are_refused(spec, why):
    with pytest.raises(EndpointError, match=why):
        Endpoint.parse(spec)


@pytest.mark.parametrize("address, beyond", [("tcp://127.0.0.1:5", False), ("tcp://0.0.0.0:5", True),
                                             ("tcp://*:5", True), ("tcp://localhost:5", False)])
def test_binding_beyond_loopback_is_detected(address, beyond):
    assert Endpoint.parse(f"pull+bind:{address}").binds_beyond_loopback is beyond


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_push_pull_carries_frames(tmp_path, transport):
    ctx = zmq.Context()
    address = f"ipc://{tmp_path}/link" if transport == "ipc" else f"tcp://127.0.0.1:{free_port()}"
    pull = open_socket(ctx, f"pull+bind:{address}")
    push = open_socket(ctx, f"push+connect:{address}")
    payload = np.arange(1000, dtype=np.uint8)
    push.send(payload)
    assert pull.poll(2000) and np.array_equal(np.frombuffer(pull.recv(), np.uint8), payload)
    pull.close(0), push.close(0), ctx.term()


def test_curve_link_encrypts_and_refuses_wrong_server_key(tmp_path):
    server_pub, server_sec = zmq.auth.create_certificates(tmp_path, "server")
    client_pub, client_sec = zmq.auth.create_certificates(tmp_path, "client")
    _, stranger_sec = zmq.auth.create_certificates(tmp_path, "stranger")
    stranger_pub = str(tmp_path / "stranger.key")
    ctx, port = zmq.Context(), free_port()
    server = open_socket(ctx, f"pull+bind:tcp://127.0.0.1:{port}", curve=CurveKeys(server_secret=server_sec))
    good = open_socket(ctx, f"push+connect:tcp://127.0.0.1:{port}",
                       curve=CurveKeys(server_public=server_pub, client_secret=client_sec))
    good.send(b"hello")
    assert server.poll(3000) and server.recv() == b"hello"
    wrong = open_socket(ctx, f"push+connect:tcp://127.0.0.1:{port}",
                        curve=CurveKeys(server_public=stranger_pub, client_secret=client_sec))
    wrong.send(b"intruder", zmq.NOBLOCK)
    assert not server.poll(1000)  # the handshake fails: nothing from a client that has the wrong server key
    for s in (server, good, wrong):
        s.close(0)
    ctx.term()


def _admitting_server(tmp_path):
    """A Curve server that admits only the "client" key pair; the "stranger" pair is refused."""
    server_pub, server_sec = zmq.auth.create_certificates(tmp_path, "server")
    client_pub, client_sec = zmq.auth.create_certificates(tmp_path, "client")
    _, stranger_sec = zmq.auth.create_certificates(tmp_path, "stranger")
    server_ctx, client_ctx, port = zmq.Context(), zmq.Context(), free_port()
    server = open_socket(server_ctx, f"pull+bind:tcp://127.0.0.1:{port}",
                         curve=CurveKeys(server_secret=server_sec, client_public=client_pub))
    return server_pub, client_sec, stranger_sec, server_ctx, client_ctx, port, server


def test_curve_server_admits_only_the_configured_client_key(tmp_path):
    server_pub, client_sec, stranger_sec, server_ctx, client_ctx, port, server = _admitting_server(tmp_path)
    # the stranger knows the server's public key (enough without a ZAP handler) but has its own key pair
    stranger = open_socket(client_ctx, f"push+connect:tcp://127.0.0.1:{port}",
                           curve=CurveKeys(server_public=server_pub, client_secret=stranger_sec))
    stranger.send(b"intruder", zmq.NOBLOCK)
    assert not server.poll(1500)
    good = open_socket(client_ctx, f"push+connect:tcp://127.0.0.1:{port}",
                       curve=CurveKeys(server_public=server_pub, client_secret=client_sec))
    good.send(b"hello")
    assert server.poll(3000) and server.recv() == b"hello"
    assert not server.poll(500)  # and still nothing from the stranger
    for s in (server, good, stranger):
        s.close(0)
    close_context(server_ctx)  # stops the ZAP handler first; a plain term() would wait on it forever
    client_ctx.term()


def test_curve_side_without_its_keys_is_refused_with_one_line(tmp_path):
    ctx = zmq.Context()
    with pytest.raises(EndpointError, match=r"\(connect\) with Curve needs transport.curve.client_secret and "
                                            r"transport.curve.server_public"):
        open_socket(ctx, f"push+connect:tcp://127.0.0.1:{free_port()}", curve=CurveKeys(server_secret="s"))
    ctx.term()


def test_ipc_folder_is_private_and_a_live_socket_is_never_taken_over(tmp_path):
    ctx = zmq.Context()
    folder = tmp_path / "run"
    first = open_socket(ctx, f"pull+bind:ipc://{folder}/link")
    try:
        assert (folder.stat().st_mode & 0o777) == 0o700 and ((folder / "link").stat().st_mode & 0o777) == 0o600
        with pytest.raises(EndpointError, match="in use by another live process"):
            open_socket(ctx, f"pull+bind:ipc://{folder}/link")
    finally:
        first.close(0)
    deadline = time.time() + 5
    while _ipc_listening(folder / "link") and time.time() < deadline:
        time.sleep(0.05)  # ZeroMQ's I/O thread closes the listener a moment after close()
    again = open_socket(ctx, f"pull+bind:ipc://{folder}/link")  # the stale file of a closed socket is reused
    again.close(0)
    remove_ipc_sockets([f"pull+bind:ipc://{folder}/link", f"push+connect:ipc://{folder}/other"], str(folder))
    assert not folder.exists()
    ctx.term()


def test_an_ipc_folder_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    ctx = zmq.Context()
    with pytest.raises(EndpointError, match="writable by other users"):
        open_socket(ctx, f"pull+bind:ipc://{shared}/link")
    ctx.term()


def test_a_client_the_server_does_not_admit_is_told_in_one_line(tmp_path):
    """The edge of a two-host split with the wrong client key: refused by the server's ZAP handler
    (logged and counted there) and, on the client, a LinkWatch problem instead of a silent hang."""
    server_pub, client_sec, stranger_sec, server_ctx, client_ctx, port, server = _admitting_server(tmp_path)
    refused_before = refused_clients()
    stranger, stranger_watch = open_watched_socket(client_ctx, f"push+connect:tcp://127.0.0.1:{port}", "client",
                                                   curve=CurveKeys(server_public=server_pub, client_secret=stranger_sec))
    good, good_watch = open_watched_socket(client_ctx, f"push+connect:tcp://127.0.0.1:{port}", "client",
                                           curve=CurveKeys(server_public=server_pub, client_secret=client_sec))
    watches = {"stranger": stranger_watch, "good": good_watch}
    try:
        time.sleep(0.5)  # the refusal is over before the first look: libzmq does not retry it, the watch kept it
        deadline = time.time() + 5
        problem = None
        while problem is None and time.time() < deadline:
            problem = watches["stranger"].problem()
            time.sleep(0.05)
        assert problem == (f"not admitted by tcp://127.0.0.1:{port}: its transport.curve.client_public is not "
                           "this host's client key (transport.curve.client_secret)")
        assert watches["good"].problem() is None and refused_clients() > refused_before
    finally:
        for watch in watches.values():
            watch.close()
        for s in (server, good, stranger):
            s.close(0)
        close_context(server_ctx)
        client_ctx.term()


def test_a_bound_socket_watch_counts_its_senders_and_says_who_left():
    ctx = zmq.Context()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    server, watch = open_watched_socket(ctx, f"pull+bind:{address}", "server")
    clients = [open_socket(ctx, f"push+connect:{address}") for _ in range(2)]
    notes: list[str] = []

    def settle(peers: int) -> None:
        deadline = time.time() + 5
        while len(watch.peers) != peers and time.time() < deadline:
            notes.extend(watch.notes())
            time.sleep(0.05)
        notes.extend(watch.notes())
        assert len(watch.peers) == peers, notes

    try:
        settle(2)
        assert notes[-1] == f"a sender connected on {address} (2 now)"
        clients.pop().close(0)
        settle(1)
        assert notes[-1] == f"a sender left {address} (1 now)" and watch.connected
    finally:
        watch.close()
        for sock in (server, *clients):
            sock.close(0)
        ctx.term()


def test_a_connection_that_never_handshakes_does_not_take_a_senders_place():
    """A port scan or health check (a raw TCP connection, no ZMTP greeting) is not a sender; a real
    sender that connects after it is counted, and stays counted when the scan goes away."""
    import socket

    ctx = zmq.Context()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    server, watch = open_watched_socket(ctx, f"pull+bind:{address}", "server")
    scan = socket.create_connection(("127.0.0.1", port))
    client = None
    try:
        deadline = time.time() + 5
        while not watch.pending and time.time() < deadline:  # the scan is accepted first
            watch.notes()
            time.sleep(0.02)
        client = open_socket(ctx, f"push+connect:{address}")
        while len(watch.peers) != 1 and time.time() < deadline:
            watch.notes()
            time.sleep(0.02)
        scan.close()
        time.sleep(0.3)
        notes = watch.notes()
        assert len(watch.peers) == 1 and watch.connected, notes
        assert not any("left" in note for note in notes), notes
    finally:
        watch.close()
        for sock in (server, client):
            if sock is not None:
                sock.close(0)
        ctx.term()


def test_a_sender_whose_peer_runs_another_version_is_told_so():
    """A link between hosts is DEALER/ROUTER now: a sender meeting a plain PULL (an older pipeline on the
    other host) never completes a handshake; it says so instead of waiting without a word."""
    ctx = zmq.Context()
    address = f"tcp://127.0.0.1:{free_port()}"
    old_receiver = open_socket(ctx, f"pull+bind:{address}")
    sender, watch = open_watched_socket(ctx, f"push+connect:{address}", "client", routed=True)
    try:
        notes: list[str] = []
        deadline = time.time() + 10
        while not watch.cut_short and time.time() < deadline:
            notes.extend(watch.notes())
            time.sleep(0.05)
        notes.extend(watch.notes())
        assert not watch.connected and watch.problem() is None
        assert (f"a connection to {address} closed before its handshake (1 so far): does the other host "
                "run this version of the pipeline?") in notes
    finally:
        watch.close()
        for sock in (sender, old_receiver):
            sock.close(0)
        ctx.term()
