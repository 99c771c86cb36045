"""GET /health: is the backend able to serve."""

from __future__ import annotations

from typing import Any, Literal

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app
from tollgate.observability import logger, metrics, tracer
from tollgate.services.health import check_health

app = create_app("health")


class HealthOut(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]
    schema_version: str | None


# 503 `dependency_unavailable` without a database, 503 `schema_outdated` (expected and found revisions) until the
# deploy's migration has brought the schema to every head.
@app.get("/health", summary="Liveness and database reachability")
def health() -> HealthOut:
    report = check_health(UnitOfWork())
    return HealthOut(status="ok", database="ok", schema_version=report.schema_version)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
