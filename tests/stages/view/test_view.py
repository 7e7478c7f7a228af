"""The operator live view (stages/view/): a real view process, real ZeroMQ side channels, real HTTP,
and a real headless Chromium (the rig is in conftest.py)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.runtime.config import REPO_ROOT
from pipeline.runtime.messages import FrameMessage
from tests.stages.view.conftest import (STREAMS, free_port, noise_frame, thumbnail_b64, status_snapshot, write_run_config, request, wait_until, client_tls, api_state, text_of, tile_class, tile, wait_frames, video_png)



@pytest.mark.slow
def test_page_shows_live_video_tracks_health_and_down_streams(view_factory, chromium, tmp_path):
    port, side, _, _ = view_factory()
    chromium.get(f"http://127.0.0.1:{port}/")
    for stream_id in STREAMS:
        wait_until(lambda: "live" in tile_class(chromium, stream_id), 15, f"{stream_id} live")
    assert chromium.execute_script("return window.liveView.stateVia") == "websocket"

    # frames advance: the page decodes new frames of both streams, and the picture changes
    wait_frames(chromium, 5, 5)
    first = video_png(chromium, "cam0")
    assert first.std() > 10, "video element is blank"
    wait_until(lambda: np.abs(video_png(chromium, "cam0").astype(int) - first).mean() > 2, 5, "the video to advance")

    # a confirmed drone track appears with its thumbnail, then gets a duration when lost
    t0 = time.time()
    side.event({"type": "track_confirmed", "stream_id": "cam1", "track_id": 7, "class": "drone", "t": t0,
                "thumbnail_jpeg_b64": thumbnail_b64()})
    track = '#tracks li[data-track="7"]'
    assert "drone #7 on cam1" in wait_until(lambda: text_of(chromium, track), 5, "the track")
    wait_until(lambda: chromium.execute_script(
        "const i = document.querySelector('#tracks li[data-track=\"7\"] img.thumb'); return i && i.naturalWidth"),
        5, "the thumbnail to load")
    side.event({"type": "track_lost", "stream_id": "cam1", "track_id": 7, "t": t0 + 2.5})
    wait_until(lambda: "2.5 s" in text_of(chromium, track), 5, "the track's duration")

    # stage health from the status snapshot
    row = wait_until(lambda: text_of(chromium, '#health tr[data-stage="track"]'), 5, "the health table")
    cells = row.split("\t")
    assert cells[0] == "track" and cells[2] == "15" and cells[3] == "80" and cells[-1] == "1", cells

    # the whole page is not blank
    page = cv2.imdecode(np.frombuffer(chromium.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
    assert page.shape[0] > 500 and page.std() > 20
    assert len(np.unique(page.reshape(-1, 3) // 32, axis=0)) > 8, "screenshot has almost no distinct colours"
    (tmp_path / "view.png").write_bytes(chromium.get_screenshot_as_png())

    # a stream whose frames stop shows DOWN (not its last frame); the other one stays live
    side.active.discard("cam1")
    wait_until(lambda: "down" in tile_class(chromium, "cam1"), 5, "cam1 to show down")
    assert not tile(chromium, "cam1").find_element("css selector", "img.video").is_displayed() or \
        chromium.execute_script("return getComputedStyle(document.querySelector('.tile[data-stream=\"cam1\"] "
                                "img.video')).visibility") == "hidden"
    assert "DOWN" in tile(chromium, "cam1").text
    assert "live" in tile_class(chromium, "cam0"), (text_of(chromium, "#connection"), api_state(port))
    side.event({"type": "stream_down", "stream_id": "cam1", "t": time.time()})
    wait_until(lambda: "cam1: stream down" in text_of(chromium, "#stream-events"), 5, "the stream event")

    # and comes back
    side.active.add("cam1")
    side.event({"type": "stream_up", "stream_id": "cam1", "t": time.time()})
    wait_until(lambda: "live" in tile_class(chromium, "cam1"), 5, "cam1 live again")

    # publish -> decoded in the page (ZeroMQ hop, JPEG encode, HTTP, JS decode): reported, not asserted
    latency = np.array(chromium.execute_script("return window.liveView.latencyMs"))
    print(f"\nview latency publish->decoded in Chromium over {len(latency)} frames: "
          f"p50 {np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms")


# ---------------------------------------------------------------- access
def test_token_is_checked_on_every_request(view_factory):
    port, _, _, _ = view_factory(token="s3cret-token")
    wait_until(lambda: request(port, "/frame/cam0.jpg", {"X-View-Token": "s3cret-token"})[0] == 200, 10, "a frame")
    for path in ("/", "/api/state", "/stream/cam0.mjpg", "/frame/cam0.jpg", "/static/app.js", "/recordings/events.jsonl"):
        assert request(port, path)[0] == 401, path
        assert request(port, path + "?token=wrong")[0] == 401, path
        assert request(port, path, {"X-View-Token": "s3cret-token-"})[0] == 401, path
    assert request(port, "/api/state", {"Authorization": "Bearer s3cret-token"})[0] == 200
    status, response, _ = request(port, "/?token=s3cret-token")
    assert status == 303 and response.getheader("Location") == "/"
    cookie = response.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body = request(port, "/", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"static/app.js" in body
    assert request(port, "/frame/cam0.jpg", {"Cookie": "view_token=nope"})[0] == 401


def test_https_serves_only_tls_with_a_secure_cookie_and_a_silent_client_blocks_nobody(view_factory, tls_files):
    cert, key = tls_files
    port, _, proc, _ = view_factory(token="s3cret-token", tls_cert=str(cert), tls_key=str(key))
    with socket.create_connection(("127.0.0.1", port)):  # connects, never starts its TLS handshake
        status, response, _ = request(port, "/?token=s3cret-token", tls=client_tls(cert))
        assert status == 303
        cookie = response.getheader("Set-Cookie")
        assert "Secure" in cookie and "HttpOnly" in cookie
        assert request(port, "/api/state", {"Cookie": cookie.split(";")[0]}, tls=client_tls(cert))[0] == 200
        assert request(port, "/api/state", tls=client_tls(cert))[0] == 401
    with pytest.raises((http.client.HTTPException, OSError)):
        request(port, "/api/state", {"X-View-Token": "s3cret-token"})  # plain HTTP gets no answer
    code, err = proc.terminate()
    assert code == 0 and "connection from 127.0.0.1 failed" in err and "Traceback" not in err, err


@pytest.mark.parametrize("problem", ["not a certificate", "encrypted key"])
def test_unusable_tls_files_are_a_one_line_error_never_a_prompt(run_dir, tls_files, problem):
    tmp, ipc_dir = run_dir
    cert, key = tls_files
    if problem == "not a certificate":
        (tmp / "bad.pem").write_text("not a certificate")
        cert = key = tmp / "bad.pem"
    else:
        subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret",
                        "-out", str(tmp / "encrypted.key")], check=True, capture_output=True, timeout=60)
        key = tmp / "encrypted.key"
    config = write_run_config(tmp, ipc_dir, free_port(), tls_cert=str(cert), tls_key=str(key))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "stage", "view", str(config)], cwd=REPO_ROOT,
                          stdin=subprocess.PIPE, capture_output=True, text=True, timeout=30)  # a prompt would hang
    assert proc.returncode == 2 and "stages.view.tls_cert" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    if problem == "encrypted key":
        assert "encrypted" in proc.stderr


def test_loopback_view_without_token_rejects_foreign_host_names(view_factory):
    port, _, _, _ = view_factory()
    for loopback in ("localhost", "127.0.0.1", "127.0.0.2", "[::1]"):
        assert request(port, "/api/state", host=f"{loopback}:{port}")[0] == 200, loopback
    for foreign in ("evil.example", "localhost.evil.example", "10.0.0.1"):   # DNS rebinding
        assert request(port, "/api/state", host=f"{foreign}:{port}")[0] == 403, foreign


# ---------------------------------------------------------------- slow clients
def read_mjpeg_parts(port: int, stream_id: str, stop: threading.Event, parts: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/stream/{stream_id}.mjpg")
    response = conn.getresponse()
    assert response.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    while not stop.is_set():
        headers = {}
        while (line := response.fp.readline().strip()) or not headers:  # part headers up to a blank line
            if b":" in line:
                key, value = line.split(b":", 1)
                headers[key.strip().lower()] = value.strip()
        parts.append(response.fp.read(int(headers[b"content-length"])))
    conn.close()


def test_client_that_never_reads_slows_neither_pipeline_nor_other_clients(view_factory):
    total = 75
    port, side, _, _ = view_factory(side_kwargs={"fps": 25.0, "make_frame": noise_frame, "frames": 0})
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /stream/cam0.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
    healthy, stop = [], threading.Event()
    reader = threading.Thread(target=read_mjpeg_parts, args=(port, "cam0", stop, healthy), daemon=True)
    reader.start()
    wait_until(lambda: api_state(port)["view"]["clients"] == 2, 5, "both clients connected")
    received_before = api_state(port)["view"]["received"]
    side.frames = total  # publish 75 incompressible 640x480 frames per stream (~30 MB of JPEG to cam0 clients)
    wait_until(lambda: min(side.sent.values()) >= total, 20, "the publisher")
    time.sleep(0.5)
    stop.set()
    view = api_state(port)["view"]
    received = view["received"] - received_before
    # the view kept taking every frame off the side channel, and the reading client kept getting frames
    assert received >= 0.75 * total * len(STREAMS), (received, view)
    assert len(healthy) >= 0.25 * total, (len(healthy), view)
    assert healthy[-1] == request(port, "/frame/cam0.jpg")[2], "the healthy client did not get the newest frame"
    # the stalled client really was backed up: far less reached it than the healthy one got
    stalled.setblocking(False)
    stalled_bytes = 0
    try:
        while chunk := stalled.recv(1 << 16):
            stalled_bytes += len(chunk)
    except BlockingIOError:
        pass
    assert stalled_bytes < sum(map(len, healthy)) / 2, (stalled_bytes, sum(map(len, healthy)))
    stalled.close()


# ---------------------------------------------------------------- recordings
def test_recorded_segments_are_listed_and_served_read_only(view_factory, run_dir):
    tmp, _ = run_dir
    out = tmp / "out"
    (out / "cam0").mkdir(parents=True)
    segment = bytes(range(256)) * 40
    (out / "cam0" / "segment_00000.mp4").write_bytes(segment)
    (out / "events.jsonl").write_text('{"type": "track_confirmed"}\n')
    (tmp / "secret.txt").write_text("not for browsers")
    (out / "cam0" / "segment_00001.mp4").symlink_to(tmp / "secret.txt")
    (out / "cam0" / "notes.txt").write_text("not a recording")
    port, _, _, _ = view_factory()

    listing = json.loads(request(port, "/api/recordings")[2])
    assert [f["name"] for f in listing["streams"]["cam0"]] == ["segment_00000.mp4", "segment_00001.mp4"]
    status, response, body = request(port, "/recordings/cam0/segment_00000.mp4")
    assert status == 200 and body == segment and response.getheader("Content-Type") == "video/mp4"
    status, response, body = request(port, "/recordings/cam0/segment_00000.mp4", {"Range": "bytes=100-199"})
    assert status == 206 and body == segment[100:200]
    assert response.getheader("Content-Range") == f"bytes 100-199/{len(segment)}"
    assert request(port, "/recordings/events.jsonl")[2].startswith(b'{"type"')
    for path in ("/recordings/cam0/segment_00001.mp4", "/recordings/cam0/notes.txt",
                 "/recordings/cam0/..%2F..%2Fsecret.txt", "/recordings/..%2Fsecret.txt/segment_00000.mp4",
                 "/recordings/../secret.txt", "/recordings/cam0/%2e%2e/segment_00000.mp4", "/static/..%2Fview.py"):
        status, _, body = request(port, path)
        assert status == 404 and b"not for browsers" not in body, path


# ---------------------------------------------------------------- failures
def test_malformed_side_channel_messages_are_counted_and_ignored(view_factory):
    port, side, _, _ = view_factory()
    wait_until(lambda: api_state(port)["view"]["received"] > 0, 10, "frames")
    good_header = FrameMessage("cam0", 1, 0.0, time.time(), buffers={"image": np.zeros((4, 4, 3), np.uint8)}).encode()[0]
    for channel, parts in [("events", [b"event", b"{not json"]), ("events", [b"event", b"[1, 2]"]),
                           ("events", [b"frame/cam0", b"{}"]), ("events", [b"frame/cam0", bytes(good_header)]),
                           ("events", [b"frame/cam0", bytes(good_header), b"short"]), ("status", [b"status", b"\xff"]),
                           ("events", [b"event", b"[" * 50_000]), ("status", [b"status", b'{"a":' * 20_000])]:
        side.send(channel, parts)
    wait_until(lambda: api_state(port)["view"]["malformed"] >= 8, 5, "eight malformed messages counted")
    assert api_state(port)["view"]["malformed"] == 8
    for track_id, thumbnail in [(1, base64.b64encode(b"<script>").decode()), (2, "%%%not base64")]:
        side.event({"type": "track_confirmed", "stream_id": "cam0", "track_id": track_id, "class": "drone",
                    "t": time.time(), "thumbnail_jpeg_b64": thumbnail})
    for huge in ('{"type": "track_confirmed", "stream_id": "cam0", "track_id": 1e400, "t": 1e400, "source_ts": 1e400}',
                 '{"type": "track_lost", "stream_id": "cam0", "track_id": 1e400, "t": -1e400}'):
        side.send("events", [b"event", huge.encode()])  # 1e400 parses as inf: int(inf) overflows
    wait_until(lambda: len(api_state(port)["tracks"]) == 3, 5, "the three tracks")
    assert all(t["thumb"] is None for t in api_state(port)["tracks"]), "a non-JPEG thumbnail would be served"
    received = api_state(port)["view"]["received"]
    wait_until(lambda: api_state(port)["view"]["received"] > received, 5, "frames after the malformed ones")


def test_view_exits_0_when_the_run_is_over(view_factory):
    port, side, proc, _ = view_factory()
    ended = {label: dict(beat, alive=False) for label, beat in status_snapshot(STREAMS, 15.0).items()}
    side.send("status", [b"status", json.dumps({**ended, "view": {"alive": True}}).encode()])
    assert proc.proc.wait(timeout=10) == 0


def test_port_in_use_is_a_one_line_error(run_dir):
    tmp, ipc_dir = run_dir
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_run_config(tmp, ipc_dir, busy.getsockname()[1])
        proc = subprocess.run([sys.executable, "-m", "pipeline", "stage", "view", str(config)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: view: cannot serve on 127.0.0.1:")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_view_setting_is_a_one_line_error(run_dir):
    tmp, ipc_dir = run_dir
    config = write_run_config(tmp, ipc_dir, free_port(), jpeg_quality=0)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "stage", "view", str(config)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "stages.view.jpeg_quality" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------- the real pipeline
@pytest.mark.slow
def test_pipeline_run_serves_the_view_at_the_configured_address(tmp_path, synthetic_clip, random_weights, chromium):
    """`python -m pipeline run` with the view enabled: real capture -> ... -> track frames in the browser."""
    port = free_port()
    raw = {"mode": "live", "output_dir": str(tmp_path / "out"),
           "sources": [{"id": s, "uri": str(synthetic_clip.video), "pace": True, "loop": True} for s in STREAMS],
           "stages": {"detect": {"weights": str(random_weights), "backend": "torch"},
                      "record": {"segment_seconds": 1.0}, "view": {"enabled": True, "port": port}},
           "supervisor": {"status_interval_s": 0.5, "heartbeat_interval_s": 0.25}}
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is None and _serving(port), 60, f"the view on 127.0.0.1:{port}")
        chromium.get(f"http://127.0.0.1:{port}/")
        for stream_id in STREAMS:
            wait_until(lambda: "live" in tile_class(chromium, stream_id), 90, f"{stream_id} live")
        wait_frames(chromium, 5, 30)
        for stage in ("capture:cam0", "capture:cam1", "preprocess", "detect", "track", "record", "view"):
            wait_until(lambda: text_of(chromium, f'#health tr[data-stage="{stage}"]'), 10, f"{stage} health")
        wait_until(lambda: chromium.find_elements("css selector", "#recordings a[href*='segment_']"), 20,
                   "a recorded segment link")
        page = cv2.imdecode(np.frombuffer(chromium.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
        assert page.std() > 20
        (tmp_path / "pipeline_view.png").write_bytes(chromium.get_screenshot_as_png())
        latency = np.array(chromium.execute_script("return window.liveView.latencyMs"))
        print(f"\ncapture->decoded in Chromium through the whole pipeline, {len(latency)} frames: "
              f"p50 {np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms; "
              f"view heartbeat: {api_state(port)['stages'].get('view')}")
        assert video_png(chromium, "cam0").std() > 5, "the annotated video is blank"
    finally:
        proc.send_signal(signal.SIGINT)  # drains; the view closes once the frame path has exited
        try:
            _, err = proc.communicate(timeout=90)
        finally:
            _kill_stages_of(tmp_path)  # stage processes left behind if the supervisor itself failed
    assert proc.returncode == 0, err[-3000:]
    assert "did not drain in time" not in err, "the view held up the end of the run"


def _kill_stages_of(tmp_path: Path) -> None:
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if str(tmp_path).encode() in (proc_dir / "cmdline").read_bytes():
                os.kill(int(proc_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _serving(port: int) -> bool:
    try:
        return request(port, "/api/state")[0] == 200
    except OSError:
        return False


# ---------------------------------------------------------------- review of recordings
def record_segment(folder: Path, seconds: float = 6.0, fps: int = 10) -> None:
    """A real recorder segment (stages.record's writer, so segments.jsonl too): grey for the first
    half, red for the second, with the source clock starting at 100 s."""
    from stages.record import RecordConfig, SegmentWriter, video_frame

    folder.mkdir(parents=True, exist_ok=True)
    writer = SegmentWriter(folder, RecordConfig())
    for i in range(int(seconds * fps)):
        image = np.full((240, 320, 3), (60, 60, 60) if i < seconds * fps / 2 else (30, 30, 220), np.uint8)
        writer.write(video_frame(image), 100.0 + i / fps)
    writer.close()


@pytest.mark.slow
def test_a_drone_event_links_to_its_moment_in_the_recording_and_plays_there(view_factory, run_dir, chromium):
    tmp, _ = run_dir
    record_segment(tmp / "out" / "cam1")
    port, side, _, _ = view_factory(review_pre_roll_s=1.0)
    t0 = time.time()
    side.event({"type": "track_confirmed", "stream_id": "cam1", "track_id": 4, "class": "drone", "t": t0,
                "source_ts": 104.5, "frame_index": 45, "thumbnail_jpeg_b64": thumbnail_b64()})
    link = wait_until(lambda: api_state(port)["tracks"] and api_state(port)["tracks"][0]["review"], 5, "the link")
    assert link == {"url": "recordings/cam1/segment_00000.mp4", "segment": "segment_00000.mp4", "t": 3.5, "at": 4.5}

    chromium.get(f"http://127.0.0.1:{port}/")
    wait_until(lambda: chromium.execute_script(
        "return document.querySelectorAll('.timeline-row[data-stream=\"cam1\"] .mark.recorded').length"), 5,
        "the track on cam1's timeline")
    chromium.execute_script("document.querySelector('#tracks li[data-track=\"4\"] a.review').click()")
    wait_until(lambda: chromium.execute_script(
        "const v = document.getElementById('review-video'); return v.readyState >= 2 && v.currentTime >= 3.4"),
        15, "the recording to play from the event's moment")
    played_from = chromium.execute_script("const p = document.getElementById('review-video').played; "
                                          "return p.length ? p.start(0) : null")
    assert played_from is not None and played_from >= 3.4, played_from  # it seeked; it did not play from 0
    frame = cv2.imdecode(np.frombuffer(chromium.find_element("id", "review-video").screenshot_as_png, np.uint8),
                         cv2.IMREAD_COLOR)
    centre = frame[frame.shape[0] // 4: 3 * frame.shape[0] // 4, frame.shape[1] // 4: 3 * frame.shape[1] // 4]
    blue, green, red = centre.reshape(-1, 3).mean(axis=0)
    assert red > 150 and blue < 80 and green < 80, (blue, green, red)  # the second half's red, not the grey
    assert "drone #4 on cam1" in text_of(chromium, "#review-title")
