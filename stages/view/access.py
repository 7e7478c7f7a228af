"""Who may see the view: the Host check on loopback, the access token, the signed session cookie, TLS.

Without a token (loopback only, enforced by the config schema) a request must name a loopback host or
the configured one in its ``Host`` header, so a page on an attacker's domain that resolves to
127.0.0.1 (DNS rebinding) is refused. With a token a request carries it (``?token=``, ``X-View-Token``,
``Authorization: Bearer``) or a session cookie: opening ``/?token=...`` trades the token for a cookie
``<expiry>.<HMAC-SHA256(expiry)>`` keyed with a hash of the token, so the cookie never holds the token,
ends after ``session_hours``, survives a restart of the view and dies when the token is changed.
"""
from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from pathlib import Path

from pipeline.runtime.config import is_loopback

SESSION_COOKIE = "view_session"


class Sessions:
    """Signed, expiring session cookies for one access token."""

    def __init__(self, token: str, hours: float):
        self.key = hashlib.sha256(b"lss-view-session\0" + token.encode()).digest()
        self.lifetime_s = int(hours * 3600)

    def issue(self, now: float | None = None) -> str:
        expiry = int((now if now is not None else time.time()) + self.lifetime_s)
        return f"{expiry}.{self._sign(expiry)}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        expiry, _, signature = (cookie or "").partition(".")
        if not (expiry.isdigit() and len(expiry) <= 12 and len(signature) == 64):
            return False
        if not hmac.compare_digest(signature, self._sign(int(expiry))):
            return False
        return int(expiry) > (now if now is not None else time.time())

    def _sign(self, expiry: int) -> str:
        return hmac.new(self.key, str(expiry).encode(), hashlib.sha256).hexdigest()


def offered_tokens(query: dict, headers) -> list[str]:
    """Every place a request may carry the token."""
    offered = [query.get("token", ""), headers.get("X-View-Token", "")]
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        offered.append(auth[len("Bearer "):])
    return [o for o in offered if o]


def token_matches(offered: list[str], token: str) -> bool:
    return any(hmac.compare_digest(o.encode(), token.encode()) for o in offered)


def host_allowed(host_header: str, configured_host: str) -> bool:
    """A loopback name or address, or the configured host: never a name an attacker's DNS points here."""
    host = _host_name(host_header).strip("[]")
    return bool(host) and (is_loopback(host) or host == configured_host)


def _host_name(host_header: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1', '[::1]:8080' -> '[::1]'."""
    if host_header.startswith("["):
        return host_header.split("]", 1)[0] + "]"
    return host_header.rsplit(":", 1)[0]


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
