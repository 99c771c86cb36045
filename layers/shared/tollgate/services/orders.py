"""Orders (seed 004): the cart checkout, the one fulfilment every order goes through, and the order history.

Checkout of a cart, money first:
  1. one committed transaction prices the cart (active prices of PUBLISHED products, one currency, all one-time
     or all recurring), applies the discount under its row lock, creates the order PENDING with its items, takes
     tracked stock with a conditional decrement (the CHECK keeps it >= 0 whatever races) and reserves the
     discount use;
  2. then, with no transaction open, Stripe Checkout is asked for a session (idempotency key from the order id);
  3. a new transaction records the session, or (Stripe failed) releases the stock and the use and cancels the
     order.
Stripe lines are Tollgate's own amounts: one line per item at its discounted, tax-inclusive total (quantity kept
when the total divides by it), so the session's `amount_subtotal` and `amount_total` both equal the order's total,
which the completing webhook checks.

Every order is fulfilled by `fulfil_order`, whatever was sold: a credit pack (credits through the ledger, keyed by
the provider's order id: once), a plan (its subscription linked), and products by type (a digital download gets
its access period and download limit; a service, a one-time product and a subscription product are recorded).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session

from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import (
    AccountDisabled,
    DiscountInvalid,
    IdempotencyConflict,
    InvalidCart,
    NotFound,
    OrderNotFound,
    OutOfStock,
)
from tollgate.models.commerce import Order, OrderItem
from tollgate.models.credits import CreditPack
from tollgate.models.payments import Price, Product, Purchase, Subscription
from tollgate.models.users import User, UserStatus
from tollgate.outbox import EventType, emit
from tollgate.pagination import Page, keyset_page
from tollgate.payments import adapters
from tollgate.payments.money import to_minor
from tollgate.services import authz, discounts
from tollgate.services.authz import Actor
from tollgate.services.discounts import PricedLine, money

MAX_QUANTITY = 100
MAX_LINES = 50
# Stripe refuses an `expires_at` under 30 minutes away; the minute of slack covers the time to the call.
CHECKOUT_TTL = timedelta(minutes=30)
CHECKOUT_SLACK = timedelta(minutes=1)
# A plan order's metadata: the provider invoice whose payment fulfilled it (its refunds refund the order).
PAYING_INVOICE = "invoice_id"


# --- pricing a cart ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CartLine:
    price: Price
    product: Product
    quantity: int

    @property
    def subtotal(self) -> Decimal:
        return money(Decimal(self.price.unit_amount or 0) * self.quantity, self.price.currency)


@dataclass(frozen=True, slots=True)
class Cart:
    lines: tuple[CartLine, ...]
    currency: str
    recurring: bool

    def priced_lines(self) -> list[PricedLine]:
        return [PricedLine(line.product.id, line.subtotal) for line in self.lines]


def _is_recurring(price: Price) -> bool:
    return price.type == "recurring" or bool(price.interval) or bool(price.recurring)


def _interval(price: Price) -> tuple[str | None, int | None]:
    recurring = price.recurring or {}
    return (price.interval or recurring.get("interval")), (price.interval_count or recurring.get("interval_count"))


def price_cart(session: Session, items: Sequence[tuple[uuid.UUID, int]]) -> Cart:
    """The cart `items` ((price id, quantity)) priced, or InvalidCart saying which item is wrong."""
    if not items or len(items) > MAX_LINES:
        raise InvalidCart(f"a cart has 1 to {MAX_LINES} items", details={"reason": "cart_size"})
    ids = [price_id for price_id, _ in items]
    if len(set(ids)) != len(ids):
        raise InvalidCart("each price appears once in a cart (use its quantity)", details={"reason": "duplicate"})
    for price_id, quantity in items:
        if not 1 <= quantity <= MAX_QUANTITY:
            raise InvalidCart(
                f"a quantity is 1 to {MAX_QUANTITY}", details={"reason": "quantity", "price_id": str(price_id)}
            )
    rows = session.execute(
        select(Price, Product).join(Product, Product.id == Price.product_id).where(Price.id.in_(ids))
    )
    found = {price.id: (price, product) for price, product in rows.all()}
    lines: list[CartLine] = []
    for price_id, quantity in items:
        pair = found.get(price_id)
        if pair is None:
            raise InvalidCart("no such price", details={"reason": "unknown_price", "price_id": str(price_id)})
        price, product = pair
        if not price.active or price.deleted or price.unit_amount is None:
            raise InvalidCart(
                "this price is not for sale", details={"reason": "inactive_price", "price_id": str(price_id)}
            )
        if product.status != "PUBLISHED" or product.deleted_at is not None or not product.active or not product.slug:
            raise InvalidCart(
                "this product is not for sale", details={"reason": "unpublished_product", "price_id": str(price_id)}
            )
        try:  # a price finer than its currency's unit (a row not written through the catalogue) cannot be charged
            to_minor(price.unit_amount, price.currency)
        except ValueError:
            raise InvalidCart(
                "a price does not fit its currency's minor unit",
                details={"reason": "amount", "price_id": str(price_id)},
            ) from None
        lines.append(CartLine(price, product, quantity))
    currencies = {line.price.currency.lower() for line in lines}
    if len(currencies) != 1:
        raise InvalidCart(
            "a cart is in one currency", details={"reason": "mixed_currencies", "currencies": sorted(currencies)}
        )
    kinds = {_is_recurring(line.price) for line in lines}
    if len(kinds) != 1:
        raise InvalidCart(
            "a cart is all one-time or all recurring prices (one Stripe Checkout mode)",
            details={"reason": "mixed_modes"},
        )
    recurring = kinds == {True}
    if recurring and len({_interval(line.price) for line in lines}) != 1:
        raise InvalidCart("recurring prices in one cart share their interval", details={"reason": "mixed_intervals"})
    return Cart(tuple(lines), currencies.pop(), recurring)


@dataclass(frozen=True, slots=True)
class ItemAmounts:
    subtotal: Decimal
    discount: Decimal
    tax: Decimal

    @property
    def total(self) -> Decimal:
        return self.subtotal - self.discount + self.tax


def item_amounts(cart: Cart, applied: discounts.Applied | None) -> list[ItemAmounts]:
    """Per item: its subtotal, its share of the discount, and its tax (the product's rate on the discounted
    amount), each quantised to the currency."""
    shares = applied.per_line if applied is not None else tuple(Decimal(0) for _ in cart.lines)
    out = []
    for line, share in zip(cart.lines, shares, strict=True):
        rate = Decimal(line.product.tax_rate or 0)
        out.append(ItemAmounts(line.subtotal, share, money((line.subtotal - share) * rate, cart.currency)))
    return out


# --- checkout ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckoutResult:
    order_id: uuid.UUID
    url: str
    order_number: str


def _fingerprint(items: Sequence[tuple[uuid.UUID, int]], code: str | None, success: str, cancel: str) -> str:
    body = json.dumps(
        {"items": sorted([str(p), q] for p, q in items), "code": (code or "").upper(), "urls": [success, cancel]}
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _buyer(session: Session, user_id: uuid.UUID) -> User:
    # The row lock serialises one buyer's checkouts: a per-customer discount limit and an Idempotency-Key are then
    # decided by one of them at a time.
    user = session.get(User, user_id, with_for_update={"key_share": True})
    if user is None:
        raise NotFound("no such user")
    if user.deleted_at is not None or user.status not in (UserStatus.ACTIVE, UserStatus.LOCKED):
        raise AccountDisabled("this account cannot buy anything")
    return user


def _take_stock(session: Session, order: Order, items: list[OrderItem], cart: Cart) -> None:
    """Tracked stock for each item, by a conditional decrement in product order (no deadlock between carts)."""
    wanted: dict[uuid.UUID, int] = {}
    for line in cart.lines:
        if line.product.track_inventory:
            wanted[line.product.id] = wanted.get(line.product.id, 0) + line.quantity
    for product_id in sorted(wanted):
        left = session.execute(
            update(Product)
            .where(Product.id == product_id, Product.stock_quantity >= wanted[product_id])
            .values(stock_quantity=Product.stock_quantity - wanted[product_id])
            .returning(Product.stock_quantity)
        ).scalar_one_or_none()
        if left is None:
            available = session.execute(select(Product.stock_quantity).where(Product.id == product_id)).scalar_one()
            item = next(i for i in items if i.product_id == product_id)
            raise OutOfStock(
                "not enough stock for this item",
                details={
                    "product_id": str(product_id), "price_id": str(item.price_id), "name": item.name,
                    "requested": wanted[product_id], "available": available,
                },
            )  # fmt: skip
    for item in items:
        if item.product_id in wanted:
            item.stock_reserved = item.quantity


def _stripe_lines(
    order: Order, items: list[OrderItem], intervals: list[tuple[str | None, int | None]]
) -> tuple[adapters.OrderCheckoutLine, ...]:
    """One Checkout line per item at its discounted, tax-inclusive total (see the module)."""
    lines = []
    for item, (interval, count) in zip(items, intervals, strict=True):
        due = to_minor(item.total_price - item.discount_amount + item.tax_amount, order.currency)
        if due % item.quantity == 0:
            lines.append(adapters.OrderCheckoutLine(item.name, item.quantity, due // item.quantity, interval, count))
        else:  # a discount share that does not divide by the quantity: one line for the lot
            lines.append(adapters.OrderCheckoutLine(f"{item.name} x {item.quantity}", 1, due, interval, count))
    return tuple(lines)


def checkout(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    items: Sequence[tuple[uuid.UUID, int]],
    discount_code: str | None,
    success_url: str,
    cancel_url: str,
    idempotency_key: str | None = None,
    ip: str | None = None,
) -> CheckoutResult:
    """Create the order and its Stripe Checkout session (see the module's steps). The same Idempotency-Key with
    the same cart answers the same order; with another cart, 409. A discount code is looked up under the guessing
    throttle for the buyer and the source `ip` (`discounts.screen`): an unknown one counts and leaves no order."""
    fingerprint = _fingerprint(items, discount_code, success_url, cancel_url)
    key = hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else None
    now = utcnow()
    with uow:
        session = uow.session
        user = _buyer(session, user_id)  # held to the commit: one Idempotency-Key, one order
        earlier = _earlier(session, user, key, fingerprint, success_url, cancel_url, now) if key else None
        if isinstance(earlier, CheckoutResult):
            return earlier
        if earlier is None:
            if discount_code and discounts.screen(uow, discount_code, user_id=user.id, ip=ip, now=now) is None:
                raise DiscountInvalid(
                    "no such discount code", details={"reason": "unknown_code", "code": discount_code}
                )
            target = _create(
                session, user, items=items, discount_code=discount_code, success_url=success_url,
                cancel_url=cancel_url, fingerprint=fingerprint, key=key, now=now,
            )  # fmt: skip
            uow.commit()
        else:
            target = earlier  # its session was never recorded: ask Stripe again, with this transaction over
    return _open_session(uow, *target, owner=earlier is None)


Target = tuple[uuid.UUID, adapters.OrderCheckoutRequest]


def _earlier(
    session: Session, user: User, key: str, fingerprint: str, success_url: str, cancel_url: str, now: datetime
) -> CheckoutResult | Target | None:
    """What an Idempotency-Key already made: its answer, or the Stripe request to make again, or None."""
    earlier = session.execute(
        select(Order).where(Order.user_id == user.id, Order.metadata_["idempotency_key"].astext == key)
    ).scalar_one_or_none()
    if earlier is None:
        return None
    if earlier.metadata_.get("request") != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was already used for a different checkout")
    if earlier.checkout_url:
        return CheckoutResult(earlier.id, earlier.checkout_url, earlier.order_number)
    if earlier.status != "PENDING":
        raise IdempotencyConflict(
            "this Idempotency-Key's checkout failed: start a new one with a new key",
            details={"order_id": str(earlier.id), "status": earlier.status},
        )
    return earlier.id, _request(session, earlier, user, success_url, cancel_url, now)


def _create(
    session: Session,
    user: User,
    *,
    items: Sequence[tuple[uuid.UUID, int]],
    discount_code: str | None,
    success_url: str,
    cancel_url: str,
    fingerprint: str,
    key: str | None,
    now: datetime,
) -> Target:
    """Step 1: the order, its items, the stock and the discount use, in the caller's transaction."""
    cart = price_cart(session, items)
    applied = None
    if discount_code:
        discount = discounts.find(session, discount_code, lock=True)
        if discount is None:
            raise DiscountInvalid("no such discount code", details={"reason": "unknown_code", "code": discount_code})
        applied = discounts.apply(
            session, discount, user_id=user.id, currency=cart.currency, lines=cart.priced_lines(), now=now,
            recurring=cart.recurring,
        )  # fmt: skip
    amounts = item_amounts(cart, applied)
    order = Order(
        id=new_id(),
        user_id=user.id,
        status="PENDING",
        payment_status="PENDING",
        currency=cart.currency,
        subtotal=sum((a.subtotal for a in amounts), Decimal(0)),
        discount_amount=sum((a.discount for a in amounts), Decimal(0)),
        tax_amount=sum((a.tax for a in amounts), Decimal(0)),
        total_amount=sum((a.total for a in amounts), Decimal(0)),
        discount_id=applied.discount.id if applied else None,
        discount_code=applied.discount.code if applied else None,
        provider="stripe",
        checkout_expires_at=now + CHECKOUT_TTL + CHECKOUT_SLACK,
        metadata_={
            "mode": "subscription" if cart.recurring else "payment",
            "request": fingerprint,
            "success_url": success_url,
            "cancel_url": cancel_url,
            **({"idempotency_key": key} if key else {}),
        },
    )
    session.add(order)
    order_items = [
        OrderItem(
            id=new_id(),
            order_id=order.id,
            kind="product",
            product_id=line.product.id,
            price_id=line.price.id,
            name=line.product.name,
            product_type=line.product.type,
            quantity=line.quantity,
            unit_price=money(Decimal(line.price.unit_amount or 0), cart.currency),
            total_price=a.subtotal,
            tax_amount=a.tax,
            discount_amount=a.discount,
        )
        for line, a in zip(cart.lines, amounts, strict=True)
    ]
    session.flush()
    session.add_all(order_items)
    session.flush()
    _take_stock(session, order, order_items, cart)
    if applied is not None:
        discounts.reserve(session, applied, user_id=user.id, order_id=order.id)
    session.flush()
    try:
        intervals = [_interval(line.price) if cart.recurring else (None, None) for line in cart.lines]
        lines = _stripe_lines(order, order_items, intervals)
    except ValueError:
        raise InvalidCart("a price does not fit its currency's minor unit", details={"reason": "amount"}) from None
    request = adapters.OrderCheckoutRequest(
        order_id=str(order.id), user_id=str(user.id), email=user.email, mode=order.metadata_["mode"],
        currency=order.currency, lines=lines, success_url=success_url, cancel_url=cancel_url,
        expires_at=int((order.checkout_expires_at or now).timestamp()), customer_id=user.stripe_customer_id,
    )  # fmt: skip
    return order.id, request


def _request(
    session: Session, order: Order, user: User, success_url: str, cancel_url: str, now: datetime
) -> adapters.OrderCheckoutRequest:
    """The Stripe request of an order whose session was never recorded (a retry after a crash): the same
    parameters as the first request, so Stripe answers a session it made then with that session."""
    items = list(
        session.execute(
            select(OrderItem).where(OrderItem.order_id == order.id).order_by(OrderItem.created_at, OrderItem.id)
        ).scalars()
    )
    prices = {
        p.id: p for p in session.execute(select(Price).where(Price.id.in_([i.price_id for i in items]))).scalars()
    }
    recurring = order.metadata_.get("mode") == "subscription"
    intervals = [_interval(prices[i.price_id]) if recurring and i.price_id in prices else (None, None) for i in items]
    expires = order.checkout_expires_at or now + CHECKOUT_TTL + CHECKOUT_SLACK
    return adapters.OrderCheckoutRequest(
        order_id=str(order.id), user_id=str(user.id), email=user.email, mode=str(order.metadata_.get("mode")),
        currency=order.currency, lines=_stripe_lines(order, items, intervals), success_url=success_url,
        cancel_url=cancel_url, expires_at=int(expires.timestamp()), customer_id=user.stripe_customer_id,
    )  # fmt: skip


def _open_session(
    uow: UnitOfWork, order_id: uuid.UUID, request: adapters.OrderCheckoutRequest, *, owner: bool = True
) -> CheckoutResult:
    """Ask Stripe for the session (no transaction open), then record it. A failure of the request that created
    the order releases it; a failed retry (`owner` False: the same Idempotency-Key while the first request may
    still be at Stripe, which answers it 409) leaves it to that request or to the sweep. A session Stripe made
    for an order released meanwhile is recorded (a stray payment is then flagged for a refund), never handed out."""
    try:
        created = adapters.stripe_gateway().create_order_checkout(request)
    except Exception:
        if owner:
            with uow:
                order = uow.session.get(Order, order_id, with_for_update=True)
                if order is not None and order.status == "PENDING" and order.provider_checkout_id is None:
                    release(uow.session, order, payment_status="CANCELLED", reason="checkout_failed")
                    uow.commit()
        raise
    with uow:
        order = uow.session.get(Order, order_id, with_for_update=True)
        assert order is not None
        if order.status != "PENDING":
            order.provider_checkout_id = order.provider_checkout_id or created.id
            status = order.status
            uow.commit()
            raise IdempotencyConflict(
                "this checkout was released while its payment page was being opened: start a new one",
                details={"order_id": str(order_id), "status": status},
            )
        order.provider_checkout_id = created.id
        order.checkout_url = created.url
        number = order.order_number
        uow.commit()
    return CheckoutResult(order_id, created.url, number)


# --- release and fulfilment ----------------------------------------------------------------------------------------
def release(session: Session, order: Order, *, payment_status: str, reason: str, now: datetime | None = None) -> None:
    """An order that will not be paid: its stock and its discount use go back, it is CANCELLED. The order row is
    locked by the caller; releasing twice releases nothing the second time."""
    items = session.execute(
        select(OrderItem).where(OrderItem.order_id == order.id, OrderItem.stock_reserved > 0).with_for_update()
    ).scalars()
    for item in sorted(items, key=lambda i: str(i.product_id)):
        session.execute(
            update(Product)
            .where(Product.id == item.product_id)
            .values(stock_quantity=Product.stock_quantity + item.stock_reserved)
        )
        item.stock_reserved = 0
    discounts.release(session, order.id)
    order.status = "CANCELLED"
    order.payment_status = payment_status
    order.cancelled_at = now or utcnow()
    order.metadata_ = {**order.metadata_, "cancel_reason": reason}


@dataclass
class Fulfilment:
    granted: ledger.GrantResult | None = None
    items: int = 0


def fulfil_order(
    session: Session,
    order: Order,
    *,
    now: datetime,
    paid_at: datetime | None = None,
    purchase_grant: Callable[[], ledger.GrantResult] | None = None,
    subscription_id: uuid.UUID | None = None,
    announce: bool = True,
    items: list[OrderItem] | None = None,
) -> Fulfilment:
    """The one fulfilment of every order (locked by the caller, paid): PROCESSING -> COMPLETED, payment SUCCEEDED,
    the discount's reserved use counted, stock kept as sold, and each item fulfilled by what it is:
    pack -> `purchase_grant()` (the ledger grant keyed by the provider's order id: once), plan -> its subscription
    linked, DIGITAL_DOWNLOAD -> access until now + access_days (None: lifetime) and the product's download limit,
    SUBSCRIPTION -> the subscription the checkout started, SERVICE / ONE_TIME -> recorded."""
    result = Fulfilment()
    order.status = "PROCESSING"
    order.payment_status = "SUCCEEDED"
    order.paid_at = order.paid_at or paid_at or now
    if subscription_id is not None:
        order.subscription_id = subscription_id
    if order.discount_id is not None:
        discounts.mark_used(session, order.id)
    if items is None:  # `items`: the caller just made them (no look-up)
        items = list(session.execute(select(OrderItem).where(OrderItem.order_id == order.id)).scalars())
    product_ids = [i.product_id for i in items if i.product_id]
    products = (
        {p.id: p for p in session.execute(select(Product).where(Product.id.in_(product_ids))).scalars()}
        if product_ids
        else {}
    )
    for item in items:
        if item.fulfilled_at is not None:
            continue
        if item.kind == "pack" and purchase_grant is not None:
            result.granted = purchase_grant()
        elif item.kind == "product" and item.product_id in products:
            product = products[item.product_id]
            if product.type == "DIGITAL_DOWNLOAD":
                item.download_limit = product.download_limit
                item.access_expires_at = now + timedelta(days=product.access_days) if product.access_days else None
        item.fulfilled_at = now
        result.items += 1
    order.status = "COMPLETED"
    order.completed_at = now
    if items is not None:
        add_new(session, order, items)  # after the grant: the purchase row it names is in
    if not announce:  # the caller announces the order in its own words (a pack's order.completed)
        return result
    emit(
        session,
        EventType.ORDER_COMPLETED,
        user_id=order.user_id,
        data={
            "order_id": order.id, "order_number": order.order_number, "provider": order.provider,
            "total": order.total_amount, "currency": order.currency,
            "items": [{"kind": i.kind, "name": i.name, "quantity": i.quantity} for i in items],
        },
        dedupe_key=f"order.completed:{order.id}",
    )  # fmt: skip
    return result


def _one_item_order(
    session: Session,
    *,
    user_id: uuid.UUID,
    provider: str,
    checkout_id: str,
    amount: Decimal,
    currency: str,
    item: OrderItem,
    purchase_id: uuid.UUID | None = None,
) -> tuple[Order, list[OrderItem]]:
    """A new order of one item, not added yet (`add_new`)."""
    order = Order(
        id=new_id(),
        user_id=user_id,
        status="PENDING",
        payment_status="PENDING",
        currency=currency,
        subtotal=amount,
        tax_amount=Decimal(0),
        discount_amount=Decimal(0),
        total_amount=amount,
        refunded_amount=Decimal(0),
        refund_pending_amount=Decimal(0),
        provider=provider,
        provider_checkout_id=checkout_id,
        purchase_id=purchase_id,
        metadata_={"mode": "subscription" if item.kind == "plan" else "payment"},
    )
    item.order_id = order.id
    item.total_price = item.unit_price * item.quantity
    return order, [item]


def add_new(session: Session, order: Order, items: list[OrderItem]) -> None:
    """Add a new order and its items once the rows they name are in (no relationship orders the INSERTs)."""
    if inspect(order).transient:
        session.flush()
        session.add_all([order, *items])


def pack_order(
    session: Session, purchase: Purchase, pack: CreditPack, *, new: bool
) -> tuple[Order, list[OrderItem] | None]:
    """The order of a credit-pack purchase (one item, kind pack), made with the purchase (and added by
    `fulfil_order` or `add_new`). `new`: the purchase is being created in this transaction, so no order can exist
    yet (the hot path: no look-up)."""
    if not new:
        existing = session.execute(
            select(Order).where(Order.purchase_id == purchase.id).with_for_update()
        ).scalar_one_or_none()
        if existing is not None:
            return existing, None
    amount = money(purchase.amount, purchase.currency)
    return _one_item_order(
        session, user_id=purchase.user_id, provider=purchase.provider, checkout_id=purchase.provider_order_id,
        amount=amount, currency=purchase.currency, purchase_id=purchase.id,
        item=OrderItem(
            id=new_id(), kind="pack", pack_id=pack.id, name=pack.name, quantity=1, unit_price=amount,
            total_price=amount, tax_amount=Decimal(0), discount_amount=Decimal(0), stock_reserved=0,
            download_count=0,
        ),
    )  # fmt: skip


def plan_order(
    session: Session,
    *,
    user_id: uuid.UUID,
    subscription: Subscription,
    plan_id: uuid.UUID,
    plan_name: str,
    amount: Decimal,
    currency: str,
    now: datetime,
    paid: bool,
    provider: str = "stripe",
    checkout_id: str | None = None,
    invoice_id: str | None = None,
) -> Order | None:
    """The plan's order (one item, kind plan), fulfilled through `fulfil_order` once paid: one per subscription,
    made by its first paid period. Every provider calls this on every plan charge of more than nothing (a checkout,
    a first invoice, a trial's first renewal, a renewal); the first makes the order with that charge's amount and
    currency, the later ones find it and make none. A charge of nothing (a free trial) is no sale: None.
    The order is keyed `subscription:<provider subscription id>` (unique per provider), so two events racing for it
    make one row: the loser fails on the key, rolls back and applies on the provider's retry. `checkout_id`: the
    checkout that made the charge (a Stripe session), kept in the metadata; orders made before the key named the
    subscription were keyed by it, so it and the subscription link (set on every plan order) find those too.
    `invoice_id`: the provider invoice of the charge, kept in the metadata (PAYING_INVOICE) of the order it
    fulfils, so that invoice's refunds find the order."""
    key = f"subscription:{subscription.provider_subscription_id}"
    keys = [key] if checkout_id is None else [key, checkout_id]
    first = (Order.created_at, Order.id)
    by_key = select(Order).where(Order.provider == provider, Order.provider_checkout_id.in_(keys))
    order = session.execute(by_key.order_by(*first).limit(1).with_for_update()).scalar_one_or_none()
    if order is None:  # through the user's own orders (indexed), not a scan of every order
        by_link = select(Order).where(
            Order.user_id == user_id, Order.provider == provider, Order.subscription_id == subscription.id
        )
        order = session.execute(by_link.order_by(*first).limit(1).with_for_update()).scalar_one_or_none()
    items = None
    if order is None:
        amount = money(amount, currency)
        if amount <= 0:
            return None
        order, items = _one_item_order(
            session, user_id=user_id, provider=provider, checkout_id=key, amount=amount, currency=currency,
            item=OrderItem(id=new_id(), kind="plan", plan_id=plan_id, name=plan_name, quantity=1, unit_price=amount,
                           total_price=amount),
        )  # fmt: skip
        order.subscription_id = subscription.id  # linked while still unpaid: the subscription's later charges find it
        if checkout_id is not None:
            order.metadata_ = {**order.metadata_, "checkout_id": checkout_id}
    if paid and order.status == "PENDING":
        fulfil_order(session, order, now=now, subscription_id=subscription.id, items=items)
        if invoice_id is not None:
            order.metadata_ = {**order.metadata_, PAYING_INVOICE: invoice_id}
    if items is not None:
        add_new(session, order, items)
    return order


# --- the sweep: reservations of checkouts no webhook closed ------------------------------------------------------
def release_stale(session: Session, now: datetime, grace: timedelta, limit: int) -> int:
    """Cancel PENDING cart orders whose checkout expired more than `grace` ago, releasing their stock and
    discount use. Stripe sends `checkout.session.expired` for a session it opened; this is the safety net for an
    order whose session was never created (a crash between the two transactions) or whose event never came.
    Rows are taken with SKIP LOCKED, so a webhook working on one is left to finish."""
    rows = session.execute(
        select(Order)
        .where(Order.status == "PENDING", Order.checkout_expires_at < now - grace)
        .order_by(Order.checkout_expires_at, Order.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars()
    released = 0
    for order in rows:
        release(session, order, payment_status="CANCELLED", reason="checkout_expired_unreported", now=now)
        released += 1
    return released


# --- reading: views, plain values made inside the unit of work (no ORM row outlives its session) -----------------
@dataclass(frozen=True, slots=True)
class OrderItemView:
    id: uuid.UUID
    order_id: uuid.UUID
    kind: str
    product_id: uuid.UUID | None
    price_id: uuid.UUID | None
    pack_id: uuid.UUID | None
    plan_id: uuid.UUID | None
    name: str
    product_type: str | None
    quantity: int
    unit_price: Decimal
    total_price: Decimal  # unit price x quantity, before the discount and tax
    discount_amount: Decimal
    tax_amount: Decimal
    download_limit: int | None
    download_count: int
    access_expires_at: datetime | None
    access_revoked_at: datetime | None
    fulfilled_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OrderView:
    """An order as its owner and staff read it (staff notes, provider ids and metadata stay in the row)."""

    id: uuid.UUID
    order_number: str
    user_id: uuid.UUID
    status: str
    payment_status: str
    currency: str
    subtotal: Decimal
    discount_amount: Decimal
    tax_amount: Decimal
    total_amount: Decimal
    refunded_amount: Decimal
    refund_pending_amount: Decimal
    discount_id: uuid.UUID | None
    discount_code: str | None
    provider: str
    payment_method: str | None
    checkout_url: str | None
    checkout_expires_at: datetime | None
    paid_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None
    created_at: datetime
    updated_at: datetime
    items: tuple[OrderItemView, ...]


def _item_view(i: OrderItem) -> OrderItemView:
    return OrderItemView(
        id=i.id, order_id=i.order_id, kind=i.kind, product_id=i.product_id, price_id=i.price_id, pack_id=i.pack_id,
        plan_id=i.plan_id, name=i.name, product_type=i.product_type, quantity=i.quantity, unit_price=i.unit_price,
        total_price=i.total_price, discount_amount=i.discount_amount, tax_amount=i.tax_amount,
        download_limit=i.download_limit, download_count=i.download_count, access_expires_at=i.access_expires_at,
        access_revoked_at=i.access_revoked_at, fulfilled_at=i.fulfilled_at, created_at=i.created_at,
    )  # fmt: skip


def _order_view(o: Order, items: Sequence[OrderItem]) -> OrderView:
    return OrderView(
        id=o.id, order_number=o.order_number, user_id=o.user_id, status=o.status, payment_status=o.payment_status,
        currency=o.currency, subtotal=o.subtotal, discount_amount=o.discount_amount, tax_amount=o.tax_amount,
        total_amount=o.total_amount, refunded_amount=o.refunded_amount, refund_pending_amount=o.refund_pending_amount,
        discount_id=o.discount_id, discount_code=o.discount_code, provider=o.provider,
        payment_method=o.payment_method, checkout_url=o.checkout_url, checkout_expires_at=o.checkout_expires_at,
        paid_at=o.paid_at, completed_at=o.completed_at, cancelled_at=o.cancelled_at, created_at=o.created_at,
        updated_at=o.updated_at, items=tuple(_item_view(i) for i in items),
    )  # fmt: skip


def _views(session: Session, orders: Sequence[Order]) -> list[OrderView]:
    """`orders` with their items (one statement for all of them), as views."""
    ids = [o.id for o in orders]
    by_order: dict[uuid.UUID, list[OrderItem]] = {i: [] for i in ids}
    if ids:
        rows = session.execute(
            select(OrderItem).where(OrderItem.order_id.in_(ids)).order_by(OrderItem.created_at, OrderItem.id)
        ).scalars()
        for item in rows:
            by_order[item.order_id].append(item)
    return [_order_view(o, by_order[o.id]) for o in orders]


def list_orders(uow: UnitOfWork, user_id: uuid.UUID, *, cursor: str | None = None, limit: int = 20) -> Page[OrderView]:
    with uow:
        page = keyset_page(
            uow.session, select(Order).where(Order.user_id == user_id), Order.created_at, Order.id, cursor=cursor,
            limit=limit, descending=True,
        )  # fmt: skip
        views = _views(uow.session, page.items)
    return Page(items=views, next_cursor=page.next_cursor)


def get_order(uow: UnitOfWork, user_id: uuid.UUID, order_id: uuid.UUID) -> OrderView:
    """One of the caller's orders; another user's answers as if it did not exist."""
    with uow:
        order = uow.session.get(Order, order_id)
        if order is None or order.user_id != user_id:
            raise OrderNotFound("no such order", details={"order_id": str(order_id)})
        return _views(uow.session, [order])[0]


def admin_list_orders(
    uow: UnitOfWork,
    actor: Actor,
    *,
    status: str | None = None,
    user_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[OrderView]:
    authz.require_role(actor, authz.ADMIN, authz.SUPPORT)
    statement = select(Order)
    if status:
        statement = statement.where(Order.status == status)
    if user_id:
        statement = statement.where(Order.user_id == user_id)
    if since:
        statement = statement.where(Order.created_at >= since)
    if until:
        statement = statement.where(Order.created_at < until)
    with uow:
        page = keyset_page(
            uow.session, statement, Order.created_at, Order.id, cursor=cursor, limit=limit, descending=True
        )
        views = _views(uow.session, page.items)
    return Page(items=views, next_cursor=page.next_cursor)
