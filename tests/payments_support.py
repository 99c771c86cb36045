"""Shared pieces of the payments tests: provider secrets in the settings, the stand-in provider APIs, a small
catalogue, and signed deliveries through the real webhook handler."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.provider_standins import LemonSqueezyStandIn, StripeStandIn
from tests.support import ApiResponse, api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.models.credits import CreditPack, Plan
from tollgate_local.webhooks_cli import clerk_headers, lemonsqueezy_signature, stripe_signature

STRIPE_SECRET = "whsec_test_stripe_signing_secret"
LS_SECRET = "ls_signing_secret_for_tests"
CLERK_SECRET = "whsec_" + "dGVzdC1jbGVyay1zZWNyZXQtZm9yLXRvbGxnYXRl"  # base64 of a test secret


@pytest.fixture
def payments_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("LEMONSQUEEZY_WEBHOOK_SECRET", LS_SECRET)
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", CLERK_SECRET)
    monkeypatch.setenv("PAYMENTS_LIVE_MODE", "false")
    monkeypatch.setenv("MAIL_MIN_INTERVAL_SECONDS", "0")
    monkeypatch.delenv("STRIPE_SECRET_KEY", raising=False)
    monkeypatch.delenv("LEMONSQUEEZY_API_KEY", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def stripe_api(monkeypatch: pytest.MonkeyPatch, payments_env: None) -> Iterator[StripeStandIn]:
    server = StripeStandIn().start()
    monkeypatch.setenv("STRIPE_SECRET_KEY", server.api_key)
    monkeypatch.setenv("STRIPE_API_BASE", server.base_url)
    get_settings.cache_clear()
    yield server
    server.stop()
    get_settings.cache_clear()


@pytest.fixture
def lemonsqueezy_api(monkeypatch: pytest.MonkeyPatch, payments_env: None) -> Iterator[LemonSqueezyStandIn]:
    server = LemonSqueezyStandIn().start()
    monkeypatch.setenv("LEMONSQUEEZY_API_KEY", server.api_key)
    monkeypatch.setenv("LEMONSQUEEZY_API_BASE", server.base_url)
    monkeypatch.setenv("LEMONSQUEEZY_STORE_ID", "4242")
    get_settings.cache_clear()
    yield server
    server.stop()
    get_settings.cache_clear()


class Catalogue:
    def __init__(self, pack: CreditPack, pro: Plan, business: Plan) -> None:
        self.pack_id, self.pack_credits, self.pack_price = pack.id, pack.credits, pack.price
        self.pro_id, self.business_id = pro.id, business.id


@pytest.fixture
def catalogue(db: Callable[[], UnitOfWork]) -> Catalogue:
    with db() as uow:
        pack = CreditPack(
            name="Starter pack",
            credits=Decimal("100"),
            price=Decimal("5.00"),
            currency="usd",
            expires_after_days=365,
            stripe_price_id=None,
            lemonsqueezy_variant_id="111",
            active=True,
        )
        pro = Plan(
            tier="PRO",
            name="Pro",
            monthly_credits=Decimal("1000"),
            rollover="none",
            price_monthly=Decimal("19.00"),
            price_yearly=Decimal("190.00"),
            currency="usd",
            stripe_price_id_monthly="price_pro_month",
            stripe_price_id_yearly="price_pro_year",
            lemonsqueezy_variant_id_monthly="201",
            lemonsqueezy_variant_id_yearly="202",
            active=True,
            features=[],
        )
        business = Plan(
            tier="BUSINESS",
            name="Business",
            monthly_credits=Decimal("5000"),
            rollover="full",
            price_monthly=Decimal("79.00"),
            price_yearly=Decimal("790.00"),
            currency="usd",
            stripe_price_id_monthly="price_biz_month",
            lemonsqueezy_variant_id_monthly="301",
            active=True,
            features=[],
        )
        uow.session.add_all([pack, pro, business])
        uow.session.flush()
        cat = Catalogue(pack, pro, business)
        uow.commit()
    return cat


@pytest.fixture
def buyer(db: Callable[[], UnitOfWork]) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, email=f"buyer-{uuid.uuid4().hex[:8]}@example.com")
        uow.commit()
        return user.id


# --- deliveries ------------------------------------------------------------------------------------------------
def send_stripe(
    payload: dict[str, Any] | str,
    *,
    secret: str = STRIPE_SECRET,
    timestamp: int | None = None,
    header: str | None = None,
) -> ApiResponse:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    sig = header if header is not None else stripe_signature(body, secret, timestamp)
    headers = {"stripe-signature": sig} if sig else {}
    return api_call("POST", "/webhooks/stripe", raw_body=body.encode(), headers=headers)


def send_lemonsqueezy(
    payload: dict[str, Any] | str, *, secret: str = LS_SECRET, signature: str | None = None
) -> ApiResponse:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    sig = signature if signature is not None else lemonsqueezy_signature(body.encode(), secret)
    name = json.loads(body).get("meta", {}).get("event_name", "")
    headers = {"x-event-name": name, **({"x-signature": sig} if sig else {})}
    return api_call("POST", "/webhooks/lemonsqueezy", raw_body=body.encode(), headers=headers)


def send_clerk(
    payload: dict[str, Any] | str,
    *,
    secret: str = CLERK_SECRET,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> ApiResponse:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return api_call(
        "POST", "/webhooks/clerk", raw_body=body.encode(), headers=clerk_headers(body, secret, msg_id, timestamp)
    )


# --- reading the outcome ---------------------------------------------------------------------------------------
def balance(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Decimal:
    with db() as uow:
        value = uow.session.execute(
            text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": user_id}
        ).scalar_one_or_none()
    return Decimal(value) if value is not None else Decimal(0)


def count(db: Callable[[], UnitOfWork], table: str, where: str = "true", **params: Any) -> int:
    with db() as uow:
        return int(uow.session.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"), params).scalar_one())


def grants(db: Callable[[], UnitOfWork], user_id: uuid.UUID, kind: str | None = None) -> list[Any]:
    with db() as uow:
        sql = (
            "SELECT * FROM credit_grants WHERE user_id = :u"
            + (" AND kind = :k" if kind else "")
            + " ORDER BY created_at"
        )
        return list(uow.session.execute(text(sql), {"u": user_id, "k": kind}).mappings().all())


def ledger_is_consistent(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> bool:
    from tollgate import ledger

    with db() as uow:
        return not ledger.reconcile(uow.session, user_id).mismatches


def webhook_rows(db: Callable[[], UnitOfWork]) -> list[Any]:
    with db() as uow:
        return list(uow.session.execute(text("SELECT * FROM webhook_events ORDER BY received_at")).mappings().all())


def now() -> int:
    return int(time.time())
