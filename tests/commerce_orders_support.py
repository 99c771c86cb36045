"""What the order and discount tests share: catalogue rows made directly, a checkout through the real handler,
and the Stripe events that close an order's session (built from the stand-in's own session, signed)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text

import tests.commerce_orders_standin  # noqa: F401 - registers the stand-in's order sessions
from tests.payments_support import send_stripe
from tests.provider_standins import StripeStandIn
from tests.support import ApiResponse, api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.models.commerce import Discount, ProductDiscount
from tollgate.models.payments import Price, Product
from tollgate_local.webhooks_cli import stripe_event

Db = Callable[[], UnitOfWork]
URLS = {"success_url": "https://shop.example.com/thanks", "cancel_url": "https://shop.example.com/cart"}


@dataclass(frozen=True)
class Item:
    product_id: uuid.UUID
    price_id: uuid.UUID


def product(
    db: Db,
    *,
    name: str = "Widget",
    amount: str = "10.00",
    currency: str = "usd",
    tax_rate: str | None = None,
    type: str = "ONE_TIME",
    stock: int | None = None,
    interval: str | None = None,
    status: str = "PUBLISHED",
    download_limit: int | None = -1,
    access_days: int | None = None,
) -> Item:
    with db() as uow:
        row = Product(
            name=name, slug=f"{name.lower().replace(' ', '-')}-{uuid.uuid4().hex[:8]}", status=status, type=type,
            base_price=Decimal(amount), currency=currency, tax_rate=Decimal(tax_rate) if tax_rate else None,
            track_inventory=stock is not None, stock_quantity=stock or 0, download_limit=download_limit,
            access_days=access_days, published_at=utcnow() if status == "PUBLISHED" else None,
        )  # fmt: skip
        uow.session.add(row)
        uow.session.flush()
        price = Price(
            product_id=row.id, unit_amount=Decimal(amount), currency=currency,
            type="recurring" if interval else "one_time", interval=interval, interval_count=1 if interval else None,
            active=True,
        )  # fmt: skip
        uow.session.add(price)
        uow.session.flush()
        item = Item(row.id, price.id)
        uow.commit()
    return item


def discount(db: Db, code: str, *, product_ids: tuple[uuid.UUID, ...] = (), **fields: Any) -> uuid.UUID:
    with db() as uow:
        kind, value = fields.pop("type", "PERCENTAGE"), Decimal(fields.pop("value", 10))
        row = Discount(code=code, name=code, type=kind, value=value, **fields)
        uow.session.add(row)
        uow.session.flush()
        for product_id in product_ids:
            uow.session.add(ProductDiscount(product_id=product_id, discount_id=row.id))
        uow.commit()
        return row.id


def user(db: Db, role: str = "USER") -> uuid.UUID:
    with db() as uow:
        row = make_user(uow.session, role=role)
        uow.commit()
        return row.id


def checkout(
    user_id: uuid.UUID, lines: list[tuple[Item, int]], *, code: str | None = None, key: str | None = None
) -> ApiResponse:
    body: dict[str, Any] = {"items": [{"price_id": str(i.price_id), "quantity": q} for i, q in lines], **URLS}
    if code:
        body["discount_code"] = code
    headers = {"idempotency-key": key} if key else None
    return api_call("POST", "/orders/checkout", body=body, as_user=user_id, headers=headers)


def order_row(db: Db, order_id: str | uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(text("SELECT * FROM orders WHERE id = :id"), {"id": str(order_id)}).mappings().one()


def items_of(db: Db, order_id: str | uuid.UUID) -> list[Any]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT * FROM order_items WHERE order_id = :id ORDER BY name"), {"id": str(order_id)}
        )
        return list(rows.mappings().all())


def stock(db: Db, item: Item) -> int:
    with db() as uow:
        return int(
            uow.session.execute(
                text("SELECT stock_quantity FROM products WHERE id = :id"), {"id": item.product_id}
            ).scalar_one()
        )


def uses(db: Db, discount_id: uuid.UUID) -> tuple[int, int]:
    with db() as uow:
        row = uow.session.execute(
            text("SELECT current_uses, reserved_uses FROM discounts WHERE id = :id"), {"id": discount_id}
        ).one()
        return int(row[0]), int(row[1])


def session_of(stripe: StripeStandIn, db: Db, order_id: str) -> dict[str, Any]:
    return dict(stripe.sessions[order_row(db, order_id)["provider_checkout_id"]])


def session_event(
    stripe: StripeStandIn,
    db: Db,
    order_id: str,
    event_type: str = "checkout.session.completed",
    *,
    paid: bool = True,
    created: int | None = None,
    **changes: Any,
) -> dict[str, Any]:
    obj = session_of(stripe, db, order_id)
    obj.update(
        status="complete" if event_type.endswith("completed") or "succeeded" in event_type else "expired",
        payment_status="paid" if paid else "unpaid",
        payment_intent=f"pi_{uuid.uuid4().hex[:24]}" if obj["mode"] == "payment" else None,
        customer=obj.get("customer") or f"cus_{uuid.uuid4().hex[:14]}",
    )
    if obj["mode"] == "subscription":
        obj["subscription"] = f"sub_{uuid.uuid4().hex[:14]}"
    obj.update(changes)
    return stripe_event(event_type, obj, created=created)


def deliver(event: dict[str, Any]) -> ApiResponse:
    answer = send_stripe(event)
    assert answer.status == 200, answer.json
    return answer
