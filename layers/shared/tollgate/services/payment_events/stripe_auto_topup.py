"""Stripe's `payment_intent.succeeded` / `payment_intent.payment_failed` for the PaymentIntents auto top-up created
(their metadata carry `auto_topup_attempt_id`).

A success is a pack order like any other: the one pack-order flow grants it, keyed by the payment intent id
(provider `stripe`), with the amount checked against the pack; the attempt is marked succeeded in the same
transaction. A failure fails the attempt and turns auto top-up off (see `services.auto_topup`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tollgate.models.auto_topup import AutoTopUpAttempt
from tollgate.models.payments import Purchase
from tollgate.models.users import User
from tollgate.payments.signatures import parse_time
from tollgate.services import auto_topup
from tollgate.services.payment_events.handling import (
    Ctx,
    Outcome,
    PackOrder,
    as_uuid,
    fulfil_pack_order,
    metadata_of,
    object_id,
    user_by_id,
)

PROVIDER = "stripe"
ATTEMPT_KEY = "auto_topup_attempt_id"


def is_auto_topup(obj: dict[str, Any]) -> bool:
    return bool(metadata_of(obj).get(ATTEMPT_KEY))


def _foreign(obj: dict[str, Any], attempt: AutoTopUpAttempt, user: User) -> str | None:
    """Why this PaymentIntent is not the attempt's own (None when it is). Metadata alone proves nothing: the money
    must come from the attempt's user's Stripe customer, and an attempt has one PaymentIntent (the first Stripe
    answered or reported), so a second one naming it can neither grant again nor fail it."""
    if attempt.payment_intent_id and attempt.payment_intent_id != str(obj["id"]):
        return "the attempt belongs to another payment"
    if not user.stripe_customer_id or object_id(obj.get("customer")) != user.stripe_customer_id:
        return "the payment's customer is not the attempt's user's"
    return None


def payment_succeeded(
    ctx: Ctx, obj: dict[str, Any], *, on_granted: Callable[[Purchase], dict[str, Any]] | None = None
) -> Outcome:
    intent_id = str(obj["id"])
    meta = metadata_of(obj)
    attempt_id = as_uuid(meta.get(ATTEMPT_KEY))
    attempt = auto_topup.attempt_for_update(ctx.session, attempt_id) if attempt_id else None
    if attempt is None:
        return Outcome.rejected("no auto top-up attempt matches this payment", payment_intent=intent_id)
    if str(meta.get("user_id")) != str(attempt.user_id) or str(meta.get("item_id")) != str(attempt.pack_id):
        return Outcome.rejected("the payment's buyer or pack is not the attempt's", payment_intent=intent_id)
    user = user_by_id(ctx.session, attempt.user_id)
    if user is None:
        return Outcome.rejected("the attempt's user is gone", payment_intent=intent_id)
    foreign = _foreign(obj, attempt, user)
    if foreign is not None:
        return Outcome.rejected(foreign, payment_intent=intent_id)
    received = obj.get("amount_received")
    order = PackOrder(
        provider=PROVIDER,
        order_id=intent_id,
        pack_ref=meta.get("item_id"),
        amount_minor=received if isinstance(received, int) and received > 0 else obj.get("amount"),
        currency=str(obj.get("currency") or "").lower() or None,
        paid=obj.get("status") == "succeeded",
        paid_at=ctx.provider_time or parse_time(obj.get("created")),
        payment_id=intent_id,
        customer_id=object_id(obj.get("customer")),
        metadata={ATTEMPT_KEY: str(attempt.id), "auto_topup_sequence": attempt.sequence},
    )
    outcome = fulfil_pack_order(ctx, user, order, on_granted=on_granted)
    if outcome.status == "processed" and order.paid:
        auto_topup.mark_succeeded(ctx.session, attempt, intent_id)
    outcome.detail["auto_topup_attempt"] = str(attempt.id)
    return outcome


def payment_failed(ctx: Ctx, obj: dict[str, Any]) -> Outcome:
    intent_id = str(obj["id"])
    attempt_id = as_uuid(metadata_of(obj).get(ATTEMPT_KEY))
    attempt = auto_topup.attempt_for_update(ctx.session, attempt_id) if attempt_id else None
    if attempt is None:
        return Outcome.rejected("no auto top-up attempt matches this payment", payment_intent=intent_id)
    user = user_by_id(ctx.session, attempt.user_id)
    foreign = _foreign(obj, attempt, user) if user is not None else "the attempt's user is gone"
    if foreign is not None:
        return Outcome.rejected(foreign, payment_intent=intent_id)
    if attempt.status not in {"requested", "processing"}:
        return Outcome.done(auto_topup_attempt=str(attempt.id), already=attempt.status)
    error = obj.get("last_payment_error") if isinstance(obj.get("last_payment_error"), dict) else {}
    code = str((error or {}).get("code") or "payment_failed")
    reason = auto_topup.refusal_reason(code, (error or {}).get("message"))
    attempt.payment_intent_id = attempt.payment_intent_id or intent_id
    ctx.after_commit.append(auto_topup.fail_from_webhook(ctx.session, attempt, code, reason))
    return Outcome.done(auto_topup_attempt=str(attempt.id), status="failed", failure_code=code)
