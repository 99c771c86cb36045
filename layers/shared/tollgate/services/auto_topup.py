"""Auto top-up: below a threshold, buy a pack with the customer's saved Stripe card, at most so much a month.

The trigger (`after_spend`) runs at the end of a charge's, a hold's or a capture's unit of work, in its transaction:
under a lock on the user's setting row it inserts the next numbered attempt and emits `auto_topup.requested`
through the outbox. The charge never waits on Stripe: the outbox relay hands the event to `run_attempt` after the
charge committed, outside any transaction holding locks, and that creates the PaymentIntent off-session with an
idempotency key made of the user and the attempt's number, so a retried delivery never buys twice. The credits
are granted only by Stripe's `payment_intent.succeeded` webhook, through the one pack-order flow (keyed by the
payment intent id), which also marks the attempt succeeded. A refused card (declined, or one that needs the
customer to authenticate) fails the attempt, turns auto top-up off with the reason, mails the customer a link to
fix it and emits `auto_topup.failed`: one failure, never a loop of them. An attempt left in flight (its delivery
went dead, or a function died mid-way) is found by `recover_stale`, which each relay run calls, and re-driven with
its own key or resolved by reading its PaymentIntent, never by buying again. A PaymentIntent is the attempt's only
when it comes from the user's Stripe customer and is the attempt's first (`stripe_auto_topup`); accounts no longer
ACTIVE are not charged.

Rules the lock makes hold under concurrent charges: at most one attempt in flight per user (also a partial unique
index), and this month's attempts that did not fail, plus the new one, never cost more than the monthly cap.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from tollgate import outbox
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import (
    AutoTopUpPackUnavailable,
    IdempotencyConflict,
    MonthlyCapBelowPackPrice,
    NoDefaultPaymentMethod,
)
from tollgate.mail import OutgoingMail, send_mail
from tollgate.models.auto_topup import IN_FLIGHT, AutoTopUpAttempt, AutoTopUpSetting
from tollgate.models.credits import CreditPack
from tollgate.models.payments import PaymentMethod
from tollgate.models.users import User, UserStatus
from tollgate.observability import logger
from tollgate.payments import adapters
from tollgate.payments.money import to_minor

REQUESTED = "auto_topup.requested"
FAILED = outbox.EventType.AUTO_TOPUP_FAILED.value
ZERO = Decimal(0)
# Stripe error codes that mean the saved card cannot pay without the customer: turn auto top-up off.
AUTHENTICATION_REQUIRED = "authentication_required"
# An attempt in flight untouched this long is stuck (its delivery went dead, or a function died mid-way):
# `recover_stale` re-drives or resolves it. Well past the relay's own retries of a live delivery.
STALE_AFTER = timedelta(minutes=15)
# Stripe keeps an idempotency key's answer for at least 24 hours; after that the same key could make a second
# PaymentIntent, so an outcome still unknown by then is never re-driven.
IDEMPOTENCY_WINDOW = timedelta(hours=23)
# Stripe's statuses of a PaymentIntent still on its way to paying: its webhook will tell.
PENDING_INTENT = frozenset({"succeeded", "processing", "requires_capture", "requires_confirmation"})


@dataclass(frozen=True, slots=True)
class AttemptView:
    id: uuid.UUID
    sequence: int
    status: str
    amount: Decimal
    currency: str
    credits: Decimal
    payment_intent_id: str | None
    failure_code: str | None
    failure_reason: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AutoTopUpView:
    enabled: bool
    threshold: Decimal | None
    pack_id: uuid.UUID | None
    monthly_cap: Decimal | None
    currency: str | None
    disabled_reason: str | None
    disabled_at: datetime | None
    spent_this_month: Decimal  # attempts of this calendar month (UTC) that did not fail
    last_attempt: AttemptView | None


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _spent_this_month(session: Session, user_id: uuid.UUID, now: datetime) -> Decimal:
    spent = session.execute(
        select(func.coalesce(func.sum(AutoTopUpAttempt.amount), 0)).where(
            AutoTopUpAttempt.user_id == user_id,
            AutoTopUpAttempt.status != "failed",
            AutoTopUpAttempt.created_at >= _month_start(now),
        )
    ).scalar_one()
    return Decimal(spent)


def _view(session: Session, user_id: uuid.UUID, setting: AutoTopUpSetting | None) -> AutoTopUpView:
    last = session.execute(
        select(AutoTopUpAttempt)
        .where(AutoTopUpAttempt.user_id == user_id)
        .order_by(AutoTopUpAttempt.sequence.desc())
        .limit(1)
    ).scalar_one_or_none()
    return AutoTopUpView(
        enabled=bool(setting and setting.enabled),
        threshold=setting.threshold if setting else None,
        pack_id=setting.pack_id if setting else None,
        monthly_cap=setting.monthly_cap if setting else None,
        currency=setting.currency if setting else None,
        disabled_reason=setting.disabled_reason if setting else None,
        disabled_at=setting.disabled_at if setting else None,
        spent_this_month=_spent_this_month(session, user_id, utcnow()),
        last_attempt=AttemptView(
            id=last.id,
            sequence=last.sequence,
            status=last.status,
            amount=last.amount,
            currency=last.currency,
            credits=last.credits,
            payment_intent_id=last.payment_intent_id,
            failure_code=last.failure_code,
            failure_reason=last.failure_reason,
            created_at=last.created_at,
        )
        if last is not None
        else None,
    )


def default_payment_method(session: Session, user: User) -> PaymentMethod | None:
    """The card auto top-up charges: the most recently attached payment method, still attached, of the user's
    Stripe customer (as `payment_method.attached` webhooks recorded it)."""
    if not user.stripe_customer_id:
        return None
    return (
        session.execute(
            select(PaymentMethod)
            .where(
                PaymentMethod.provider == "stripe",
                PaymentMethod.user_id == user.id,
                PaymentMethod.provider_customer_id == user.stripe_customer_id,
                PaymentMethod.detached.is_(False),
            )
            .order_by(PaymentMethod.updated_at.desc(), PaymentMethod.created_at.desc())
            .limit(1)
        )
        .scalars()
        .first()
    )


def _locked_setting(session: Session, user_id: uuid.UUID) -> AutoTopUpSetting | None:
    return session.execute(
        select(AutoTopUpSetting).where(AutoTopUpSetting.user_id == user_id).with_for_update()
    ).scalar_one_or_none()


def get_auto_topup(uow: UnitOfWork, user_id: uuid.UUID) -> AutoTopUpView:
    with uow:
        setting = uow.session.get(AutoTopUpSetting, user_id)
        return _view(uow.session, user_id, setting)


def update_auto_topup(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    enabled: bool,
    threshold: Decimal,
    pack_id: uuid.UUID,
    monthly_cap: Decimal,
) -> AutoTopUpView:
    """Save the caller's setting. The pack must be on sale and the cap (in the pack's currency) must pay for one
    pack; turning it on needs a saved Stripe card. Turning it on while already under the threshold starts a top-up
    at once (else a user at zero, whose charges all fail, would never get one)."""
    from tollgate.services.credits import available_balance  # credits imports this module for its trigger

    with uow:
        session = uow.session
        pack = session.get(CreditPack, pack_id)
        if pack is None or not pack.active:
            raise AutoTopUpPackUnavailable("this pack is not on sale", details={"pack_id": str(pack_id)})
        if monthly_cap < pack.price:
            raise MonthlyCapBelowPackPrice(
                "the monthly cap does not cover one pack",
                details={"monthly_cap": str(monthly_cap), "pack_price": str(pack.price), "currency": pack.currency},
            )
        user = session.get(User, user_id, with_for_update={"key_share": True})
        if user is None:
            from tollgate.errors import NotFound

            raise NotFound("no such user", details={"user_id": str(user_id)})
        if enabled and default_payment_method(session, user) is None:
            raise NoDefaultPaymentMethod(
                "save a card first: auto top-up pays with your default Stripe payment method",
                details={"provider": "stripe"},
            )
        # The row first (two first saves at once must not collide), then its lock: the trigger's lock too.
        session.execute(
            pg_insert(AutoTopUpSetting)
            .values(user_id=user_id, enabled=False, threshold=threshold, pack_id=pack.id, monthly_cap=monthly_cap,
                    currency=pack.currency.lower())
            .on_conflict_do_nothing(index_elements=[AutoTopUpSetting.user_id])
        )  # fmt: skip
        setting = session.execute(
            select(AutoTopUpSetting).where(AutoTopUpSetting.user_id == user_id).with_for_update()
        ).scalar_one()
        setting.enabled = enabled
        setting.threshold = threshold
        setting.pack_id = pack.id
        setting.monthly_cap = monthly_cap
        setting.currency = pack.currency.lower()
        if enabled:
            setting.disabled_reason = None
            setting.disabled_at = None
        session.flush()
        if enabled:
            _request_if_due(session, setting, lambda: available_balance(uow, user_id), utcnow())
        view = _view(session, user_id, setting)
        uow.commit()
    return view


# --- the trigger, in the spending transaction ---------------------------------------------------------------------
def after_spend(session: Session, user_id: uuid.UUID, available: Callable[[], Decimal]) -> uuid.UUID | None:
    """Called by a charge, hold or capture before it commits. When the user's auto top-up is on and the available
    balance (read through `available`, only then) is under the threshold, request a top-up; returns its attempt id.
    A user without auto top-up pays one primary-key look-up."""
    # A plain statement first: the common case (no auto top-up) stays off the ORM's load path.
    enabled = session.execute(ENABLED_FOR_UPDATE, {"user_id": user_id}).first()
    if enabled is None:
        return None
    setting = session.get(AutoTopUpSetting, user_id)  # locked by the statement above
    if setting is None:
        return None
    return _request_if_due(session, setting, available, utcnow())


ENABLED_FOR_UPDATE = text("SELECT 1 FROM auto_topup_settings WHERE user_id = :user_id AND enabled FOR UPDATE")


def _request_if_due(
    session: Session, setting: AutoTopUpSetting, available: Callable[[], Decimal], now: datetime
) -> uuid.UUID | None:
    """Under the setting's row lock: insert the next attempt and emit its event, or say why not (None)."""
    user_id = setting.user_id
    if available() >= setting.threshold:
        return None
    in_flight = session.execute(
        select(AutoTopUpAttempt.id).where(AutoTopUpAttempt.user_id == user_id, AutoTopUpAttempt.status.in_(IN_FLIGHT))
    ).first()
    if in_flight is not None:
        return None
    if not _chargeable(session.get(User, user_id)):
        return None
    pack = session.get(CreditPack, setting.pack_id)
    if pack is None or not pack.active or pack.currency.lower() != setting.currency:
        logger.warning("auto top-up skipped: its pack is not on sale", extra={"user_id": str(user_id)})
        return None
    if _spent_this_month(session, user_id, now) + pack.price > setting.monthly_cap:
        return None  # the cap is money: this month's attempts that did not fail count
    sequence = (
        session.execute(
            select(func.coalesce(func.max(AutoTopUpAttempt.sequence), 0)).where(AutoTopUpAttempt.user_id == user_id)
        ).scalar_one()
        + 1
    )
    attempt = AutoTopUpAttempt(
        id=new_id(), user_id=user_id, sequence=sequence, status="requested", pack_id=pack.id, credits=pack.credits,
        amount=pack.price, currency=setting.currency,
    )  # fmt: skip
    session.add(attempt)
    session.flush()
    outbox.emit(
        session,
        REQUESTED,
        user_id=user_id,
        data={
            "attempt_id": attempt.id, "sequence": sequence, "pack_id": pack.id, "credits": pack.credits,
            "amount": pack.price, "currency": attempt.currency, "threshold": setting.threshold,
        },
        dedupe_key=f"{REQUESTED}:{attempt.id}",
    )  # fmt: skip
    return attempt.id


