"""Commerce (API.md "Commerce"): cart checkout, the caller's orders, the admin order list, discounts and their
validation. Each route validates its input, calls one service function and returns a typed model. Amounts are
decimal strings in the currency's major unit."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, HttpUrl, PlainSerializer, StrictInt, StringConstraints, WithJsonSchema

from tollgate import request_origin
from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import (
    Cursor,
    Limit,
    OptionalTimestampQuery,
    StrictBody,
    Timestamp,
    documented_errors,
    idempotency_key,
)
from tollgate.observability import logger, metrics, tracer
from tollgate.services import discounts, orders
from tollgate.services.orders import MAX_LINES, MAX_QUANTITY, OrderView

app = create_app("commerce")


def _money_str(value: Decimal) -> str:
    # Two places unless the amount needs three (a three-decimal currency): stored amounts are NUMERIC(14, 3).
    cents = value.quantize(Decimal("0.01"))
    return format(cents if cents == value else value.quantize(Decimal("0.001")), "f")


MoneyOut = Annotated[
    Decimal, PlainSerializer(_money_str, return_type=str), WithJsonSchema({"type": "string", "example": "19.99"})
]
OrderStatus = Literal["PENDING", "PROCESSING", "COMPLETED", "CANCELLED", "REFUNDED"]
MoneyIn = Annotated[Decimal, Field(gt=0, allow_inf_nan=False, max_digits=12, decimal_places=3)]
Code = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


# --- bodies ----------------------------------------------------------------------------------------------------
class CartItemIn(StrictBody):
    price_id: uuid.UUID
    quantity: StrictInt = Field(default=1, ge=1, le=MAX_QUANTITY)  # a count: never "2", 2.0 or true


class CheckoutIn(StrictBody):
    items: list[CartItemIn] = Field(min_length=1, max_length=MAX_LINES)
    discount_code: Code | None = None
    success_url: HttpUrl
    cancel_url: HttpUrl


class CheckoutOut(StrictBody):
    order_id: uuid.UUID
    order_number: str
    url: str


class ValidateIn(StrictBody):
    code: Code
    items: list[CartItemIn] = Field(min_length=1, max_length=MAX_LINES)


class ValidateOut(StrictBody):
    valid: bool
    discount_amount: MoneyOut
    reason: str | None = None


class OrderItemOut(StrictBody):
    id: uuid.UUID
    kind: str
    product_id: uuid.UUID | None
    price_id: uuid.UUID | None
    pack_id: uuid.UUID | None
    plan_id: uuid.UUID | None
    name: str
    product_type: str | None
    quantity: int
    unit_price: MoneyOut
    subtotal: MoneyOut
    discount_amount: MoneyOut
    tax_amount: MoneyOut
    total: MoneyOut
    download_limit: int | None
    download_count: int
    access_expires_at: datetime | None
    fulfilled_at: datetime | None


class OrderOut(StrictBody):
    id: uuid.UUID
    order_number: str
    user_id: uuid.UUID
    status: str
    payment_status: str
    currency: str
    subtotal: MoneyOut
    discount_amount: MoneyOut
    tax_amount: MoneyOut
    total: MoneyOut
    refunded_amount: MoneyOut
    discount_code: str | None
    checkout_url: str | None
    checkout_expires_at: datetime | None
    paid_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    created_at: datetime
    items: list[OrderItemOut]


class OrderPage(StrictBody):
    items: list[OrderOut]
    next_cursor: str | None


class DiscountIn(StrictBody):
    code: Code
    name: Text
    description: str | None = Field(default=None, max_length=2000)
    type: Literal["percentage", "fixed_amount"]
    value: MoneyIn
    currency: Currency | None = None
    max_uses: int | None = Field(default=None, ge=1)
    max_uses_per_customer: int | None = Field(default=None, ge=1)
    valid_from: Timestamp | None = None
    valid_until: Timestamp | None = None
    minimum_amount: Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=12, decimal_places=3)] | None = None
    first_time_only: bool = False
    active: bool = True
    product_ids: list[uuid.UUID] = Field(default_factory=list, max_length=500)


class DiscountPatch(StrictBody):
    code: Code | None = None
    name: Text | None = None
    description: str | None = Field(default=None, max_length=2000)
    type: Literal["percentage", "fixed_amount"] | None = None
    value: MoneyIn | None = None
    currency: Currency | None = None
    max_uses: int | None = Field(default=None, ge=1)
    max_uses_per_customer: int | None = Field(default=None, ge=1)
    valid_from: Timestamp | None = None
    valid_until: Timestamp | None = None
    minimum_amount: Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=12, decimal_places=3)] | None = None
    first_time_only: bool | None = None
    active: bool | None = None
    product_ids: list[uuid.UUID] | None = Field(default=None, max_length=500)


class DiscountOut(StrictBody):
    id: uuid.UUID
    code: str
    name: str
    description: str | None
    type: str
    value: MoneyOut
    currency: str | None
    max_uses: int | None
    max_uses_per_customer: int | None
    current_uses: int
    reserved_uses: int
    valid_from: datetime | None
    valid_until: datetime | None
    minimum_amount: MoneyOut | None
    first_time_only: bool
    active: bool
    product_ids: list[uuid.UUID]
    created_at: datetime
    updated_at: datetime


class DiscountPage(StrictBody):
    items: list[DiscountOut]
    next_cursor: str | None


# --- shaping ---------------------------------------------------------------------------------------------------
def _order_out(o: OrderView) -> OrderOut:
    return OrderOut(
        id=o.id, order_number=o.order_number, user_id=o.user_id, status=o.status, payment_status=o.payment_status,
        currency=o.currency, subtotal=o.subtotal, discount_amount=o.discount_amount, tax_amount=o.tax_amount,
        total=o.total_amount, refunded_amount=o.refunded_amount, discount_code=o.discount_code,
        checkout_url=o.checkout_url if o.status == "PENDING" else None, checkout_expires_at=o.checkout_expires_at,
        paid_at=o.paid_at, completed_at=o.completed_at, cancelled_at=o.cancelled_at, created_at=o.created_at,
        items=[
            OrderItemOut(
                id=i.id, kind=i.kind, product_id=i.product_id, price_id=i.price_id, pack_id=i.pack_id,
                plan_id=i.plan_id, name=i.name, product_type=i.product_type, quantity=i.quantity,
                unit_price=i.unit_price, subtotal=i.total_price, discount_amount=i.discount_amount,
                tax_amount=i.tax_amount, total=i.total_price - i.discount_amount + i.tax_amount,
                download_limit=i.download_limit, download_count=i.download_count,
                access_expires_at=i.access_expires_at, fulfilled_at=i.fulfilled_at,
            )
            for i in o.items
        ],
    )  # fmt: skip


def _discount_out(d: discounts.DiscountView) -> DiscountOut:
    return DiscountOut(
        id=d.id, code=d.code, name=d.name, description=d.description, type=d.type.lower(), value=d.value,
        currency=d.currency, max_uses=d.max_uses, max_uses_per_customer=d.max_uses_per_customer,
        current_uses=d.current_uses, reserved_uses=d.reserved_uses, valid_from=d.valid_from,
        valid_until=d.valid_until, minimum_amount=d.minimum_amount, first_time_only=d.first_time_only,
        active=d.active, product_ids=list(d.product_ids), created_at=d.created_at, updated_at=d.updated_at,
    )  # fmt: skip


def _cart(items: list[CartItemIn]) -> list[tuple[uuid.UUID, int]]:
    return [(item.price_id, item.quantity) for item in items]


# --- routes ----------------------------------------------------------------------------------------------------
@app.post(
    "/orders/checkout",
    summary="Check out a cart: the order PENDING (stock and discount use reserved) and its Stripe Checkout URL",
    responses=documented_errors(
        {
            409: "out_of_stock (details name the item) or idempotency_conflict",
            422: "discount_invalid (details.reason) or invalid_cart (details.reason)",
            429: "too_many_attempts (too many unknown discount codes; details.retry_after_seconds)",
            503: "payment_provider_error (the order is cancelled, its reservations released)",
        },
        success=201,
    ),
)
def checkout(body: CheckoutIn) -> tuple[CheckoutOut, int]:
    result = orders.checkout(
        UnitOfWork(), current_principal(app).user_id, items=_cart(body.items), discount_code=body.discount_code,
        success_url=str(body.success_url), cancel_url=str(body.cancel_url), idempotency_key=idempotency_key(app),
        ip=request_origin.current().ip,
    )  # fmt: skip
    return CheckoutOut(order_id=result.order_id, order_number=result.order_number, url=result.url), 201


@app.get("/orders", summary="The caller's orders, newest first")
def list_orders(cursor: Cursor = None, limit: Limit = 20) -> OrderPage:
    page = orders.list_orders(UnitOfWork(), current_principal(app).user_id, cursor=cursor, limit=limit)
    return OrderPage(items=[_order_out(v) for v in page.items], next_cursor=page.next_cursor)


@app.get(
    "/orders/<order_id>",
    summary="One of the caller's orders with its items",
    responses=documented_errors({404: "order_not_found"}),
)
def get_order(order_id: uuid.UUID) -> OrderOut:
    return _order_out(orders.get_order(UnitOfWork(), current_principal(app).user_id, order_id))


@app.get("/admin/orders", summary="All orders (admin, support), newest first")
def admin_orders(
    status: Annotated[OrderStatus | None, Query()] = None,
    user_id: Annotated[uuid.UUID | None, Query()] = None,
    since: OptionalTimestampQuery = None,
    until: OptionalTimestampQuery = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> OrderPage:
    page = orders.admin_list_orders(
        UnitOfWork(), current_actor(app), status=status, user_id=user_id, since=since, until=until, cursor=cursor,
        limit=limit,
    )  # fmt: skip
    return OrderPage(items=[_order_out(v) for v in page.items], next_cursor=page.next_cursor)


def _fields(body: DiscountIn | DiscountPatch, *, only_set: bool) -> dict[str, Any]:
    fields = body.model_dump(exclude={"product_ids"}, exclude_unset=only_set)
    if fields.get("type"):
        fields["type"] = str(fields["type"]).upper()
    return fields


@app.post(
    "/admin/discounts",
    summary="Create a discount (admin; audited)",
    responses=documented_errors({409: "discount_code_taken", 422: "validation_error"}, success=201),
)
def create_discount(body: DiscountIn) -> tuple[DiscountOut, int]:
    view = discounts.create_discount(
        UnitOfWork(), current_actor(app), product_ids=body.product_ids, **_fields(body, only_set=False)
    )
    return _discount_out(view), 201


@app.patch(
    "/admin/discounts/<discount_id>",
    summary="Change a discount (admin; audited)",
    responses=documented_errors({404: "discount_not_found", 409: "discount_code_taken"}),
)
def update_discount(discount_id: uuid.UUID, body: DiscountPatch) -> DiscountOut:
    view = discounts.update_discount(
        UnitOfWork(), current_actor(app), discount_id, product_ids=body.product_ids, **_fields(body, only_set=True)
    )
    return _discount_out(view)


@app.get("/admin/discounts", summary="Discounts with their uses (admin), newest first")
def list_discounts(
    active: Annotated[bool | None, Query()] = None, cursor: Cursor = None, limit: Limit = 20
) -> DiscountPage:
    page = discounts.list_discounts(UnitOfWork(), current_actor(app), cursor=cursor, limit=limit, active=active)
    return DiscountPage(items=[_discount_out(v) for v in page.items], next_cursor=page.next_cursor)


@app.post(
    "/discounts/validate",
    summary="Would this code apply to this cart? (no use is taken)",
    responses=documented_errors(
        {
            422: "invalid_cart (details.reason) or validation_error",
            429: "too_many_attempts (too many unknown codes; details.retry_after_seconds)",
        }
    ),
)
def validate_discount(body: ValidateIn) -> ValidateOut:
    # The source IP is the gateway's (requestContext.http.sourceIp, bound for the request), never a header.
    verdict = discounts.validate(
        UnitOfWork(), current_principal(app).user_id, code=body.code, items=_cart(body.items),
        ip=request_origin.current().ip,
    )  # fmt: skip
    return ValidateOut(valid=verdict.valid, discount_amount=verdict.discount_amount, reason=verdict.reason)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
