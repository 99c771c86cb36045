"""Shared pieces of the catalogue and review tests: staff and customers, products made through the admin routes,
completed orders written straight to the tables (the order flow is tested on its own), and signed Stripe
catalogue events."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import text

import tests.commerce_catalogue_standin  # noqa: F401 - registers the stand-in's catalogue routes
from tests.payments_support import send_stripe
from tests.support import ApiResponse, api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.models.commerce import Order, OrderItem
from tollgate_local.webhooks_cli import stripe_event

Db = Callable[[], UnitOfWork]


def new_user(db: Db, role: str = "USER") -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        return user.id


def as_role(user_id: uuid.UUID, role: str) -> dict[str, Any]:
    return {"as_user": user_id, "role": role}


def admin_call(admin: uuid.UUID, method: str, path: str, body: Any = None, **kw: Any) -> ApiResponse:
    return api_call(method, path, body=body, as_user=admin, role="ADMIN", **kw)


def create_product(admin: uuid.UUID, **fields: Any) -> ApiResponse:
    slug = fields.pop("slug", f"product-{uuid.uuid4().hex[:8]}")
    body = {"name": "Course", "slug": slug, "type": "ONE_TIME", "base_price": "49.00", **fields}
    return admin_call(admin, "POST", "/admin/products", body)


def add_price(admin: uuid.UUID, product_id: str, amount: str = "49.00", **fields: Any) -> ApiResponse:
    body = {"unit_amount": amount, "currency": "usd", "type": "one_time", **fields}
    return admin_call(admin, "POST", f"/admin/products/{product_id}/prices", body)


def published_product(admin: uuid.UUID, **fields: Any) -> dict[str, Any]:
    """A product with one price, published (the Stripe stand-in must be running)."""
    made = create_product(admin, **fields)
    assert made.status == 201, made.json
    amount = fields.get("base_price", "49.00")
    kind = "recurring" if fields.get("type") == "SUBSCRIPTION" else "one_time"
    extra = {"interval": "month"} if kind == "recurring" else {}
    priced = add_price(admin, made.json["id"], amount, type=kind, **extra)
    assert priced.status == 201, priced.json
    published = admin_call(admin, "POST", f"/admin/products/{made.json['id']}/publish")
    assert published.status == 200, published.json
    return dict(published.json)


def completed_order(db: Db, user_id: uuid.UUID, product_id: str, status: str = "COMPLETED") -> uuid.UUID:
    """An order of `user_id` holding one unit of the product, in `status`."""
    with db() as uow:
        order = Order(
            user_id=user_id, status=status, payment_status="SUCCEEDED" if status == "COMPLETED" else "PENDING",
            currency="usd", subtotal=Decimal("49.00"), tax_amount=Decimal(0), discount_amount=Decimal(0),
            total_amount=Decimal("49.00"),
        )  # fmt: skip
        uow.session.add(order)
        uow.session.flush()
        uow.session.add(
            OrderItem(
                order_id=order.id, kind="product", product_id=uuid.UUID(product_id), name="Course",
                product_type="ONE_TIME", quantity=1, unit_price=Decimal("49.00"), total_price=Decimal("49.00"),
            )
        )  # fmt: skip
        uow.commit()
        return order.id


def audit_rows(db: Db, action: str) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM audit_logs WHERE action = :a ORDER BY created_at"), {"a": action}
            ).mappings()
        )


def row_count(db: Db, table: str) -> int:
    with db() as uow:
        return int(uow.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def send_catalogue_event(event_type: str, obj: dict[str, Any], **kw: Any) -> ApiResponse:
    return send_stripe(stripe_event(event_type, obj, **kw))