# --- the consumer, after the charge committed ----------------------------------------------------------------------
def idempotency_key(user_id: uuid.UUID, sequence: int) -> str:
    """The PaymentIntent's idempotency key: one per (user, attempt number), whatever retries the delivery sees."""
    return f"tollgate-auto-topup:{user_id}:{sequence}"


def handle_requested(message: outbox.OutboxMessage) -> None:
    """The outbox consumer of `auto_topup.requested` (at least once, outside any transaction)."""
    run_attempt(UnitOfWork, uuid.UUID(str(message.data["attempt_id"])))


def run_attempt(
    uow_factory: Callable[[], UnitOfWork],
    attempt_id: uuid.UUID,
    gateway: adapters.StripeGateway | None = None,
) -> str:
    """Create the attempt's PaymentIntent (once: the key is the attempt's), then record what Stripe answered.
    Returns the attempt's status afterwards. A provider failure other than the card's refusal raises, so the relay
    retries with backoff; the attempt stays in flight meanwhile, so no second one starts."""
    with uow_factory() as uow:
        session = uow.session
        attempt = _locked_attempt(session, attempt_id)
        if attempt is None or attempt.status not in IN_FLIGHT:
            return attempt.status if attempt is not None else "missing"
        user = session.get(User, attempt.user_id)
        setting = session.get(AutoTopUpSetting, attempt.user_id)
        method = default_payment_method(session, user) if user is not None else None
        if user is None or setting is None or not setting.enabled:
            _finish_failed(session, attempt, "auto_topup_disabled", "auto top-up was turned off", notify=False)
            uow.commit()
            return attempt.status
        if not _chargeable(user):  # suspended, locked or deleted since: never charge the card behind its back
            _finish_failed(session, attempt, "account_inactive", f"the account is {user.status}", notify=False)
            uow.commit()
            return attempt.status
        if method is None or not user.stripe_customer_id:
            mail = _fail(session, attempt, "no_payment_method", "no saved card to charge")
            uow.commit()
            _send(mail)
            return "failed"
        attempt.status = "processing"
        charge = adapters.OffSessionCharge(
            customer_id=user.stripe_customer_id,
            payment_method_id=method.provider_payment_method_id,
            amount_minor=to_minor(attempt.amount, attempt.currency),
            currency=attempt.currency,
            metadata={
                "user_id": str(user.id),
                "kind": "pack",
                "item_id": str(attempt.pack_id),
                "auto_topup_attempt_id": str(attempt.id),
            },
            idempotency_key=idempotency_key(user.id, attempt.sequence),
        )
        uow.commit()
    try:
        result = (gateway or adapters.stripe_gateway()).charge_off_session(charge)  # no transaction open here
    except IdempotencyConflict:
        # The key met other parameters (the card changed since the first try, whose answer was lost): retrying
        # cannot succeed and a new key could buy twice. End it; a payment that did go through still grants.
        result = adapters.OffSessionResult(None, "unknown", failure_code=IDEMPOTENCY_CONFLICT)
    with uow_factory() as uow:
        session = uow.session
        attempt = _locked_attempt(session, attempt_id)
        if attempt is None:
            return "missing"
        if result.payment_intent_id and not attempt.payment_intent_id:
            attempt.payment_intent_id = result.payment_intent_id
        mail = None
        if attempt.status in IN_FLIGHT and result.refused:
            code = result.failure_code or result.status
            mail = _fail(session, attempt, code, refusal_reason(code, result.failure_message))
        status = attempt.status
        uow.commit()
    _send(mail)
    return status


