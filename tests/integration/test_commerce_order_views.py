"""The order and discount services hand out views, never ORM rows: every value their public functions return, down
to the last nested field, is a frozen dataclass or a plain value made inside the unit of work, so nothing a caller
holds can reach back into a closed session (a lazy load, an expired attribute, a flush of a change made by
accident)."""

# ruff: noqa: F401, F811
from __future__ import annotations

import dataclasses
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.commerce_orders_support import URLS, Db, deliver, discount, product, session_event, user
from tests.integration.test_commerce_catalogue_views import assert_plain
from tests.payments_support import payments_env, stripe_api
from tests.provider_standins import StripeStandIn
from tollgate.db import UnitOfWork
from tollgate.errors import Forbidden, OrderNotFound
from tollgate.services import discounts, orders
from tollgate.services.authz import Actor

DISCOUNT = {
    "code": "VIEW10", "name": "Ten off", "description": None, "type": "PERCENTAGE", "value": Decimal(10),
    "currency": "usd", "max_uses": 5, "max_uses_per_customer": None, "valid_from": None, "valid_until": None,
    "minimum_amount": None, "first_time_only": False, "active": True,
}  # fmt: skip


def _buy(buyer: uuid.UUID, lines: list[tuple[Any, int]], code: str | None = None) -> orders.CheckoutResult:
    return orders.checkout(
        UnitOfWork(), buyer, items=[(i.price_id, q) for i, q in lines], discount_code=code, **URLS, ip="192.0.2.7"
    )


def test_every_order_and_discount_answer_is_plain_values(db: Db, stripe_api: StripeStandIn) -> None:
    # Given an admin, a buyer, two products (one taxed, one tracked in stock) and a discount made by the admin
    admin, buyer = user(db, "ADMIN"), user(db)
    staff = Actor.user(admin, "ADMIN")
    taxed, scarce = product(db, name="Taxed", amount="10.00", tax_rate="0.0825"), product(db, name="Scarce", stock=3)
    answers: dict[str, Any] = {}
    made = discounts.create_discount(db(), staff, product_ids=[taxed.product_id], **DISCOUNT)
    answers["create_discount"] = made
    answers["update_discount"] = discounts.update_discount(
        db(), staff, made.id, product_ids=[taxed.product_id, scarce.product_id], name="Ten percent off"
    )
    answers["update_discount (products kept)"] = discounts.update_discount(db(), staff, made.id, max_uses=6)
    discount(db, "BIGCART", minimum_amount=Decimal(500), currency="usd")
    discount(db, "OLD", active=False)
    answers["list_discounts"] = discounts.list_discounts(db(), staff, cursor=None, limit=10)
    answers["list_discounts (inactive)"] = discounts.list_discounts(db(), staff, cursor=None, limit=10, active=False)
    # When every verdict of validate is asked for: applies, does not apply (with details), unknown code
    cart = [(taxed.price_id, 3), (scarce.price_id, 1)]
    answers["validate (valid)"] = discounts.validate(db(), buyer, code="view10", items=cart, ip="192.0.2.7")
    answers["validate (minimum)"] = discounts.validate(db(), buyer, code="BIGCART", items=cart, ip="192.0.2.7")
    answers["validate (unknown)"] = discounts.validate(db(), buyer, code="NOPE", items=cart, ip="192.0.2.7")
    # ... and orders: one paid with the code (completed by Stripe's webhook), one left pending
    paid = _buy(buyer, [(taxed, 3), (scarce, 1)], code="VIEW10")
    answers["checkout"] = paid
    deliver(session_event(stripe_api, db, str(paid.order_id)))
    pending = _buy(buyer, [(scarce, 2)])
    answers["list_orders"] = orders.list_orders(db(), buyer, cursor=None, limit=10)
    answers["get_order"] = orders.get_order(db(), buyer, paid.order_id)
    answers["admin_list_orders"] = orders.admin_list_orders(db(), staff, cursor=None, limit=10)
    answers["admin_list_orders (filtered)"] = orders.admin_list_orders(
        db(), staff, status="COMPLETED", user_id=buyer, cursor=None, limit=10
    )

    # Then no answer holds an ORM instance, at any depth
    for name, answer in answers.items():
        assert_plain(answer, name)
    # And the views carry what was read, after their unit of work closed: the order, its items, the discount
    order = answers["get_order"]
    assert (order.id, order.status, order.payment_status, order.discount_code) == (
        paid.order_id, "COMPLETED", "SUCCEEDED", "VIEW10",
    )  # fmt: skip
    assert order.paid_at is not None and order.discount_id == made.id
    assert (order.subtotal, order.discount_amount, order.tax_amount, order.total_amount) == (
        Decimal("40.00"), Decimal("4.00"), Decimal("2.23"), Decimal("38.23"),
    )  # fmt: skip
    assert sorted((i.name, i.quantity, i.total_price) for i in order.items) == [
        ("Scarce", 1, Decimal("10.000")), ("Taxed", 3, Decimal("30.000")),
    ]  # fmt: skip
    assert [o.id for o in answers["list_orders"].items] == [pending.order_id, paid.order_id]
    assert [o.id for o in answers["admin_list_orders (filtered)"].items] == [paid.order_id]
    assert answers["update_discount"].product_ids == tuple(sorted([taxed.product_id, scarce.product_id]))
    assert answers["update_discount (products kept)"].product_ids == answers["update_discount"].product_ids
    assert [d.code for d in answers["list_discounts"].items] == ["OLD", "BIGCART", "VIEW10"]
    assert [d.code for d in answers["list_discounts (inactive)"].items] == ["OLD"]
    assert (answers["validate (valid)"].valid, answers["validate (valid)"].discount_amount) == (True, Decimal("4.00"))
    refused = answers["validate (minimum)"]
    assert (refused.valid, refused.reason, refused.details["minimum"]) == (False, "minimum_amount", "500.000")
    assert answers["validate (unknown)"].reason == "unknown_code"


