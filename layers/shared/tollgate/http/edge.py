"""The input types and readers every HTTP function shares, so each bound is written once.

    class UsageIn(StrictBody): ...                     # unknown fields are a 422, not ignored
    def route(cursor: Cursor = None, limit: Limit = 20, since: OptionalTimestampQuery = None): ...
    idempotency_key(app)                               # the checked Idempotency-Key header, or None

Bounds (see `tollgate.input_bounds`): timestamps 1970-01-01T00:00:00Z..9999-01-01T00:00:00Z (a time without an
offset is UTC), limits 1-100, Idempotency-Key 1-255 printable ASCII characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import AfterValidator, BaseModel, ConfigDict

from tollgate.errors import ValidationFailed
from tollgate.input_bounds import IDEMPOTENCY_KEY_MAX_LENGTH, bounded_timestamp
from tollgate.pagination import MAX_LIMIT


class StrictBody(BaseModel):
    """A request body that refuses fields it does not declare."""

    model_config = ConfigDict(extra="forbid")


# A time from outside (body, query): inside the documented range, returned in UTC; otherwise 422.
Timestamp = Annotated[datetime, AfterValidator(bounded_timestamp)]
OptionalTimestampQuery = Annotated[Timestamp | None, Query()]

# The cursor is checked by the list that issued it (signature, key types: 400 `invalid_cursor`); the edge
# bounds only what a query string may carry, and lets an over-long cursor reach that check.
Cursor = Annotated[str | None, Query()]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def idempotency_key(app: APIGatewayHttpResolver) -> str | None:
    """The request's Idempotency-Key header: absent, or 1-255 printable ASCII characters (else 422)."""
    key = app.current_event.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH or not all(32 <= ord(ch) < 127 for ch in key):
        raise ValidationFailed(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters",
            details={"header": "Idempotency-Key"},
        )
    return key


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    """Every error's body: `{"error": {"code", "message", "details"}}` (tollgate.http.errors)."""

    error: ErrorInfo


def documented_errors(errors: Mapping[int, str], *, success: int = 200) -> dict[int, Any]:
    """OpenAPI `responses` for a route that documents some of its error answers.

    powertools then documents only what is listed, and gives each listed response without content the route's
    return model: so the success status is listed (it keeps the return model; 204 has no body) and each error
    carries the error body."""
    responses: dict[int, Any] = {success: {"description": "Successful Response"}}
    if success == 204:
        responses[success] = {"description": "No Content", "content": {}}
    for status, description in errors.items():
        responses[status] = {"description": description, "content": {"application/json": {"model": ErrorOut}}}
    return responses
