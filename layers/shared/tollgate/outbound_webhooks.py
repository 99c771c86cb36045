"""Signed outbound webhooks (Standard Webhooks) and the URL rules that keep them from reaching inside.

Signing: `webhook-id` (the event's stable id, the same on every retry), `webhook-timestamp` (Unix seconds of this
attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the endpoint's
`whsec_<base64 key>` secret.

SSRF: in AWS a URL must be https to a host whose every resolved address is public (no private, loopback,
link-local, multicast, reserved or unspecified address); locally http(s)://localhost is allowed too. The host is
resolved again right before each delivery (a DNS answer that changed to an inside address is refused then),
redirects are not followed, the request has a bounded timeout and only a small prefix of the answer is kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
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


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"))  # CGNAT
    )


def check_url(url: str, *, allow_local: bool, resolver: Resolver = system_resolver) -> str:
    """The URL if a webhook may be sent to it, else ValidationFailed saying why (nothing is requested)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in {"https", "http"} or not host:
        raise ValidationFailed("the URL must be an absolute https URL", details={"field": "url"})
    if parts.username or parts.password:
        raise ValidationFailed("the URL must not carry credentials", details={"field": "url"})
    if len(url) > 2048:
        raise ValidationFailed("the URL is longer than 2048 characters", details={"field": "url"})
    if allow_local and host in LOCAL_HOSTS:
        return url
    if parts.scheme != "https":
        raise ValidationFailed("the URL must use https", details={"field": "url"})
    try:
        port = parts.port or 443
        addresses = resolver(host, port)
    except (OSError, ValueError) as exc:
        raise ValidationFailed("the URL's host does not resolve", details={"field": "url"}) from exc
    if not addresses or not all(_is_public(a) for a in addresses):
        raise ValidationFailed(
            "the URL's host resolves to a private, loopback or link-local address", details={"field": "url"}
        )
    return url


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    status_code: int | None
    response_prefix: str | None
    error: str | None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer (a failure), never followed to where it points


_OPENER = urllib.request.build_opener(_NoRedirect)


def send(url: str, body: str, headers: dict[str, str], *, timeout: float) -> SendResult:
    """POST once; any 2xx is delivered. Never raises for the receiver's faults."""
    # check_url admitted only http(s) URLs (S310).
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            prefix = response.read(RESPONSE_PREFIX_CHARS).decode("utf-8", "replace")
            return SendResult(200 <= response.status < 300, response.status, prefix, None)
    except urllib.error.HTTPError as exc:
        prefix = exc.read(RESPONSE_PREFIX_CHARS).decode("utf-8", "replace") if exc.fp is not None else None
        return SendResult(False, exc.code, prefix, f"HTTP {exc.code}")
    except (OSError, ValueError) as exc:  # refused, timed out, TLS, a bad URL
        return SendResult(False, None, None, f"{type(exc).__name__}: {exc}"[:RESPONSE_PREFIX_CHARS])
