"""Discounts (seed 004): percentage or fixed amount, a code matched without regard to case, a validity window,
limits in total and per customer, first-time-only, a minimum amount, and restriction to products.

A use is reserved at checkout (`reserved_uses` + 1 and a `discount_usages` row, under the discount's row lock)
and counted when the order is paid (`current_uses` + 1, `reserved_uses` - 1); an abandoned checkout releases it.
The database refuses `current_uses + reserved_uses > max_uses`, whatever races; the checks here, made under the
same lock, turn that into a reason the caller can read.

Codes cannot be guessed: every lookup of a code (validate or checkout) goes through `screen`, which counts unknown
codes per user and per source IP in `auth_throttles` and answers 429 to a caller past the limit, valid code or not.
A minimum amount is in the discount's currency, so a cart in another currency is refused (`currency_mismatch`).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tollgate.auth import throttle
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import DiscountCodeTaken, DiscountInvalid, DiscountNotFound, RateLimited, ValidationFailed
from tollgate.models.commerce import Discount, DiscountUsage, Order, ProductDiscount
from tollgate.models.payments import Product
from tollgate.pagination import Page, keyset_page
from tollgate.payments.money import exponent
from tollgate.services import authz
from tollgate.services.authz import Actor


def quantum(currency: str) -> Decimal:
    """The smallest amount of `currency` (0.01 USD, 1 JPY, 0.001 KWD)."""
    return Decimal(1).scaleb(-exponent(currency))


def money(value: Decimal, currency: str) -> Decimal:
    return value.quantize(quantum(currency), rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class PricedLine:
    """One cart line as priced before any discount: what the discount rules look at."""

    product_id: uuid.UUID
    subtotal: Decimal  # unit price x quantity, in the currency's scale


@dataclass(frozen=True, slots=True)
class Applied:
    """A discount as it applies to a cart: the amount taken off each line (in the order of the lines)."""

    discount: Discount
    per_line: tuple[Decimal, ...]

    @property
    def amount(self) -> Decimal:
        return sum(self.per_line, Decimal(0))


@dataclass(frozen=True, slots=True)
class Verdict:
    valid: bool
    discount_amount: Decimal
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def find(session: Session, code: str, *, lock: bool = False) -> Discount | None:
    statement = select(Discount).where(func.upper(Discount.code) == code.strip().upper())
    if lock:
        statement = statement.with_for_update()
    return session.execute(statement).scalar_one_or_none()


def _ip_key(ip: str | None) -> str | None:
    """The per-IP counter's key. An IPv6 caller counts by its /64 (one subscriber's usual allocation, which a
    guesser could otherwise walk address by address); IPv4, and anything that is not an address, as written."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.IPv6Network((address.packed, 64), strict=False))
        return str(address)
    except ValueError:
        return ip


def screen(uow: UnitOfWork, code: str, *, user_id: uuid.UUID, ip: str | None, now: datetime) -> Discount | None:
    """The discount `code` names, asked under the guessing throttle. A user or source IP past its limit of unknown
    codes gets 429 `too_many_attempts`, for a valid code too (else the answer would still tell codes apart). An
    unknown code counts against both and is committed here (None is returned; the request goes on to fail, so
    call this before writing anything). A known code neither counts nor clears the count: one valid code must
    not reset a guesser's tally. It is answered only once no guess of the caller is still being counted."""
    session = uow.session
    keys: list[tuple[throttle.Scope, str]] = [("discount_user", str(user_id)), ("discount_ip", _ip_key(ip) or "")]
    throttle.check(session, keys, now)
    discount = find(session, code)
    if discount is not None:
        # A guess of this caller may be counting the limit's failure right now, and guesses racing it past the
        # limit are refused: wait for it (share lock) and ask again, so an answer here never tells a known code
        # from those refused guesses. Known codes of one caller still run side by side (shared locks).
        throttle.hold(session, keys)
        throttle.check(session, keys, now)
        return discount
    reached = {scope for scope, key in keys if throttle.record_failure(session, scope, key, now)}
    try:
        # Under the counter's row lock: a guess that raced past the check above after the limit was reached
        # elsewhere is refused too (the one that reached it still gets its answer), so no window answers more.
        throttle.check(session, [(scope, key) for scope, key in keys if scope not in reached], now)
    except RateLimited:
        uow.commit()
        raise
    uow.commit()
    return None


