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
- No Asaas call runs inside a database transaction: the unit of work that reads the user and the item is closed
  first, and the customer link is stored in its own short one afterwards.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import text

from tollgate.db import UnitOfWork
from tollgate.errors import AlreadySubscribed, BillingItemNotFound, ProviderNotConfigured, ValidationFailed
from tollgate.models.credits import CreditPack, Plan
from tollgate.payments import asaas
from tollgate.payments.signatures import BRASILIA

if TYPE_CHECKING:
    from tollgate.services.billing import CheckoutResult

PROVIDER = "asaas"
# A charge's due date: PIX and card are paid at once, a boleto needs a few days to be paid and cleared.
DUE_DAYS = 3


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
    from tollgate.services.billing import CheckoutResult, _user, active_subscription  # billing dispatches here

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
    # Provider calls from here on: no transaction is open.
    api = gateway or asaas.asaas_gateway()
    if not customer_id:
        customer_id = _customer(api, uow, user_id, email=email, name=display_name, tax_id=tax_id)
    reference = asaas.Reference(
        kind=kind,
        user_id=user_id.hex,
        item_id=item_id.hex,
        interval=interval if kind == "plan" else None,
        nonce=_nonce(user_id, kind, item_id, interval if kind == "plan" else None, idempotency_key),
    ).encode()
    description = f"{name} ({'credit pack' if kind == 'pack' else f'{interval}ly plan'})"
    today = _today()
    if kind == "pack":
        payment = api.find_payment(reference) if idempotency_key else None
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
        subscription = api.find_subscription(reference) if idempotency_key else None
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
