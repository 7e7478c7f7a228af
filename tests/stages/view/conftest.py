"""The view's test rig: the pipeline's side of the view (it binds the ``events`` and ``status`` PUB
sockets and the ``control`` PULL socket at the run config's endpoints and publishes messages in the
documented format), a real view process, HTTP helpers and a real headless Chromium (Debian's
chromium + chromium-driver, driven by Selenium).
"""
from __future__ import annotations

import base64
import http.client
import json
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zmq

from pipeline.runtime.config import REPO_ROOT, load_config
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.transport import open_socket

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
STREAMS = ("cam0", "cam1")


# ---------------------------------------------------------------- helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def numbered_frame(stream_id: str, index: int, size=(320, 240)) -> np.ndarray:
    """A frame whose content changes every frame: a moving square and the frame number."""
    w, h = size
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = (40, 60, 30) if stream_id == "cam0" else (60, 30, 40)
    x = (index * 7) % (w - 40)
    cv2.rectangle(image, (x, h // 2 - 20), (x + 40, h // 2 + 20), (0, 220, 255), -1)
    cv2.putText(image, f"{stream_id} {index}", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
    return image


def noise_frame(stream_id: str, index: int, size=(640, 480)) -> np.ndarray:
    """Incompressible frames: a client that stops reading fills its socket buffers within a few."""
    return np.random.default_rng(index).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def thumbnail_b64() -> str:
    thumb = np.full((24, 24, 3), 200, np.uint8)
    cv2.line(thumb, (4, 12), (20, 12), (20, 20, 20), 2)
    cv2.line(thumb, (12, 8), (12, 16), (20, 20, 20), 2)
    return base64.b64encode(cv2.imencode(".jpg", thumb)[1].tobytes()).decode()


def status_snapshot(streams, fps: float) -> dict:
    snap = {f"capture:{s}": {"stage": f"capture:{s}", "state": "running", "stream": "up", "fps": fps,
                             "latency_ms_p50": 1.0, "latency_ms_p99": 2.0, "dropped_stale": 0, "dropped_full": 0,
                             "restarts": 0, "alive": True} for s in streams}
    snap["track"] = {"stage": "track", "state": "running", "fps": fps, "latency_ms_p50": 80.0,
                     "latency_ms_p99": 120.0, "dropped_stale": 3, "dropped_full": 0, "restarts": 1, "alive": True}
    return snap


class PipelineSide(threading.Thread):
    """Binds events/status PUB and control PULL like the track stage and supervisor do, publishes
    frames of the `active` streams at `fps`, a status snapshot every 0.5 s, queued events, and keeps
    the view's heartbeats."""

    def __init__(self, cfg, fps: float = 15.0, make_frame=numbered_frame, frames: int | None = None):
        super().__init__(daemon=True)
        self.cfg, self.fps, self.make_frame, self.frames = cfg, fps, make_frame, frames
        self.active = set(STREAMS)
        self.outbox: queue.Queue = queue.Queue()
        self.beats: list[dict] = []
        self.sent = {s: 0 for s in STREAMS}
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        events = open_socket(ctx, self.cfg.endpoint("events"), hwm=64)
        status = open_socket(ctx, self.cfg.endpoint("status"), hwm=64)
        control = open_socket(ctx, self.cfg.endpoint("control"), hwm=1000)
        self.ready.set()
        last_status, period = 0.0, 1.0 / self.fps
        next_frame = time.time()
        try:
            while not self.stop.is_set():
                if self.frames is None or min(self.sent.values()) < self.frames:
                    for stream_id in sorted(self.active):
                        self._send_frame(events, stream_id)
                if time.time() - last_status > 0.5:
                    status.send_multipart([b"status", json.dumps(status_snapshot(self.active, self.fps)).encode()])
                    last_status = time.time()
                while not self.outbox.empty():
                    channel, parts = self.outbox.get()
                    (events if channel == "events" else status).send_multipart(parts)
                while control.poll(0):
                    self.beats.append(json.loads(control.recv()))
                next_frame += period
                time.sleep(max(0.0, next_frame - time.time()))
        finally:
            for sock in (events, status, control):
                sock.close(linger=0)
            ctx.term()

    def _send_frame(self, sock, stream_id: str) -> None:
        index = self.sent[stream_id]
        msg = FrameMessage(stream_id, index, index / self.fps, time.time(),
                           buffers={"image": self.make_frame(stream_id, index)})
        sock.send_multipart([f"frame/{stream_id}".encode(), *msg.encode()], copy=False)
        self.sent[stream_id] += 1

    def send(self, channel: str, parts: list[bytes]) -> None:
        self.outbox.put((channel, parts))

    def event(self, payload: dict) -> None:
        """Track events come from the track stage (events), stream events from the supervisor (status)."""
        channel = "status" if payload["type"].startswith("stream_") else "events"
        self.send(channel, [b"event", json.dumps(payload).encode()])


def write_run_config(tmp: Path, ipc_dir: str, port: int, **view) -> Path:
    raw = {"sources": [{"id": s, "uri": str(tmp / f"{s}.mp4")} for s in STREAMS], "mode": "live",
           "output_dir": str(tmp / "out"), "transport": {"kind": "ipc", "ipc_dir": ipc_dir},
           "supervisor": {"heartbeat_interval_s": 0.2},
           "stages": {"view": {"enabled": True, "port": port, "stale_after_s": 2.0, **view}}}
    for s in STREAMS:
        (tmp / f"{s}.mp4").write_bytes(b"")  # sources must exist for the config check; the view never reads them
    path = tmp / "run_config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def request(port: int, path: str, headers: dict | None = None, host: str | None = None,
            tls: ssl.SSLContext | None = None):
    conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls) if tls
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    for key, value in (headers or {}).items():
        conn.putheader(key, value)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, response, body


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ViewProcess:
    """`python -m pipeline stage view RUN_CONFIG`, as the supervisor starts it."""

    def __init__(self, config: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "stage", "view", str(config)], cwd=REPO_ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_serving(self, port: int, headers: dict | None = None, tls: ssl.SSLContext | None = None) -> None:
        def serving():
            if self.proc.poll() is not None:
                raise AssertionError(f"view exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                return request(port, "/api/state", headers, tls=tls)[0] in (200, 401)
            except OSError:
                return False

        wait_until(serving, 20, "the view to serve")

    def terminate(self) -> tuple[int, str]:
        """SIGTERM, then (exit code, stderr); a second call returns the same."""
        if getattr(self, "result", None) is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                _, err = self.proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
                raise AssertionError(f"view did not exit within 15 s of SIGTERM: {err}")
            self.result = (self.proc.returncode, err)
        return self.result


@pytest.fixture
def run_dir(tmp_path):
    ipc_dir = tempfile.mkdtemp(prefix="lssview-", dir="/tmp")  # ipc paths must stay short
    yield tmp_path, ipc_dir
    shutil.rmtree(ipc_dir, ignore_errors=True)


@pytest.fixture
def view_factory(run_dir):
    """Start a view (and the pipeline side) for given view settings; both stop at teardown, and the
    view must exit 0 on SIGTERM."""
    tmp, ipc_dir = run_dir
    started = []

    def start(side_kwargs=None, **view):
        port = free_port()
        config = write_run_config(tmp, ipc_dir, port, **view)
        cfg = load_config(config)
        side = PipelineSide(cfg, **(side_kwargs or {}))
        side.start()
        side.ready.wait(5)
        proc = ViewProcess(config)
        started.append((proc, side))
        headers = {"X-View-Token": view["token"]} if view.get("token") else None
        proc.wait_serving(port, headers, client_tls(view["tls_cert"]) if view.get("tls_cert") else None)
        return port, side, proc, cfg

    yield start
    for proc, side in started:
        code, err = proc.terminate()
        side.stop.set()
        side.join(5)
        assert code == 0, f"view exit code {code} after SIGTERM: {err}"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command line tool."""
    if not shutil.which("openssl"):
        pytest.skip("the HTTPS test needs the openssl command (apt-get install -y openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "view.crt", folder / "view.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lss-view",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def client_tls(cert) -> ssl.SSLContext:
    """A client that trusts only this certificate (and checks it names 127.0.0.1)."""
    return ssl.create_default_context(cafile=str(cert))


def api_state(port: int) -> dict:
    status, _, body = request(port, "/api/state")
    assert status == 200
    return json.loads(body)


# ---------------------------------------------------------------- browser
@pytest.fixture
def chromium(tmp_path):
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.page_load_strategy = "eager"  # an MJPEG <img> never finishes loading
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def text_of(driver, selector: str) -> str | None:
    """Text of an element the page re-renders every poll (one script call, so never a stale reference)."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.innerText", selector)


def tile_class(driver, stream_id: str) -> str:
    return driver.execute_script("const t = document.querySelector(`.tile[data-stream=\"${arguments[0]}\"]`);"
                                 "return t ? t.className : ''", stream_id)


def tile(driver, stream_id: str):
    return driver.find_element("css selector", f'.tile[data-stream="{stream_id}"]')


def wait_frames(driver, count: int, timeout: float) -> None:
    """The page decodes `count` more frames of every stream."""
    def shown() -> dict:
        return driver.execute_script("return window.liveView.frames")

    before = shown()
    wait_until(lambda: all(shown().get(s, 0) >= before.get(s, 0) + count for s in STREAMS), timeout,
               f"{count} more frames of each stream in the page")


def video_png(driver, stream_id: str) -> np.ndarray:
    png = tile(driver, stream_id).find_element("css selector", "img.video").screenshot_as_png
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
