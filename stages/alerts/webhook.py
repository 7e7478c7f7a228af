"""Alerts as HTTP POSTs: one JSON alert per request, from the sink's own thread.

A 2xx reply is a delivery. A timeout, a refused connection, a 5xx or a 429 is retried with a growing
wait (``backoff_s``, doubled per attempt, at most MAX_BACKOFF_S) up to ``attempts`` tries; any other
4xx is the receiver saying no, so it is not retried. With a ``secret_file`` every request carries
``X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`` (the GitHub convention), so the receiver
can tell the alert came from this pipeline.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.runtime.schema import ConfigError, setting
from stages.alerts.alert import Alert
from stages.alerts.outbox import Outbox

log = logging.getLogger("stages.alerts.webhook")
MAX_BACKOFF_S = 60.0
LOGGED_FAILURES = 5  # the first failures are logged one by one, then every 100th
USER_AGENT = "lss-alerts/1"


@dataclass
class WebhookConfig:
    url: str = ""
    timeout_s: float = setting(5.0, gt=0)  # per request: connect, send, reply
    attempts: int = setting(5, ge=1)  # tries per alert before it counts as failed
    backoff_s: float = setting(1.0, gt=0)  # wait before the second try; doubled for each further one
    secret_file: str | None = None  # HMAC key (the file's bytes, stripped): X-Signature-256 on every POST
    snapshots: bool = False  # add the track_confirmed thumbnail as snapshot_jpeg_b64
    queue: int = setting(1000, ge=1)  # alerts held while the receiver is away; then the oldest go

    def validate(self, where: str) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"config key '{where}.url' must be an http:// or https:// URL, got {self.url!r}")


class WebhookSink:
    def __init__(self, index: int, cfg: WebhookConfig, secret: bytes | None):
        self.key, self.label = f"webhook{index}", f"webhook[{index}] {urlsplit(cfg.url).hostname}"
        self.cfg, self.secret = cfg, secret
        self.outbox = Outbox(cfg.queue)
        self.sent = self.failed = self.undelivered = 0
        self.in_flight = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._work, name=self.label, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def offer(self, alert: Alert) -> None:
        self.outbox.put(alert)

    def pending(self) -> int:
        return len(self.outbox) + int(self.in_flight)

    def counters(self) -> dict:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.outbox.dropped,
                "pending": self.pending(), "undelivered": self.undelivered}

    def close(self, deadline: float) -> None:
        """Deliver what is queued until ``deadline`` (monotonic), then stop; what is left is counted."""
        while self.pending() and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        self.stopping.set()
        left = self.outbox.close()
        self.thread.join(timeout=max(0.0, deadline - time.monotonic()) + self.cfg.timeout_s)
        self.undelivered += len(left) + int(self.in_flight)

    def _work(self) -> None:
        while not self.stopping.is_set():
            alert = self.outbox.take(0.2)
            if alert is None:
                continue
            self.in_flight = True
            try:
                self._deliver(alert)
            finally:
                self.in_flight = False

    def _deliver(self, alert: Alert) -> None:
        body = alert.body(self.cfg.snapshots)
        for attempt in range(self.cfg.attempts):
            problem, retry = self._post(body)
            if problem is None:
                self.sent += 1
                return
            if not retry or attempt + 1 == self.cfg.attempts:
                break
            if self.stopping.wait(min(self.cfg.backoff_s * 2 ** attempt, MAX_BACKOFF_S)):
                self.undelivered += 1  # the run ended during the wait: not a refusal, not sent either
                return
        self.failed += 1
        if self.failed <= LOGGED_FAILURES or self.failed % 100 == 0:
            log.warning("%s: gave up on a %s alert of %s: %s (%d failed so far)", self.label, alert.kind,
                        alert.stream_id, problem, self.failed)

    def _post(self, body: bytes) -> tuple[str | None, bool]:
        """(None, _) on a 2xx reply, else (why, whether another try may succeed)."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.secret is not None:
            headers["X-Signature-256"] = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(self.cfg.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s) as reply:
                reply.read(1 << 16)
                return None, False
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}", exc.code >= 500 or exc.code == 429
        except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, unreachable, timed out, TLS
            return str(getattr(exc, "reason", exc))[:200], True
