"""The view's HTTP side on aiohttp: the page, MJPEG video, state over a WebSocket, recordings.

Why aiohttp: one well-kept asyncio package gives the server, WebSockets and a file response with byte
ranges and conditional requests (ETag, If-Modified-Since, If-Range), with no thread per client and no
ASGI server beside it. It runs its own event loop in a thread of the view process; the ZeroMQ
subscriber loop stays on the main thread and hands frames over through ``FrameHub`` (never waiting
for a browser). Connections are capped and held to a head deadline by ``guard.GuardedHandler``.

Routes (GET and HEAD only): ``/`` (``?token=`` trades the token for a session cookie), ``/static/*``,
``/api/state``, ``/api/recordings``, ``/ws`` (the page state pushed at each event and twice a second),
``/video?stream=a&stream=b`` and ``/stream/<id>.mjpg`` (MJPEG), ``/frame/<id>.jpg``,
``/thumb/<n>.jpg``, ``/recordings/<stream>/<file>``, ``/recordings/events.jsonl``.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from stages.view.access import SESSION_COOKIE, Sessions, host_allowed, offered_tokens, token_matches
from stages.view.guard import ConnectionGuard, GuardedHandler, add_security_headers

if TYPE_CHECKING:
    from stages.view import ViewStage

log = logging.getLogger("stages.view")
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
RECORDING_TYPES = {".mp4": "video/mp4", ".mkv": "video/x-matroska", ".ts": "video/mp2t",
                   ".jsonl": "application/x-ndjson"}
VIEW = web.AppKey("view", object)
SESSIONS = web.AppKey("sessions", object)
GONE_CHECK_S = 1.0  # a silent stream looks this often that its client is still there (and at every close)
STATE_PUSH_S = 0.5  # the page state goes out at least this often over /ws
STATE_MIN_GAP_S = 0.1  # and at most 10 times a second, however many events arrive
SHUTDOWN_S = 2.0


# ---------------------------------------------------------------- middlewares
@web.middleware
async def request_scope(request: web.Request, handler):
    """The connection guard's view of a request: its head is in, so the head deadline stops."""
    protocol = request.protocol
    guarded = isinstance(protocol, GuardedHandler)
    if guarded:
        protocol.request_started()
    try:
        return await handler(request)
    finally:
        if guarded:
            protocol.request_finished()


@web.middleware
async def access(request: web.Request, handler):
    """Host check without a token; the token or a valid session cookie with one."""
    view = request.app[VIEW]
    token = view.settings.token
    if not token:
        if not host_allowed(request.headers.get("Host", ""), view.settings.host):
            raise web.HTTPForbidden(text="403 unexpected Host header\n")
        return await handler(request)
    offered = offered_tokens(request.query, request.headers)
    if token_matches(offered, token):
        if request.query.get("token") and request.path in ("/", "/index.html"):
            return login_redirect(request)
        return await handler(request)
    if request.app[SESSIONS].valid(request.cookies.get(SESSION_COOKIE)):
        return await handler(request)
    view.stats.count("rejected")
    raise web.HTTPUnauthorized(text="401 access token required: open the page as /?token=<token>\n")


def login_redirect(request: web.Request) -> web.Response:
    """Trade ?token= for a signed, expiring session cookie and drop it from the address bar (and history)."""
    view = request.app[VIEW]
    sessions: Sessions = request.app[SESSIONS]
    response = web.Response(status=303, headers={"Location": "/"})
    response.set_cookie(SESSION_COOKIE, sessions.issue(), max_age=sessions.lifetime_s, path="/", httponly=True,
                        samesite="Strict", secure=bool(view.settings.tls_cert))
    return response


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    add_security_headers(response.headers)


# ---------------------------------------------------------------- handlers
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name", "index.html")
    if name not in STATIC_TYPES:
        raise web.HTTPNotFound(text="404 not found\n")
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": STATIC_TYPES[name]})


async def api_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[VIEW].page_state())  # fresh: what a script asks for is now


async def api_recordings(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[VIEW].recordings))


