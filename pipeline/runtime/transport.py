"""The one way to open a ZeroMQ socket: a self-describing endpoint string.

    <pattern>+<bind|connect>:<zmq address>
    push+bind:ipc:///tmp/lss/detect      pull+connect:tcp://10.0.0.5:5551      pub+bind:tcp://127.0.0.1:5560

Every socket gets bounded queues (high-water marks) and, for tcp, optional CurveZMQ keys.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import zmq

log = logging.getLogger("pipeline.runtime.transport")
PATTERNS = {"push": zmq.PUSH, "pull": zmq.PULL, "pub": zmq.PUB, "sub": zmq.SUB}
# a frame link between hosts: the same flow as push/pull, plus a way back for the receiver's
# confirmations (pipeline.runtime.remote_ends); both sides of a split choose it alike
ROUTED = {"push": zmq.DEALER, "pull": zmq.ROUTER}
REPLY_HWM = 1024  # a routed link's way back carries only small confirmations: room for many streams'
REPLY_MAX_BYTES = 4096  # ... and none larger than this (a confirmation is under 100 bytes)
ACTIONS = ("bind", "connect")


class EndpointError(ValueError):
    pass


@dataclass(frozen=True)
class Endpoint:
    pattern: str
    action: str
    address: str

    @classmethod
    def parse(cls, spec: str) -> "Endpoint":
        head, sep, address = spec.partition(":")
        pattern, plus, action = head.partition("+")
        if not sep or not plus:
            raise EndpointError(f"endpoint {spec!r} is not '<pattern>+<bind|connect>:<address>'")
        if pattern not in PATTERNS:
            raise EndpointError(f"endpoint {spec!r}: pattern must be one of {sorted(PATTERNS)}")
        if action not in ACTIONS:
            raise EndpointError(f"endpoint {spec!r}: action must be bind or connect")
        if not address.startswith(("ipc://", "tcp://", "inproc://")):
            raise EndpointError(f"endpoint {spec!r}: address must start with ipc://, tcp:// or inproc://")
        if address.startswith("tcp://") and not address.rpartition(":")[2].isdigit():
            raise EndpointError(f"endpoint {spec!r}: a tcp address needs a port, e.g. tcp://127.0.0.1:5551")
        return cls(pattern, action, address)

    def __str__(self) -> str:
        return f"{self.pattern}+{self.action}:{self.address}"

    @property
    def is_tcp(self) -> bool:
        return self.address.startswith("tcp://")

    @property
    def ipc_path(self) -> Path | None:
        return Path(self.address[len("ipc://"):]) if self.address.startswith("ipc://") else None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address[len("tcp://"):].rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def binds_beyond_loopback(self) -> bool:
        if not (self.is_tcp and self.action == "bind"):
            return False
        host = self.host_port[0]
        if host in ("localhost",):
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:  # '*', an interface name or a host name
            return True


@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ key files (zmq.auth format): servers (binders) need server_secret; clients
    (connecters) need client_secret and server_public."""

    server_public: str | None = None
    server_secret: str | None = None
    client_public: str | None = None
    client_secret: str | None = None


def open_socket(ctx: zmq.Context, spec: str | Endpoint, *, hwm: int = 4, curve: CurveKeys | None = None,
                subscribe: bytes = b"", max_message_bytes: int | None = None, routed: bool = False) -> zmq.Socket:
    """``max_message_bytes``: a peer sending a larger message part is disconnected by ZeroMQ before the
    part is taken in (an untrusted sender cannot make a receiver hold gigabytes). ``routed``: a push or
    pull link between hosts, opened as DEALER or ROUTER (``ROUTED``)."""
    return _open(ctx, spec, hwm, curve, subscribe, max_message_bytes, watch_side=None, routed=routed)[0]


def open_watched_socket(ctx: zmq.Context, spec: str | Endpoint, side: str, *, hwm: int = 4,
                        curve: CurveKeys | None = None, max_message_bytes: int | None = None,
                        routed: bool = False) -> tuple[zmq.Socket, "LinkWatch"]:
    """``open_socket`` with a LinkWatch (``side``: "client" or "server") attached before the bind or
    connect: a handshake that fails at once, as a refused key does, happens before a monitor attached
    afterwards could hear it, and libzmq does not retry it, so the failure would go unseen."""
    sock, watch = _open(ctx, spec, hwm, curve, b"", max_message_bytes, watch_side=side, routed=routed)
    return sock, watch


