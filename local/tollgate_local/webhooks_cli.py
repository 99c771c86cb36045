"""`tollgate webhooks`: replay a stored provider event, or sign and send a test event to the local server
(a local stand-in for `stripe trigger`).

    tollgate webhooks replay EVENT_ID
    tollgate webhooks send stripe checkout.session.completed --user alice@example.com --pack "Starter pack"
    tollgate webhooks send lemonsqueezy order_created --user ... --pack ...
    tollgate webhooks send clerk user.created --file event.json
    tollgate webhooks send clerk subscriptionItem.active --user alice@example.com --plan PRO   (Clerk Billing;
        also subscriptionItem.canceled/ended/pastDue/..., subscription.active, paymentAttempt.updated --status paid)
    tollgate webhooks send asaas PAYMENT_RECEIVED --user ... --pack ...   (a pack charge paid by PIX)

Events are signed with the provider's real scheme and the secret the server uses (STRIPE_WEBHOOK_SECRET,
LEMONSQUEEZY_WEBHOOK_SECRET, CLERK_WEBHOOK_SECRET; Asaas sends ASAAS_WEBHOOK_TOKEN as is), then POSTed to http://127.0.0.1:$TOLLGATE_PORT/webhooks/...
The signing helpers here are also what the tests use.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PATHS = {
    "stripe": "/webhooks/stripe",
    "lemonsqueezy": "/webhooks/lemonsqueezy",
    "clerk": "/webhooks/clerk",
    "asaas": "/webhooks/asaas",
}


# --- signing (the providers' real schemes) ---------------------------------------------------------------------
def stripe_signature(body: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe would send for `body` (HMAC-SHA256 of "{t}.{body}")."""
    import stripe

    header: str = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp)
    return header


