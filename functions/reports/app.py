"""Reports (API.md "Back office": reading what is recorded): analytics series, email logs, subscription events,
refunds and the low-balance report for admins; the caller's own payment methods. Each route validates its input,
calls one service function and returns a typed model. Amounts are decimal strings."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, PlainSerializer, WithJsonSchema

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import Cursor, Limit, OptionalTimestampQuery, documented_errors
from tollgate.observability import logger, metrics, tracer
from tollgate.services import reports

app = create_app("reports")

DecimalOut = Annotated[
    Decimal,
    PlainSerializer(lambda v: format(v.normalize(), "f"), return_type=str),
    WithJsonSchema({"type": "string", "example": "12.5"}),
]
# One of the metrics the AnalyticsRollup writes (the service names them: 422 with the list otherwise).
Metric = Annotated[str, Query(min_length=1, max_length=64)]
DayQuery = Annotated[date | None, Query()]
Dimension = Annotated[str | None, Query(max_length=64)]
Provider = Annotated[Literal["stripe", "lemonsqueezy", "clerk", "asaas", "manual"] | None, Query()]
UserFilter = Annotated[uuid.UUID | None, Query()]
MailStatus = Annotated[
    Literal["pending", "sent", "failed", "suppressed", "delivered", "bounced", "complained"] | None, Query()
]
ShortFilter = Annotated[str | None, Query(min_length=1, max_length=64)]
Recipient = Annotated[str | None, Query(min_length=1, max_length=320)]
Threshold = Annotated[Decimal, Query(ge=0, le=Decimal("1e12"), allow_inf_nan=False, max_digits=18, decimal_places=4)]
RANGE_ERRORS = {422: "validation_error, or range_too_long (details: max_days)"}


# --- answers --------------------------------------------------------------------------------------------------
class PointOut(BaseModel):
    day: date
    value: DecimalOut


class SeriesOut(BaseModel):
    dimension: str
    points: list[PointOut]


class AnalyticsOut(BaseModel):
    metric: str
    since: date
    until: date
    series: list[SeriesOut]


class EmailLogOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID | None
    recipient: str
    type: str
    subject: str
    status: str
    provider: str
    message_id: str | None
    error: str | None
    metadata: dict[str, Any]
    sent_at: datetime | None
    created_at: datetime


class EmailLogPageOut(BaseModel):
    items: list[EmailLogOut]
    next_cursor: str | None


class SubscriptionEventOut(BaseModel):
    id: uuid.UUID
    subscription_id: uuid.UUID
    provider: str
    provider_subscription_id: str
    user_id: uuid.UUID | None
    webhook_event_id: uuid.UUID | None
    type: str
    from_status: str | None
    to_status: str | None
    from_price_id: str | None
    to_price_id: str | None
    applied: bool
    provider_time: datetime | None
    details: dict[str, Any]
    created_at: datetime


class SubscriptionEventPageOut(BaseModel):
    items: list[SubscriptionEventOut]
    next_cursor: str | None


class RefundOut(BaseModel):
    id: uuid.UUID
    provider: str
    provider_refund_id: str | None
    kind: str
    status: str
    user_id: uuid.UUID | None
    purchase_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    order_id: uuid.UUID | None
    amount: DecimalOut
    currency: str
    credits_requested: DecimalOut
    credits_clawed_back: DecimalOut
    credits_shortfall: DecimalOut
    reason: str | None
    requested_by: uuid.UUID | None
    processed_at: datetime | None
    created_at: datetime


class RefundPageOut(BaseModel):
    items: list[RefundOut]
    next_cursor: str | None


class PaymentMethodOut(BaseModel):
    id: uuid.UUID
    provider: str
    type: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    default: bool
    created_at: datetime


class PaymentMethodPageOut(BaseModel):
    items: list[PaymentMethodOut]
    next_cursor: str | None


class LowBalanceOut(BaseModel):
    user_id: uuid.UUID
    email: str
    tier: str | None
    balance: DecimalOut
    held: DecimalOut
    spendable: DecimalOut
    used_recently: DecimalOut
    burn_per_day: DecimalOut
    days_left: DecimalOut | None
    runs_out_at: datetime | None
    notice_due: bool


class LowBalancePageOut(BaseModel):
    threshold: DecimalOut
    burn_rate_days: int
    items: list[LowBalanceOut]
    next_cursor: str | None


def _fields(view: Any) -> dict[str, Any]:
    return {f.name: getattr(view, f.name) for f in dataclasses.fields(view)}


# --- routes ---------------------------------------------------------------------------------------------------
@app.get(
    "/admin/analytics",
    summary="A metric's daily series from the AnalyticsRollup (one series per dimension, e.g. currency for mrr)",
    responses=documented_errors(RANGE_ERRORS),
)
def analytics(
    metric: Metric, dimension: Dimension = None, since: DayQuery = None, until: DayQuery = None
) -> AnalyticsOut:
    found = reports.analytics(
        UnitOfWork(), current_actor(app), metric=metric, dimension=dimension, since=since, until=until
    )
    return AnalyticsOut(
        metric=found.metric,
        since=found.since,
        until=found.until,
        series=[
            SeriesOut(dimension=s.dimension, points=[PointOut(day=p.day, value=p.value) for p in s.points])
            for s in found.series
        ],
    )


@app.get(
    "/admin/email-logs",
    summary="Every message the mail service was asked to send, with what became of it; newest first",
    responses=documented_errors({422: "validation_error"}),
)
def email_logs(
    cursor: Cursor = None,
    limit: Limit = 20,
    status: MailStatus = None,
    type: ShortFilter = None,
    recipient: Recipient = None,
    user_id: UserFilter = None,
    since: OptionalTimestampQuery = None,
    until: OptionalTimestampQuery = None,
) -> EmailLogPageOut:
    page = reports.email_logs(
        UnitOfWork(), current_actor(app), status=status, type=type, recipient=recipient, user_id=user_id,
        since=since, until=until, cursor=cursor, limit=limit,
    )  # fmt: skip
    return EmailLogPageOut(items=[EmailLogOut(**_fields(v)) for v in page.items], next_cursor=page.next_cursor)


@app.get(
    "/admin/subscription-events",
    summary="Each subscription change a provider's webhook brought; newest first",
    responses=documented_errors({422: "validation_error"}),
)
def subscription_events(
    cursor: Cursor = None,
    limit: Limit = 20,
    user_id: UserFilter = None,
    provider: Provider = None,
    subscription_id: UserFilter = None,
    type: ShortFilter = None,
    since: OptionalTimestampQuery = None,
    until: OptionalTimestampQuery = None,
) -> SubscriptionEventPageOut:
    page = reports.subscription_events(
        UnitOfWork(), current_actor(app), user_id=user_id, provider=provider, subscription_id=subscription_id,
        type=type, since=since, until=until, cursor=cursor, limit=limit,
    )  # fmt: skip
    return SubscriptionEventPageOut(
        items=[SubscriptionEventOut(**_fields(v)) for v in page.items], next_cursor=page.next_cursor
    )


@app.get(
    "/admin/refunds",
    summary="Every refund and charge-back; newest first",
    responses=documented_errors({422: "validation_error"}),
)
def refunds(
    cursor: Cursor = None,
    limit: Limit = 20,
    user_id: UserFilter = None,
    provider: Provider = None,
    status: Annotated[Literal["PENDING", "SUCCEEDED", "FAILED", "CANCELED"] | None, Query()] = None,
    since: OptionalTimestampQuery = None,
    until: OptionalTimestampQuery = None,
) -> RefundPageOut:
    page = reports.refunds(
        UnitOfWork(), current_actor(app), user_id=user_id, provider=provider, status=status, since=since,
        until=until, cursor=cursor, limit=limit,
    )  # fmt: skip
    return RefundPageOut(items=[RefundOut(**_fields(v)) for v in page.items], next_cursor=page.next_cursor)


@app.get(
    "/admin/reports/low-balance",
    summary="Accounts whose spendable credits are under `threshold` (default 10), with their burn-rate projection",
    responses=documented_errors({422: "validation_error"}),
)
def low_balance(
    cursor: Cursor = None, limit: Limit = 20, threshold: Threshold = reports.DEFAULT_LOW_BALANCE_THRESHOLD
) -> LowBalancePageOut:
    page = reports.low_balance(UnitOfWork(), current_actor(app), threshold=threshold, cursor=cursor, limit=limit)
    return LowBalancePageOut(
        threshold=page.threshold,
        burn_rate_days=page.burn_rate_days,
        items=[LowBalanceOut(**_fields(v)) for v in page.items],
        next_cursor=page.next_cursor,
    )


@app.get(
    "/billing/payment-methods", summary="The caller's saved payment methods; `default` is the one auto top-up charges"
)
def payment_methods(cursor: Cursor = None, limit: Limit = 20) -> PaymentMethodPageOut:
    page = reports.payment_methods(UnitOfWork(), current_principal(app).user_id, cursor=cursor, limit=limit)
    return PaymentMethodPageOut(
        items=[PaymentMethodOut(**_fields(v)) for v in page.items], next_cursor=page.next_cursor
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
