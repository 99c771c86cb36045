"""Where the current request came from (source IP, user agent), for the audit trail.

The HTTP edge binds it for the length of one request and clears it afterwards; the audit writer reads it, so
services record a request's origin without knowing HTTP. A context variable, not a global: the local gateway
serves requests on threads (each thread has its own context) and Lambda serves one at a time. Outside a request
(jobs, the CLI) nothing is bound and audit rows carry no origin.

    with bound(RequestOrigin(ip="203.0.113.9", user_agent="curl/8")):
        ...                     # current() is that origin here
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

# Bounds of the audit_logs columns: an IPv6 address with a zone fits in 64; user agents are cut, not refused.
IP_MAX_LENGTH = 64
USER_AGENT_MAX_LENGTH = 512


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    ip: str | None = None
    user_agent: str | None = None


_NOWHERE = RequestOrigin()
_current: ContextVar[RequestOrigin] = ContextVar("tollgate_request_origin", default=_NOWHERE)


def _clean(value: object, limit: int) -> str | None:
    # Only printable text reaches a column: a header is the caller's to write.
    text = "".join(ch for ch in str(value or "") if ch.isprintable())[:limit].strip()
    return text or None


def origin_of(ip: object, user_agent: object) -> RequestOrigin:
    """An origin from raw request values, bounded to what the audit columns hold."""
    return RequestOrigin(ip=_clean(ip, IP_MAX_LENGTH), user_agent=_clean(user_agent, USER_AGENT_MAX_LENGTH))


def current() -> RequestOrigin:
    """The origin bound for the request being served (empty outside one)."""
    return _current.get()


@contextmanager
def bound(origin: RequestOrigin) -> Iterator[RequestOrigin]:
    """Bind `origin` while the block runs; the previous value (normally none) comes back after it, even on error."""
    token = _current.set(origin)
    try:
        yield origin
    finally:
        _current.reset(token)