def restricted_to(session: Session, discount_id: uuid.UUID) -> set[uuid.UUID]:
    rows = session.execute(select(ProductDiscount.product_id).where(ProductDiscount.discount_id == discount_id))
    return set(rows.scalars())


def _invalid(reason: str, message: str, **details: Any) -> DiscountInvalid:
    return DiscountInvalid(message, details={"reason": reason, **details})


def apply(
    session: Session,
    discount: Discount,
    *,
    user_id: uuid.UUID,
    currency: str,
    lines: Sequence[PricedLine],
    now: datetime,
    recurring: bool = False,
) -> Applied:
    """What `discount` takes off `lines` for `user_id` now, or DiscountInvalid with the reason. Call it under the
    discount's row lock when the use is to be reserved: the limits it reads are then the ones that hold."""
    if not discount.active:
        raise _invalid("inactive", "this discount is not active")
    # The discount is taken off the line prices Stripe charges; on a subscription those prices recur every
    # period, so one use would discount every renewal for ever. Codes apply to one-time carts only.
    if recurring:
        raise _invalid("recurring_cart", "discount codes apply to one-time purchases, not subscriptions")
    if discount.valid_from is not None and now < discount.valid_from:
        raise _invalid("not_started", "this discount is not valid yet", valid_from=discount.valid_from.isoformat())
    if discount.valid_until is not None and now >= discount.valid_until:
        raise _invalid("expired", "this discount has expired", valid_until=discount.valid_until.isoformat())
    if discount.type == "FIXED_AMOUNT" and (discount.currency or "").lower() != currency.lower():
        raise _invalid("currency_mismatch", "this discount is in another currency", currency=discount.currency)
    # A minimum is an amount in the discount's currency: a cart in another one cannot be measured against it.
    # (A minimum with no currency predates this rule and the admin API no longer accepts it.)
    if discount.minimum_amount is not None and discount.currency and discount.currency.lower() != currency.lower():
        raise _invalid(
            "currency_mismatch", "this discount's minimum amount is in another currency", currency=discount.currency
        )
    if discount.max_uses is not None and discount.current_uses + discount.reserved_uses >= discount.max_uses:
        raise _invalid("max_uses_reached", "this discount has been used up")
    if discount.max_uses_per_customer is not None:
        mine = session.execute(
            select(func.count())
            .select_from(DiscountUsage)
            .where(
                DiscountUsage.discount_id == discount.id,
                DiscountUsage.user_id == user_id,
                DiscountUsage.status.in_(("reserved", "used")),
            )
        ).scalar_one()
        if mine >= discount.max_uses_per_customer:
            raise _invalid("customer_limit_reached", "you have already used this discount as often as it allows")
    if discount.first_time_only:
        paid_before = session.execute(
            select(Order.id).where(Order.user_id == user_id, Order.paid_at.is_not(None)).limit(1)
        ).first()
        # An open checkout of this buyer already holding a first-order discount counts too: otherwise every
        # checkout opened before the first payment would be "a first order" (the buyer's row lock orders them).
        open_first = session.execute(
            select(DiscountUsage.id)
            .join(Discount, Discount.id == DiscountUsage.discount_id)
            .where(
                DiscountUsage.user_id == user_id,
                DiscountUsage.status == "reserved",
                Discount.first_time_only.is_(True),
            )
            .limit(1)
        ).first()
        if paid_before is not None or open_first is not None:
            raise _invalid("first_time_only", "this discount is for a first order only")
    subtotal = sum((line.subtotal for line in lines), Decimal(0))
    if discount.minimum_amount is not None and subtotal < discount.minimum_amount:
        raise _invalid(
            "minimum_amount", "the cart is below this discount's minimum", minimum=str(discount.minimum_amount)
        )
    products = restricted_to(session, discount.id)
    eligible = [not products or line.product_id in products for line in lines]
    base = sum((line.subtotal for line, ok in zip(lines, eligible, strict=True) if ok), Decimal(0))
    if base <= 0:
        raise _invalid("not_applicable", "this discount applies to nothing in the cart")
    return Applied(discount, split(discount, currency, lines, eligible, base))


