"""Domain events out (README "Domain events out"): admins register signed outbound webhook endpoints, list and
delete them, read an endpoint's delivery log and replay a delivery. Each route validates its input, calls one
service function, returns a model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, StringConstraints

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor
from tollgate.http.edge import Cursor, Limit, StrictBody, documented_errors
from tollgate.observability import logger, metrics, tracer
from tollgate.services import webhook_endpoints

app = create_app("events")

EventName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^(\*|[a-z_]+\.[a-z_]+)$")]
StatusFilter = Annotated[Literal["PENDING", "DELIVERED", "DEAD"] | None, Query()]


# --- bodies ---------------------------------------------------------------------------------------------------
class EndpointIn(StrictBody):
    url: Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2048)]
    events: list[EventName] = Field(min_length=1, max_length=32)
    description: Annotated[str, StringConstraints(max_length=255)] = ""


# --- answers --------------------------------------------------------------------------------------------------
class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    created_at: datetime


class CreatedEndpointOut(EndpointOut):
    # The signing secret, answered only here: store it now, it is never shown again.
    secret: str


class EndpointPageOut(BaseModel):
    items: list[EndpointOut]
    next_cursor: str | None


class DeliveryOut(BaseModel):
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_response: str | None
    delivered_at: datetime | None
    created_at: datetime


class DeliveryPageOut(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class OutboxDeliveryOut(DeliveryOut):
    # "eventbridge" or "consumer:<module.function>"
    target: str


class OutboxDeliveryPageOut(BaseModel):
    items: list[OutboxDeliveryOut]
    next_cursor: str | None


def _endpoint_out(e: webhook_endpoints.EndpointView) -> EndpointOut:
    return EndpointOut(id=e.id, url=e.url, events=e.events, description=e.description, created_at=e.created_at)


def _delivery_out(d: webhook_endpoints.DeliveryView) -> DeliveryOut:
    return DeliveryOut(
        id=d.id, event_id=d.event_id, event_type=d.event_type, status=d.status, attempts=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "PENDING" else None, last_attempt_at=d.last_attempt_at,
        last_status_code=d.last_status_code, last_error=d.last_error, last_response=d.last_response,
        delivered_at=d.delivered_at, created_at=d.created_at,
    )  # fmt: skip


# --- routes ---------------------------------------------------------------------------------------------------
@app.post(
    "/admin/webhook-endpoints",
    summary="Register a signed outbound webhook endpoint (its secret is answered once)",
    responses=documented_errors({403: "forbidden", 422: "validation_error"}, success=201),
)
def create_endpoint(body: EndpointIn) -> tuple[CreatedEndpointOut, int]:
    created = webhook_endpoints.create_endpoint(
        UnitOfWork(), current_actor(app), url=body.url, events=list(body.events), description=body.description
    )
    out = _endpoint_out(created.endpoint)
    return CreatedEndpointOut(**out.model_dump(), secret=created.secret), 201


@app.get(
    "/admin/webhook-endpoints",
    summary="The registered webhook endpoints, newest first",
    responses=documented_errors({403: "forbidden"}),
)
def list_endpoints(cursor: Cursor = None, limit: Limit = 20) -> EndpointPageOut:
    page = webhook_endpoints.list_endpoints(UnitOfWork(), current_actor(app), cursor=cursor, limit=limit)
    return EndpointPageOut(items=[_endpoint_out(e) for e in page.items], next_cursor=page.next_cursor)


@app.delete(
    "/admin/webhook-endpoints/<endpoint_id>",
    summary="Delete an endpoint: it receives nothing more; its delivery log stays",
    responses=documented_errors({403: "forbidden", 404: "not_found"}, success=204),
)
def delete_endpoint(endpoint_id: uuid.UUID) -> Response[str]:
    webhook_endpoints.delete_endpoint(UnitOfWork(), current_actor(app), endpoint_id)
    return Response(status_code=204, body="")


@app.get(
    "/admin/webhook-endpoints/<endpoint_id>/deliveries",
    summary="An endpoint's delivery log, newest first",
    responses=documented_errors({403: "forbidden", 404: "not_found"}),
)
def list_deliveries(
    endpoint_id: uuid.UUID, status: StatusFilter = None, cursor: Cursor = None, limit: Limit = 20
) -> DeliveryPageOut:
    page = webhook_endpoints.list_deliveries(
        UnitOfWork(), current_actor(app), endpoint_id, status=status, cursor=cursor, limit=limit
    )
    return DeliveryPageOut(items=[_delivery_out(v) for v in page.items], next_cursor=page.next_cursor)


@app.post(
    "/admin/webhook-endpoints/<endpoint_id>/deliveries/<delivery_id>/replay",
    summary="Deliver again at the relay's next pass, with the same event id",
    responses=documented_errors({403: "forbidden", 404: "not_found"}, success=202),
)
def replay_delivery(endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> tuple[DeliveryOut, int]:
    view = webhook_endpoints.replay_delivery(UnitOfWork(), current_actor(app), endpoint_id, delivery_id)
    return _delivery_out(view), 202


@app.get(
    "/admin/outbox/deliveries",
    summary="EventBridge and internal-consumer deliveries, newest first (?status=DEAD: the ones that gave up)",
    responses=documented_errors({403: "forbidden"}),
)
def list_outbox_deliveries(
    status: StatusFilter = None, cursor: Cursor = None, limit: Limit = 20
) -> OutboxDeliveryPageOut:
    page = webhook_endpoints.list_outbox_deliveries(
        UnitOfWork(), current_actor(app), status=status, cursor=cursor, limit=limit
    )
    return OutboxDeliveryPageOut(
        items=[OutboxDeliveryOut(**_delivery_out(v.delivery).model_dump(), target=v.target) for v in page.items],
        next_cursor=page.next_cursor,
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler(capture_response=False)  # a creation answer carries the signing secret
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
