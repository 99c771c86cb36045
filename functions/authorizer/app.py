"""The Lambda authorizer of the HTTP API (payload 2.0, simple responses).

It accepts `Authorization: Bearer <token>` (a Tollgate access token, or a Clerk session token when
AUTH_MODE=clerk) or `X-Api-Key: <key>`, and passes `user_id`, `role`, `session_id`, `tier`, `credential`,
`scopes` and `auth_time` in its context. A key reaches only the routes whose declared scope it holds
(tollgate.auth.scopes); credential routes admit sessions only.
API Gateway's own authorizer cache is off (no identity source, ReauthorizeEvery 0); this container keeps a
short cache of verdicts keyed by the token's hash instead (AUTHORIZER_CACHE_SECONDS, never past the token's
expiry; denials for 5 seconds), so revocation takes effect within that delay. Staff verdicts (ADMIN, SUPPORT)
are never cached: each staff request re-reads the user, so a demotion or suspension of staff bites at once.
When the database cannot serve, the authorizer cannot decide: it lets the request through marked unavailable,
without any identity and without caching, and the function answers 503 dependency_unavailable (an authorizer
that raises would make API Gateway answer its own 500, which tells a client nothing).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.engine import is_unavailable
from tollgate.http.authorizer_context import UNAVAILABLE_CONTEXT
from tollgate.observability import logger, tracer
from tollgate.services.authorizer import (
    Verdict,
    allows_route,
    authorize_api_key,
    authorize_bearer,
)

DENY: dict[str, Any] = {"isAuthorized": False}
DENY_CACHE_SECONDS = 5.0
CACHE_SIZE = 2048
MAX_CREDENTIAL_LENGTH = 8192


class VerdictCache:
    """A small LRU of (deadline, answer) keyed by a hash of the credential (raw tokens are not kept)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= now:
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return item[1]

    def put(self, key: str, answer: dict[str, Any], until: float) -> None:
        with self._lock:
            self._items[key] = (until, answer)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


cache = VerdictCache()


def _credential(headers: dict[str, str]) -> tuple[str, str] | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    authorization = (lowered.get("authorization") or "").strip()
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return "bearer", token.strip()
        return None
    api_key = (lowered.get("x-api-key") or "").strip()
    if api_key:
        return "api_key", api_key
    return None


def decide(event: dict[str, Any]) -> dict[str, Any]:
    answer = _verdict(event)
    if answer.get("isAuthorized") and answer["context"] != UNAVAILABLE_CONTEXT:
        context = answer["context"]
        allowed = allows_route(
            context.get("status", ""),
            event.get("routeKey", ""),
            context.get("credential", "session"),
            context.get("scopes", ""),
        )
        if not allowed:
            # A key without the route's scope (or on a credential route), or a locked account outside the routes
            # that let it pay; the verdict itself stays cached.
            return DENY
    return answer


def _verdict(event: dict[str, Any]) -> dict[str, Any]:
    credential = _credential(event.get("headers") or {})
    if credential is None or len(credential[1]) > MAX_CREDENTIAL_LENGTH:
        return DENY
    kind, secret = credential
    key = hashlib.sha256(f"{kind}:{secret}".encode()).hexdigest()
    now = time.time()
    cached = cache.get(key, now)
    if cached is not None:
        return cached
    check = authorize_bearer if kind == "bearer" else authorize_api_key
    try:
        verdict: Verdict | None = check(UnitOfWork(), secret)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        logger.warning(
            "database unavailable: request passed on marked unavailable", extra={"error": type(exc).__name__}
        )
        return {"isAuthorized": True, "context": dict(UNAVAILABLE_CONTEXT)}
    ttl = get_settings().authorizer_cache_seconds
    if verdict is None:
        cache.put(key, DENY, now + min(DENY_CACHE_SECONDS, ttl))
        return DENY
    answer = {"isAuthorized": True, "context": verdict.context()}
    if verdict.reusable:
        cache.put(key, answer, min(now + ttl, verdict.valid_until))
    return answer


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler(capture_response=False)  # the context names the user: not into traces
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    answer = decide(event)
    if not answer.get("isAuthorized"):
        logger.info("denied", extra={"route": event.get("routeKey")})
    return answer
