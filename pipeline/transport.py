"""The one way to open a ZeroMQ socket: a self-describing endpoint string.

    <pattern>+<bind|connect>:<zmq address>
    push+bind:ipc:///tmp/lss/detect      pull+connect:tcp://10.0.0.5:5551      pub+bind:tcp://127.0.0.1:5560

Every socket gets bounded queues (high-water marks) and, for tcp, optional CurveZMQ keys.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import zmq

PATTERNS = {"push": zmq.PUSH, "pull": zmq.PULL, "pub": zmq.PUB, "sub": zmq.SUB}
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
                subscribe: bytes = b"") -> zmq.Socket:
    endpoint = spec if isinstance(spec, Endpoint) else Endpoint.parse(spec)
    sock = ctx.socket(PATTERNS[endpoint.pattern])
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 2000)
    if endpoint.is_tcp and curve is not None:
        _apply_curve(sock, endpoint, curve)
    if endpoint.pattern == "sub":
        sock.setsockopt(zmq.SUBSCRIBE, subscribe)
    if endpoint.action == "bind":
        if endpoint.ipc_path is not None:
            endpoint.ipc_path.parent.mkdir(parents=True, exist_ok=True)
        sock.bind(endpoint.address)
        if endpoint.ipc_path is not None:
            os.chmod(endpoint.ipc_path, 0o600)  # only this user's processes may talk to a local pipeline
    else:
        sock.connect(endpoint.address)
    return sock


def _apply_curve(sock: zmq.Socket, endpoint: Endpoint, keys: CurveKeys) -> None:
    import zmq.auth

    if endpoint.action == "bind":
        public, secret = zmq.auth.load_certificate(keys.server_secret)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
    else:
        public, secret = zmq.auth.load_certificate(keys.client_secret)
        server_public, _ = zmq.auth.load_certificate(keys.server_public)
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server_public