def lemonsqueezy_signature(body: bytes, secret: str) -> str:
    """The `X-Signature` header: hex HMAC-SHA256 of the raw body."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def clerk_headers(body: str, secret: str, msg_id: str | None = None, timestamp: int | None = None) -> dict[str, str]:
    """Svix headers for `body` (HMAC-SHA256 of "{id}.{timestamp}.{body}" with the base64 `whsec_` secret)."""
    from standardwebhooks.webhooks import Webhook

    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body)
    return {"svix-id": msg_id, "svix-timestamp": str(stamp), "svix-signature": signature}


def signed_headers(provider: str, body: str, secret: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if provider == "stripe":
        headers["Stripe-Signature"] = stripe_signature(body, secret)
    elif provider == "lemonsqueezy":
        payload = json.loads(body)
        headers["X-Signature"] = lemonsqueezy_signature(body.encode(), secret)
        headers["X-Event-Name"] = str(payload.get("meta", {}).get("event_name", ""))
    elif provider == "asaas":
        headers["asaas-access-token"] = secret  # Asaas signs nothing: it sends the webhook's token back
    else:
        headers.update(clerk_headers(body, secret))
    return headers


# --- event builders --------------------------------------------------------------------------------------------
def asaas_payment_event(event: str, *, user_id: str, item_id: str, value: str, kind: str = "pack") -> dict[str, Any]:
    """An Asaas payment webhook body (docs.asaas.com "Eventos para cobranças") for a charge a Tollgate checkout
    made: its `externalReference` names the buyer and the item."""
    payment_id = f"pay_{uuid.uuid4().hex[:16]}"
    today = datetime.now(UTC).date().isoformat()
    return {
        "id": f"evt_{uuid.uuid4().hex}&{int(time.time())}",
        "event": event,
        "dateCreated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "payment": {
            "object": "payment", "id": payment_id, "dateCreated": today, "customer": "cus_local", "subscription": None,
            "value": float(value), "netValue": float(value), "originalValue": None, "billingType": "PIX",
            "status": "RECEIVED" if event == "PAYMENT_RECEIVED" else "CONFIRMED", "dueDate": today,
            "confirmedDate": today, "paymentDate": today, "invoiceUrl": f"https://sandbox.asaas.com/i/{payment_id[4:]}",
            "externalReference": f"tg:{kind}:{uuid.UUID(user_id).hex}:{uuid.UUID(item_id).hex}:-:local",
            "deleted": False, "refunds": None, "chargeback": None,
        },
    }  # fmt: skip


CLERK_BILLING_KINDS = frozenset({"subscription", "subscriptionItem", "paymentAttempt"})
CLERK_ITEM_STATUS = {
    "created": "incomplete", "updated": "active", "active": "active", "canceled": "canceled", "upcoming": "upcoming",
    "ended": "ended", "abandoned": "abandoned", "incomplete": "incomplete", "pastDue": "past_due",
    "past_due": "past_due", "freeTrialEnding": "active",
}  # fmt: skip


def clerk_billing_event(
    event_type: str, *, clerk_user_id: str, email: str, clerk_plan_id: str, amount_minor: int, currency: str = "usd",
    interval: str = "month", status: str = "paid", trial: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """A Clerk Billing event in the Svix envelope, shaped as tests/fixtures/providers/clerk/billing/ (Clerk's
    backend SDK types). The item id is stable per user and plan, so item and payment events of one plan match."""
    now_ms = int(time.time() * 1000)
    start = now_ms - 60_000
    days = 365 if interval == "year" else 30
    kind, _, action = event_type.partition(".")
    item_id = "csubi_" + hashlib.sha256(f"{clerk_user_id}:{clerk_plan_id}".encode()).hexdigest()[:24]
    money = {"amount": amount_minor, "amount_formatted": f"{amount_minor / 100:.2f}", "currency": currency.upper(),
             "currency_symbol": ""}  # fmt: skip
    payer = {"object": "commerce_payer", "id": "cpayer_local", "instance_id": "ins_local", "user_id": clerk_user_id,
             "email": email, "image_url": "", "created_at": start, "updated_at": start}  # fmt: skip
    item = {
        "object": "commerce_subscription_item", "id": item_id, "status": CLERK_ITEM_STATUS.get(action, "active"),
        "plan_period": "annual" if interval == "year" else "month", "period_start": start,
        "period_end": start + days * 86_400_000, "is_free_trial": trial or action == "freeTrialEnding",
        "amount": money, "plan_id": clerk_plan_id, "payer": payer, "created_at": start, "updated_at": now_ms,
        "plan": {"id": clerk_plan_id, "is_default": False, "is_recurring": True, "amount": amount_minor,
                 "period": "annual" if interval == "year" else "month", "currency": currency.upper()},
    }  # fmt: skip
    if action in {"canceled", "ended"}:
        item["canceled_at" if action == "canceled" else "ended_at"] = now_ms
    data: dict[str, Any] = item
    if kind == "subscription":
        data = {"object": "commerce_subscription", "id": "csub_local", "status": "active", "payer": payer,
                "payer_id": "cpayer_local", "items": [item], "created_at": start, "updated_at": now_ms}  # fmt: skip
    elif kind == "paymentAttempt":
        attempt_status = "pending" if action == "created" else status
        data = {
            "object": "commerce_payment_attempt", "id": f"cpay_{uuid.uuid4().hex[:24]}", "status": attempt_status,
            "payment_id": f"cpay_{uuid.uuid4().hex[:24]}", "charge_type": "checkout", "billing_date": start,
            "created_at": start, "updated_at": now_ms, "payer": payer, "subscription_items": [item],
            "totals": {"subtotal": money, "tax_total": {**money, "amount": 0}, "grand_total": money},
            **({"paid_at": now_ms} if attempt_status == "paid" else {}),
            **({"failed_at": now_ms, "failed_reason": {"code": "card_declined", "decline_code": "generic_decline"}}
               if attempt_status == "failed" else {}),
        }  # fmt: skip
    return {"data": data, "object": "event", "timestamp": now_ms, "type": event_type, "instance_id": "ins_local"}


def _clerk_billing(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import select

    from tollgate.db import UnitOfWork
    from tollgate.models.credits import Plan
    from tollgate.payments.money import to_minor

    if not (args.user and args.plan):
        raise SystemExit("give --user and --plan (a tier, e.g. PRO, or a plan id) for a Clerk Billing event")
    user = _resolve_user(args.user)
    if not user.clerk_id:
        raise SystemExit("this user has no clerk_id (Clerk Billing pays by Clerk user)")
    with UnitOfWork() as uow:
        plan = uow.session.execute(select(Plan).where(Plan.tier == args.plan.upper())).scalar_one_or_none()
        if plan is None:
            try:
                plan = uow.session.get(Plan, uuid.UUID(args.plan))
            except ValueError:
                plan = None
        if plan is None or not plan.clerk_plan_id:
            raise SystemExit(f"no plan {args.plan!r} with a clerk_plan_id")
        price = plan.price_yearly if args.interval == "year" else plan.price_monthly
        minor, currency, clerk_plan_id = to_minor(price, plan.currency), plan.currency, plan.clerk_plan_id
    return clerk_billing_event(
        args.type, clerk_user_id=user.clerk_id, email=user.email, clerk_plan_id=clerk_plan_id, amount_minor=minor,
        currency=currency, interval=args.interval, status=args.status,
    )  # fmt: skip


def stripe_event(
    event_type: str,
    obj: dict[str, Any],
    *,
    livemode: bool = False,
    created: int | None = None,
    api_version: str | None = None,
) -> dict[str, Any]:
    """An event envelope as an endpoint set to `api_version` (default: the pinned STRIPE_API_VERSION) receives it."""
    from tollgate.payments.adapters import STRIPE_API_VERSION

    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": api_version or STRIPE_API_VERSION,
        "context": None,
        "created": int(time.time()) if created is None else created,
        "data": {"object": obj},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def stripe_checkout_session(
    *,
    user_id: str,
    item_id: str,
    amount_minor: int,
    currency: str,
    kind: str = "pack",
    customer: str | None = None,
    payment_status: str = "paid",
    session_id: str | None = None,
    subscription: str | None = None,
    livemode: bool = False,
) -> dict[str, Any]:
    """A completed checkout.session in the current API's shape (tests/fixtures/providers/stripe/current/
    checkout.session.json: `invoice`, `customer_creation`, `payment_method_types`, `customer_details.address`...);
    the fields Tollgate reads are the same at 2020-08-27."""
    session_id = session_id or f"cs_test_{uuid.uuid4().hex}"
    now = int(time.time())
    return {
        "id": session_id,
        "object": "checkout.session",
        "amount_subtotal": amount_minor,
        "amount_total": amount_minor,
        "automatic_tax": {"enabled": False, "liability": None, "status": None, "provider": None},
        "cancel_url": "https://example.com/cancel",
        "client_reference_id": user_id,
        "created": now,
        "currency": currency,
        "customer": customer or f"cus_{uuid.uuid4().hex[:14]}",
        "customer_creation": None if customer or kind == "plan" else "always",
        "customer_details": {
            "address": {
                "city": None,
                "country": None,
                "line1": None,
                "line2": None,
                "postal_code": None,
                "state": None,
            },
            "email": "buyer@example.com",
            "name": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "expires_at": now + 86_400,
        "invoice": None,
        "livemode": livemode,
        "metadata": {"user_id": user_id, "kind": kind, "item_id": item_id},
        "mode": "subscription" if kind == "plan" else "payment",
        "payment_intent": None if kind == "plan" else f"pi_{uuid.uuid4().hex[:24]}",
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "status": "complete",
        "subscription": subscription,
        "success_url": "https://example.com/success",
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted",
        "url": None,
    }


def lemonsqueezy_order(
    *, user_id: str, item_id: str, variant_id: str, total_minor: int, currency: str = "USD",
    order_id: str | None = None, status: str = "paid", test_mode: bool = True, refunded_minor: int = 0,
    event_name: str = "order_created", customer_id: int = 1,
) -> dict[str, Any]:  # fmt: skip
    """An order webhook body shaped like tests/fixtures/providers/lemonsqueezy/order_created.json."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "meta": {
            "event_name": event_name,
            "test_mode": test_mode,
            "custom_data": {"user_id": user_id, "kind": "pack", "item_id": item_id},
        },
        "data": {
            "type": "orders",
            "id": order_id or str(uuid.uuid4().int % 10_000_000),
            "attributes": {
                "store_id": 1,
                "customer_id": customer_id,
                "identifier": str(uuid.uuid4()),
                "order_number": 1,
                "user_email": "buyer@example.com",
                "currency": currency,
                "subtotal": total_minor,
                "total": total_minor,
                "status": status,
                "refunded": refunded_minor > 0,
                "refunded_amount": refunded_minor,
                "first_order_item": {"variant_id": int(variant_id) if variant_id.isdigit() else variant_id,
                                     "price": total_minor, "test_mode": test_mode},
                "created_at": now,
                "updated_at": now,
                "test_mode": test_mode,
            },
        },
    }  # fmt: skip


