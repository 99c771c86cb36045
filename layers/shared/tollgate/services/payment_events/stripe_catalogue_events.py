"""Stripe's `product.*` and `price.*` events -> the catalogue, without loops.

Two kinds of rows. A product or price Tollgate made (its Stripe object carries `tollgate_product_id` /
`tollgate_price_id` metadata; the Tollgate row has a slug) is owned by Tollgate: an event applies only what Stripe
owns - `active`, deletion, and a name changed in Stripe's dashboard when the event is newer than what Tollgate
last saw (`provider_updated_at`) - and never calls Stripe back, so Tollgate's own changes echoing back change
nothing and trigger nothing. A product deactivated in Stripe stops being sold (PUBLISHED -> ARCHIVED); one
reactivated there is not republished (that is Tollgate's decision). Anything else is a mirror of a product or
price made in Stripe, kept in step as before (every field, newest event wins).

Events carry the object's `updated` time (products); otherwise the event's own time orders them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from tollgate.models.payments import Price, Product
from tollgate.payments.money import to_major
from tollgate.services.payment_events.handling import Ctx, Outcome, as_uuid, metadata_of, object_id

PROVIDER = "stripe"


def _moment(ctx: Ctx, obj: dict[str, Any]) -> datetime | None:
    updated = obj.get("updated")
    if isinstance(updated, int) and not isinstance(updated, bool):
        return datetime.fromtimestamp(updated, tz=UTC)
    return ctx.provider_time


def _older(moment: datetime | None, seen: datetime | None) -> bool:
    return moment is not None and seen is not None and moment < seen


def _is_deleted(event: dict[str, Any], obj: dict[str, Any]) -> bool:
    return str(event.get("type") or "").endswith(".deleted") or obj.get("deleted") is True


# --- products -----------------------------------------------------------------------------------------------
def _our_product(ctx: Ctx, obj: dict[str, Any], provider_id: str) -> Product | None:
    """The Tollgate product this Stripe product is (by its provider id, else by the id in its metadata)."""
    row = ctx.session.execute(
        select(Product)
        .where(Product.provider == PROVIDER, Product.provider_product_id == provider_id)
        .with_for_update()
    ).scalar_one_or_none()
    if row is not None:
        return row
    ours = as_uuid(metadata_of(obj).get("tollgate_product_id"))
    if ours is None:
        return None
    return ctx.session.execute(
        select(Product).where(Product.id == ours, Product.slug.is_not(None)).with_for_update()
    ).scalar_one_or_none()


def _apply_to_ours(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any], row: Product) -> Outcome:
    provider_id = str(obj["id"])
    if row.provider_product_id is None:
        # Stripe answered a publish that has not recorded its answer yet: the publish records it.
        return Outcome.done(product=provider_id, applied=False, reason="publish not recorded yet")
    if row.provider_product_id != provider_id:
        return Outcome.done(product=provider_id, applied=False, reason="not this product's Stripe product")
    moment = _moment(ctx, obj)
    if _older(moment, row.provider_updated_at):
        return Outcome.done(product=provider_id, applied=False, reason="older than what Tollgate saw")
    changed: dict[str, Any] = {}
    if _is_deleted(event, obj):
        if row.status != "DELETED":
            row.status, row.deleted, row.active, row.deleted_at = "DELETED", True, False, ctx.now
            changed["status"] = "DELETED"
    else:
        active = bool(obj.get("active", True))
        if active != row.active:
            row.active = active
            changed["active"] = active
        if not active and row.status == "PUBLISHED":
            row.status = "ARCHIVED"
            changed["status"] = "ARCHIVED"
        name = obj.get("name")
        if isinstance(name, str) and name and name != row.name:
            row.name = name[:255]
            changed["name"] = row.name
    if moment is not None:
        row.provider_updated_at = moment
    if changed:
        row.updated_at = ctx.now
    return Outcome.done(product=provider_id, applied=bool(changed), tollgate_product_id=str(row.id), changed=changed)


def product_event(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    product_id = str(obj["id"])
    row = _our_product(ctx, obj, product_id)
    if row is not None and row.slug is not None:
        return _apply_to_ours(ctx, event, obj, row)
    if row is None:
        row = Product(provider=PROVIDER, provider_product_id=product_id, name=str(obj.get("name") or product_id))
        ctx.session.add(row)
    elif _older(_moment(ctx, obj), row.provider_updated_at):
        return Outcome.done(product=product_id, applied=False)
    row.name = str(obj.get("name") or row.name)
    row.description = obj.get("description")
    row.deleted = _is_deleted(event, obj)
    row.active = bool(obj.get("active", True)) and not row.deleted
    row.livemode = ctx.livemode
    row.metadata_ = metadata_of(obj)
    row.provider_updated_at = _moment(ctx, obj)
    return Outcome.done(product=product_id, applied=True)


# --- prices -------------------------------------------------------------------------------------------------
def _owned(ctx: Ctx, price: Price) -> bool:
    """A price of a Tollgate product (made through Tollgate or added to it in Stripe)."""
    if price.product_id is None:
        return False
    product = ctx.session.get(Product, price.product_id)
    return product is not None and product.slug is not None


def _for_a_tollgate_product(ctx: Ctx, obj: dict[str, Any]) -> bool:
    product_ref = object_id(obj.get("product"))
    if product_ref:
        product = ctx.session.execute(
            select(Product).where(Product.provider == PROVIDER, Product.provider_product_id == product_ref)
        ).scalar_one_or_none()
        if product is not None and product.slug is not None:
            return True
    ours = as_uuid(metadata_of(obj).get("tollgate_product_id"))
    named = ctx.session.get(Product, ours) if ours is not None else None
    return named is not None and named.slug is not None


def price_event(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    price_id = str(obj["id"])
    row = ctx.session.execute(
        select(Price).where(Price.provider == PROVIDER, Price.provider_price_id == price_id).with_for_update()
    ).scalar_one_or_none()
    moment = _moment(ctx, obj)
    if row is None:
        ours = as_uuid(metadata_of(obj).get("tollgate_price_id"))
        if ours is not None and ctx.session.get(Price, ours) is not None:
            # A Stripe price Tollgate made for one of its prices but no longer (or not yet) uses: an amount
            # change replaced it, or the call that made it has not recorded it. Nothing to mirror.
            return Outcome.done(price=price_id, applied=False, reason="superseded or not recorded yet")
    elif _older(moment, row.provider_updated_at):
        return Outcome.done(price=price_id, applied=False)
    elif _owned(ctx, row):
        # Tollgate's price: Stripe owns only whether it is active (or gone); amounts never change in Stripe.
        deleted = _is_deleted(event, obj)
        active = bool(obj.get("active", True)) and not deleted
        changed = active != row.active or deleted != row.deleted
        row.active, row.deleted = active, deleted
        row.provider_updated_at = moment
        return Outcome.done(price=price_id, applied=changed, tollgate_price_id=str(row.id))
    if _for_a_tollgate_product(ctx, obj):
        # Tollgate's products are sold only at the prices Tollgate made (checked and audited there): one added in
        # Stripe, left there by a creation whose answer was lost, or a mirror said to belong to one, never is.
        return Outcome.done(price=price_id, applied=False, reason="not a Tollgate price of a Tollgate product")
    currency = str(obj.get("currency") or "usd").lower()
    if row is None:
        row = Price(provider=PROVIDER, provider_price_id=price_id, currency=currency)
        ctx.session.add(row)
    product_ref = object_id(obj.get("product"))
    product = (
        ctx.session.execute(
            select(Product).where(Product.provider == PROVIDER, Product.provider_product_id == product_ref)
        ).scalar_one_or_none()
        if product_ref
        else None
    )
    recurring = obj.get("recurring") or {}
    amount = obj.get("unit_amount")
    row.provider_product_id = product_ref
    row.product_id = product.id if product else None
    row.type = obj.get("type")
    row.unit_amount = to_major(amount, currency) if amount is not None else None
    row.currency = currency
    row.interval = recurring.get("interval")
    row.interval_count = recurring.get("interval_count")
    row.recurring = recurring or None
    row.nickname = obj.get("nickname")
    row.lookup_key = obj.get("lookup_key")
    row.deleted = _is_deleted(event, obj)
    row.active = bool(obj.get("active", True)) and not row.deleted
    row.livemode = ctx.livemode
    row.metadata_ = metadata_of(obj)
    row.provider_updated_at = moment
    return Outcome.done(price=price_id, applied=True)