def _open(ctx: zmq.Context, spec: str | Endpoint, hwm: int, curve: CurveKeys | None, subscribe: bytes,
          max_message_bytes: int | None, watch_side: str | None, routed: bool = False
          ) -> tuple[zmq.Socket, "LinkWatch | None"]:
    endpoint = spec if isinstance(spec, Endpoint) else Endpoint.parse(spec)
    if routed and endpoint.pattern not in ROUTED:
        raise EndpointError(f"endpoint {endpoint}: only push and pull links can run between hosts")
    sock = ctx.socket(ROUTED[endpoint.pattern] if routed else PATTERNS[endpoint.pattern])
    watch = None
    try:
        if max_message_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
        if watch_side is not None:
            watch = LinkWatch(sock, endpoint.address, side=watch_side)
        _configure(sock, endpoint, hwm, curve, subscribe)
    except BaseException:
        if watch is not None:
            watch.close()
        sock.close(0)  # an open socket would keep ctx.term() waiting
        raise
    return sock, watch


def _configure(sock: zmq.Socket, endpoint: Endpoint, hwm: int, curve: CurveKeys | None, subscribe: bytes) -> None:
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if sock.socket_type == zmq.ROUTER:  # the answers of a routed link: never dropped silently when the
        sock.setsockopt(zmq.SNDHWM, REPLY_HWM)  # queue is full (ROUTER_MANDATORY: EAGAIN instead)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    elif sock.socket_type == zmq.DEALER:
        sock.setsockopt(zmq.RCVHWM, REPLY_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, REPLY_MAX_BYTES)
    sock.setsockopt(zmq.LINGER, 2000)
    if endpoint.is_tcp and curve is not None:
        _apply_curve(sock, endpoint, curve)
    if endpoint.pattern == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if endpoint.action == "bind":
        if endpoint.ipc_path is not None:
            prepare_ipc_path(endpoint.ipc_path)
        sock.bind(endpoint.address)
        if endpoint.ipc_path is not None:
            os.chmod(endpoint.ipc_path, 0o600)  # only this user's processes may talk to a local pipeline
    else:
        sock.connect(endpoint.address)


def prepare_ipc_path(path: Path) -> None:
    """An ipc socket lives in a folder only this user can write (made 0700 if absent), and is never bound
    over one a live process still holds (ZeroMQ would silently take the path over from it)."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.geteuid():
        raise EndpointError(f"ipc folder {folder} belongs to another user (uid {info.st_uid})")
    if info.st_mode & 0o022:
        raise EndpointError(f"ipc folder {folder} is writable by other users, who could take its sockets over: "
                            "use a folder only you can write (transport.ipc_dir)")
    if path.exists() and _ipc_listening(path):
        raise EndpointError(f"ipc socket {path} is in use by another live process")
    path.unlink(missing_ok=True)  # a stale socket file of a process that is gone


def _ipc_listening(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def remove_ipc_sockets(specs, folder: str | None) -> None:
    """At the end of a run: the socket files of the run's bound ipc endpoints, then their folder if empty."""
    for spec in specs:
        path = Endpoint.parse(spec).ipc_path
        if path is not None and Endpoint.parse(spec).action == "bind":
            path.unlink(missing_ok=True)
    if folder:
        try:
            Path(folder).rmdir()
        except OSError:
            pass  # not empty (another run's sockets, a user's files) or already gone


def _apply_curve(sock: zmq.Socket, endpoint: Endpoint, keys: CurveKeys) -> None:
    import zmq.auth

    needed = ("server_secret",) if endpoint.action == "bind" else ("client_secret", "server_public")
    missing = [name for name in needed if getattr(keys, name) is None]
    if missing:
        raise EndpointError(f"endpoint {endpoint.address} ({endpoint.action}) with Curve needs "
                            f"transport.curve.{' and transport.curve.'.join(missing)}")
    if endpoint.action == "bind":
        public, secret = zmq.auth.load_certificate(keys.server_secret)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        if keys.client_public is not None:
            _admit_only(sock.context, keys.client_public)
    else:
        public, secret = zmq.auth.load_certificate(keys.client_secret)
        server_public, _ = zmq.auth.load_certificate(keys.server_public)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public


class _AllowedClients:
    """ZAP credentials check: a Curve client is admitted only with one of these public keys; each
    refusal is logged (the first ones, then every 100th) and counted (``refused_clients``)."""

    refused = 0

    def __init__(self, z85_keys: set[bytes]):
        self.z85_keys = z85_keys

    def callback(self, domain: str, z85_key: bytes) -> bool:
        if z85_key in self.z85_keys:
            return True
        _AllowedClients.refused += 1
        if _AllowedClients.refused <= 5 or _AllowedClients.refused % 100 == 0:
            log.warning("refused a Curve client whose key %s... is not transport.curve.client_public (%d so far)",
                        z85_key[:8].decode(errors="replace"), _AllowedClients.refused)
        return False


def refused_clients() -> int:
    """Curve clients this process's ZAP handler refused so far."""
    return _AllowedClients.refused


