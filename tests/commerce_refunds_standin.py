"""Aftersales test support: Stripe's Refund API on the Stripe stand-in, completed orders made directly in the
database (as a paid Stripe order holds them), and refund/charge events in the current and the 2020-08-27 shapes.

Stand-in routes (Stripe's wire format at the pinned version): `POST /v1/refunds` (form-encoded: amount,
payment_intent or charge, reason, metadata[...]; an Idempotency-Key answers its first answer again, with other
parameters 400 idempotency_error; more than the charge has left is 400 `charge_already_refunded` /
`amount_too_large`), `GET /v1/refunds?charge=` (a list, newest first) and `GET /v1/refunds/{id}` (one refund as
it stands now; an unknown id is 404 `resource_missing`). `fail_refund` fails a refund as Stripe does after it
succeeded (the card was closed): status failed, a failure_reason, and the amount no longer counted as refunded on
its charge.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.conftest import PROVIDER_FIXTURES
from tests.provider_standins import Recorded, StripeStandIn, nested_form
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.models.commerce import Order, OrderItem
from tollgate.models.payments import Product
from tollgate.payments.adapters import STRIPE_API_VERSION
from tollgate.payments.money import to_minor
from tollgate_local.webhooks_cli import stripe_event

Db = Callable[[], UnitOfWork]
JSON = "application/json"
CURRENT = PROVIDER_FIXTURES / "stripe" / "current"


@dataclass
class Charge:
    id: str
    payment_intent: str
    amount: int
    currency: str
    refunded: int = 0


@dataclass
class RefundBook:
    """What the stand-in's account holds for refunds: charges by payment intent, refunds made, answers by key."""

    charges: dict[str, Charge] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    status: str = "pending"  # the status a new refund answers with (cards: often succeeded at once)
    lock: threading.Lock = field(default_factory=threading.Lock)


_BOOKS: weakref.WeakKeyDictionary[StripeStandIn, RefundBook] = weakref.WeakKeyDictionary()


def book(standin: StripeStandIn) -> RefundBook:
    return _BOOKS.setdefault(standin, RefundBook())


def add_charge(standin: StripeStandIn, payment_intent: str, charge_id: str, amount: int, currency: str = "usd") -> None:
    book(standin).charges[payment_intent] = Charge(charge_id, payment_intent, amount, currency)


def _error(status: int, code: str, message: str, kind: str = "invalid_request_error") -> tuple[int, Any, str]:
    return status, {"error": {"type": kind, "code": code, "message": message}}, JSON


def _create(standin: StripeStandIn, rec: Recorded) -> tuple[int, Any, str]:
    refunds = book(standin)
    form, key = rec.form, rec.headers.get("idempotency-key")
    with refunds.lock:
        if key and key in refunds.keys:
            first, status, answer = refunds.keys[key]
            if first != form:
                return _error(400, "idempotency_key_in_use", "Keys for idempotent requests can only be used with "
                              "the same parameters they were first used with.", "idempotency_error")  # fmt: skip
            return status, answer, JSON
        charge = refunds.charges.get(form.get("payment_intent", "")) or next(
            (c for c in refunds.charges.values() if c.id == form.get("charge")), None
        )
        if charge is None:
            ref = form.get("payment_intent") or form.get("charge")
            return _error(400, "resource_missing", f"No such payment_intent: '{ref}'")
        amount = int(form.get("amount") or charge.amount - charge.refunded)
        reason = form.get("reason")
        if reason is not None and reason not in {"duplicate", "fraudulent", "requested_by_customer"}:
            return _error(400, "parameter_invalid_string", f"Invalid reason: {reason}")
        left = charge.amount - charge.refunded
        if left <= 0:
            status, answer, ctype = _error(400, "charge_already_refunded", f"Charge {charge.id} has already been "
                                           "refunded.")  # fmt: skip
        elif amount > left:
            status, answer, ctype = _error(
                400,
                "amount_too_large",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
            )
        else:
            charge.refunded += amount
            refund = refund_object(
                f"re_{uuid.uuid4().hex[:24]}", amount=amount, charge=charge.id, payment_intent=charge.payment_intent,
                status=refunds.status, metadata=nested_form(form, "metadata"), reason=reason, currency=charge.currency,
            )  # fmt: skip
            refunds.refunds[refund["id"]] = refund
            status, answer, ctype = 200, refund, JSON
        if key:
            refunds.keys[key] = (form, status, answer)
        return status, answer, ctype


