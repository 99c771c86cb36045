"""Aftersales (API.md "Commerce"): an admin's refund of an order through Stripe, and the caller's digital
downloads. Each route validates its input, calls one service function and returns a typed model. Amounts are
decimal strings."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, PlainSerializer, StringConstraints, WithJsonSchema

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import StrictBody, documented_errors, idempotency_key
from tollgate.observability import logger, metrics, tracer
from tollgate.payments.money import exponent
from tollgate.services import downloads, order_refunds
from tollgate.storage import get_storage

app = create_app("aftersales")


def _money_str(value: Decimal) -> str:
    return format(value, "f")


MoneyOut = Annotated[
    Decimal, PlainSerializer(_money_str, return_type=str), WithJsonSchema({"type": "string", "example": "19.00"})
]
# A decimal string or JSON number above zero; the service refuses what is finer than the order's currency.
RefundAmount = Annotated[Decimal, Field(gt=0, allow_inf_nan=False, max_digits=14, decimal_places=3)]
Notes = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]


# --- bodies ---------------------------------------------------------------------------------------------------
class RefundIn(StrictBody):
    amount: RefundAmount | None = None  # absent: all that is left to refund
    reason: Literal["requested_by_customer", "duplicate", "fraudulent", "subscription_canceled", "other"]
    notes: Notes | None = None


# --- answers --------------------------------------------------------------------------------------------------
class OrderRefundOut(BaseModel):
    id: uuid.UUID
    order_id: uuid.UUID
    amount: MoneyOut
    currency: str
    reason: str | None
    status: str
    notes: str | None
    provider_refund_id: str | None
    requested_by: uuid.UUID | None
    created_at: datetime
    processed_at: datetime | None
    order_status: str
    order_refunded_amount: MoneyOut
    order_refund_pending_amount: MoneyOut


class DownloadOut(BaseModel):
    url: str
    expires_at: datetime | None
    downloads_left: int | None  # null: unlimited


def _scaled(value: Decimal, currency: str) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-exponent(currency)))


# --- routes ---------------------------------------------------------------------------------------------------
@app.post(
    "/admin/orders/<order_id>/refunds",
    summary="Refund an order, in full (no amount) or in part, through Stripe",
    responses=documented_errors(
        {
            404: "order_not_found",
            409: "refund_exceeds_payment (details: refundable), order_not_refundable or idempotency_conflict",
            503: "payment_provider_error: Stripe did not answer; retry with the same Idempotency-Key",
        },
        success=201,
    ),
)
def refund_order(order_id: uuid.UUID, body: RefundIn) -> tuple[OrderRefundOut, int]:
    view = order_refunds.refund_order(
        UnitOfWork(),
        current_actor(app),
        order_id,
        amount=body.amount,
        reason=body.reason,
        notes=body.notes or None,
        idempotency_key=idempotency_key(app),
    )
    out = OrderRefundOut(
        id=view.id,
        order_id=view.order_id,
        amount=_scaled(view.amount, view.currency),
        currency=view.currency,
        reason=view.reason,
        status=view.status,
        notes=view.notes,
        provider_refund_id=view.provider_refund_id,
        requested_by=view.requested_by,
        created_at=view.created_at,
        processed_at=view.processed_at,
        order_status=view.order_status,
        order_refunded_amount=_scaled(view.order_refunded_amount, view.currency),
        order_refund_pending_amount=_scaled(view.order_refund_pending_amount, view.currency),
    )
    return out, 201


@app.get(
    "/orders/<order_id>/items/<item_id>/download",
    summary="Download a digital item of one of the caller's orders: a short-lived link, counted against the limit",
    responses=documented_errors(
        {
            403: "download_limit_reached, access_expired or refunded",
            404: "order_item_not_found",
            409: "not_downloadable (details.reason: not_a_download, order_not_completed, no_file)",
        }
    ),
)
def download_item(order_id: uuid.UUID, item_id: uuid.UUID) -> DownloadOut:
    principal = current_principal(app)
    link = downloads.download(UnitOfWork(), get_storage(), principal.user_id, order_id, item_id)
    return DownloadOut(url=link.url, expires_at=link.expires_at, downloads_left=link.downloads_left)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
