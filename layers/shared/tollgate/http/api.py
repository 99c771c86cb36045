"""The resolver every HTTP function uses, with the request guards and error mapping already in place.

A function module does:

    app = create_app("credits")

    @app.get("/credits/balance")
    def balance() -> BalanceOut: ...

    @logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event, context):
        return app.resolve(event, context)
"""

from __future__ import annotations

import base64
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from itertools import accumulate
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from sqlalchemy.exc import SQLAlchemyError

from tollgate import errors, request_origin
from tollgate.config import get_settings
from tollgate.db.engine import is_unavailable
from tollgate.http.authorizer_context import UNAVAILABLE_CONTEXT
from tollgate.http.errors import error_body, status_for
from tollgate.input_bounds import MAX_JSON_DEPTH
from tollgate.observability import logger
from tollgate.services.authz import USER, USER_ROLES, Actor

JSON = "application/json"
# A database restart or failover takes seconds (RDS Proxy queues meanwhile): ask for a retry soon.
DATABASE_RETRY_AFTER_SECONDS = 2

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _error_response(status: HTTPStatus, code: str, message: str, details: Any = None) -> Response[str]:
    return Response(status_code=int(status), content_type=JSON, body=error_body(code, message, details))


def _unstorable(text: str) -> bool:
    """Whether `text` holds what PostgreSQL text refuses: NUL, or a lone surrogate."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_problem(value: Any) -> str | None:
    """ "too_deep" if parsed JSON `value` nests past MAX_JSON_DEPTH, "text" if it holds text PostgreSQL refuses
    (NUL, a lone surrogate), else None. Iterative: a deeply nested body must not exhaust the stack of the guard
    meant to refuse it."""
    if isinstance(value, str):
        return "text" if _unstorable(value) else None
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return "too_deep"
        children = node.values() if isinstance(node, dict) else node
        if isinstance(node, dict) and any(_unstorable(key) for key in node):
            return "text"
        for child in children:
            if isinstance(child, str):
                if _unstorable(child):
                    return "text"
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return None


# A JSON string (its closing quote optional, so an unterminated one ends the scan instead of backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def _nesting_depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest, read without parsing it (strings removed, then
    a running sum over the brackets), so nothing recursive ever sees an over-deep body."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def _too_deep() -> errors.MalformedJson:
    return errors.MalformedJson(
        f"the body nests arrays and objects more than {MAX_JSON_DEPTH} deep",
        details={"reason": "too_deep", "max_depth": MAX_JSON_DEPTH},
    )


class _NumberOutOfRange(ValueError):
    pass


def _not_json_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser takes them and jsonb then refuses the row (a 500).
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # e.g. 1e400: valid JSON, but no double holds it (read as infinity)
        raise _NumberOutOfRange(f"the number {literal[:40]} is out of range")
    return value


def _request_problem(event: Mapping[str, Any]) -> errors.TollgateError | None:
    """Why a request must be refused before validation or any service runs, if it must."""
    params = [*(event.get("queryStringParameters") or {}).items(), *(event.get("pathParameters") or {}).items()]
    if any(_unstorable(str(k)) or _unstorable(str(v)) for k, v in params):
        return errors.UnstorableText("query and path parameters may not contain NUL or unpaired surrogates")
    method = str(event.get("requestContext", {}).get("http", {}).get("method", "")).upper()
    body = event.get("body")
    if method not in BODY_METHODS or not body:
        return None
    try:
        raw = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode("utf-8")
    except ValueError:
        return errors.BadRequest("the body is not valid base64")
    limit = get_settings().max_body_bytes
    if len(raw) > limit:
        return errors.PayloadTooLarge(f"the body is {len(raw)} bytes; the limit is {limit}", details={"limit": limit})
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    content_type = str(headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != JSON and not content_type.endswith("+json"):
        return errors.UnsupportedMediaType(
            "send the body as application/json", details={"content_type": content_type or None}
        )
    if _nesting_depth(raw) > MAX_JSON_DEPTH:
        return _too_deep()
    try:
        # UTF-8 only (RFC 8259): json.loads would detect UTF-16/32 bytes, which the handler's reader then fails on.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return errors.MalformedJson("the body is not UTF-8", details={"reason": "not_utf8"})
    try:
        parsed = json.loads(text, parse_constant=_not_json_constant, parse_float=_finite_float)
    except _NumberOutOfRange as exc:
        return errors.ValidationFailed(str(exc), details={"reason": "number_out_of_range"})
    except RecursionError:  # defensive: the scan above already bounds the depth
        return _too_deep()
    except ValueError as exc:
        return errors.MalformedJson("the body is not valid JSON", details={"reason": str(exc)})
    problem = _json_problem(parsed)
    if problem == "too_deep":
        return _too_deep()
    if problem == "text":
        return errors.UnstorableText("text in the body may not contain NUL (\\u0000) or unpaired surrogates")
    return None


class TollgateResolver(APIGatewayHttpResolver):
    """The powertools HTTP API resolver, refusing bad requests (body size, media type, JSON and its depth, text
    PostgreSQL cannot store) before anything runs."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        authorizer = ((event.get("requestContext") or {}).get("authorizer") or {}).get("lambda") or {}
        if authorizer == UNAVAILABLE_CONTEXT:  # the authorizer could not decide: no caller, no route runs
            return {
                "statusCode": int(HTTPStatus.SERVICE_UNAVAILABLE),
                "headers": {"Content-Type": JSON, "Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
                "body": error_body(errors.DependencyUnavailable.code, "the database is unavailable"),
                "isBase64Encoded": False,
            }
        problem = _request_problem(event)
        if problem is not None:
            return {
                "statusCode": int(status_for(problem)),
                "headers": {"Content-Type": JSON},
                "body": error_body(problem.code, problem.message, problem.details),
                "isBase64Encoded": False,
            }
        # The audit trail's IP and user agent for whatever this request writes; unbound again when it ends.
        with request_origin.bound(_origin(event)):
            return super().resolve(event, context)


def _origin(event: Mapping[str, Any]) -> request_origin.RequestOrigin:
    http = (event.get("requestContext") or {}).get("http") or {}
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    return request_origin.origin_of(http.get("sourceIp"), http.get("userAgent") or headers.get("user-agent"))


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the rejected input back: it may hold a password or a token.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def create_app(function_name: str) -> TollgateResolver:
    app = TollgateResolver(enable_validation=True)

    @app.exception_handler(errors.TollgateError)
    def _domain_error(exc: errors.TollgateError) -> Response[str]:
        status = status_for(exc)
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            logger.exception("domain error", extra={"code": exc.code})
        return _error_response(status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(exc: RequestValidationError) -> Response[str]:
        details = _validation_details(exc)
        kinds = {d["type"] for d in details}
        if "json_invalid" in kinds:
            return _error_response(HTTPStatus.BAD_REQUEST, errors.MalformedJson.code, "the body is not valid JSON")
        if "unsupported_content_type" in kinds:
            return _error_response(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, errors.UnsupportedMediaType.code, "send the body as JSON"
            )
        return _error_response(
            HTTPStatus.UNPROCESSABLE_ENTITY, errors.ValidationFailed.code, "the request is not valid", details
        )

    @app.not_found
    def _not_found(exc: NotFoundError) -> Response[str]:
        return _error_response(HTTPStatus.NOT_FOUND, errors.NotFound.code, "no such route")

    @app.exception_handler([SQLAlchemyError, errors.DatabaseUnavailable])
    def _database_error(exc: SQLAlchemyError | errors.DatabaseUnavailable) -> Response[str]:
        # One classification (tollgate.db.engine.is_unavailable) of a database that cannot serve right now:
        # 503 with Retry-After, so clients and webhook providers retry; anything else is a bug.
        if isinstance(exc, errors.DatabaseUnavailable) or is_unavailable(exc):
            cause = exc.__cause__ if isinstance(exc, errors.DatabaseUnavailable) else exc
            logger.warning("database unavailable", extra={"error": type(getattr(cause, "orig", cause)).__name__})
            response = _error_response(
                HTTPStatus.SERVICE_UNAVAILABLE, errors.DependencyUnavailable.code, "the database is unavailable"
            )
            response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
            return response
        logger.exception("database error")
        return _error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal error")

    @app.exception_handler(OSError)
    def _unreachable(exc: OSError) -> Response[str]:
        # A socket error that no driver wrapped (pg8000 raises BrokenPipeError/ConnectionResetError bare while
        # connecting to a server that is shutting down; SQLAlchemy wraps only the driver's own errors).
        logger.warning("dependency unreachable", extra={"error": type(exc).__name__})
        response = _error_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            errors.DependencyUnavailable.code,
            "a service this request needs is unreachable",
        )
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response[str]:
        logger.exception("unhandled error")
        return _error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal error")

    logger.append_keys(function=function_name)
    return app


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the Lambda authorizer proved it (handlers trust nothing else)."""

    user_id: uuid.UUID
    role: str
    session_id: str | None = None
    tier: str | None = None
    # issue 11: the API key's id when a key made the call, and the session's step-up clock (epoch seconds).
    api_key_id: str | None = None
    auth_time: int | None = None


def current_principal(app: APIGatewayHttpResolver) -> Principal:
    context = app.current_event.request_context.authorizer.get_lambda or {}
    try:
        user_id = uuid.UUID(str(context["user_id"]))
    except (KeyError, ValueError):
        raise errors.Unauthenticated("no authenticated caller") from None
    return Principal(
        user_id=user_id,
        role=str(context.get("role") or "USER"),
        session_id=context.get("session_id") or None,
        tier=context.get("tier") or None,
        api_key_id=context.get("api_key_id") or None,
        auth_time=int(context["auth_time"]) if str(context.get("auth_time") or "").isdigit() else None,
    )


def current_actor(app: APIGatewayHttpResolver) -> Actor:
    """The caller as the `Actor` privileged services decide on. An HTTP caller is always a user: a role the
    authorizer would never send (the operator's included) acts with the least privilege, USER."""
    principal = current_principal(app)
    role = principal.role if principal.role in USER_ROLES else USER
    return Actor.user(principal.user_id, role)
