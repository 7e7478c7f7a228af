"""The view's HTTP server as a careless network or an attacker meets it (stages/view/server.py and
guard.py): trickled heads, bursts, reload-and-leave with a silent camera, absurd Range headers, empty
files, error pages, the state WebSocket. Each against a real view process over real sockets."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import aiohttp
import pytest

from tests.stages.view.conftest import api_state, request, wait_until

SECURITY = ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Referrer-Policy")


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are, read until the server closes (or timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_trickled_request_heads_are_cut_at_the_deadline_and_block_nobody(view_factory):
    port, _, _, _ = view_factory(header_timeout_s=2.0, max_connections_per_client=400)
    tricklers = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
    try:
        for sock in tricklers:
            sock.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.setblocking(False)
        started = time.time()
        while time.time() - started < 3.5:  # one header line a second: each line within any per-read timeout
            for sock in tricklers:
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            served_at = time.time()
            assert request(port, "/api/state")[0] == 200  # others are served meanwhile
            assert time.time() - served_at < 1.0
            time.sleep(0.5)
        wait_until(lambda: all(closed_by_server(s) for s in tricklers), 5, "every trickling connection closed")
    finally:
        for sock in tricklers:
            sock.close()
    assert api_state(port)["view"]["timed_out"] >= 150


def test_a_burst_of_400_connections_is_answered_every_one(view_factory):
    port, _, _, _ = view_factory(max_connections=512, max_connections_per_client=400)
    statuses: list = []
    barrier = threading.Barrier(400)

    def one() -> None:
        barrier.wait()
        try:
            statuses.append(request(port, "/api/state")[0])
        except OSError as exc:
            statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(400)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(200) == 400, {s: statuses.count(s) for s in set(statuses)}


def test_connections_over_the_per_client_cap_get_a_503_not_a_reset(view_factory):
    port, _, _, _ = view_factory(max_connections_per_client=5)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        wait_until(lambda: api_state_raw(port) == b"refused", 5, "the sixth connection refused")
        reply = raw_exchange(port, b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = reply.split(b"\r\n\r\n", 1)[0].decode()
        assert head.startswith("HTTP/1.1 503") and "Retry-After: 5" in head, reply
        assert all(name in head for name in SECURITY), head
    finally:
        for sock in idle:
            sock.close()
    wait_until(lambda: api_state_raw(port) == b"ok", 5, "connections admitted again once the idle ones left")
    assert api_state(port)["view"]["refused_connections"] >= 1


def api_state_raw(port: int) -> bytes:
    """b"ok" when a request is served, b"refused" when the guard answers 503."""
    try:
        return b"ok" if request(port, "/api/state")[0] == 200 else b"refused"
    except OSError:
        return b"refused"


def test_reload_and_leave_with_a_silent_camera_never_locks_the_operator_out(view_factory):
    port, side, _, _ = view_factory(max_clients=4)
    wait_until(lambda: all(s["frame_index"] is not None for s in api_state(port)["streams"]), 10, "frames")
    side.active.clear()  # the cameras fall silent
    for _ in range(6):  # open the video, take its first frame, leave (a browser reload)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /stream/cam0.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            got = b""
            while b"Content-Type: image/jpeg" not in got:
                got += sock.recv(65536)
    wait_until(lambda: api_state(port)["view"]["clients"] == 0, 5, "the view to notice every viewer left")
    viewers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
    try:
        for sock in viewers:
            sock.sendall(b"GET /stream/cam1.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        heads = [sock.recv(4096).split(b"\r\n", 1)[0] for sock in viewers]
        assert sorted(heads) == [b"HTTP/1.1 200 OK"] * 4 + [b"HTTP/1.1 503 Service Unavailable"], heads
    finally:
        for sock in viewers:
            sock.close()


def test_absurd_ranges_empty_files_and_conditional_requests(view_factory, run_dir):
    tmp, _ = run_dir
    (tmp / "out" / "cam0").mkdir(parents=True)
    (tmp / "out" / "cam0" / "segment_00000.mp4").write_bytes(b"")
    (tmp / "out" / "cam0" / "segment_00001.mp4").write_bytes(bytes(1000))
    port, _, proc, _ = view_factory()
    status, response, body = request(port, "/recordings/cam0/segment_00000.mp4")
    assert status == 200 and body == b"" and response.getheader("Content-Length") == "0"
    for bad in ("bytes=" + "9" * 4400 + "-", "bytes=5-1", "bytes=x-y", "bytes=2000-3000"):
        status, response, _ = request(port, "/recordings/cam0/segment_00001.mp4", {"Range": bad})
        assert status in (200, 416), (bad[:20], status)
        assert all(response.getheader(name) for name in SECURITY)
    status, response, body = request(port, "/recordings/cam0/segment_00001.mp4", {"Range": "bytes=-10"})
    assert status == 206 and len(body) == 10 and response.getheader("Content-Range") == "bytes 990-999/1000"
    etag = request(port, "/recordings/cam0/segment_00001.mp4")[1].getheader("ETag")
    assert etag and request(port, "/recordings/cam0/segment_00001.mp4", {"If-None-Match": etag})[0] == 304
    assert proc.proc.poll() is None


def test_every_answer_carries_the_security_headers_errors_included(view_factory):
    port, _, _, _ = view_factory(token="s3cret-token")
    for path, headers, expected in (("/", {"X-View-Token": "s3cret-token"}, 200), ("/nowhere", {"X-View-Token": "s3cret-token"}, 404),
                                    ("/api/state", {}, 401)):
        status, response, _ = request(port, path, headers)
        assert status == expected and all(response.getheader(name) for name in SECURITY), (path, status)
    for raw in (b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
                b"\x16\x03\x01\x00garbage\r\n\r\n"):
        head = raw_exchange(port, raw).split(b"\r\n\r\n", 1)[0].decode(errors="replace")
        assert head.startswith("HTTP/1.") and head[9] == "4" and all(name in head for name in SECURITY), head[:300]
        assert "Server: lss-view" in head and "aiohttp" not in head


def test_the_state_websocket_pushes_events_as_they_happen(view_factory):
    port, side, _, _ = view_factory()

    async def follow() -> tuple[dict, float]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                first = json.loads((await ws.receive(timeout=5)).data)
                assert {s["id"] for s in first["streams"]} == {"cam0", "cam1"}
                sent = time.time()
                side.event({"type": "track_confirmed", "stream_id": "cam0", "track_id": 3, "class": "drone", "t": sent})
                while True:
                    state = json.loads((await ws.receive(timeout=5)).data)
                    if any(t["track_id"] == 3 for t in state["tracks"]):
                        return state, time.time() - sent

    state, delay = asyncio.run(follow())
    assert state["tracks"][0]["class"] == "drone" and delay < 2.0


@pytest.mark.parametrize("cookie", ["view_session=4102444800.0000", "view_session=1.", "view_token=s3cret-token"])
def test_a_forged_or_old_style_cookie_is_refused(view_factory, cookie):
    port, _, _, _ = view_factory(token="s3cret-token")
    assert request(port, "/api/state", {"Cookie": cookie})[0] == 401
