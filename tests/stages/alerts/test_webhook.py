"""Webhooks (stages/alerts/webhook.py) against a real local HTTP server: retries after 500s, no
retry after a 4xx, an HMAC signature the receiver can check, and a receiver that never answers."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.runtime.schema import ConfigError, build
from stages.alerts.alert import EVENT_KINDS, from_event
from stages.alerts.webhook import WebhookConfig, WebhookSink
from tests.conftest import free_port

SECRET = b"s3cret"


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next status of ``statuses`` (then 200), keeps what it got."""

    def __init__(self, statuses=(), delay_s: float = 0.0):
        self.statuses, self.delay_s = list(statuses), delay_s
        self.requests: list[tuple[int, dict, bytes]] = []  # (status sent, headers, body)
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def delivered(self) -> list[dict]:
        return [json.loads(body) for status, _, body in self.requests if status == 200]


class ReceiverHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.server.delay_s)
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.server.requests.append((status, dict(self.headers), body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def alert(track_id: int):
    return from_event({"type": "track_confirmed", "stream_id": "cam0", "track_id": track_id, "t": time.time()},
                      set(EVENT_KINDS), {"cam0"})


def sink_for(url: str, secret: bytes | None = None, **settings) -> WebhookSink:
    sink = WebhookSink(0, build(WebhookConfig, {"url": url, "backoff_s": 0.05, **settings}, "w"), secret)
    sink.start()
    return sink


def wait_until(condition, timeout_s: float = 10) -> None:
    deadline = time.time() + timeout_s
    while not condition() and time.time() < deadline:
        time.sleep(0.02)


def test_alerts_arrive_signed_and_in_order_even_after_the_receiver_fails_a_few_times():
    receiver = Receiver(statuses=[500, 503, 429])
    sink = sink_for(receiver.url, SECRET)
    try:
        for track_id in (1, 2, 3):
            sink.offer(alert(track_id))
        wait_until(lambda: sink.sent == 3)
        assert [a["track_id"] for a in receiver.delivered()] == [1, 2, 3]
        assert [status for status, _, _ in receiver.requests] == [500, 503, 429, 200, 200, 200]
        for _, headers, body in receiver.requests:
            expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Signature-256"], expected)
            assert headers["Content-Type"] == "application/json"
        assert sink.counters() == {"sent": 3, "failed": 0, "dropped": 0, "pending": 0, "undelivered": 0}
    finally:
        sink.close(time.monotonic() + 1)
        receiver.shutdown()


def test_a_receiver_that_says_no_is_not_asked_again_and_the_failure_is_counted():
    receiver = Receiver(statuses=[404])
    sink = sink_for(receiver.url)
    try:
        sink.offer(alert(1))
        sink.offer(alert(2))
        wait_until(lambda: sink.sent + sink.failed == 2)
        assert (sink.failed, sink.sent, len(receiver.requests)) == (1, 1, 2)
    finally:
        sink.close(time.monotonic() + 1)
        receiver.shutdown()


def test_an_absent_receiver_costs_attempts_then_counts_a_failure():
    sink = sink_for(f"http://127.0.0.1:{free_port()}/hook", attempts=3)
    try:
        sink.offer(alert(1))
        wait_until(lambda: sink.failed == 1)
        assert sink.counters()["failed"] == 1 and sink.sent == 0
    finally:
        sink.close(time.monotonic() + 1)


def test_what_a_slow_receiver_still_holds_at_the_end_is_counted_undelivered():
    receiver = Receiver(delay_s=0.5)
    sink = sink_for(receiver.url, timeout_s=2, queue=3)
    try:
        for track_id in range(6):  # one in flight, three queued, two pushed out of the full queue
            sink.offer(alert(track_id))
            time.sleep(0.01)
        started = time.monotonic()
        sink.close(time.monotonic() + 0.6)
        assert time.monotonic() - started < 3  # the end of a run waits for a stuck receiver no longer than that
        counts = sink.counters()
        assert counts["sent"] + counts["dropped"] + counts["undelivered"] == 6 and counts["dropped"] >= 1
        assert counts["undelivered"] >= 1
    finally:
        receiver.shutdown()


@pytest.mark.parametrize("url", ["ftp://example.org/x", "example.org/hook", "http://"])
def test_a_webhook_url_must_be_http_or_https(url):
    with pytest.raises(ConfigError, match=r"'w.url' must be an http:// or https:// URL"):
        build(WebhookConfig, {"url": url}, "w")
