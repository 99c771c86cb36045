"""ProviderReconciliation against the Stripe and Lemon Squeezy stand-ins: what no webhook brought is applied once."""

# ruff: noqa: F403, F405
from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.payments_support import *
from tests.provider_standins import LemonSqueezyStandIn, StripeStandIn
from tests.support import make_user, project_gateway
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.jobs import JobReport, run_job
from tollgate.jobs.provider_reconciliation import ProviderReconciliation
from tollgate_local.schedules import scheduled_event
from tollgate_local.webhooks_cli import lemonsqueezy_order, stripe_checkout_session, stripe_event

STORE = 4242


def plenty() -> int:
    return 600_000


def soon() -> datetime:
    """The job's clock: a quarter of an hour from now, so changes made "now" have settled (10 minutes)."""
    return datetime.now(UTC) + timedelta(minutes=15)


def run(db: Callable[[], UnitOfWork], now: datetime, remaining_ms: Callable[[], int] = plenty) -> JobReport:
    return run_job(ProviderReconciliation(uow_factory=db), now=now, remaining_ms=remaining_ms, uow_factory=db,
                   safety_ms=1)  # fmt: skip


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pack_checkout_event(catalogue: Catalogue, user_id: uuid.UUID) -> dict[str, Any]:
    session = stripe_checkout_session(user_id=str(user_id), item_id=str(catalogue.pack_id), amount_minor=500,
                                      currency="usd")  # fmt: skip
    return stripe_event("checkout.session.completed", session)


def ls_order(catalogue: Catalogue, *, order_id: str, email: str, at: datetime, customer_id: int = 31) -> dict[str, Any]:
    """An order resource as `GET /v1/orders` lists it (the webhook body's `data`), `at` minutes ago."""
    body = lemonsqueezy_order(user_id="unused", item_id=str(catalogue.pack_id), variant_id="111", total_minor=500,
                              order_id=order_id, customer_id=customer_id)  # fmt: skip
    resource: dict[str, Any] = body["data"]
    resource["attributes"].update(store_id=STORE, user_email=email, created_at=iso(at), updated_at=iso(at))
    return resource


def ls_subscription(
    *, sub_id: str, email: str, at: datetime, variant: int = 201, customer_id: int = 31
) -> dict[str, Any]:
    fixture = json.loads((PROVIDER_FIXTURES / "lemonsqueezy" / "subscription_created.json").read_text())
    resource: dict[str, Any] = fixture["data"]
    resource["id"] = sub_id
    resource["attributes"].update(
        store_id=STORE, customer_id=customer_id, variant_id=variant, user_email=email, status="active",
        test_mode=True, created_at=iso(at), updated_at=iso(at), renews_at=iso(at + timedelta(days=30)),
        trial_ends_at=None,
    )  # fmt: skip
    return resource


def webhook_body(event_name: str, resource: dict[str, Any], custom: dict[str, str]) -> dict[str, Any]:
    """The webhook Lemon Squeezy would have sent for `resource` (with the checkout's custom data)."""
    return {
        "meta": {"event_name": event_name, "test_mode": True, "custom_data": custom},
        "data": copy.deepcopy(resource),
    }


@pytest.fixture
def verified_buyer(db: Callable[[], UnitOfWork]) -> tuple[uuid.UUID, str]:
    email = f"paid-{uuid.uuid4().hex[:8]}@example.com"
    with db() as uow:
        user = make_user(uow.session, email=email, email_verified_at=datetime.now(UTC) - timedelta(days=1))
        uow.commit()
        return user.id, email


