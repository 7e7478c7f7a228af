"""Operator live view: a web page with every stream's annotated video, drone tracks, stage health and
links to the recorded segments.

The view is a consumer beside the frame path. It subscribes (ZeroMQ SUB) to the track stage's
`events` side channel (annotated frames, track events) and the supervisor's `status` channel, and
serves a page over HTTP (stdlib ThreadingHTTPServer, one thread per browser connection). Browsers can
never slow the pipeline: the subscriber loop only swaps in the newest frame of each stream and wakes
waiting connections; each connection takes the newest frame when it is ready for one (a per-client
queue of one), so a slow browser just gets fewer frames. A frame is JPEG-encoded once, by the first
connection that wants it, and shared by all others; frames nobody asked for are never encoded.

Video goes out as MJPEG (multipart/x-mixed-replace), which <img> plays natively. Access: bound to
127.0.0.1 by default (then only loopback Host names are accepted, against DNS rebinding); with a token
every request must carry it (?token=, X-View-Token or Authorization: Bearer header, or the cookie set
when the page is opened with ?token=). With ``tls_cert``/``tls_key`` it serves HTTPS (the TLS handshake
runs in the connection's own thread, under its timeout, so a client that never completes one holds up
nobody); beyond loopback without them the token travels in clear text, and the view warns so.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import cv2
import numpy as np

from pipeline.runtime.config import ConfigError, PipelineConfig, check_file, is_loopback
from pipeline.runtime.messages import FrameMessage, MessageError, decode_json_message
from pipeline.runtime.meter import Meter
from pipeline.runtime.schema import setting
from pipeline.runtime.side_channels import SideChannels, run_is_over
from pipeline.runtime.stage import Stage

log = logging.getLogger("stages.view")
STATIC_DIR = Path(__file__).resolve().parent / "view_static"
STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
RECORDING_TYPES = {".mp4": "video/mp4", ".mkv": "video/x-matroska", ".ts": "video/mp2t",
                   ".jsonl": "application/x-ndjson"}
RECORDING_NAME = re.compile(r"^(segment_\d{5}\.(mp4|mkv|ts)|tracks\.jsonl)$")
FRAME_HWM = 2  # frames queued for us: old frames are worthless
EVENT_HWM = 1000  # events and status have their own subscription, so a flood of frames never drops one
MAX_THUMB_BYTES = 512 << 10
COOKIE = "view_token"
@dataclass
class ViewConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = setting(8080, ge=0, le=65535)  # 0: any free port (the URL is in the heartbeat)
    token: str | None = None  # required when host is not loopback
    tls_cert: str | None = None  # PEM certificate (chain) and its key: serve HTTPS, so the token never
    tls_key: str | None = None   # crosses the network in clear text
    jpeg_quality: int = setting(80, ge=1, le=100)  # each frame is encoded once, shared by every browser
    stale_after_s: float = setting(2.0, gt=0)  # a stream without a new frame this long shows DOWN, not frozen
    max_clients: int = setting(32, gt=0)  # open video connections; more get HTTP 503
    max_events: int = setting(200, gt=0)  # tracks/events kept for the page

    def validate(self, where: str) -> None:
        if self.enabled and not is_loopback(self.host) and not self.token:
            raise ConfigError(f"config key '{where}.token' is required to serve the view on {self.host}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"config keys '{where}.tls_cert' and '{where}.tls_key' go together: "
                              "give both or neither")



# ---------------------------------------------------------------- frames
@dataclass
class LatestFrame:
    """The newest frame of one stream; `jpeg` is filled once, on first demand."""

    stream_id: str
    seq: int  # hub-wide, increasing
    number: int  # frames of this stream received so far
    image: np.ndarray
    frame_index: int
    capture_wall: float
    arrived: float
    jpeg: bytes | None = None
    delivered: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class FrameHub:
    """Newest frame per stream, handed to any number of waiting connections."""

    def __init__(self, quality: int, stats: "ViewStats"):
        self.quality, self.stats = quality, stats
        self.cond = threading.Condition()
        self.latest: dict[str, LatestFrame] = {}
        self.received: dict[str, int] = {}
        self.seq = 0
        self.closed = False

    def put(self, stream_id: str, image: np.ndarray, frame_index: int, capture_wall: float) -> None:
        """Called by the subscriber loop: replace, wake waiters, never wait for a browser."""
        with self.cond:
            self.seq += 1
            self.received[stream_id] = self.received.get(stream_id, 0) + 1
            self.latest[stream_id] = LatestFrame(stream_id, self.seq, self.received[stream_id], image, frame_index,
                                                 capture_wall, time.time())
            self.cond.notify_all()

    def newest(self, stream_id: str) -> LatestFrame | None:
        with self.cond:
            return self.latest.get(stream_id)

    def wait_newer(self, stream_ids: list[str], seen: dict[str, int], timeout: float) -> list[LatestFrame]:
        """The newest frame of each stream whose sequence number is above what this client has seen."""
        def newer() -> list[LatestFrame]:
            frames = (self.latest.get(s) for s in stream_ids)
            return [f for f in frames if f is not None and f.seq > seen.get(f.stream_id, 0)]

        with self.cond:
            self.cond.wait_for(lambda: self.closed or newer(), timeout)
            return [] if self.closed else newer()

    def jpeg(self, frame: LatestFrame) -> bytes:
        with frame.lock:  # the first connection encodes; the others wait for it and share the bytes
            if frame.jpeg is None:
                ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    raise ValueError("JPEG encoding failed")
                frame.jpeg = buf.tobytes()
                frame.image = None  # the raw frame is no longer needed
            first = not frame.delivered
            frame.delivered = True
        if first:
            self.stats.delivered(frame)
        return frame.jpeg

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class ViewStats(Meter):
    """The view's meter: frames in (their rate), frames out to browsers (latency since capture, and what
    the view itself adds after arrival), clients, rejections."""

    def __init__(self):
        super().__init__(("received", "processed", "dropped_stale", "dropped_full", "malformed", "clients",
                          "rejected"), series=("latency_ms", "added_ms"))

    def received(self, stream_id: str, now: float) -> None:
        self.count("received")
        self.tick(stream_id, now)

    def delivered(self, frame: LatestFrame) -> None:
        now = time.time()
        self.count("processed")
        self.observe("latency_ms", (now - frame.capture_wall) * 1000)  # capture -> delivery to a browser
        self.observe("added_ms", (now - frame.arrived) * 1000)  # arrival on our SUB socket -> delivery


# ---------------------------------------------------------------- tracks, events, health
class ViewState:
    """What the page shows besides video: the status snapshot, drone tracks, stream events.

    Events as the track stage and supervisor publish them: {"type": "track_confirmed" | "track_lost" |
    "stream_down" | "stream_up", "stream_id", "t" (wall time), "track_id", "class", "thumbnail_jpeg_b64"}."""

    def __init__(self, max_events: int):
        self.lock = threading.Lock()
        self.snapshot: dict = {}
        self.snapshot_time = 0.0
        self.tracks: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self.thumbs: dict[int, bytes] = {}
        self.events: deque = deque(maxlen=max_events)
        self.max_events = max_events
        self.stream_flags: dict[str, str] = {}  # from stream_down / stream_up events
        self.ended: set[str] = set()
        self.next_id = 1

    def set_snapshot(self, snapshot: dict) -> None:
        with self.lock:
            self.snapshot, self.snapshot_time = snapshot, time.time()

    def add_event(self, event: dict) -> None:
        kind, stream_id = event.get("type"), str(event.get("stream_id", ""))
        with self.lock:
            if kind == "track_confirmed":
                self._confirm(event, stream_id)
            elif kind == "track_lost":
                row = self.tracks.get((stream_id, _int(event.get("track_id"))))
                if row is not None:
                    row["end"] = _float(event.get("t"), time.time())
            elif kind in ("stream_down", "stream_up"):
                self.stream_flags[stream_id] = kind.split("_")[1]
                self.events.appendleft({"type": kind, "stream_id": stream_id,
                                        "time": _float(event.get("t"), time.time())})

    def _confirm(self, event: dict, stream_id: str) -> None:
        key = (stream_id, _int(event.get("track_id")))
        row = {"id": self.next_id, "stream_id": stream_id, "track_id": key[1], "class": str(event.get("class", "")),
               "start": _float(event.get("t"), time.time()), "end": None, "thumb": None}
        self.next_id += 1
        thumb = _thumbnail(event.get("thumbnail_jpeg_b64"))
        if thumb is not None:
            self.thumbs[row["id"]] = thumb
            row["thumb"] = f"thumb/{row['id']}.jpg"
        self.tracks.pop(key, None)
        self.tracks[key] = row
        while len(self.tracks) > self.max_events:
            _, old = self.tracks.popitem(last=False)
            self.thumbs.pop(old["id"], None)

    def thumb(self, row_id: int) -> bytes | None:
        with self.lock:
            return self.thumbs.get(row_id)

    def stream_state(self, stream_id: str, frame: LatestFrame | None, stale_after_s: float, now: float) -> str:
        """live | waiting (no frame yet) | down | ended: never 'live' on a frame that stopped coming."""
        with self.lock:
            beat = self.snapshot.get(f"capture:{stream_id}", {})
            flag = self.stream_flags.get(stream_id)
            ended = stream_id in self.ended or stream_id in beat.get("ended", [])
        if ended:
            return "ended"
        if beat.get("stream") == "down" or flag == "down" or beat.get("alive") is False:
            return "down"
        if frame is None:
            return "waiting"
        return "live" if now - frame.arrived <= stale_after_s else "down"

    def page_data(self) -> dict:
        with self.lock:
            return {"stages": self.snapshot, "status_age_s": round(time.time() - self.snapshot_time, 1)
                    if self.snapshot_time else None,
                    "tracks": list(reversed(self.tracks.values())), "events": list(self.events)}


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _float(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _thumbnail(b64) -> bytes | None:
    """A base64 JPEG from the event, or None: anything else is not served to browsers."""
    if not isinstance(b64, str) or len(b64) > MAX_THUMB_BYTES * 4 // 3 + 4:
        return None
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(b"\xff\xd8") else None


# ---------------------------------------------------------------- HTTP
class ViewServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck browser connection never holds up shutdown
    allow_reuse_address = True

    def __init__(self, view: "ViewStage", tls: ssl.SSLContext | None = None):
        self.view = view
        host = view.settings.host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, view.settings.port), ViewHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address) -> None:
        """A failed handshake or a dropped connection is one log line, not a traceback: anyone who can
        reach the port (a plain-HTTP request, a scanner, a browser refusing the certificate) causes them."""
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError, TimeoutError)):
            log.info("connection from %s failed: %s", client_address[0], error)
        else:
            super().handle_error(request, client_address)


class TlsSetupError(Exception):
    """The view's certificate or key cannot be used (one-line message)."""


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Server context for the view's HTTPS (TLS 1.2+); TlsSetupError names what is wrong with the files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except TlsSetupError:
        raise
    except (OSError, ssl.SSLError) as exc:
        if "-----BEGIN CERTIFICATE-----" not in Path(cert).read_text(errors="replace"):
            raise TlsSetupError(f"{cert} is not a PEM certificate") from None
        raise TlsSetupError(f"{key} is not a PEM private key of that certificate ({exc.strerror or exc})") from None
    return context


