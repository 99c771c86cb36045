"""Checkout through Asaas (POST /billing/checkout with provider `asaas`): a one-time charge for a pack, a
subscription for a plan; the answer is the Asaas invoice page (`invoiceUrl`) where the buyer pays by PIX, boleto
or card (billingType UNDEFINED).

- Asaas charges only in BRL: the pack's / plan's own price is charged (`price`, `price_monthly`/`price_yearly`),
  so the item's currency must be BRL. Asaas has no price catalogue; `asaas_id` is not needed.
- Asaas charges a customer that has a CPF/CNPJ. The buyer's Asaas customer is found by `users.asaas_customer_id`,
  else by `externalReference` = the Tollgate user id (a customer created by an earlier checkout whose link was
  not stored), else created with the body's `tax_id` (required then, validated, never stored by Tollgate).
- The charge / subscription carries `externalReference` = "tg:<kind>:<user>:<item>:<interval>:<nonce>" (see
  `tollgate.payments.asaas.Reference`), which the webhooks read back to find the buyer and the item. With an
  Idempotency-Key the nonce is derived from it, and the charge is looked up by its reference before one is created:
  a retried checkout answers the charge the first attempt made instead of making a second one.
- Two identical checkouts at once (the same key) would both find no charge and both create one: the first commits
  a claim on the reference (`asaas_checkout_claims`) before it calls Asaas; a duplicate that sees a finished claim
  answers its charge, one that sees a claim still in progress answers 409 `checkout_in_progress` (retry) and calls
  nothing. A failed call drops the claim (the retry's look-up finds a charge a timed-out call made); a claim older
  than CLAIM_STALE (its Lambda died mid-call) may be taken over.
- No Asaas call runs inside a database transaction: the unit of work that reads the user and the item is closed
  first, and the claim and the customer link are stored in their own short ones.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert

from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import (
    AlreadySubscribed,
    BillingItemNotFound,
    CheckoutInProgress,
    ProviderNotConfigured,
    ValidationFailed,
)
from tollgate.models.credits import CreditPack, Plan
from tollgate.models.payments import AsaasCheckoutClaim
from tollgate.payments import asaas
from tollgate.payments.signatures import BRASILIA

if TYPE_CHECKING:
    from tollgate.services.billing import CheckoutResult

PROVIDER = "asaas"
# A charge's due date: PIX and card are paid at once, a boleto needs a few days to be paid and cleared.
DUE_DAYS = 3
# A claim this old belongs to a checkout that died mid-call (several provider timeouts): another may take it over.
CLAIM_STALE = timedelta(minutes=2)


def _nonce(user_id: uuid.UUID, kind: str, item_id: uuid.UUID, interval: str | None, key: str | None) -> str:
    if not key:
        return secrets.token_hex(8)
    basis = f"{user_id}|{kind}|{item_id}|{interval}|{key}"
    return hashlib.sha256(basis.encode("utf-8")).hexdigest()[:24]


def _today() -> datetime:
    return datetime.now(UTC).astimezone(BRASILIA)


def create_checkout(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    kind: str,
    item_id: uuid.UUID,
    success_url: str,
    interval: str = "month",
    idempotency_key: str | None = None,
    tax_id: str | None = None,
    gateway: asaas.AsaasGateway | None = None,
) -> CheckoutResult:
    from tollgate.services.billing import _user, active_subscription, refuse_trial_downgrade  # billing dispatches here

    with uow:
        user = _user(uow, user_id)
        if kind == "pack":
            pack = uow.session.get(CreditPack, item_id)
            if pack is None or not pack.active:
                raise BillingItemNotFound("no such credit pack", details={"item_id": str(item_id)})
            name, amount, currency, cycle = pack.name, pack.price, pack.currency.lower(), None
        else:
            plan = uow.session.get(Plan, item_id)
            if plan is None or not plan.active:
                raise BillingItemNotFound("no such plan", details={"item_id": str(item_id)})
            name, currency = plan.name, plan.currency.lower()
            amount = plan.price_yearly if interval == "year" else plan.price_monthly
            cycle = asaas.CYCLES[interval]
            refuse_trial_downgrade(uow, user, plan, utcnow())
            active = active_subscription(uow, user.id)
            if active is not None:
                raise AlreadySubscribed(
                    "you already have a subscription",
                    details={"subscription": active.provider_subscription_id, "provider": active.provider},
                )
        if currency != "brl":
            raise ProviderNotConfigured(
                "Asaas charges in BRL only: this item is priced in another currency",
                details={"provider": PROVIDER, "item_id": str(item_id), "currency": currency},
            )
        if amount is None or amount <= 0 or amount != amount.quantize(Decimal("0.01")):
            raise ProviderNotConfigured("the item's price does not fit BRL", details={"item_id": str(item_id)})
        customer_id, email, display_name = user.asaas_customer_id, user.email, user.name or user.email
    reference = asaas.Reference(
        kind=kind,
        user_id=user_id.hex,
        item_id=item_id.hex,
        interval=interval if kind == "plan" else None,
        nonce=_nonce(user_id, kind, item_id, interval if kind == "plan" else None, idempotency_key),
    ).encode()
    if idempotency_key:
        done = _claim(uow, user_id, reference)
        if done is not None:
            return done
    # Provider calls from here on: no transaction is open.
    try:
        result = _call_asaas(
            gateway or asaas.asaas_gateway(), uow, user_id, kind=kind, name=name, interval=interval, amount=amount,
            cycle=cycle, reference=reference, success_url=success_url, customer_id=customer_id, email=email,
            display_name=display_name, tax_id=tax_id, look_up=bool(idempotency_key),
        )  # fmt: skip
    except Exception:
        if idempotency_key:
            _release(uow, reference)  # the retry claims again; its look-up finds a charge this call made
        raise
    if idempotency_key:
        _finish(uow, reference, result)
    return result


def _claim(uow: UnitOfWork, user_id: uuid.UUID, reference: str) -> CheckoutResult | None:
    """Claim the checkout `reference` (committed before any Asaas call). Returns the charge of a finished claim
    (a retry), None when this call holds the claim now, or raises CheckoutInProgress while another call holds it."""
    from tollgate.services.billing import CheckoutResult

    now = utcnow()
    with uow:
        claimed = uow.session.execute(
            insert(AsaasCheckoutClaim)
            .values(id=new_id(), reference=reference, user_id=user_id, claimed_at=now)
            .on_conflict_do_nothing(index_elements=["reference"])
            .returning(AsaasCheckoutClaim.id)
        ).first()
        if claimed is None:
            row = uow.session.execute(
                select(AsaasCheckoutClaim).where(AsaasCheckoutClaim.reference == reference)
            ).scalar_one()
            if row.session_id and row.url:
                return CheckoutResult(url=row.url, provider=PROVIDER, session_id=row.session_id)
            # A claim left by a call that died mid-way: take it over, once (the compare on claimed_at).
            taken = uow.session.execute(
                update(AsaasCheckoutClaim)
                .where(
                    AsaasCheckoutClaim.id == row.id,
                    AsaasCheckoutClaim.claimed_at == row.claimed_at,
                    AsaasCheckoutClaim.claimed_at < now - CLAIM_STALE,
                )
                .values(claimed_at=now)
                .returning(AsaasCheckoutClaim.id)
            ).first()
            if taken is None:
                raise CheckoutInProgress(
                    "the same checkout is already being created; retry in a moment",
                    details={"provider": PROVIDER},
                )
        uow.commit()
    return None


def _release(uow: UnitOfWork, reference: str) -> None:
    with uow:
        uow.session.execute(
            delete(AsaasCheckoutClaim).where(
                AsaasCheckoutClaim.reference == reference, AsaasCheckoutClaim.session_id.is_(None)
            )
        )
        uow.commit()


def _finish(uow: UnitOfWork, reference: str, result: CheckoutResult) -> None:
    with uow:
        uow.session.execute(
            update(AsaasCheckoutClaim)
            .where(AsaasCheckoutClaim.reference == reference)
            .values(session_id=result.session_id, url=result.url)
        )
        uow.commit()


def _call_asaas(
    api: asaas.AsaasGateway,
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    kind: str,
    name: str,
    interval: str,
    amount: Decimal,
    cycle: str | None,
    reference: str,
    success_url: str,
    customer_id: str | None,
    email: str,
    display_name: str,
    tax_id: str | None,
    look_up: bool,
) -> CheckoutResult:
    from tollgate.services.billing import CheckoutResult

    if not customer_id:
        customer_id = _customer(api, uow, user_id, email=email, name=display_name, tax_id=tax_id)
    description = f"{name} ({'credit pack' if kind == 'pack' else f'{interval}ly plan'})"
    today = _today()
    if kind == "pack":
        payment = api.find_payment(reference) if look_up else None
        if payment is None:
            payment = api.create_payment(
                {
                    "customer": customer_id,
                    "billingType": "UNDEFINED",
                    "value": float(amount),
                    "dueDate": (today + timedelta(days=DUE_DAYS)).date().isoformat(),
                    "description": description,
                    "externalReference": reference,
                    "callback": {"successUrl": success_url, "autoRedirect": True},
                }
            )
        url = payment.get("invoiceUrl")
        session_id = str(payment["id"])
    else:
        subscription = api.find_subscription(reference) if look_up else None
        if subscription is None:
            subscription = api.create_subscription(
                {
                    "customer": customer_id,
                    "billingType": "UNDEFINED",
                    "value": float(amount),
                    "nextDueDate": today.date().isoformat(),
                    "cycle": cycle,
                    "description": description,
                    "externalReference": reference,
                    "callback": {"successUrl": success_url, "autoRedirect": True},
                }
            )
        session_id = str(subscription["id"])
        charges = api.subscription_payments(session_id)
        # The first charge of the subscription: the one the buyer pays now (the oldest due date).
        first = min(charges, key=lambda p: str(p.get("dueDate") or ""), default=None)
        url = first.get("invoiceUrl") if first else None
    if not url:
        from tollgate.errors import PaymentProviderError

        raise PaymentProviderError("Asaas answered without an invoice URL", details={"provider": PROVIDER})
    return CheckoutResult(url=str(url), provider=PROVIDER, session_id=session_id)


def _customer(
    api: asaas.AsaasGateway, uow: UnitOfWork, user_id: uuid.UUID, *, email: str, name: str, tax_id: str | None
) -> str:
    """The buyer's Asaas customer id: found by the user id as externalReference, else created (needs `tax_id`);
    then remembered on the user unless another account already holds it."""
    found = api.find_customer(str(user_id))
    if found is None:
        normalized = asaas.normalize_tax_id(tax_id or "")
        if normalized is None:
            raise ValidationFailed(
                "a valid CPF or CNPJ (tax_id) is required for the first Asaas checkout",
                details={"field": "tax_id", "provider": PROVIDER},
            )
        found = api.create_customer(name=name, email=email, tax_id=normalized, external_reference=str(user_id))
    customer_id = str(found["id"])
    with uow:
        uow.session.execute(
            text(
                "UPDATE users SET asaas_customer_id = :customer WHERE id = :id AND asaas_customer_id IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM users other WHERE other.asaas_customer_id = :customer)"
            ),
            {"customer": customer_id, "id": user_id},
        )
        uow.commit()
    return customer_id