def tier_of(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> str:
    with db() as uow:
        return str(uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": user_id}).scalar_one())


# --- Stripe --------------------------------------------------------------------------------------------------------
def test_a_stripe_checkout_whose_webhook_never_arrived_is_granted_once(db, stripe_api: StripeStandIn, catalogue, buyer):
    # Given a paid pack checkout whose webhook delivery failed (Stripe lists it as undelivered)
    event = stripe_api.add_event(pack_checkout_event(catalogue, buyer))
    now = soon()
    # When the job runs
    first = run(db, now)
    # Then the checkout is applied once, and Lemon Squeezy (no API key) is skipped, not an error
    assert first.complete and first.stats == {"stripe_events_applied": 1, "providers_skipped": 2}
    assert balance(db, buyer) == Decimal("100")
    listed = [r for r in stripe_api.requests if r.path.startswith("/v1/events")]
    assert "delivery_success=false" in listed[0].path and "created%5Bgte%5D=" in listed[0].path
    # When it runs again in the same period, in the next period, and the webhook finally arrives
    again = run(db, now)
    later = run(db, now + timedelta(minutes=15))
    late_webhook = send_stripe(event)
    # Then nothing more happens: one grant, one purchase
    assert again.already_complete and again.stats == {}
    assert later.stats == {"already_known": 1, "providers_skipped": 2}
    assert late_webhook.status == 200 and late_webhook.json["duplicate"] is True
    assert balance(db, buyer) == Decimal("100")
    assert count(db, "credit_grants", "user_id = :u AND kind = 'purchase'", u=buyer) == 1
    assert count(db, "purchases") == 1
    assert ledger_is_consistent(db, buyer)


def test_an_event_already_received_by_webhook_is_not_applied_twice(db, stripe_api: StripeStandIn, catalogue, buyer):
    # Given a checkout the webhook applied, which Stripe still lists as undelivered (another endpoint failed)
    event = stripe_api.add_event(pack_checkout_event(catalogue, buyer))
    assert send_stripe(event).json["status"] == "processed"
    # When the job runs
    report = run(db, soon())
    # Then it is known already and the pack is granted once
    assert report.stats == {"already_known": 1, "providers_skipped": 2}
    assert balance(db, buyer) == Decimal("100")
    assert count(db, "webhook_events") == 1


def test_an_event_that_cannot_be_applied_yet_is_counted_failed_and_kept_for_replay(
    db, stripe_api: StripeStandIn, catalogue, buyer
):
    # Given an undelivered subscription update for a customer no account is linked to, and a pack checkout
    fixture = json.loads((PROVIDER_FIXTURES / "stripe" / "customer.subscription.updated.json").read_text())
    orphan = fixture["data"]["object"]
    orphan.update(id="sub_orphan", customer="cus_nobody", metadata={})
    stripe_api.add_event(stripe_event("customer.subscription.updated", orphan, created=int(soon().timestamp()) - 1200))
    stripe_api.add_event(pack_checkout_event(catalogue, buyer))
    # When the job runs
    report = run(db, soon())
    # Then the orphan is counted failed and stored for replay, and the checkout is still applied
    assert report.stats == {"failed": 1, "stripe_events_applied": 1, "providers_skipped": 2}
    assert count(db, "webhook_events", "status = 'failed' AND payload IS NOT NULL") == 1
    assert balance(db, buyer) == Decimal("100")


def test_many_undelivered_events_are_paged_and_a_run_cut_short_resumes(
    db, monkeypatch, stripe_api: StripeStandIn, catalogue
):
    # Given five buyers whose checkouts were never delivered, and pages of two events
    monkeypatch.setenv("PROVIDER_RECONCILIATION_PAGE_SIZE", "2")
    get_settings.cache_clear()
    with db() as uow:
        buyers = [make_user(uow.session).id for _ in range(5)]
        uow.commit()
    for user_id in buyers:
        stripe_api.add_event(pack_checkout_event(catalogue, user_id))
    now = soon()
    # When the first run has time for two steps only (the Lambda's remaining time runs out)
    budget = iter([600_000, 600_000, 0])
    cut = run(db, now, remaining_ms=lambda: next(budget, 0))
    # Then it stopped part way, having applied the first page
    assert cut.stopped_for_time and not cut.complete
    assert cut.stats == {"stripe_events_applied": 2}
    # When the Scheduler retries the same invocation (same time)
    resumed = run(db, now)
    # Then it carries on from its cursor and every buyer has exactly one pack
    assert resumed.complete
    # (the page the cut run had applied after its last step is read again and found known)
    assert resumed.stats == {"already_known": 2, "stripe_events_applied": 1, "providers_skipped": 2}
    assert [balance(db, b) for b in buyers] == [Decimal("100")] * 5
    assert count(db, "credit_grants", "kind = 'purchase'") == 5
    afters = [r.path for r in stripe_api.requests if "starting_after" in r.path]
    assert afters, "later pages are asked for with starting_after"


# --- Lemon Squeezy -------------------------------------------------------------------------------------------------
def test_a_lemonsqueezy_order_and_subscription_no_webhook_brought_are_applied(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given an order of the pack and a new Pro subscription, 30 and 20 minutes old, with no webhook received,
    # bought with the verified email of an account (the API does not return the checkout's custom data)
    user_id, email = verified_buyer
    order = ls_order(catalogue, order_id="5001", email=email.upper(), at=datetime.now(UTC) - timedelta(minutes=30))
    sub = ls_subscription(sub_id="6001", email=email, at=datetime.now(UTC) - timedelta(minutes=20))
    lemonsqueezy_api.orders.append(order)
    lemonsqueezy_api.subscriptions.append(sub)
    now = datetime.now(UTC)
    # When the job runs
    report = run(db, now)
    # Then the pack is granted, the subscription recorded and the tier is Pro; Stripe (no key) is skipped
    assert report.stats == {
        "lemonsqueezy_orders_applied": 1,
        "lemonsqueezy_subscriptions_applied": 1,
        "providers_skipped": 2,
    }
    assert balance(db, user_id) == Decimal("100")
    assert tier_of(db, user_id) == "PRO"
    listed = [r for r in lemonsqueezy_api.requests if r.method == "GET"]
    assert {r.path.split("?")[0] for r in listed} == {"/v1/orders", "/v1/subscriptions", "/v1/subscription-invoices"}
    assert all(f"filter%5Bstore_id%5D={STORE}" in r.path for r in listed)
    # When the order's webhook arrives late (with its custom data), and the job runs in the next period
    custom = {"user_id": str(user_id), "kind": "pack", "item_id": str(catalogue.pack_id)}
    late = send_lemonsqueezy(webhook_body("order_created", order, custom))
    later = run(db, now + timedelta(minutes=15))
    # Then both are duplicates: one grant, one subscription
    assert late.json["duplicate"] is True
    assert later.stats == {"already_known": 2, "providers_skipped": 2}
    assert count(db, "credit_grants", "user_id = :u AND kind = 'purchase'", u=user_id) == 1
    assert count(db, "subscriptions") == 1
    assert ledger_is_consistent(db, user_id)


def test_a_subscription_change_no_webhook_brought_is_applied(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given a Pro subscription the webhook brought an hour ago
    user_id, email = verified_buyer
    created = datetime.now(UTC) - timedelta(hours=1)
    sub = ls_subscription(sub_id="6002", email=email, at=created)
    custom = {"user_id": str(user_id), "kind": "plan", "item_id": str(catalogue.pro_id)}
    assert send_lemonsqueezy(webhook_body("subscription_created", sub, custom)).json["status"] == "processed"
    # ... then upgraded to Business 20 minutes ago, a change whose webhook never arrived
    changed = copy.deepcopy(sub)
    changed["attributes"].update(variant_id=301, updated_at=iso(datetime.now(UTC) - timedelta(minutes=20)))
    lemonsqueezy_api.subscriptions.append(changed)
    # When the job runs
    report = run(db, datetime.now(UTC))
    # Then the change is applied and the user is on Business
    assert report.stats == {"lemonsqueezy_subscriptions_applied": 1, "providers_skipped": 2}
    assert tier_of(db, user_id) == "BUSINESS"
    with db() as uow:
        row = uow.session.execute(text("SELECT provider_price_id, previous_price_id FROM subscriptions")).one()
    assert (row.provider_price_id, row.previous_price_id) == ("301", "201")


def test_an_order_without_a_verified_buyer_is_unresolved_and_a_late_webhook_still_applies(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, buyer
):
    # Given an order bought with the email of an account that never verified it
    with db() as uow:
        email = uow.session.execute(text("SELECT email FROM users WHERE id = :u"), {"u": buyer}).scalar_one()
    order = ls_order(catalogue, order_id="5003", email=email, at=datetime.now(UTC) - timedelta(minutes=30))
    lemonsqueezy_api.orders.append(order)
    # When the job runs
    report = run(db, datetime.now(UTC))
    # Then it is counted unresolved and nothing is stored or granted
    assert report.stats == {"unresolved": 1, "providers_skipped": 2}
    assert balance(db, buyer) == 0
    assert count(db, "webhook_events") == 0
    # When the webhook arrives after all (its custom data names the buyer)
    custom = {"user_id": str(buyer), "kind": "pack", "item_id": str(catalogue.pack_id)}
    late = send_lemonsqueezy(webhook_body("order_created", order, custom))
    # Then it applies normally
    assert late.json["status"] == "processed" and balance(db, buyer) == Decimal("100")


def test_recent_changes_are_left_to_their_webhook_and_old_orders_end_the_listing(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given an order of a minute ago (its webhook may still be retrying) and one older than the window
    user_id, email = verified_buyer
    lemonsqueezy_api.orders.append(ls_order(catalogue, order_id="5004", email=email,
                                            at=datetime.now(UTC) - timedelta(minutes=1)))  # fmt: skip
    lemonsqueezy_api.orders.append(ls_order(catalogue, order_id="5005", email=email,
                                            at=datetime.now(UTC) - timedelta(days=4)))  # fmt: skip
    # When the job runs
    report = run(db, datetime.now(UTC))
    # Then neither is applied
    assert report.stats == {"left_to_webhook": 1, "providers_skipped": 2}
    assert balance(db, user_id) == 0


def test_orders_of_a_plan_variant_and_unpaid_orders_are_not_granted(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given a subscription's first order (a plan variant) and a pending order of the pack
    user_id, email = verified_buyer
    first = ls_order(catalogue, order_id="5006", email=email, at=datetime.now(UTC) - timedelta(minutes=40))
    first["attributes"]["first_order_item"]["variant_id"] = 201
    pending = ls_order(catalogue, order_id="5007", email=email, at=datetime.now(UTC) - timedelta(minutes=30))
    pending["attributes"]["status"] = "pending"
    lemonsqueezy_api.orders.extend([first, pending])
    # When the job runs
    report = run(db, datetime.now(UTC))
    # Then both are ignored and nothing is granted
    assert report.stats == {"ignored": 2, "providers_skipped": 2}
    assert balance(db, user_id) == 0


def test_a_refund_no_webhook_brought_claws_back_the_pack(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given a pack order applied by its webhook, later refunded in full without a webhook
    user_id, email = verified_buyer
    order = ls_order(catalogue, order_id="5008", email=email, at=datetime.now(UTC) - timedelta(hours=2))
    custom = {"user_id": str(user_id), "kind": "pack", "item_id": str(catalogue.pack_id)}
    assert send_lemonsqueezy(webhook_body("order_created", order, custom)).json["status"] == "processed"
    refunded = copy.deepcopy(order)
    refunded["attributes"].update(status="refunded", refunded=True, refunded_amount=500,
                                  updated_at=iso(datetime.now(UTC) - timedelta(minutes=30)))  # fmt: skip
    lemonsqueezy_api.orders.append(refunded)
    # When the job runs, twice in two periods
    now = datetime.now(UTC)
    first, second = run(db, now), run(db, now + timedelta(minutes=15))
    # Then the refund is applied once
    assert first.stats == {"lemonsqueezy_orders_applied": 1, "providers_skipped": 2}
    assert second.stats == {"already_known": 1, "providers_skipped": 2}
    assert balance(db, user_id) == 0
    assert count(db, "refunds") == 1


def ls_invoice(*, invoice_id: str, sub_id: str, at: datetime, status: str = "paid") -> dict[str, Any]:
    fixture = json.loads((PROVIDER_FIXTURES / "lemonsqueezy" / "subscription_payment_success.json").read_text())
    resource: dict[str, Any] = fixture["data"]
    resource["id"] = invoice_id
    resource["attributes"].update(store_id=STORE, subscription_id=int(sub_id), status=status, test_mode=True,
                                  billing_reason="renewal", created_at=iso(at), updated_at=iso(at))  # fmt: skip
    return resource


def test_a_paid_renewal_no_webhook_brought_grants_the_allowance_once(
    db, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given a Pro subscription the webhook brought, and a paid invoice of it whose webhook never arrived,
    # and an invoice of a subscription Tollgate does not know
    user_id, email = verified_buyer
    sub = ls_subscription(sub_id="6010", email=email, at=datetime.now(UTC) - timedelta(days=30))
    custom = {"user_id": str(user_id), "kind": "plan", "item_id": str(catalogue.pro_id)}
    assert send_lemonsqueezy(webhook_body("subscription_created", sub, custom)).json["status"] == "processed"
    lemonsqueezy_api.invoices.append(ls_invoice(invoice_id="7010", sub_id="6010",
                                                at=datetime.now(UTC) - timedelta(minutes=30)))  # fmt: skip
    lemonsqueezy_api.invoices.append(ls_invoice(invoice_id="7011", sub_id="9999",
                                                at=datetime.now(UTC) - timedelta(minutes=25)))  # fmt: skip
    # When the job runs in two periods
    now = datetime.now(UTC)
    first, second = run(db, now), run(db, now + timedelta(minutes=15))
    # Then the month's Pro allowance is granted once, and the stray invoice is left for an operator
    assert first.stats == {"lemonsqueezy_invoices_applied": 1, "unresolved": 1, "providers_skipped": 2}
    assert second.stats == {"already_known": 1, "unresolved": 1, "providers_skipped": 2}
    assert balance(db, user_id) == Decimal("1000")
    assert count(db, "invoices") == 1
    assert ledger_is_consistent(db, user_id)


def test_the_job_works_with_one_database_connection_as_in_lambda(
    db, database_url: str, stripe_api: StripeStandIn, lemonsqueezy_api: LemonSqueezyStandIn, catalogue,
    verified_buyer,
):  # fmt: skip
    # Given a pool of ONE connection (as a Lambda has) that refuses to wait for a second one, and work for every
    # phase: an undelivered Stripe checkout, a new order, a refund of an applied order, a subscription change
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from tollgate.db.engine import pg8000_url

    engine = create_engine(pg8000_url(database_url), pool_size=1, max_overflow=0, pool_timeout=2)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def one_connection() -> UnitOfWork:
        return UnitOfWork(sessions)

    user_id, email = verified_buyer
    stripe_api.add_event(pack_checkout_event(catalogue, user_id))
    lemonsqueezy_api.orders.append(ls_order(catalogue, order_id="5101", email=email,
                                            at=datetime.now(UTC) - timedelta(minutes=30)))  # fmt: skip
    applied = ls_order(catalogue, order_id="5102", email=email, at=datetime.now(UTC) - timedelta(hours=3))
    custom = {"user_id": str(user_id), "kind": "pack", "item_id": str(catalogue.pack_id)}
    assert send_lemonsqueezy(webhook_body("order_created", applied, custom)).json["status"] == "processed"
    refunded = copy.deepcopy(applied)
    refunded["attributes"].update(status="refunded", refunded_amount=500,
                                  updated_at=iso(datetime.now(UTC) - timedelta(minutes=20)))  # fmt: skip
    lemonsqueezy_api.orders.append(refunded)
    sub = ls_subscription(sub_id="6101", email=email, at=datetime.now(UTC) - timedelta(minutes=40))
    lemonsqueezy_api.subscriptions.append(sub)
    lemonsqueezy_api.invoices.append(ls_invoice(invoice_id="7101", sub_id="6101",
                                                at=datetime.now(UTC) - timedelta(minutes=35)))  # fmt: skip
    # When the job runs on that pool
    try:
        report = run_job(ProviderReconciliation(uow_factory=one_connection), now=soon(), remaining_ms=plenty,
                         uow_factory=one_connection, safety_ms=1)  # fmt: skip
    finally:
        engine.dispose()
    # Then every phase applied its item: nothing waited for a second connection
    assert report.stats == {
        "stripe_events_applied": 1,
        "lemonsqueezy_orders_applied": 2,
        "lemonsqueezy_subscriptions_applied": 1,
        "lemonsqueezy_invoices_applied": 1,
        "providers_skipped": 1,  # Asaas
    }
    # 100 (Stripe pack) + 100 (new order) + 100 - 100 (refunded order) + 1000 (Pro allowance)
    assert balance(db, user_id) == Decimal("1200")
    assert ledger_is_consistent(db, user_id)


# --- failures and configuration ------------------------------------------------------------------------------------
def test_a_provider_api_failure_is_counted_and_the_other_provider_still_runs(
    db, stripe_api: StripeStandIn, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, verified_buyer
):
    # Given Stripe answering 500 to everything, and a Lemon Squeezy order no webhook brought
    user_id, email = verified_buyer
    stripe_api.failures.extend([500] * 5)
    lemonsqueezy_api.orders.append(
        ls_order(catalogue, order_id="5009", email=email, at=datetime.now(UTC) - timedelta(minutes=30))
    )
    # When the job runs
    report = run(db, datetime.now(UTC))
    # Then the Stripe failure is counted, and the Lemon Squeezy order is still applied
    assert report.complete
    assert report.stats == {"provider_errors": 1, "lemonsqueezy_orders_applied": 1, "providers_skipped": 1}
    assert balance(db, user_id) == Decimal("100")


def test_a_lemonsqueezy_failure_does_not_stop_stripe(
    db, stripe_api: StripeStandIn, lemonsqueezy_api: LemonSqueezyStandIn, catalogue, buyer
):
    # Given Lemon Squeezy answering 503 to its three list calls, and an undelivered Stripe checkout
    lemonsqueezy_api.failures.extend([503, 503, 503])
    stripe_api.add_event(pack_checkout_event(catalogue, buyer))
    # When the job runs
    report = run(db, soon())
    # Then each Lemon Squeezy list failure is counted and the Stripe checkout is applied
    assert report.stats == {"stripe_events_applied": 1, "provider_errors": 3, "providers_skipped": 1}
    assert balance(db, buyer) == Decimal("100")


def test_unconfigured_providers_are_skipped_through_the_scheduled_handler(db, payments_env):
    # Given no Stripe secret key, no Lemon Squeezy API key and no Asaas API key
    # When the schedule invokes the job's Lambda handler
    gateway = project_gateway()
    schedule = gateway.template.schedules["ProviderReconciliation"]
    now = datetime(2026, 3, 1, 12, 2, tzinfo=UTC)
    result: dict[str, Any] = gateway.runner.invoke(schedule.function_id, scheduled_event(schedule, now))
    # Then all three are skipped, the run completes, and its period is the quarter hour
    assert result["complete"] is True and result["stats"] == {"providers_skipped": 3}
    assert result["period"] == "2026-03-01T12:00"
    assert schedule.expression == "cron(2/15 * * * ? *)"