def split(
    discount: Discount, currency: str, lines: Sequence[PricedLine], eligible: Sequence[bool], base: Decimal
) -> tuple[Decimal, ...]:
    """The discount per line, each quantised, never more than the line. A percentage is taken off each eligible
    line; a fixed amount (at most the eligible subtotal) is shared in proportion to the lines (largest remainders
    take the rounding), so the shares add up to the amount exactly."""
    if discount.type == "PERCENTAGE":
        rate = discount.value / Decimal(100)
        return tuple(
            min(money(line.subtotal * rate, currency), line.subtotal) if ok else Decimal(0)
            for line, ok in zip(lines, eligible, strict=True)
        )
    amount = min(money(discount.value, currency), base)
    step = quantum(currency)
    exact = [amount * line.subtotal / base if ok else Decimal(0) for line, ok in zip(lines, eligible, strict=True)]
    shares = [(value / step).to_integral_value(rounding=ROUND_FLOOR) * step for value in exact]
    # Largest remainders first: each extra quantum goes to a line whose exact share it does not pass, so no line
    # is discounted below 0 or above itself, and the shares add up to the amount.
    left = int((amount - sum(shares, Decimal(0))) / step)
    by_remainder = sorted(range(len(shares)), key=lambda i: (exact[i] - shares[i], -i), reverse=True)
    for i in by_remainder[:left]:
        shares[i] += step
    return tuple(shares)


def reserve(session: Session, applied: Applied, *, user_id: uuid.UUID, order_id: uuid.UUID) -> None:
    """Hold one use for `order_id` (the discount row is locked by the caller)."""
    applied.discount.reserved_uses += 1
    session.add(
        DiscountUsage(
            discount_id=applied.discount.id,
            user_id=user_id,
            order_id=order_id,
            status="reserved",
            amount_saved=applied.amount,
        )
    )


def _usage_for_update(session: Session, order_id: uuid.UUID) -> tuple[DiscountUsage, Discount] | None:
    usage = session.execute(
        select(DiscountUsage).where(DiscountUsage.order_id == order_id).with_for_update()
    ).scalar_one_or_none()
    if usage is None:
        return None
    discount = session.get(Discount, usage.discount_id, with_for_update=True)
    assert discount is not None  # a foreign key
    return usage, discount


def mark_used(session: Session, order_id: uuid.UUID) -> bool:
    """The order was paid: its reserved use counts now. False when it had none (or it was counted already)."""
    found = _usage_for_update(session, order_id)
    if found is None or found[0].status != "reserved":
        return False
    usage, discount = found
    usage.status = "used"
    discount.reserved_uses -= 1
    discount.current_uses += 1
    return True


def release(session: Session, order_id: uuid.UUID) -> bool:
    """The checkout was abandoned or failed: its reserved use goes back. False when there was none to release."""
    found = _usage_for_update(session, order_id)
    if found is None or found[0].status != "reserved":
        return False
    usage, discount = found
    usage.status = "released"
    discount.reserved_uses -= 1
    return True