def fail_refund(standin: StripeStandIn, refund_id: str, reason: str = "expired_or_canceled_card") -> dict[str, Any]:
    """Stripe failing `refund_id` (possibly after it succeeded): the money is back on the account's balance."""
    refunds = book(standin)
    with refunds.lock:
        refund = refunds.refunds[refund_id]
        charge = next(c for c in refunds.charges.values() if c.id == refund["charge"])
        if refund["status"] not in {"failed", "canceled"}:
            charge.refunded -= int(refund["amount"])
        refund.update(status="failed", failure_reason=reason,
                      failure_balance_transaction=f"txn_{uuid.uuid4().hex[:24]}")  # fmt: skip
        return copy.deepcopy(refund)


def refund_routes(standin: StripeStandIn, rec: Recorded, path: str) -> tuple[int, Any, str] | None:
    if rec.method == "POST" and path == "/v1/refunds":
        return _create(standin, rec)
    if rec.method == "GET" and path.startswith("/v1/refunds/"):
        refund_id = path.removeprefix("/v1/refunds/")
        found = book(standin).refunds.get(refund_id)
        if found is None:
            return _error(404, "resource_missing", f"No such refund: '{refund_id}'")
        return 200, copy.deepcopy(found), JSON
    if rec.method == "GET" and path == "/v1/refunds":
        query = dict(parse_qsl(urlsplit(rec.path).query))
        listed = [r for r in book(standin).refunds.values() if r["charge"] == query.get("charge")]
        listed.sort(key=lambda r: (r["created"], r["id"]), reverse=True)
        return 200, {"object": "list", "data": listed, "has_more": False, "url": "/v1/refunds"}, JSON
    return None


StripeStandIn.register_routes(refund_routes)


# --- objects and events ----------------------------------------------------------------------------------------
def refund_object(
    refund_id: str,
    *,
    amount: int,
    charge: str,
    payment_intent: str | None,
    status: str = "succeeded",
    metadata: dict[str, str] | None = None,
    reason: str | None = None,
    currency: str = "usd",
    failure_reason: str | None = None,
) -> dict[str, Any]:
    """A refund in the current shape (tests/fixtures/providers/stripe/current/refund.json)."""
    obj: dict[str, Any] = json.loads((CURRENT / "refund.json").read_text())
    obj.update(
        id=refund_id, amount=amount, charge=charge, payment_intent=payment_intent, status=status,
        metadata=dict(metadata or {}), reason=reason, currency=currency, created=int(utcnow().timestamp()),
    )  # fmt: skip
    if failure_reason:
        obj["failure_reason"] = failure_reason
    return obj


def current_event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return stripe_event(event_type, copy.deepcopy(obj), api_version=STRIPE_API_VERSION)


def charge_refunded_current(charge_id: str, payment_intent: str, *, amount: int, refunded: int) -> dict[str, Any]:
    """`charge.refunded` at the pinned version: the charge WITHOUT its refunds (Stripe no longer embeds them)."""
    obj: dict[str, Any] = json.loads((CURRENT / "charge.json").read_text())
    obj.update(
        id=charge_id, payment_intent=payment_intent, amount=amount, amount_captured=amount, captured=True,
        amount_refunded=refunded, refunded=refunded >= amount,
    )  # fmt: skip
    obj.pop("refunds", None)
    return current_event("charge.refunded", obj)


def charge_refunded_2020(
    charge_id: str, payment_intent: str, *, amount: int, refunds: list[dict[str, Any]]
) -> dict[str, Any]:
    """`charge.refunded` at 2020-08-27 (tests/fixtures/providers/stripe/charge.refunded.json): refunds embedded."""
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "charge.refunded.json").read_text())
    obj = fixture["data"]["object"]
    refunded = sum(r["amount"] for r in refunds if r["status"] == "succeeded")
    obj.update(
        id=charge_id, payment_intent=payment_intent, amount=amount, amount_captured=amount,
        amount_refunded=refunded, refunded=refunded >= amount,
    )  # fmt: skip
    obj["refunds"].update(data=copy.deepcopy(refunds), total_count=len(refunds))
    return stripe_event("charge.refunded", obj, api_version="2020-08-27")


