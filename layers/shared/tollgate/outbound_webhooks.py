"""Signed outbound webhooks (Standard Webhooks) and the URL rules that keep them from reaching inside.

Signing: `webhook-id` (the event's stable id, the same on every retry), `webhook-timestamp` (Unix seconds of this
attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the endpoint's
`whsec_<base64 key>` secret.

SSRF: in AWS a URL must be https, on port 443 or above 1023, without credentials or control characters, to a host
whose every resolved address is public (no private, loopback, link-local, multicast, reserved or unspecified
address, also when wrapped in IPv6: mapped, 6to4, NAT64); locally http(s)://localhost is allowed too. The host is
resolved again right before each delivery and the request connects to exactly the addresses that check passed
(SNI and certificate checked against the name), so a DNS answer that changes between check and connect cannot
send it inside. Redirects are not followed, the whole request is bounded by one timeout and only a small prefix
of the answer is read.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from tollgate.errors import ValidationFailed

SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
SECRET_BYTES = 32
RESPONSE_PREFIX_CHARS = 256
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
USER_AGENT = "tollgate-webhooks/1"

Resolver = Callable[[str, int], list[str]]


def secret_context(endpoint_id: object) -> str:
    """The sealing context of an endpoint's secret: a sealed secret copied to another row does not open."""
    return f"webhook_endpoints.secret:{endpoint_id}"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(secret: str, msg_id: str, body: str, *, now: float | None = None) -> dict[str, str]:
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def system_resolver(host: str, port: int) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _is_public(address: str) -> bool:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried inside an IPv6 one (mapped, 6to4, NAT64) is judged as that IPv4 address.
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        ip = nat64 or ip.ipv4_mapped or ip.sixtofour or ip
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
        or not ip.is_global
    )


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL a webhook may be sent to, and the addresses it was checked at: the only ones to connect to
    (empty: a local host, resolved as usual)."""

    url: str
    addresses: tuple[str, ...]


def _refuse(message: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": "url"})


def resolve_url(url: str, *, allow_local: bool, resolver: Resolver = system_resolver) -> CheckedUrl:
    """The URL and its checked addresses if a webhook may be sent to it, else ValidationFailed saying why."""
    if len(url) > 2048:
        raise _refuse("the URL is longer than 2048 characters")
    # urlsplit quietly drops tabs and newlines: judge the text as given (no header can ride in a URL).
    if any(ch <= " " or ch == "\x7f" for ch in url):
        raise _refuse("the URL must not contain spaces or control characters")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in {"https", "http"} or not host:
        raise _refuse("the URL must be an absolute https URL")
    if parts.username or parts.password or "@" in parts.netloc:
        raise _refuse("the URL must not carry credentials")
    try:
        explicit = parts.port
    except ValueError as exc:
        raise _refuse("the URL's port is not a port") from exc
    if explicit == 0:
        raise _refuse("the URL's port is not a port")
    port = explicit or (443 if parts.scheme == "https" else 80)
    if allow_local and host in LOCAL_HOSTS:
        return CheckedUrl(url, ())
    if parts.scheme != "https":
        raise _refuse("the URL must use https")
    # 443 or an unprivileged port: the well-known ports below 1024 are other protocols' (ssh, smtp, ...).
    if port < 1024 and port != 443:
        raise _refuse("the URL's port must be 443 or above 1023")
    try:
        addresses = resolver(host, port)
    except (OSError, ValueError) as exc:
        raise _refuse("the URL's host does not resolve") from exc
    try:
        public = bool(addresses) and all(_is_public(a) for a in addresses)
    except ValueError:
        public = False
    if not public:
        raise _refuse("the URL's host resolves to a private, loopback or link-local address")
    return CheckedUrl(url, tuple(addresses))


def check_url(url: str, *, allow_local: bool, resolver: Resolver = system_resolver) -> str:
    """The URL if a webhook may be sent to it, else ValidationFailed saying why (nothing is requested)."""
    return resolve_url(url, allow_local=allow_local, resolver=resolver).url


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    status_code: int | None
    response_prefix: str | None
    error: str | None


class _PinnedConnection(http.client.HTTPConnection):
    """Connects only to the addresses the URL was checked at (never resolving the name again, so a DNS answer
    that changed since cannot redirect it) and can be cut off from another thread at the deadline."""

    def __init__(self, host: str, port: int, *, addresses: tuple[str, ...], deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self._addresses = addresses
        self._deadline = deadline
        self._open_socket: socket.socket | None = None
        self._aborted = threading.Event()

    def _tcp(self) -> socket.socket:
        targets = self._addresses or (self.host,)
        error: OSError = OSError("no address to connect to")
        for address in targets:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0 or self._aborted.is_set():
                raise TimeoutError("the delivery timed out")
            try:
                sock = socket.create_connection((address, self.port), remaining)
            except OSError as exc:
                error = exc
                continue
            self._open_socket = sock
            if self._aborted.is_set():
                sock.close()
                raise TimeoutError("the delivery timed out")
            return sock
        raise error

    def connect(self) -> None:
        self.sock = self._tcp()

    def abort(self) -> None:
        """Wake any read blocked on the socket: the whole request, not each read, is bounded by the timeout."""
        self._aborted.set()
        sock = self._open_socket
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _PinnedTLSConnection(_PinnedConnection):
    default_port = 443

    def __init__(self, host: str, port: int, *, addresses: tuple[str, ...], deadline: float) -> None:
        super().__init__(host, port, addresses=addresses, deadline=deadline)
        self._tls = ssl.create_default_context()

    def connect(self) -> None:
        raw = self._tcp()
        # SNI and certificate checks use the URL's name, whatever address was connected to.
        sock = self._tls.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        self._open_socket = self.sock = sock
        sock.do_handshake()


def send(url: str, body: str, headers: dict[str, str], *, timeout: float, addresses: Sequence[str] = ()) -> SendResult:
    """POST once to `addresses` (the checked ones; empty: resolve the local name); any 2xx is delivered.

    Redirects are answers, never followed. At most `timeout` seconds in all, connect to last byte; only a
    RESPONSE_PREFIX_CHARS prefix of the answer is read. Never raises for the receiver's faults.
    """
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    kind = _PinnedTLSConnection if parts.scheme == "https" else _PinnedConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn = kind(
            parts.hostname or "", parts.port or kind.default_port, addresses=tuple(addresses), deadline=deadline
        )
    except ValueError as exc:
        return SendResult(False, None, None, f"{type(exc).__name__}: {exc}"[:RESPONSE_PREFIX_CHARS])
    watchdog = threading.Timer(timeout, conn.abort)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        prefix = response.read(RESPONSE_PREFIX_CHARS).decode("utf-8", "replace")
        ok = 200 <= response.status < 300
        return SendResult(ok, response.status, prefix, None if ok else f"HTTP {response.status}")
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, TLS, not HTTP
        if time.monotonic() >= deadline:
            return SendResult(False, None, None, f"timed out after {timeout:g} s")
        return SendResult(False, None, None, f"{type(exc).__name__}: {exc}"[:RESPONSE_PREFIX_CHARS])
    finally:
        watchdog.cancel()
        conn.close()
