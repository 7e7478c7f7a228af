"""The view's connections as a careless network or an attacker makes them: capped and on a deadline.

aiohttp holds no thread per connection, but every open socket still costs a file descriptor and some
memory, and aiohttp has no deadline for a request's head: a client trickling one header line every few
seconds would hold its connection for as long as it likes. So every connection goes through
``GuardedHandler`` (aiohttp's own protocol, with these checks around it):
- at most ``max_connections`` open in all and ``max_connections_per_client`` from one address; one more
  is answered ``503`` with ``Retry-After`` and closed (what it sent is read and discarded first, so the
  client gets the answer instead of a reset);
- a connection must complete a request head within ``header_timeout_s`` of opening, and of finishing
  its previous response (a kept-alive idle connection is closed after as long); a request being served
  (a video stream, a file) has no deadline here: a client that stops reading one is cut by the write
  deadline of its handler;
- aiohttp's own error answers (a malformed request line, oversized headers) carry the security
  headers like every other response.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("stages.view")
REFUSED_LINGER_S = 1.0  # a refused connection is read (and discarded) this long, then closed
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; media-src 'self'; connect-src 'self'",
    "Cache-Control": "no-store",
}


def add_security_headers(headers) -> None:
    """Every response: no sniffing, no framing, no referrer, only our own scripts; not cached unless
    the handler said otherwise."""
    for key, value in SECURITY_HEADERS.items():
        headers.setdefault(key, value)
    headers["Server"] = "lss-view"  # not aiohttp's and Python's versions


class ConnectionGuard:
    """Open connections per client address and in all (used on the event loop only)."""

    def __init__(self, max_total: int, max_per_client: int, header_timeout_s: float, stats,
                 tls: ssl.SSLContext | None = None, on_lost=None):
        self.tls = tls  # HTTPS: GuardedHandler runs the handshake itself
        self.on_lost = on_lost  # called when a connection closes: a handler waiting for frames looks again
        self.max_total, self.max_per_client = max_total, max_per_client
        self.header_timeout_s, self.stats = header_timeout_s, stats
        self.per_client: dict[str, int] = {}
        self.total = 0

    def admit(self, address: str) -> str | None:
        """None if the connection may proceed (and counts), else why not."""
        if self.total >= self.max_total:
            return "too many connections"
        if self.per_client.get(address, 0) >= self.max_per_client:
            return "too many connections from your address"
        self.total += 1
        self.per_client[address] = self.per_client.get(address, 0) + 1
        self.stats.count("connections")
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        self.stats.count("connections", -1)
        left = self.per_client.get(address, 1) - 1
        if left > 0:
            self.per_client[address] = left
        else:
            self.per_client.pop(address, None)


def refusal(reason: str) -> bytes:
    body = f"503 {reason}\n".encode()
    head = ["HTTP/1.1 503 Service Unavailable", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}", "Retry-After: 5", "Connection: close",
            *(f"{key}: {value}" for key, value in SECURITY_HEADERS.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection protocol under the ConnectionGuard's caps and head deadline."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs):
        super().__init__(manager, **kwargs)
        self.guard = guard
        self.address = ""
        self.admitted = False
        self.refused_transport: asyncio.Transport | None = None
        self.busy = 0  # requests of this connection being served (their head is complete)
        self.deadline: asyncio.TimerHandle | None = None
        self.handshake: asyncio.Future | None = None
        self.early: list[bytes] = []  # data that came before the connection was handed to aiohttp

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        reason = self.guard.admit(self.address)
        if reason is not None:
            self._refuse(transport, reason)
            return
        self.admitted = True
        if self.guard.tls is None:
            self._start(transport)
        else:  # the handshake is ours, under the head deadline, so a failure is one line in the log
            self.handshake = asyncio.ensure_future(self._handshake(transport))

    def _start(self, transport) -> None:
        super().connection_made(transport)
        self._arm()
        early, self.early = self.early, []
        for data in early:
            super().data_received(data)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        try:
            tls = await self._loop.start_tls(raw, self, self.guard.tls, server_side=True,
                                             ssl_handshake_timeout=self.guard.header_timeout_s)
        except (OSError, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.info("connection from %s failed: TLS handshake: %s", self.address,
                     (str(exc) or type(exc).__name__)[:200])
            raw.close()
            self.admitted = False
            self.guard.release(self.address)
            return
        if tls is None or raw.is_closing():
            return
        self._start(tls)

    def _refuse(self, transport, reason: str) -> None:
        self.guard.stats.count("refused_connections")
        self.refused_transport = transport
        transport.write(refusal(reason))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(REFUSED_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return  # refused: what it sends is discarded
        if self.transport is None:  # TLS 1.3 data can come with the handshake's end, before _start
            self.early.append(data)
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if self.refused_transport is not None:
            self.refused_transport.close()
            return None
        return super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self._disarm()
        self.guard.release(self.address)
        super().connection_lost(exc)
        if self.guard.on_lost is not None:
            self.guard.on_lost()

    # ------------------------------------------------------------ the head deadline
    def request_started(self) -> None:
        self.busy += 1
        self._disarm()

    def request_finished(self) -> None:
        self.busy -= 1
        if self.busy == 0 and self.admitted:
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self._loop.call_later(self.guard.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self) -> None:
        self.deadline = None
        if self.busy == 0 and self.transport is not None:
            self.guard.stats.count("timed_out")
            log.debug("closed a connection from %s: no request within %.0f s", self.address,
                      self.guard.header_timeout_s)
            self.transport.close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        add_security_headers(response.headers)
        return response

    def log_exception(self, *args, **kwargs) -> None:
        """A malformed request is anyone's doing (a scanner, plain HTTP to a TLS port): one line; any
        other error is ours and keeps its traceback."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            log.info("bad request from %s: %s", self.address, str(exc).splitlines()[0][:200] if str(exc) else
                     type(exc).__name__)
        else:
            super().log_exception(*args, **kwargs)