# --- orders in the database ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaidOrder:
    order_id: uuid.UUID
    item_ids: list[uuid.UUID]
    product_id: uuid.UUID | None
    payment_intent: str
    charge: str
    total: Decimal


def download_product(
    db: Db,
    *,
    download_url: str | None = "https://cdn.example.com/ebook.pdf",
    download_file_id: uuid.UUID | None = None,
    download_limit: int = -1,
    access_days: int | None = None,
    type: str = "DIGITAL_DOWNLOAD",
    price: Decimal = Decimal("20.00"),
) -> uuid.UUID:
    with db() as uow:
        product = Product(
            name="The ebook", slug=f"ebook-{uuid.uuid4().hex[:8]}", status="PUBLISHED", type=type, base_price=price,
            currency="usd", download_url=download_url, download_file_id=download_file_id,
            download_limit=download_limit, access_days=access_days, published_at=utcnow(),
        )  # fmt: skip
        uow.session.add(product)
        uow.session.flush()
        uow.commit()
        return product.id


def completed_order(
    db: Db,
    user_id: uuid.UUID,
    *,
    product_id: uuid.UUID | None = None,
    items: int = 1,
    unit_price: Decimal = Decimal("20.00"),
    tax: Decimal = Decimal("0"),
    currency: str = "usd",
    download_limit: int | None = None,
    access_expires_at: datetime | None = None,
    purchase_id: uuid.UUID | None = None,
    pack_id: uuid.UUID | None = None,
    payment_intent: str | None = None,
    stripe: StripeStandIn | None = None,
) -> PaidOrder:
    """A COMPLETED, paid Stripe order with `items` items, as the order-completion webhook leaves it: payment
    intent and charge set. With `stripe`, the stand-in's account knows the charge (so it can be refunded)."""
    if product_id is None and pack_id is None:
        product_id = download_product(db, price=unit_price)
    payment_intent = payment_intent or f"pi_{uuid.uuid4().hex[:24]}"
    charge_id = f"ch_{uuid.uuid4().hex[:24]}"
    subtotal = unit_price * items
    total = subtotal + tax
    now = utcnow()
    with db() as uow:
        order = None
        if purchase_id is not None:  # a pack checkout may already have made its order: complete that one
            order = uow.session.query(Order).filter(Order.purchase_id == purchase_id).one_or_none()
        if order is None:
            order = Order(user_id=user_id, currency=currency, subtotal=subtotal, tax_amount=tax, total_amount=total)
            uow.session.add(order)
        order.status, order.payment_status = "COMPLETED", "SUCCEEDED"
        order.provider, order.provider_checkout_id = "stripe", order.provider_checkout_id or f"cs_{uuid.uuid4().hex}"
        if order.provider_payment_intent_id:
            payment_intent = order.provider_payment_intent_id
        order.provider_payment_intent_id, order.provider_charge_id = payment_intent, charge_id
        order.purchase_id, order.paid_at, order.completed_at = purchase_id, now - timedelta(minutes=5), now
        uow.session.flush()
        total = order.total_amount
        existing = uow.session.query(OrderItem).filter(OrderItem.order_id == order.id).all()
        product_type = uow.session.get(Product, product_id).type if product_id is not None else None  # type: ignore[union-attr]
        made = list(existing)
        if not existing:
            for _ in range(items):
                item = OrderItem(
                    order_id=order.id, name="The ebook" if pack_id is None else "Pack", quantity=1,
                    unit_price=unit_price, total_price=unit_price, download_limit=download_limit,
                    access_expires_at=access_expires_at, fulfilled_at=now,
                    **({"kind": "pack", "pack_id": pack_id} if pack_id is not None else
                       {"kind": "product", "product_id": product_id, "product_type": product_type}),
                )  # fmt: skip
                uow.session.add(item)
                made.append(item)
        uow.session.flush()
        paid = PaidOrder(order.id, [i.id for i in made], product_id, payment_intent, charge_id, total)
        uow.commit()
    if stripe is not None:
        add_charge(stripe, payment_intent, charge_id, to_minor(total, currency), currency)
    return paid