# --- commands --------------------------------------------------------------------------------------------------
def _prepare() -> None:
    from tollgate_local.cli import _prepare_database

    _prepare_database()


def _resolve_user(reference: str) -> Any:
    from sqlalchemy import func, select

    from tollgate.db import UnitOfWork
    from tollgate.models import User

    with UnitOfWork() as uow:
        try:
            user = uow.session.get(User, uuid.UUID(reference))
        except ValueError:
            user = uow.session.execute(
                select(User).where(func.lower(User.email) == reference.lower())
            ).scalar_one_or_none()
        if user is None:
            raise SystemExit(f"no user {reference!r}")
        uow.session.expunge(user)  # keep its loaded values past the unit of work's closing rollback
        return user


def _resolve_pack(reference: str) -> Any:
    from sqlalchemy import select

    from tollgate.db import UnitOfWork
    from tollgate.models.credits import CreditPack

    with UnitOfWork() as uow:
        try:
            pack = uow.session.get(CreditPack, uuid.UUID(reference))
        except ValueError:
            pack = uow.session.execute(select(CreditPack).where(CreditPack.name == reference)).scalar_one_or_none()
        if pack is None:
            raise SystemExit(f"no credit pack {reference!r}")
        uow.session.expunge(pack)
        return pack


def _secret(provider: str) -> str:
    from tollgate.config import get_settings

    settings = get_settings()
    value = {
        "stripe": settings.stripe_webhook_secret,
        "lemonsqueezy": settings.lemonsqueezy_webhook_secret,
        "clerk": settings.clerk_webhook_secret,
        "asaas": settings.asaas_webhook_token,
    }[provider]
    if value is None or not value.get_secret_value():
        raise SystemExit(f"set the {provider} webhook secret (e.g. STRIPE_WEBHOOK_SECRET) as the server has it")
    return value.get_secret_value().split(",")[0].strip()


