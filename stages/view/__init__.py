"""Operator live view: a web page with every stream's annotated video, drone tracks, stage health and
links to the recorded segments.

The view is a consumer beside the frame path. It subscribes (ZeroMQ SUB) to the track stage's
``events`` side channel (annotated frames, track events) and the supervisor's ``status`` channel on the
main thread, and serves the page from an aiohttp server on an event loop in a second thread
(``server.py``): no thread per browser, connections capped and held to deadlines (``guard.py``).
Browsers can never slow the pipeline: the subscriber loop only swaps in the newest frame of each
stream (``hub.py``) and wakes waiting connections; a slow browser just gets fewer frames.

Video goes out as MJPEG (multipart/x-mixed-replace), which <img> plays natively; the page state goes
over a WebSocket. Access (``access.py``): bound to 127.0.0.1 by default (then only loopback Host names
are accepted, against DNS rebinding); with a token every request carries it or a signed session
cookie. With ``tls_cert``/``tls_key`` it serves HTTPS; beyond loopback without them the token travels
in clear text, and the view warns so.
"""
from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from pipeline.runtime.config import ConfigError, PipelineConfig, check_file, is_loopback
from pipeline.runtime.messages import FrameMessage, MessageError, decode_json_message
from pipeline.runtime.schema import setting
from pipeline.runtime.side_channels import SideChannels, run_is_over
from pipeline.runtime.stage import Stage
from stages.view.access import TlsSetupError, tls_context
from stages.view.hub import FrameHub, Notifier, ViewStats
from stages.view.review import Reviews
from stages.view.server import ViewServer
from stages.view.state import ViewState

log = logging.getLogger("stages.view")
RECORDING_NAME = re.compile(r"^(segment_\d{5}\.(mp4|mkv|ts)|tracks\.jsonl)$")
FRAME_HWM = 2  # frames queued for us: old frames are worthless
EVENT_HWM = 1000  # events and status have their own subscription, so a flood of frames never drops one
PAGE_REUSE_S = 0.05  # a page state serves every client that asks within this long (used on the event loop only)


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
    max_connections: int = setting(256, gt=0)  # open HTTP connections in all; more are answered 503
    max_connections_per_client: int = setting(64, gt=0)  # open from one address (a browser uses <= 6)
    header_timeout_s: float = setting(10.0, gt=0)  # to send a request head (and to finish a TLS handshake)
    write_timeout_s: float = setting(10.0, gt=0)  # a video client that reads nothing this long is cut
    backlog: int = setting(512, gt=0)  # connections the kernel queues before the view accepts them
    session_hours: float = setting(12.0, gt=0)  # how long the cookie that ?token= gives stays valid
    review_pre_roll_s: float = setting(2.0, ge=0)  # an event's recording plays from this long before it
    timeline_hours: float = setting(3.0, gt=0)  # the page's per-stream timeline of drone tracks

    def validate(self, where: str) -> None:
        if self.enabled and not is_loopback(self.host) and not self.token:
            raise ConfigError(f"config key '{where}.token' is required to serve the view on {self.host}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(f"config keys '{where}.tls_cert' and '{where}.tls_key' go together: "
                              "give both or neither")


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
        self.reviews = Reviews(self.output_root, self.settings.review_pre_roll_s)
        self.streams: list[str] = list(cfg.stream_ids)
        self.clients_lock = threading.Lock()
        self.changed = Notifier()  # woken at every event and status snapshot (the /ws pushes)
        self.stopping = False
        self.url = ""
        self.page_cache: tuple[float, str] | None = None  # (monotonic time, JSON): see page_json

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
        server = ViewServer(self, tls)
        try:
            host, port = server.start()
        except OSError as exc:
            server.stop()
            print(f"error: view: cannot serve on {s.host}:{s.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}/"
        if not tls and not is_loopback(s.host):
            log.warning("serving beyond loopback without TLS: the token crosses the network in clear text "
                        "(set stages.view.tls_cert and tls_key)")
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        channels = SideChannels(self.cfg, self.name, [("events", b"frame/", FRAME_HWM),
                                                      ("events", b"event", EVENT_HWM), ("status", b"", EVENT_HWM)])
        log.info("serving the live view at %s%s", self.url, " (token required)" if self.settings.token else "")
        try:
            self._follow(channels)
        finally:
            channels.beat("exiting", self._beat_fields())
            self.hub.close()
            server.stop()
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
            self.changed.wake()
            if run_is_over(payload, self.name):
                log.info("every frame-path stage has exited: the view closes too")
                self.stopping = True
        elif topic == "event":
            self.state.add_event(payload)
            self.changed.wake()

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

    def page_json(self) -> str:
        """The page state as JSON, built once for every client asking within PAGE_REUSE_S (each
        WebSocket client is pushed the same state at each event: one build, not one per client)."""
        now = time.monotonic()
        if self.page_cache is None or now - self.page_cache[0] > PAGE_REUSE_S:
            self.page_cache = (now, json.dumps(self.page_state()))
        return self.page_cache[1]

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
        page = {"now": now, "streams": streams, "view": self.stats.snapshot(now),
                "timeline_s": self.settings.timeline_hours * 3600, **self.state.page_data()}
        for row in page["tracks"]:  # each drone track links to its moment in the recording, once it is there
            row["review"] = self.reviews.link(row["stream_id"], row.pop("source_ts"))
        return page

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
