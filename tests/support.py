"""Helpers the test tiers share: users in the database, and calls to the real handlers through the template."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy.orm import Session

from tollgate.models import User
from tollgate_local import TEMPLATE_PATH
from tollgate_local.events import HttpRequest, build_http_event, read_http_result
from tollgate_local.gateway import Gateway
from tollgate_local.template import Template


def make_user(session: Session, *, email: str | None = None, role: str = "USER", **fields: Any) -> User:
    """A user row, flushed (the caller commits)."""
    user = User(email=email or f"user-{uuid.uuid4().hex[:12]}@example.com", role=role, **fields)
    session.add(user)
    session.flush()
    return user


@cache
def project_gateway() -> Gateway:
    return Gateway(Template(TEMPLATE_PATH))


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def error_code(self) -> str | None:
        data = self.json
        return data.get("error", {}).get("code") if isinstance(data, dict) else None


def api_call(
    method: str,
    path: str,
    *,
    body: Any = None,
    raw_body: bytes | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    as_user: User | uuid.UUID | None = None,
    role: str | None = None,
    authorizer_context: dict[str, Any] | None = None,
    through_authorizer: bool = False,
) -> ApiResponse:
    """Call the project's real handler for `method path` as API Gateway would.

    By default the authorizer is not run: the caller's identity is put straight into the request context
    (`as_user`, or a whole `authorizer_context`). With `through_authorizer=True` the route's real authorizer
    decides, exactly as in `tollgate serve`.
    """
    gateway = project_gateway()
    all_headers = {"content-type": "application/json", **(headers or {})}
    payload = raw_body if raw_body is not None else (b"" if body is None else json.dumps(body).encode())
    request = HttpRequest(method, path, query, list(all_headers.items()), payload, "203.0.113.9")
    if through_authorizer:
        response = gateway.handle(request)
        return ApiResponse(response.status, dict(response.headers), response.body)
    route, params, _ = gateway.match(method, path)
    if route is None:
        response = gateway.handle(request)  # the gateway's own 404/405
        return ApiResponse(response.status, dict(response.headers), response.body)
    event = build_http_event(request, route.route_key, params)
    context = authorizer_context
    if context is None and as_user is not None:
        user_id = as_user if isinstance(as_user, uuid.UUID) else as_user.id
        user_role = role or (as_user.role if isinstance(as_user, User) else "USER")
        context = {"user_id": str(user_id), "role": user_role, "session_id": "", "tier": ""}
    if context is not None:
        event["requestContext"]["authorizer"] = {"lambda": context}
    result = read_http_result(gateway.runner.invoke(route.function_id, event))
    return ApiResponse(result.status, dict(result.headers), result.body)


def edited(token: str) -> str:
    """The token with one character in its middle changed. Only a base64 text's last character can carry unused
    bits, so an edit there may decode to the same bytes; one in the middle never does."""
    middle = len(token) // 2
    return token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1 :]