def build_event(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        payload: dict[str, Any] = json.loads(Path(args.file).read_text())
        return payload
    if args.provider == "clerk" and args.type.split(".", 1)[0] in CLERK_BILLING_KINDS:
        return _clerk_billing(args)
    if not (args.user and args.pack):
        raise SystemExit("give --user and --pack (or --file with a whole payload)")
    from tollgate.payments.money import to_minor

    user, pack = _resolve_user(args.user), _resolve_pack(args.pack)
    minor = to_minor(pack.price, pack.currency)
    if args.provider == "stripe" and args.type in {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    }:
        session = stripe_checkout_session(
            user_id=str(user.id), item_id=str(pack.id), amount_minor=minor, currency=pack.currency.lower(),
            customer=user.stripe_customer_id,
        )  # fmt: skip
        return stripe_event(args.type, session)
    if args.provider == "asaas" and args.type in {"PAYMENT_CONFIRMED", "PAYMENT_RECEIVED"}:
        return asaas_payment_event(args.type, user_id=str(user.id), item_id=str(pack.id), value=str(pack.price))
    if args.provider == "lemonsqueezy" and args.type == "order_created":
        if not pack.lemonsqueezy_variant_id:
            raise SystemExit("this pack has no lemonsqueezy_variant_id")
        return lemonsqueezy_order(
            user_id=str(user.id), item_id=str(pack.id), variant_id=str(pack.lemonsqueezy_variant_id),
            total_minor=minor, currency=pack.currency.upper(),
        )  # fmt: skip
    raise SystemExit(f"no built-in {args.provider} {args.type} event: pass --file with the payload")


def cmd_send(args: argparse.Namespace) -> int:
    from tollgate.config import get_settings

    _prepare()
    payload = build_event(args)
    body = json.dumps(payload)
    headers = signed_headers(args.provider, body, _secret(args.provider))
    url = args.url or f"http://127.0.0.1:{get_settings().port}{PATHS[args.provider]}"
    request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - a local URL
            status, answer = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        print(f"cannot reach {url}: {exc.reason} (is `tollgate serve` running?)")
        return 1
    print(f"POST {url} -> {status}")
    print(answer)
    return 0 if status < 300 else 1


def cmd_replay(args: argparse.Namespace) -> int:
    _prepare()
    from tollgate.errors import TollgateError
    from tollgate.services.webhooks import replay_event
    from tollgate_local.operator import operator_actor

    try:
        receipt = replay_event(args.event_id, operator_actor())
    except TollgateError as exc:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message, "details": exc.details}}, default=str))
        return 1
    print(json.dumps({
        "id": str(receipt.id), "provider": receipt.provider, "event_id": receipt.event_id, "type": receipt.type,
        "status": receipt.status, "detail": receipt.detail,
    }, default=str, indent=2))  # fmt: skip
    return 0


def add_parser(sub: Any) -> None:
    webhooks = sub.add_parser("webhooks", help="replay a stored provider event, or send a signed test event")
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True)
    replay = actions.add_parser("replay", help="re-apply a stored event (Tollgate id or provider event id)")
    replay.add_argument("event_id")
    replay.set_defaults(func=cmd_replay)
    send = actions.add_parser("send", help="sign a test event with the provider's scheme and POST it locally")
    send.add_argument("provider", choices=sorted(PATHS))
    send.add_argument("type", help="e.g. checkout.session.completed, order_created, user.created")
    send.add_argument("--user", help="the buyer: a user id or email")
    send.add_argument("--pack", help="the credit pack: an id or its name")
    send.add_argument("--file", help="a JSON file with the whole payload to sign and send instead")
    send.add_argument("--plan", help="Clerk Billing: the plan (a tier such as PRO, or an id) with a clerk_plan_id")
    send.add_argument("--interval", choices=("month", "year"), default="month", help="Clerk Billing: the period")
    send.add_argument("--status", choices=("paid", "failed"), default="paid", help="paymentAttempt.updated's status")
    send.add_argument("--url", help="default: http://127.0.0.1:$TOLLGATE_PORT/webhooks/<provider>")
    send.set_defaults(func=cmd_send)