IDEMPOTENCY_CONFLICT = "idempotency_conflict"
OUTCOME_UNKNOWN = "outcome_unknown"
_REASONS = {
    AUTHENTICATION_REQUIRED: "your bank asks you to confirm this payment",
    IDEMPOTENCY_CONFLICT: "your saved card changed while the payment was being made",
    OUTCOME_UNKNOWN: "we could not confirm that the payment went through",
    "canceled": "the payment was canceled",
    "card_declined": "your card was declined",
    "expired_card": "your card has expired",
}


def refusal_reason(code: str, message: str | None) -> str:
    """Why the card did not pay, as the mail and the setting say it."""
    return _REASONS.get(code) or message or code


def _chargeable(user: User | None) -> bool:
    return user is not None and user.deleted_at is None and user.status == UserStatus.ACTIVE


def _locked_attempt(session: Session, attempt_id: uuid.UUID) -> AutoTopUpAttempt | None:
    return session.execute(
        select(AutoTopUpAttempt).where(AutoTopUpAttempt.id == attempt_id).with_for_update()
    ).scalar_one_or_none()


# --- recovery of attempts stuck in flight ------------------------------------------------------------------------
@dataclass(slots=True)
class RecoveryReport:
    redriven: int = 0  # run again with their own idempotency key
    failed: int = 0  # Stripe refused or canceled it, or its outcome can no longer be learnt safely
    waiting: int = 0  # Stripe is paying it: its webhook grants it


