"""The one place where domain errors become HTTP answers: `{"error": {"code", "message", "details"}}`.

A domain error class not in the table takes the status of its nearest listed ancestor.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from tollgate import errors

STATUS_BY_ERROR: dict[type[errors.TollgateError], HTTPStatus] = {
    errors.BadRequest: HTTPStatus.BAD_REQUEST,
    errors.UnsupportedMediaType: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    errors.PayloadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    errors.QuotaExceeded: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    errors.ValidationFailed: HTTPStatus.UNPROCESSABLE_ENTITY,
    errors.Unauthenticated: HTTPStatus.UNAUTHORIZED,
    errors.Forbidden: HTTPStatus.FORBIDDEN,
    errors.InsufficientCredits: HTTPStatus.PAYMENT_REQUIRED,
    errors.NotFound: HTTPStatus.NOT_FOUND,
    errors.Conflict: HTTPStatus.CONFLICT,
    errors.RateLimited: HTTPStatus.TOO_MANY_REQUESTS,
    errors.DependencyUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.ConfigurationError: HTTPStatus.INTERNAL_SERVER_ERROR,
}


def status_for(error: errors.TollgateError) -> HTTPStatus:
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def error_body(code: str, message: str, details: Any = None) -> str:
    return json.dumps({"error": {"code": code, "message": message, "details": details}}, default=str)