# --- validate (no use is taken) --------------------------------------------------------------------------------
def validate(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    code: str,
    items: Sequence[tuple[uuid.UUID, int]],
    ip: str | None = None,
    now: datetime | None = None,
) -> Verdict:
    """Whether `code` applies to the cart `items` ((price id, quantity)) for `user_id` now, and how much it takes
    off; nothing is reserved (a checkout may still find it used up). Asked under the guessing throttle (`screen`)
    for `user_id` and the caller's source `ip`."""
    from tollgate.services import orders  # the cart is priced where orders are

    now = now or utcnow()
    with uow:
        cart = orders.price_cart(uow.session, items)
        discount = screen(uow, code, user_id=user_id, ip=ip, now=now)
        if discount is None:
            return Verdict(False, Decimal(0), "unknown_code")
        try:
            applied = apply(
                uow.session, discount, user_id=user_id, currency=cart.currency, lines=cart.priced_lines(),
                now=now, recurring=cart.recurring,
            )  # fmt: skip
        except DiscountInvalid as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            return Verdict(False, Decimal(0), str(details.get("reason")), details)
        return Verdict(True, applied.amount)


# --- admin ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DiscountView:
    """A discount as the admin reads it: plain values made inside the unit of work (no ORM row outlives its
    session), with the products it is restricted to (none: every product)."""

    id: uuid.UUID
    code: str
    name: str
    description: str | None
    type: str  # PERCENTAGE or FIXED_AMOUNT
    value: Decimal
    currency: str | None
    max_uses: int | None
    max_uses_per_customer: int | None
    current_uses: int
    reserved_uses: int
    valid_from: datetime | None
    valid_until: datetime | None
    minimum_amount: Decimal | None
    first_time_only: bool
    active: bool
    provider_coupon_id: str | None
    created_at: datetime
    updated_at: datetime
    product_ids: tuple[uuid.UUID, ...]


def _discount_view(d: Discount, product_ids: Sequence[uuid.UUID]) -> DiscountView:
    return DiscountView(
        id=d.id, code=d.code, name=d.name, description=d.description, type=d.type, value=d.value,
        currency=d.currency, max_uses=d.max_uses, max_uses_per_customer=d.max_uses_per_customer,
        current_uses=d.current_uses, reserved_uses=d.reserved_uses, valid_from=d.valid_from,
        valid_until=d.valid_until, minimum_amount=d.minimum_amount, first_time_only=d.first_time_only,
        active=d.active, provider_coupon_id=d.provider_coupon_id, created_at=d.created_at, updated_at=d.updated_at,
        product_ids=tuple(product_ids),
    )  # fmt: skip


FIELDS = (
    "code", "name", "description", "type", "value", "currency", "max_uses", "max_uses_per_customer", "valid_from",
    "valid_until", "minimum_amount", "first_time_only", "active",
)  # fmt: skip