STALE = select(AutoTopUpAttempt.id).where(AutoTopUpAttempt.status.in_(IN_FLIGHT)).order_by(AutoTopUpAttempt.updated_at)


def recover_stale(
    uow_factory: Callable[[], UnitOfWork] = UnitOfWork,
    *,
    gateway: adapters.StripeGateway | None = None,
    now: datetime | None = None,
    stale_after: timedelta = STALE_AFTER,
    limit: int = 100,
) -> RecoveryReport:
    """Attempts left in flight (a dead delivery, a function that died after marking one `processing`) would block
    every later top-up of their user. Each one untouched for `stale_after` is, without ever buying twice:
    re-driven with its own idempotency key while Stripe still answers that key with the first PaymentIntent; read
    at Stripe when its PaymentIntent is known (failed if refused or canceled, left to its webhook if paying);
    failed, turning auto top-up off, when its outcome is unknown past the key's window. Overlapping runs are safe:
    each step locks the attempt and re-checks it."""
    now = now or utcnow()
    report = RecoveryReport()
    with uow_factory() as uow:
        stale = uow.session.execute(STALE.where(AutoTopUpAttempt.updated_at < now - stale_after).limit(limit))
        ids = list(stale.scalars())
    for attempt_id in ids:
        try:
            outcome = _recover(uow_factory, attempt_id, gateway, now, stale_after)
        except Exception:  # one attempt Stripe cannot answer now must not stop the others; the next run retries
            logger.exception("auto top-up recovery failed", extra={"attempt_id": str(attempt_id)})
            continue
        if outcome is not None:
            setattr(report, outcome, getattr(report, outcome) + 1)
    return report


