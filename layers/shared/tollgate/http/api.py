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
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError

from tollgate import errors
from tollgate.config import get_settings
from tollgate.http.errors import error_body, status_for
from tollgate.observability import logger

JSON = "application/json"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _error_response(status: HTTPStatus, code: str, message: str, details: Any = None) -> Response[str]:
    return Response(status_code=int(status), content_type=JSON, body=error_body(code, message, details))


def _unstorable(value: Any) -> bool:
    """Whether `value` (parsed JSON, or a string) holds text PostgreSQL refuses: NUL, or a lone surrogate."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


def _request_problem(event: Mapping[str, Any]) -> errors.TollgateError | None:
    """Why a request must be refused before validation or any service runs, if it must."""
    params = [*(event.get("queryStringParameters") or {}).items(), *(event.get("pathParameters") or {}).items()]
    if any(_unstorable(k) or _unstorable(v) for k, v in params):
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
    try:
        parsed = json.loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        return errors.MalformedJson("the body is not valid JSON", details={"reason": str(exc)})
    if _unstorable(parsed):
        return errors.UnstorableText("text in the body may not contain NUL (\\u0000) or unpaired surrogates")
    return None


class TollgateResolver(APIGatewayHttpResolver):
    """The powertools HTTP API resolver, refusing bad requests (body size, media type, JSON, text PostgreSQL
    cannot store) before anything runs."""

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        problem = _request_problem(event)
        if problem is not None:
            return {
                "statusCode": int(status_for(problem)),
                "headers": {"Content-Type": JSON},
                "body": error_body(problem.code, problem.message, problem.details),
                "isBase64Encoded": False,
            }
        return super().resolve(event, context)


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

    @app.exception_handler(DBAPIError)
    def _database_error(exc: DBAPIError) -> Response[str]:
        if exc.connection_invalidated or isinstance(exc.orig, ConnectionError | OSError):
            logger.warning("database unreachable", extra={"error": type(exc.orig).__name__})
            return _error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                errors.DependencyUnavailable.code,
                "the database is unreachable",
            )
        logger.exception("database error")
        return _error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal error")

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

    @property
    def is_admin(self) -> bool:
        return self.role == "ADMIN"


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
    )