def _values(discount: Discount, product_ids: Sequence[uuid.UUID]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(discount, name)
        values[name] = value.isoformat() if isinstance(value, datetime) else str(value) if value is not None else None
    values["product_ids"] = sorted(str(p) for p in product_ids)
    return values


def _check(discount: Discount, *, minimum_rule: bool = True) -> None:
    if discount.type == "FIXED_AMOUNT" and not discount.currency:
        raise ValidationFailed("a fixed-amount discount needs a currency", details={"field": "currency"})
    # A minimum amount means nothing without its currency (the cart's number may be yen or dollars).
    if minimum_rule and discount.minimum_amount is not None and not discount.currency:
        raise ValidationFailed("a minimum amount needs the discount's currency", details={"field": "currency"})
    if discount.type == "PERCENTAGE" and discount.value > 100:
        raise ValidationFailed("a percentage is at most 100", details={"field": "value"})
    if discount.valid_from and discount.valid_until and discount.valid_until <= discount.valid_from:
        raise ValidationFailed("valid_until must be after valid_from", details={"field": "valid_until"})
    if discount.max_uses is not None and discount.max_uses < discount.current_uses + discount.reserved_uses:
        raise ValidationFailed(
            "max_uses is below the uses already counted or reserved",
            details={"field": "max_uses", "taken": discount.current_uses + discount.reserved_uses},
        )


def _set_products(session: Session, discount: Discount, product_ids: Sequence[uuid.UUID]) -> None:
    wanted = set(product_ids)
    if wanted:
        known = set(session.execute(select(Product.id).where(Product.id.in_(wanted))).scalars())
        if known != wanted:
            raise ValidationFailed(
                "some products do not exist", details={"product_ids": sorted(str(p) for p in wanted - known)}
            )
    for link in session.execute(select(ProductDiscount).where(ProductDiscount.discount_id == discount.id)).scalars():
        if link.product_id not in wanted:
            session.delete(link)
        else:
            wanted.discard(link.product_id)
    for product_id in sorted(wanted):
        session.add(ProductDiscount(product_id=product_id, discount_id=discount.id))


def _flush_unique(session: Session, code: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        if "uq_discounts_code" in str(exc.orig):
            raise DiscountCodeTaken("another discount has this code", details={"code": code}) from None
        raise


def create_discount(uow: UnitOfWork, actor: Actor, *, product_ids: Sequence[uuid.UUID], **fields: Any) -> DiscountView:
    authz.require_role(actor, authz.ADMIN)
    with uow:
        session = uow.session
        if find(session, str(fields["code"])) is not None:
            raise DiscountCodeTaken("another discount has this code", details={"code": fields["code"]})
        discount = Discount(current_uses=0, reserved_uses=0, **fields)
        if discount.currency:
            discount.currency = discount.currency.lower()
        _check(discount)
        session.add(discount)
        _flush_unique(session, discount.code)
        _set_products(session, discount, product_ids)
        session.flush()
        authz.audit(
            session, actor, action="discount.create", target_type="discount", target_id=str(discount.id),
            new_values=_values(discount, product_ids),
        )  # fmt: skip
        view = _discount_view(discount, sorted(set(product_ids)))
        uow.commit()
    return view


def update_discount(
    uow: UnitOfWork,
    actor: Actor,
    discount_id: uuid.UUID,
    *,
    product_ids: Sequence[uuid.UUID] | None = None,
    **changes: Any,
) -> DiscountView:
    authz.require_role(actor, authz.ADMIN)
    with uow:
        session = uow.session
        discount = session.get(Discount, discount_id, with_for_update=True)
        if discount is None:
            raise DiscountNotFound("no such discount", details={"discount_id": str(discount_id)})
        before_products = sorted(restricted_to(session, discount.id))
        old = _values(discount, before_products)
        if "code" in changes:
            other = find(session, str(changes["code"]))
            if other is not None and other.id != discount.id:
                raise DiscountCodeTaken("another discount has this code", details={"code": changes["code"]})
        for name, value in changes.items():
            if name == "currency" and value:
                value = str(value).lower()
            setattr(discount, name, value)
        # A row from before the minimum's currency rule can still be switched off or renamed without fixing it.
        _check(discount, minimum_rule=bool({"minimum_amount", "currency", "type"} & changes.keys()))
        _flush_unique(session, discount.code)
        after_products = before_products if product_ids is None else sorted(set(product_ids))
        if product_ids is not None:
            _set_products(session, discount, product_ids)
        session.flush()
        authz.audit(
            session, actor, action="discount.update", target_type="discount", target_id=str(discount.id),
            old_values=old, new_values=_values(discount, after_products),
        )  # fmt: skip
        view = _discount_view(discount, after_products)
        uow.commit()
    return view


def list_discounts(
    uow: UnitOfWork, actor: Actor, *, cursor: str | None = None, limit: int = 20, active: bool | None = None
) -> Page[DiscountView]:
    authz.require_role(actor, authz.ADMIN)
    with uow:
        statement = select(Discount)
        if active is not None:
            statement = statement.where(Discount.active.is_(active))
        page = keyset_page(
            uow.session, statement, Discount.created_at, Discount.id, cursor=cursor, limit=limit, descending=True
        )
        ids = [d.id for d in page.items]
        links: dict[uuid.UUID, list[uuid.UUID]] = {i: [] for i in ids}
        if ids:
            for link in uow.session.execute(
                select(ProductDiscount).where(ProductDiscount.discount_id.in_(ids))
            ).scalars():
                links[link.discount_id].append(link.product_id)
        views = [_discount_view(d, sorted(links[d.id])) for d in page.items]
    return Page(items=views, next_cursor=page.next_cursor)