def _recover(
    uow_factory: Callable[[], UnitOfWork],
    attempt_id: uuid.UUID,
    gateway: adapters.StripeGateway | None,
    now: datetime,
    stale_after: timedelta,
) -> str | None:
    with uow_factory() as uow:
        attempt = _locked_attempt(uow.session, attempt_id)
        if attempt is None or attempt.status not in IN_FLIGHT or attempt.updated_at >= now - stale_after:
            return None  # another run (or the webhook) got there first
        status, intent_id, since = attempt.status, attempt.payment_intent_id, attempt.updated_at
        if status == "processing" and intent_id is None and now - since >= IDEMPOTENCY_WINDOW:
            mail = _fail(uow.session, attempt, OUTCOME_UNKNOWN, refusal_reason(OUTCOME_UNKNOWN, None))
            uow.commit()
            _send(mail)
            return "failed"
    if intent_id is None:
        # Never reached Stripe (`requested`), or its answer was lost within the key's window: the same key
        # makes the PaymentIntent once or answers the one already made.
        run_attempt(uow_factory, attempt_id, gateway)
        return "redriven"
    found = (gateway or adapters.stripe_gateway()).payment_intent_status(intent_id)
    with uow_factory() as uow:
        attempt = _locked_attempt(uow.session, attempt_id)
        if attempt is None or attempt.status not in IN_FLIGHT:
            return None
        if found.status in PENDING_INTENT and not found.refused:
            attempt.updated_at = now  # looked at: not read again before another `stale_after`
            uow.commit()
            return "waiting"
        code = found.failure_code or found.status
        mail = _fail(uow.session, attempt, code, refusal_reason(code, found.failure_message))
        uow.commit()
    _send(mail)
    return "failed"


