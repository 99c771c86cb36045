"""What the Lambda authorizer passes to the functions beyond a caller (kept light: both import it)."""

from __future__ import annotations

from typing import Final

# The authorizer's context when it cannot decide because the database is unavailable: an HTTP API authorizer can
# only allow or deny (an error becomes API Gateway's own 500), so the request goes on marked, with no caller, and
# the function's resolver answers 503 dependency_unavailable before any route runs. Never cached.
UNAVAILABLE_CONTEXT: Final[dict[str, str]] = {"unavailable": "database"}