class LinkWatch:
    """A tcp socket's peers, watched through ZeroMQ's monitor events, so a link to another host has a
    visible state: who is connected, who left, and, on a Curve client, a server that does not admit
    this client (or is not the configured one) as a one-line problem instead of a silent hang.

    ``side`` is "client" (a connecting sender: its one server) or "server" (a bound receiver: the
    senders that completed the handshake). ``notes()`` returns the changes since the last call, as
    lines to log.
    """

    EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)

    def __init__(self, sock: zmq.Socket, address: str, side: str = "client"):
        self.address, self.side = address, side
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self.peers: set[int] = set()  # file descriptors of the peers that completed the handshake
        self.pending: list[int] = []  # connections (fds) whose handshake has not succeeded yet
        self.admitted = False         # client: the server took us in at least once
        self.handshakes = 0           # connections that completed the handshake so far (reconnects too)
        self.cut_short = 0            # client: connections closed before their handshake completed
        self._notes: list[str] = []
        self._problem: str | None = None

    @property
    def connected(self) -> bool:
        return bool(self.peers)

    def problem(self) -> str | None:
        """Read the events so far; the first handshake failure of a client, as a line, or None."""
        from zmq.utils.monitor import recv_monitor_message

        while self._problem is None and self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            self._on_event(event["event"], event["value"])
        return self._problem

    def notes(self) -> list[str]:
        self.problem()
        notes, self._notes = self._notes, []
        return notes

    def _on_event(self, event: int, fd: int) -> None:
        # libzmq reports the fd with CONNECTED/ACCEPTED/DISCONNECTED, but 0 with HANDSHAKE_SUCCEEDED:
        # a handshake completes the newest connection still waiting for one. A ZMTP peer greets within
        # milliseconds of connecting, while a connection that never greets (a port scan, a health
        # check) stays pending until it closes: pairing with the oldest gave its place to the next
        # real sender, which then "left" when the scan did
        if event in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
            self.pending.append(fd)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.peers.add(self.pending.pop() if self.pending else -1)
            self.handshakes += 1
            self._notes.append(f"connected to {self.address}" if self.side == "client" else
                               f"a sender connected on {self.address} ({len(self.peers)} now)")
            self.admitted = True
        elif event == zmq.EVENT_DISCONNECTED and fd in self.pending:
            self.pending.remove(fd)  # never admitted (a refused key): not a peer that left
            self._cut_short()
        elif event == zmq.EVENT_DISCONNECTED and self.peers:
            self.peers.discard(fd if fd in self.peers else next(iter(self.peers)))
            self._notes.append(f"lost the connection to {self.address}; reconnecting" if self.side == "client"
                               else f"a sender left {self.address} ({len(self.peers)} now)")
        elif self.side == "client" and event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._problem = (f"not admitted by {self.address}: its transport.curve.client_public is not this "
                             "host's client key (transport.curve.client_secret)")
        elif self.side == "client" and event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and not self.admitted:
            self._problem = (f"the Curve handshake with {self.address} failed: is transport.curve.server_public "
                             "the key of the server there?")

    def _cut_short(self) -> None:
        """A client whose connection closed before the handshake (a peer of another socket type: the
        other host runs another version of the pipeline, or no pipeline) says so, now and then."""
        if self.side != "client":
            return
        self.cut_short += 1
        if self.cut_short in (1, 30) or self.cut_short % 300 == 0:  # (libzmq gives up on a wrong socket type)
            self._notes.append(f"a connection to {self.address} closed before its handshake ({self.cut_short} so "
                               "far): does the other host run this version of the pipeline?")

    def close(self) -> None:
        self.monitor.close(0)


def connect_problem(ep: "Endpoint", timeout_s: float = 2.0) -> str | None:
    """One TCP connection attempt to a tcp endpoint's host and port: None if it opened, else why not."""
    try:
        socket.create_connection(ep.host_port, timeout=timeout_s).close()
        return None
    except OSError as exc:
        return exc.strerror or str(exc)


_authenticators: dict[int, object] = {}  # one ZAP handler thread per context


def _admit_only(ctx: zmq.Context, client_public: str) -> None:
    """Without a ZAP handler libzmq admits any client that knows the server's public key; with one,
    only the configured client key gets in (the others fail the handshake and are never heard)."""
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    public, _ = zmq.auth.load_certificate(client_public)
    auth = _authenticators.get(id(ctx))
    if auth is None:
        auth = _authenticators[id(ctx)] = ThreadAuthenticator(ctx)
        auth.start()
    auth.configure_curve_callback("*", credentials_provider=_AllowedClients({public}))


def close_context(ctx: zmq.Context) -> None:
    """Terminate a context whose sockets are closed; its ZAP handler goes first (term() would wait on
    that thread's socket forever)."""
    auth = _authenticators.pop(id(ctx), None)
    if auth is not None:
        auth.stop()
    ctx.term()
