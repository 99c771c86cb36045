"""Keeping the catalogue in step with Stripe without loops (signed `product.*` / `price.*` webhooks, the current
and an older API shape), and the category tree under concurrent moves."""

# ruff: noqa: F401, F811
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, NullPool, create_engine, text

from tests.commerce_catalogue_standin import state
from tests.commerce_catalogue_support import (
    Db,
    admin_call,
    new_user,
    published_product,
    send_catalogue_event,
)
from tests.payments_support import payments_env, send_stripe, stripe_api
from tests.provider_standins import StripeStandIn
from tests.support import ApiResponse, api_call
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.engine import pg8000_url, reset_engine
from tollgate_local.webhooks_cli import stripe_event


def _product_row(product_id: str) -> Any:
    with UnitOfWork() as uow:
        return uow.session.execute(
            text("SELECT name, status, active, deleted, provider_updated_at FROM products WHERE id = :i"),
            {"i": product_id},
        ).one()


def _stripe_product(stripe: StripeStandIn, product: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**state(stripe).products[product["provider_product_id"]], **changes}


def test_a_name_changed_in_stripe_is_applied_and_nothing_is_sent_back(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a published product, and Stripe's requests so far
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="synced", name="Original")
    calls = len(stripe_api.requests)
    seen = _stripe_product(stripe_api, product)
    # When Stripe echoes Tollgate's own product back (same `updated`), Then nothing changes
    echo = send_catalogue_event("product.updated", seen)
    assert echo.status == 200 and echo.json["status"] == "processed"
    assert _product_row(product["id"]).name == "Original"
    # When the name is changed in Stripe's dashboard (a newer `updated`)
    renamed = send_catalogue_event("product.updated", {**seen, "name": "From Stripe", "updated": seen["updated"] + 5})
    # Then the name is applied, and Tollgate never called Stripe back
    assert renamed.status == 200
    assert _product_row(product["id"]).name == "From Stripe"
    assert len(stripe_api.requests) == calls
    # And an older event that arrives late changes nothing
    late = send_catalogue_event("product.updated", {**seen, "name": "Stale", "updated": seen["updated"] - 60})
    assert late.status == 200 and _product_row(product["id"]).name == "From Stripe"
    # And a duplicate delivery is answered and changes nothing
    event = stripe_event("product.updated", {**seen, "name": "Dup", "updated": seen["updated"] + 10})
    assert send_stripe(event).status == 200
    assert admin_call(admin, "PATCH", f"/admin/products/{product['id']}", {"name": "Mine"}).status == 200
    again = send_stripe(event)
    assert again.status == 200 and _product_row(product["id"]).name == "Mine"


def test_deactivated_or_deleted_in_stripe_stops_the_sale(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="stop-me")
    seen = _stripe_product(stripe_api, product)
    calls = len(stripe_api.requests)
    # When Stripe says the product is inactive
    assert (
        send_catalogue_event("product.updated", {**seen, "active": False, "updated": seen["updated"] + 1}).status == 200
    )
    # Then it is archived and no longer listed; Stripe was not called
    row = _product_row(product["id"])
    assert (row.status, row.active) == ("ARCHIVED", False)
    assert api_call("GET", "/products/stop-me").status == 404
    # When it is reactivated there, Then it is active again but not republished (Tollgate decides that)
    send_catalogue_event("product.updated", {**seen, "active": True, "updated": seen["updated"] + 2})
    row = _product_row(product["id"])
    assert (row.status, row.active) == ("ARCHIVED", True)
    # When it is deleted in Stripe, Then it is DELETED here and cannot be published again
    send_catalogue_event("product.deleted", {**seen, "deleted": True, "updated": seen["updated"] + 3})
    assert _product_row(product["id"]).status == "DELETED"
    refused = admin_call(admin, "POST", f"/admin/products/{product['id']}/publish")
    assert refused.status == 409 and refused.error_code == "product_not_editable"
    assert len(stripe_api.requests) == calls


def test_price_events_for_our_prices_apply_only_active_and_never_make_mirrors(
    db: Db, stripe_api: StripeStandIn
) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="priced")
    price = product["prices"][0]
    old_stripe = dict(state(stripe_api).prices[price["provider_price_id"]])
    # Given the amount was changed (a new Stripe price replaced the old one)
    changed = admin_call(admin, "PATCH", f"/admin/prices/{price['id']}", {"unit_amount": "59.00"})
    assert changed.status == 200
    new_stripe = dict(state(stripe_api).prices[changed.json["provider_price_id"]])
    calls = len(stripe_api.requests)
    # When Stripe's events for both prices arrive (created, and the old one's deactivation)
    for event_type, obj in [
        ("price.created", new_stripe),
        ("price.updated", {**old_stripe, "active": False}),
        ("price.created", old_stripe),
    ]:
        assert send_catalogue_event(event_type, obj).status == 200
    # Then no mirror price was made, and the price is still the one Tollgate set, sold at 59.00
    with UnitOfWork() as uow:
        rows = uow.session.execute(text("SELECT id, unit_amount, active FROM prices")).all()
    assert [(str(r.id), str(r.unit_amount), r.active) for r in rows] == [(price["id"], "59.000", True)]
    assert [p["unit_amount"] for p in api_call("GET", "/products/priced").json["prices"]] == ["59.00"]
    # When Stripe deactivates the current price, Then it is no longer sold; its amount never changes from Stripe
    send_catalogue_event("price.updated", {**new_stripe, "active": False, "unit_amount": 1})
    assert api_call("GET", "/products/priced").json["prices"] == []
    with UnitOfWork() as uow:
        assert str(uow.session.execute(text("SELECT unit_amount FROM prices")).scalar_one()) == "59.000"
    assert len(stripe_api.requests) == calls


