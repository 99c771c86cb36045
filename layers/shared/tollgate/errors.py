"""Domain errors: named failures the services raise. They know nothing of HTTP; `tollgate.http.errors` maps
each class to a status code in one table. `code` is the machine-readable name clients see."""

from __future__ import annotations

from typing import Any


class TollgateError(Exception):
    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigurationError(TollgateError):
    """The deployment is missing or mis-stating a setting."""

    code = "configuration_error"


class DependencyUnavailable(TollgateError):
    """A service Tollgate depends on (the database, a provider) cannot be reached right now."""

    code = "dependency_unavailable"


# --- request shape (raised by the HTTP edge, before any service runs) -------------------------------------------
class BadRequest(TollgateError):
    code = "bad_request"


class MalformedJson(BadRequest):
    code = "malformed_json"


class UnsupportedMediaType(TollgateError):
    code = "unsupported_media_type"


class PayloadTooLarge(TollgateError):
    code = "payload_too_large"


class ValidationFailed(TollgateError):
    code = "validation_error"


# --- generic domain outcomes ------------------------------------------------------------------------------------
class NotFound(TollgateError):
    code = "not_found"


class Conflict(TollgateError):
    code = "conflict"


class Unauthenticated(TollgateError):
    code = "unauthenticated"


class Forbidden(TollgateError):
    code = "forbidden"


class RateLimited(TollgateError):
    code = "too_many_attempts"