async def still(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    frame = view.hub.newest(request.match_info["stream"])
    if frame is None:
        raise web.HTTPNotFound(text="404 no frame yet\n")
    return web.Response(body=await view.hub.jpeg(frame), content_type="image/jpeg")


async def thumb(request: web.Request) -> web.Response:
    data = request.app[VIEW].state.thumb(int(request.match_info["n"]))
    if data is None:
        raise web.HTTPNotFound(text="404 no such thumbnail\n")
    return web.Response(body=data, content_type="image/jpeg")


async def recording(request: web.Request) -> web.StreamResponse:
    """Only files the recorder writes, under the output folder, served with ranges and conditions."""
    stream, name = request.match_info.get("stream"), request.match_info.get("name", "events.jsonl")
    path = await asyncio.to_thread(request.app[VIEW].recording_path, stream, name)
    if path is None:
        raise web.HTTPNotFound(text="404 no such recording\n")
    return web.FileResponse(path, headers={"Content-Type": RECORDING_TYPES[path.suffix], "Cache-Control": "no-cache"})


async def one_stream(request: web.Request) -> web.StreamResponse:
    return await mjpeg(request, [request.match_info["stream"]])


async def many_streams(request: web.Request) -> web.StreamResponse:
    return await mjpeg(request, request.query.getall("stream", []))


async def mjpeg(request: web.Request, stream_ids: list[str]) -> web.StreamResponse:
    """MJPEG of one or several streams on one connection (a browser opens at most 6 per host).

    Each part names its stream and timing in headers, so the page's script can route parts to tiles
    and measure latency; with one stream it also plays in a plain <img> or browser tab. Whenever this
    client is ready it gets the newest frame of each stream; frames it was too slow for are skipped
    (counted as dropped_stale). A client gone while its cameras are silent is noticed within
    GONE_CHECK_S; one that stops reading is cut after ``write_timeout_s``."""
    view = request.app[VIEW]
    if not stream_ids or any(s not in view.known_streams() for s in stream_ids):
        raise web.HTTPNotFound(text="404 unknown stream\n")
    if not view.admit_client():
        raise web.HTTPServiceUnavailable(text="503 too many viewers\n", headers={"Retry-After": "5"})
    response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"})
    try:
        await response.prepare(request)
        await _write(request, response, b"--frame\r\n")
        await _stream_frames(request, response, stream_ids)
    except (ConnectionError, TimeoutError):
        pass  # the browser went away or stopped reading
    finally:
        view.release_client()
    return response


async def _stream_frames(request: web.Request, response: web.StreamResponse, stream_ids: list[str]) -> None:
    view = request.app[VIEW]
    seen: dict[str, int] = {}
    numbers: dict[str, int] = {}
    while not view.hub.closed and not _gone(request):
        for frame in await view.hub.wait_newer(stream_ids, seen, timeout=GONE_CHECK_S):
            jpeg = await view.hub.jpeg(frame)
            if frame.stream_id in numbers:  # frames that came while this client was busy
                view.stats.count("dropped_stale", frame.number - numbers[frame.stream_id] - 1)
            head = (f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                    f"X-Stream-Id: {quote(frame.stream_id, safe='')}\r\nX-Frame-Index: {frame.frame_index}\r\n"
                    f"X-Capture-Wall: {frame.capture_wall:.6f}\r\n\r\n").encode()
            # the closing boundary goes out with the frame, so a browser shows it at once
            await _write(request, response, head + jpeg + b"\r\n--frame\r\n")
            seen[frame.stream_id], numbers[frame.stream_id] = frame.seq, frame.number


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write within the deadline, or drop the connection (a client that stopped reading holds nothing)."""
    try:
        await asyncio.wait_for(response.write(data), request.app[VIEW].settings.write_timeout_s)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise


async def state_socket(request: web.Request) -> web.WebSocketResponse:
    """The page state (streams, tracks, events, stage health) pushed at each event, at least every
    STATE_PUSH_S; what the client sends is read and ignored (pings and closing are aiohttp's)."""
    view = request.app[VIEW]
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=4096)
    await ws.prepare(request)
    reader = asyncio.ensure_future(_ignore_incoming(ws))
    try:
        while not ws.closed and not view.hub.closed:
            marker = view.changed.marker()
            await ws.send_str(view.page_json())
            waiter = asyncio.ensure_future(view.changed.wait(marker, STATE_PUSH_S))
            await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if reader.done():
                break
            await asyncio.sleep(STATE_MIN_GAP_S)
    except (ConnectionError, TimeoutError):
        pass
    finally:
        reader.cancel()
        await ws.close()
    return ws


async def _ignore_incoming(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


def make_app(view: "ViewStage") -> web.Application:
    app = web.Application(middlewares=[request_scope, access], client_max_size=4096)
    app[VIEW] = view
    app[SESSIONS] = Sessions(view.settings.token or "", view.settings.session_hours)
    app.on_response_prepare.append(on_prepare)
    app.router.add_get("/", static)
    app.router.add_get("/index.html", static)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/api/recordings", api_recordings)
    app.router.add_get("/ws", state_socket)
    app.router.add_get("/video", many_streams)
    app.router.add_get("/stream/{stream}.mjpg", one_stream)
    app.router.add_get("/frame/{stream}.jpg", still)
    app.router.add_get(r"/thumb/{n:\d{1,9}}.jpg", thumb)
    app.router.add_get("/recordings/events.jsonl", recording)
    app.router.add_get("/recordings/{stream}/{name}", recording)
    return app


# ---------------------------------------------------------------- the server thread
class ViewServer:
    """The aiohttp app on its own event loop in a daemon thread: ``start`` binds (OSError if it cannot)
    and returns the bound (host, port); ``stop`` closes every connection and the loop."""

    def __init__(self, view: "ViewStage", tls: ssl.SSLContext | None):
        self.view, self.tls = view, tls
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="view-http", daemon=True)
        self.runner: web.AppRunner | None = None
        self.server: asyncio.AbstractServer | None = None

    def start(self) -> tuple[str, int]:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> tuple[str, int]:
        s = self.view.settings
        self.view.hub.changed.bind(self.loop)
        self.view.changed.bind(self.loop)
        self.runner = web.AppRunner(make_app(self.view), handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await self.runner.setup()
        guard = ConnectionGuard(s.max_connections, s.max_connections_per_client, s.header_timeout_s, self.view.stats,
                                self.tls, on_lost=self.view.hub.changed.wake)
        manager = self.runner.server

        def protocol() -> GuardedHandler:
            return GuardedHandler(manager, guard, loop=self.loop, keepalive_timeout=2 * s.header_timeout_s,  # ours fires first, counted
                                  access_log=None, max_line_size=8190, max_field_size=8190, max_headers=64)

        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        self.server = await self.loop.create_server(
            protocol, s.host, s.port, family=family, backlog=s.backlog, reuse_address=True)
        return self.server.sockets[0].getsockname()[:2]

    def stop(self) -> None:
        if self.thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=SHUTDOWN_S + 5)
            except (TimeoutError, RuntimeError) as exc:
                log.warning("the view's HTTP server did not stop cleanly: %s", exc)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.runner is not None:
            await self.runner.cleanup()