def test_stripe_made_products_are_still_mirrored_in_the_older_shape(db: Db, payments_env: None) -> None:
    # Given a product and price made in Stripe, delivered by an endpoint on a 2020 API version
    old = "2020-08-27"
    product = {"id": "prod_legacy", "object": "product", "active": True, "attributes": [], "caption": None,
               "created": 1_600_000_000, "deactivate_on": [], "description": "Legacy", "images": [],
               "livemode": False, "metadata": {}, "name": "Legacy plan", "package_dimensions": None,
               "shippable": None, "statement_descriptor": None, "type": "service", "unit_label": None,
               "updated": 1_600_000_000, "url": None}  # fmt: skip
    price = {"id": "price_legacy", "object": "price", "active": True, "billing_scheme": "per_unit",
             "created": 1_600_000_000, "currency": "eur", "livemode": False, "lookup_key": None, "metadata": {},
             "nickname": None, "product": "prod_legacy",
             "recurring": {"aggregate_usage": None, "interval": "year", "interval_count": 1,
                           "trial_period_days": None, "usage_type": "licensed"},
             "tiers_mode": None, "transform_quantity": None, "type": "recurring", "unit_amount": 19000,
             "unit_amount_decimal": "19000"}  # fmt: skip
    # When they arrive
    assert send_catalogue_event("product.created", product, api_version=old).status == 200
    assert send_catalogue_event("price.created", price, api_version=old).status == 200
    # Then they are mirrored (no slug: not part of the public catalogue)
    with UnitOfWork() as uow:
        p = uow.session.execute(text("SELECT name, slug, status FROM products")).one()
        pr = uow.session.execute(text("SELECT unit_amount, interval, currency, product_id FROM prices")).one()
    assert (p.name, p.slug, p.status) == ("Legacy plan", None, "DRAFT")
    assert (str(pr.unit_amount), pr.interval, pr.currency, pr.product_id is not None) == (
        "190.000",
        "year",
        "eur",
        True,
    )
    assert api_call("GET", "/products").json["items"] == []
    # And an admin cannot manage a mirror as a Tollgate product
    admin = new_user(db, "ADMIN")
    with UnitOfWork() as uow:
        mirror_id = uow.session.execute(text("SELECT id FROM products")).scalar_one()
    assert admin_call(admin, "PATCH", f"/admin/products/{mirror_id}", {"name": "x"}).status == 404


# --- the category tree under concurrent moves ------------------------------------------------------------
@pytest.fixture
def side(database_url: str) -> Iterator[Engine]:
    """Room for two concurrent requests in this process (a Lambda container has one connection; here two
    containers race), and a connection beside the application's pool for the database's side of the test."""
    saved = os.environ.get("DB_POOL_SIZE")
    os.environ["DB_POOL_SIZE"] = "3"
    get_settings.cache_clear()
    reset_engine()
    engine = create_engine(pg8000_url(database_url), poolclass=NullPool)
    yield engine
    engine.dispose()
    if saved is None:
        os.environ.pop("DB_POOL_SIZE", None)
    else:
        os.environ["DB_POOL_SIZE"] = saved
    get_settings.cache_clear()
    reset_engine()


def _waiting_on_locks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        )


def _count_nodes(nodes: list[dict[str, Any]]) -> int:
    return sum(1 + _count_nodes(n["children"]) for n in nodes)


def test_two_concurrent_moves_cannot_make_a_cycle_together(db: Db, payments_env: None, side: Engine) -> None:
    # Given A at the top, and X with its child B
    admin = new_user(db, "ADMIN")

    def create(slug: str, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"name": slug.upper(), "slug": slug, "parent_id": parent["id"] if parent else None}
        made = admin_call(admin, "POST", "/admin/product-categories", body)
        assert made.status == 201, made.json
        return dict(made.json)

    a, x = create("a"), create("x")
    b = create("b", x)
    answers: dict[str, ApiResponse] = {}

    def move(child: dict[str, Any], parent: dict[str, Any]) -> None:
        answers[child["slug"]] = admin_call(
            admin, "PATCH", f"/admin/product-categories/{child['id']}", {"parent_id": parent["id"]}
        )

    # When A moves under B while X moves under A (together: A -> B -> X -> A), both starting while the tree is
    # held, so each check would see the other's old place if checks were not serialised
    with side.connect() as holder:
        holder.execute(text("LOCK TABLE product_categories IN SHARE ROW EXCLUSIVE MODE"))
        threads = [threading.Thread(target=move, args=(a, b)), threading.Thread(target=move, args=(x, a))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while _waiting_on_locks(side) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting_on_locks(side) >= 2
        holder.rollback()
    for t in threads:
        t.join(timeout=30)
    # Then exactly one move won and the other is 409 category_cycle
    statuses = sorted((r.status, r.error_code) for r in answers.values())
    assert statuses == [(200, None), (409, "category_cycle")]
    # And the tree has no cycle: every category is still reachable from the top
    assert _count_nodes(api_call("GET", "/product-categories").json["items"]) == 3