# --- outcomes, from the consumer or from Stripe's webhooks ---------------------------------------------------------
def attempt_for_update(session: Session, attempt_id: uuid.UUID) -> AutoTopUpAttempt | None:
    return _locked_attempt(session, attempt_id)


def mark_succeeded(session: Session, attempt: AutoTopUpAttempt, payment_intent_id: str) -> None:
    """The pack was granted (by the webhook's pack-order flow, in this transaction)."""
    attempt.payment_intent_id = attempt.payment_intent_id or payment_intent_id
    if attempt.status != "succeeded":
        attempt.status = "succeeded"
        attempt.completed_at = utcnow()


def _finish_failed(session: Session, attempt: AutoTopUpAttempt, code: str, reason: str, *, notify: bool) -> None:
    attempt.status = "failed"
    attempt.failure_code = code[:64]
    attempt.failure_reason = reason
    attempt.completed_at = utcnow()
    if notify:
        outbox.emit(
            session,
            FAILED,
            user_id=attempt.user_id,
            data={
                "attempt_id": attempt.id, "sequence": attempt.sequence, "pack_id": attempt.pack_id,
                "amount": attempt.amount, "currency": attempt.currency, "failure_code": attempt.failure_code,
                "reason": reason, "payment_intent_id": attempt.payment_intent_id, "auto_topup_disabled": True,
            },
            dedupe_key=f"{FAILED}:{attempt.id}",
        )  # fmt: skip


def _fail(session: Session, attempt: AutoTopUpAttempt, code: str, reason: str) -> OutgoingMail | None:
    """The card cannot pay: fail the attempt, turn auto top-up off with the reason, emit `auto_topup.failed` and
    answer the mail to send once committed (None when the attempt had already ended)."""
    if attempt.status not in IN_FLIGHT:
        return None
    setting = _locked_setting(session, attempt.user_id)
    _finish_failed(session, attempt, code, reason, notify=True)
    if setting is not None:
        setting.enabled = False
        setting.disabled_reason = f"{code}: {reason}"
        setting.disabled_at = utcnow()
    user = session.get(User, attempt.user_id)
    return failure_mail(user, attempt, reason) if user is not None else None


def fail_from_webhook(session: Session, attempt: AutoTopUpAttempt, code: str, reason: str) -> Callable[[], None]:
    """`payment_intent.payment_failed`: as a refusal seen by the consumer. Answers what to run after commit."""
    mail = _fail(session, attempt, code, reason)
    return lambda: _send(mail)


def failure_mail(user: User, attempt: AutoTopUpAttempt, reason: str) -> OutgoingMail:
    link = f"{get_settings().app_url.rstrip('/')}/billing/auto-topup"
    return OutgoingMail(
        to=user.email,
        type="auto_topup_failed",
        subject="Auto top-up is off: your card could not be charged",
        text=(
            f"We tried to top up your credits with {attempt.amount} {attempt.currency.upper()}, but {reason}.\n\n"
            "We turned auto top-up off so your card is not tried again. Update your card and turn auto top-up "
            f"back on here:\n\n{link}\n"
        ),
        user_id=user.id,
        metadata={"attempt_id": str(attempt.id), "failure_code": attempt.failure_code},
    )


def _send(mail: OutgoingMail | None) -> None:
    if mail is not None:
        send_mail(UnitOfWork(), mail)


outbox.register_consumer(REQUESTED, handle_requested)