def _no_passphrase() -> str:
    # without a password callback OpenSSL would prompt on the terminal and the view would hang
    raise TlsSetupError("the key is encrypted; give an unencrypted key file (the view cannot ask for a passphrase)")


class ViewHandler(BaseHTTPRequestHandler):
    server: ViewServer
    timeout = 10  # a browser that stops reading is dropped after this long, freeing its thread
    server_version = "lss-view"
    sys_version = ""

    def log_message(self, fmt, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------ routing
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        view = self.server.view
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorized(view, query):
            return
        path = unquote(url.path)
        if view.settings.token and query.get("token") and path in ("/", "/index.html"):
            return self._login_redirect(view.settings.token)
        routes = [
            (r"/(index\.html)?", lambda m: self._static("index.html")),
            (r"/static/([a-z]+\.[a-z]+)", lambda m: self._static(m.group(1))),
            (r"/api/state", lambda m: self._json(view.page_state())),
            (r"/api/recordings", lambda m: self._json(view.recordings())),
            (r"/stream/(.+)\.mjpg", lambda m: self._video([m.group(1)])),
            (r"/video", lambda m: self._video(query.get("stream", []))),  # ?stream=a&stream=b
            (r"/frame/(.+)\.jpg", lambda m: self._still(m.group(1))),
            (r"/thumb/(\d{1,9})\.jpg", lambda m: self._thumb(int(m.group(1)))),
            (r"/recordings/([^/]+)/([^/]+)", lambda m: self._recording(m.group(1), m.group(2))),
            (r"/recordings/events\.jsonl", lambda m: self._recording(None, "events.jsonl")),
        ]
        for pattern, handle in routes:
            match = re.fullmatch(pattern, path)
            if match:
                try:
                    return handle(match)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    return  # the browser went away or stopped reading
        self._error(HTTPStatus.NOT_FOUND, "not found")

    # ------------------------------------------------------------ access
    def _authorized(self, view: "ViewStage", query: dict) -> bool:
        token = view.settings.token
        if not token:
            host = _host_name(self.headers.get("Host") or "")
            # a loopback name or address, or the configured host: never a name an attacker's DNS points here
            if is_loopback(host.strip("[]")) or host.strip("[]") == view.settings.host:
                return True
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return False
        offered = list(query.get("token", [])) + [self.headers.get("X-View-Token") or ""]
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            offered.append(auth[len("Bearer "):])
        offered.append(self._cookie_token())
        if any(o and hmac.compare_digest(o.encode(), token.encode()) for o in offered):
            return True
        view.stats.count("rejected")
        self._error(HTTPStatus.UNAUTHORIZED, "access token required: open the page as /?token=<token>")
        return False

    def _cookie_token(self) -> str:
        try:
            morsel = SimpleCookie(self.headers.get("Cookie") or "").get(COOKIE)
        except CookieError:
            return ""
        return unquote(morsel.value) if morsel is not None else ""

    def _login_redirect(self, token: str) -> None:
        """Trade ?token= for a cookie and drop it from the address bar (and the browser history)."""
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        secure = "; Secure" if self.server.view.settings.tls_cert else ""
        self.send_header("Set-Cookie", f"{COOKIE}={quote(token, safe='')}; HttpOnly; SameSite=Strict; Path=/{secure}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # ------------------------------------------------------------ responses
    def _headers(self, status: int, content_type: str, length: int | None = None, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' blob:; media-src 'self'")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _body(self, status: int, content_type: str, body: bytes) -> None:
        self._headers(status, content_type, len(body))
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._body(status, "text/plain; charset=utf-8", f"{int(status)} {message}\n".encode())

    def _json(self, data) -> None:
        self._body(HTTPStatus.OK, "application/json", json.dumps(data).encode())

    def _static(self, name: str) -> None:
        if name not in STATIC_TYPES:
            return self._error(HTTPStatus.NOT_FOUND, "not found")
        self._body(HTTPStatus.OK, STATIC_TYPES[name], (STATIC_DIR / name).read_bytes())

    def _still(self, stream_id: str) -> None:
        view = self.server.view
        frame = view.hub.newest(stream_id)
        if frame is None:
            return self._error(HTTPStatus.NOT_FOUND, "no frame yet")
        self._body(HTTPStatus.OK, "image/jpeg", view.hub.jpeg(frame))

    def _thumb(self, row_id: int) -> None:
        data = self.server.view.state.thumb(row_id)
        if data is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such thumbnail")
        self._body(HTTPStatus.OK, "image/jpeg", data)

    def _video(self, stream_ids: list[str]) -> None:
        """MJPEG of one or several streams on one connection (a browser opens at most 6 per host).

        Each part names its stream and timing in headers, so the page's script can route parts to
        tiles and measure latency; with one stream it also plays in a plain <img> or browser tab.
        Whenever this client is ready it gets the newest frame of each stream; frames it was too slow
        for are skipped (counted as dropped_stale)."""
        view = self.server.view
        if not stream_ids or any(s not in view.known_streams() for s in stream_ids):
            return self._error(HTTPStatus.NOT_FOUND, "unknown stream")
        if not view.admit_client():
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, "too many viewers")
        try:
            self._headers(HTTPStatus.OK, "multipart/x-mixed-replace; boundary=frame")
            self.wfile.write(b"--frame\r\n")
            seen: dict[str, int] = {}
            numbers: dict[str, int] = {}
            while not view.hub.closed:
                for frame in view.hub.wait_newer(stream_ids, seen, timeout=1.0):
                    jpeg = view.hub.jpeg(frame)
                    if frame.stream_id in numbers:  # frames that came while this client was busy
                        view.stats.count("dropped_stale", frame.number - numbers[frame.stream_id] - 1)
                    head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                            f"X-Stream-Id: {quote(frame.stream_id, safe='')}\r\nX-Frame-Index: {frame.frame_index}\r\n"
                            f"X-Capture-Wall: {frame.capture_wall:.6f}\r\n\r\n").encode()
                    # the closing boundary goes out with the frame, so a browser shows it at once
                    self.wfile.write(head + jpeg + b"\r\n--frame\r\n")
                    seen[frame.stream_id], numbers[frame.stream_id] = frame.seq, frame.number
        finally:
            view.release_client()

    def _recording(self, stream_id: str | None, name: str) -> None:
        path = self.server.view.recording_path(stream_id, name)
        if path is None:
            return self._error(HTTPStatus.NOT_FOUND, "no such recording")
        size = path.stat().st_size
        start, end = _byte_range(self.headers.get("Range"), size)
        if start is None:
            return self._headers(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "text/plain", 0,
                                 {"Content-Range": f"bytes */{size}"})
        partial = end - start + 1 < size
        extra = {"Accept-Ranges": "bytes"}
        if partial:
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._headers(HTTPStatus.PARTIAL_CONTENT if partial else HTTPStatus.OK, RECORDING_TYPES[path.suffix],
                      end - start + 1, extra)
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1', '[::1]:8080' -> '[::1]'."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0]


def _byte_range(header: str | None, size: int) -> tuple[int | None, int]:
    """One 'bytes=a-b' range (what <video> asks for); anything else means the whole file."""
    full = (0, max(size - 1, 0))
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not match or not any(match.groups()):
        return full
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:
        start, end = max(size - int(last), 0), size - 1
    return (start, end) if start <= end else (None, 0)


# ---------------------------------------------------------------- the stage process
class ViewStage(Stage):
    """`run()` serves the page and follows the side channels until SIGTERM or the end of the run (exit 0)."""

    name = "view"
    role = "consumer"
    section = ViewConfig
    beside = "track"  # the stage whose events and frames it shows: by default it runs on that host
    subscribes = ("events", "status")

    @classmethod
    def enabled(cls, cfg: PipelineConfig) -> bool:
        return cfg.stages.view.enabled

    @classmethod
    def check_config(cls, cfg: PipelineConfig, check_files: bool) -> None:
        view = cfg.stages.view
        if check_files and view.enabled:
            for name in ("tls_cert", "tls_key"):
                check_file(cfg, getattr(view, name), f"stages.view.{name}")

    def __init__(self, cfg: PipelineConfig):
        super().__init__(cfg)
        self.stats = ViewStats()
        self.hub = FrameHub(self.settings.jpeg_quality, self.stats)
        self.state = ViewState(self.settings.max_events)
        self.output_root = cfg.resolve(cfg.output_dir).resolve()
        self.streams: list[str] = list(cfg.stream_ids)
        self.clients_lock = threading.Lock()
        self.stopping = False
        self.url = ""

    # ------------------------------------------------------------ run
    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s view[%(process)d] %(levelname)s %(message)s")
        s = self.settings
        try:
            tls = tls_context(self.cfg.resolve(s.tls_cert), self.cfg.resolve(s.tls_key)) if s.tls_cert else None
        except (TlsSetupError, OSError) as exc:
            print(f"error: view: config keys 'stages.view.tls_cert'/'tls_key': {exc}", file=sys.stderr)
            return 2
        try:
            server = ViewServer(self, tls)
        except OSError as exc:
            print(f"error: view: cannot serve on {s.host}:{s.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        host, port = server.server_address[:2]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/"
        if not tls and not is_loopback(s.host):
            log.warning("serving beyond loopback without TLS: the token crosses the network in clear text "
                        "(set stages.view.tls_cert and tls_key)")
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        channels = SideChannels(self.cfg, self.name, [("events", b"frame/", FRAME_HWM),
                                                      ("events", b"event", EVENT_HWM), ("status", b"", EVENT_HWM)])
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        log.info("serving the live view at %s%s", self.url, " (token required)" if self.settings.token else "")
        try:
            self._follow(channels)
        finally:
            channels.beat("exiting", self._beat_fields())
            self.hub.close()
            server.shutdown()
            server.server_close()
            channels.close()
        return 0

    def _on_term(self, signum, frame) -> None:
        self.stopping = True

    def _follow(self, channels: SideChannels) -> None:
        while not self.stopping:
            for parts in channels.receive(100):
                try:
                    self._handle(parts)
                except (MessageError, ValueError, UnicodeDecodeError, RecursionError) as exc:
                    self.stats.count("malformed")
                    log.warning("dropped a malformed side-channel message: %s", exc)
            if channels.beat_due():
                channels.beat("running", self._beat_fields())

    def _handle(self, parts: list) -> None:
        if bytes(parts[0].buffer).startswith(b"frame/"):
            self._frame(FrameMessage.decode(parts[1:]))
            return
        topic, payload = decode_json_message(parts)
        if topic == "status":
            self.state.set_snapshot(payload)
            if run_is_over(payload, self.name):
                log.info("every frame-path stage has exited: the view closes too")
                self.stopping = True
        elif topic == "event":
            self.state.add_event(payload)

    def _frame(self, msg: FrameMessage) -> None:
        if msg.stream_id not in self.streams:
            self.streams.append(msg.stream_id)
        if msg.is_eos:
            with self.state.lock:
                self.state.ended.add(msg.stream_id)
            return
        image = msg.buffers.get("annotated", msg.buffers.get("image"))
        if image is None or image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"frame of {msg.stream_id} has no uint8 HxW or HxWx3 'image' buffer")
        with self.state.lock:
            self.state.ended.discard(msg.stream_id)
        now = time.time()
        self.stats.received(msg.stream_id, now)
        self.hub.put(msg.stream_id, image, msg.frame_index, msg.capture_wall)

    def _beat_fields(self) -> dict:
        return {"url": self.url, **self.stats.snapshot(time.time())}

    # ------------------------------------------------------------ what the handlers ask for
    def known_streams(self) -> list[str]:
        return list(self.streams)

    def admit_client(self) -> bool:
        with self.clients_lock:
            if self.stats.counts["clients"] >= self.settings.max_clients:
                return False
            self.stats.count("clients")
            return True

    def release_client(self) -> None:
        with self.clients_lock:
            self.stats.count("clients", -1)

    def page_state(self) -> dict:
        now = time.time()
        streams = []
        for stream_id in self.known_streams():
            frame = self.hub.newest(stream_id)
            streams.append({"id": stream_id, "state": self.state.stream_state(stream_id, frame,
                                                                             self.settings.stale_after_s, now),
                            "age_s": round(now - frame.arrived, 2) if frame else None,
                            "frame_index": frame.frame_index if frame else None,
                            "fps": round(self.stats.fps(stream_id, now), 1)})
        return {"now": now, "streams": streams, "view": self.stats.snapshot(now), **self.state.page_data()}

    def recordings(self) -> dict:
        """Segments per stream under the run's output folder (links the page shows)."""
        out = {}
        for stream_id in self.known_streams():
            folder = self.output_root / stream_id
            if "/" in stream_id or stream_id in (".", "..") or not folder.is_dir():
                continue
            files = sorted(p for p in folder.iterdir() if RECORDING_NAME.match(p.name) and p.is_file())
            out[stream_id] = [{"name": p.name, "bytes": p.stat().st_size,
                               "url": f"recordings/{quote(stream_id, safe='')}/{p.name}"} for p in files]
        events = self.output_root / "events.jsonl"
        return {"streams": out, "events": "recordings/events.jsonl" if events.is_file() else None}

    def recording_path(self, stream_id: str | None, name: str) -> Path | None:
        """Only files the recorder writes, only under the output folder: no traversal, no symlinks out."""
        if stream_id is None:
            path = self.output_root / "events.jsonl"
        elif stream_id in self.known_streams() and "/" not in stream_id and stream_id not in (".", "..") \
                and RECORDING_NAME.match(name):
            path = self.output_root / stream_id / name
        else:
            return None
        resolved = path.resolve()
        return resolved if resolved.is_relative_to(self.output_root) and resolved.is_file() else None