def test_a_view_is_a_snapshot_that_cannot_be_changed_or_written_back(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a buyer's pending order and a discount, read as views
    admin, buyer = user(db, "ADMIN"), user(db)
    staff = Actor.user(admin, "ADMIN")
    item = product(db, name="Widget", stock=5)
    order_id = _buy(buyer, [(item, 2)]).order_id
    order = orders.get_order(db(), buyer, order_id)
    code = discounts.create_discount(db(), staff, product_ids=[], **DISCOUNT)
    # When a caller tries to change what it was handed
    with pytest.raises(dataclasses.FrozenInstanceError):
        order.status = "COMPLETED"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        order.items[0].download_limit = 1_000  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        code.max_uses = 1_000  # type: ignore[misc]
    with pytest.raises(TypeError):
        order.items[0] = order.items[0]  # type: ignore[index]
    # And the rows change afterwards in the database
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET status = 'CANCELLED' WHERE id = :id"), {"id": order_id})
        uow.session.execute(text("UPDATE discounts SET max_uses = 1 WHERE id = :id"), {"id": code.id})
        uow.commit()
    # Then the views still say what was read (nothing reloads them), and nothing was written from them
    assert (order.status, order.items[0].quantity, code.max_uses) == ("PENDING", 2, 5)
    with db() as uow:
        row = uow.session.execute(text("SELECT status FROM orders WHERE id = :id"), {"id": order_id}).scalar_one()
        taken = uow.session.execute(text("SELECT stock_quantity FROM products WHERE id = :id"), {"id": item.product_id})
        assert (row, taken.scalar_one()) == ("CANCELLED", 3)
    # And a fresh read sees the change
    assert orders.get_order(db(), buyer, order_id).status == "CANCELLED"


def test_an_order_view_carries_no_staff_notes_nor_the_checkout_metadata(db: Db, stripe_api: StripeStandIn) -> None:
    # Given an order made with an Idempotency-Key (its hash and the request fingerprint sit in the metadata) and a
    # note staff wrote on it
    buyer = user(db)
    item = product(db)
    result = orders.checkout(
        UnitOfWork(), buyer, items=[(item.price_id, 1)], discount_code=None, **URLS, idempotency_key="k-1"
    )
    with db() as uow:
        uow.session.execute(
            text("UPDATE orders SET internal_notes = 'chargeback risk' WHERE id = :id"), {"id": result.order_id}
        )
        uow.commit()
    # When the owner reads it
    view = orders.get_order(db(), buyer, result.order_id)
    # Then the view has no field for either: what the service hands out cannot leak them by accident
    names = {f.name for f in dataclasses.fields(view)}
    assert not names & {"internal_notes", "metadata", "metadata_", "billing_address", "provider_checkout_id"}
    assert "chargeback risk" not in repr(view) and "k-1" not in repr(view)


def test_another_users_order_is_still_not_found_through_the_views(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a buyer's order
    buyer, stranger = user(db), user(db)
    order_id = _buy(buyer, [(product(db), 1)]).order_id
    # When another user asks for it by id, or lists their own orders
    with pytest.raises(OrderNotFound):
        orders.get_order(db(), stranger, order_id)
    mine = orders.list_orders(db(), stranger, cursor=None, limit=10)
    # Then it is not found, and their list is empty
    assert mine.items == [] and mine.next_cursor is None
    # And a user (not staff) cannot list every order or the discounts
    with pytest.raises(Forbidden):
        orders.admin_list_orders(db(), Actor.user(stranger, "USER"), cursor=None, limit=10)
    with pytest.raises(Forbidden):
        discounts.list_discounts(db(), Actor.user(stranger, "USER"), cursor=None, limit=10)
