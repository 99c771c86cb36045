"""The Lambda authorizer of the HTTP API (simple responses).

Until sign-in exists it denies every request, so no protected route can be reached by accident.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from tollgate.observability import logger


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return {"isAuthorized": False}
