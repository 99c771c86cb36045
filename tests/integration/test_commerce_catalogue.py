"""The catalogue through the gateway: admin product rules, publishing to the Stripe stand-in (idempotent keys from
Tollgate's ids, no call under a lock), prices (immutable amounts in Stripe), archive, the public listing with
its filters and cursor, and who may do what."""

# ruff: noqa: F401, F811
from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.commerce_catalogue_standin import state
from tests.commerce_catalogue_support import (
    Db,
    add_price,
    admin_call,
    audit_rows,
    create_product,
    new_user,
    published_product,
    row_count,
)
from tests.gateway_support import api_key_for
from tests.payments_support import payments_env, stripe_api
from tests.provider_standins import Recorded, StripeStandIn
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.models.storage import StorageObject
from tollgate.payments.adapters import STRIPE_API_VERSION


def _stripe_posts(stripe: StripeStandIn, prefix: str) -> list[Recorded]:
    return [r for r in stripe.requests if r.method == "POST" and r.path.startswith(prefix)]


# --- creating and changing products ---------------------------------------------------------------------------
def test_an_admin_creates_a_draft_product_and_it_is_audited(db: Db, payments_env: None) -> None:
    # Given an admin and a category
    admin = new_user(db, "ADMIN")
    cat = admin_call(admin, "POST", "/admin/product-categories", {"name": "Courses", "slug": "courses"})
    assert cat.status == 201, cat.json
    # When they create a digital download in it
    made = create_product(
        admin, slug="python-course", type="DIGITAL_DOWNLOAD", base_price="49.90", tax_rate="0.0825",
        download_url="https://files.example.com/course.zip", download_limit=5, access_days=365,
        tags=["Python", "python", "video"], category_ids=[cat.json["id"]],
    )  # fmt: skip
    # Then it is a DRAFT, amounts are decimal strings, tags normalised, nothing sent to Stripe
    assert made.status == 201, made.json
    body = made.json
    assert (body["status"], body["base_price"], body["tax_rate"]) == ("DRAFT", "49.90", "0.0825")
    assert body["tags"] == ["python", "video"] and body["category_ids"] == [cat.json["id"]]
    assert body["provider_product_id"] is None and body["prices"] == []
    # And the creation is audited with its new values
    (row,) = audit_rows(db, "catalogue.product_create")
    assert row["actor_id"] == admin and row["new_values"]["slug"] == "python-course"


def test_bad_products_are_refused_with_a_code_and_nothing_is_written(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    assert create_product(admin, slug="taken").status == 201
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"slug": "taken"}, 409, "slug_taken"),
        ({"slug": "Not A Slug"}, 422, "validation_error"),
        ({"slug": "double--hyphen"}, 422, "validation_error"),
        ({"type": "PHYSICAL"}, 422, "validation_error"),
        ({"base_price": "-1"}, 422, "validation_error"),
        ({"base_price": "1.005"}, 422, "validation_error"),  # finer than cents
        ({"base_price": "100", "currency": "jpy", "tax_rate": "1"}, 422, "validation_error"),
        ({"currency": "dollars"}, 422, "validation_error"),
        ({"download_url": "https://x.example/f.zip"}, 422, "validation_error"),  # not a download
        ({"access_days": 30}, 422, "validation_error"),
        ({"type": "SUBSCRIPTION"}, 422, "validation_error"),  # no billing_interval
        ({"billing_interval": "month"}, 422, "validation_error"),  # not a subscription
        ({"tags": ["ok"] * 21}, 422, "validation_error"),
        ({"tags": ["-leading"]}, 422, "validation_error"),
        ({"category_ids": [str(uuid.uuid4())]}, 422, "unknown_category"),
        ({"type": "DIGITAL_DOWNLOAD", "download_file_id": str(uuid.uuid4())}, 422, "download_file_not_ready"),
        ({"unknown_field": 1}, 422, "validation_error"),
    ]
    for fields, status, code in cases:
        # When a product breaking one rule is created
        answer = create_product(admin, **fields)
        # Then it is refused with the rule's code
        assert (answer.status, answer.error_code) == (status, code), (fields, answer.json)
    # And nothing but the first product was written
    assert row_count(db, "products") == 1 and len(audit_rows(db, "catalogue.product_create")) == 1


def test_a_download_file_must_be_an_uploaded_ready_file(db: Db, payments_env: None) -> None:
    # Given an admin's PENDING and READY files
    admin = new_user(db, "ADMIN")
    with db() as uow:
        from tollgate.db.base import utcnow

        files = {}
        for status in ("PENDING", "READY"):
            row = StorageObject(
                user_id=admin, provider="local", key=f"k-{status}", pathname="f.zip", original_name="f.zip",
                content_type="application/zip", size=10, status=status, upload_expires_at=utcnow(),
            )  # fmt: skip
            uow.session.add(row)
            uow.session.flush()
            files[status] = str(row.id)
        uow.commit()
    # When each is named as a download's file, Then only the READY one is taken
    pending = create_product(admin, type="DIGITAL_DOWNLOAD", download_file_id=files["PENDING"])
    assert pending.status == 422 and pending.error_code == "download_file_not_ready"
    ready = create_product(admin, type="DIGITAL_DOWNLOAD", download_file_id=files["READY"])
    assert ready.status == 201 and ready.json["download_file_id"] == files["READY"]


def test_patch_checks_the_whole_product_and_audits_old_and_new(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    product = create_product(admin, slug="plain").json
    other = create_product(admin, slug="other").json
    # When a field is changed
    changed = admin_call(admin, "PATCH", f"/admin/products/{product['id']}", {"name": "Renamed", "featured": True})
    # Then it is, and the audit row holds only what changed, old and new
    assert changed.status == 200 and changed.json["name"] == "Renamed" and changed.json["featured"] is True
    (row,) = audit_rows(db, "catalogue.product_update")
    assert row["old_values"] == {"name": "Course", "featured": False}
    assert row["new_values"] == {"name": "Renamed", "featured": True}
    # And a change that breaks a rule of the resulting product is refused
    taken = admin_call(admin, "PATCH", f"/admin/products/{product['id']}", {"slug": other["slug"]})
    assert taken.status == 409 and taken.error_code == "slug_taken"
    to_sub = admin_call(admin, "PATCH", f"/admin/products/{product['id']}", {"type": "SUBSCRIPTION"})
    assert to_sub.status == 422
    nulls = admin_call(admin, "PATCH", f"/admin/products/{product['id']}", {"name": None})
    assert nulls.status == 422 and nulls.json["error"]["details"] == {"fields": ["name"]}
    missing = admin_call(admin, "PATCH", f"/admin/products/{uuid.uuid4()}", {"name": "x"})
    assert missing.status == 404 and missing.error_code == "product_not_found"
    assert len(audit_rows(db, "catalogue.product_update")) == 1


# --- publishing through Stripe ----------------------------------------------------------------------------
def test_publish_needs_an_active_price(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = create_product(admin).json
    # When a product without a price is published, Then 409 no_active_price, and Stripe is not called
    answer = admin_call(admin, "POST", f"/admin/products/{product['id']}/publish")
    assert answer.status == 409 and answer.error_code == "no_active_price"
    assert stripe_api.requests == []
    # And an inactive price does not count
    add_price(admin, product["id"], active=False)
    assert admin_call(admin, "POST", f"/admin/products/{product['id']}/publish").error_code == "no_active_price"


def test_publish_creates_the_stripe_product_and_prices_with_keys_from_our_ids(
    db: Db, stripe_api: StripeStandIn
) -> None:
    # Given a draft with two prices (one inactive) and a recorder of locks held while Stripe is called
    admin = new_user(db, "ADMIN")
    product = create_product(admin, slug="ebook", description="A book", images=["https://img.example/1.png"]).json
    live = add_price(admin, product["id"], "49.00", nickname="Standard").json
    add_price(admin, product["id"], "39.00", active=False)
    locks_during_calls: list[int] = []

    def count_locks(rec: Recorded) -> None:
        with UnitOfWork() as uow:
            locks_during_calls.append(
                int(
                    uow.session.execute(
                        text(
                            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                            "WHERE l.mode IN ('RowShareLock', 'RowExclusiveLock') AND a.pid <> pg_backend_pid() "
                            "AND a.datname = current_database() AND l.relation = 'products'::regclass"
                        )
                    ).scalar_one()
                )
            )

    stripe_api.on_request = count_locks
    # When it is published
    published = admin_call(admin, "POST", f"/admin/products/{product['id']}/publish")
    # Then it is PUBLISHED with Stripe's ids on it and its active price
    assert published.status == 200, published.json
    body = published.json
    assert body["status"] == "PUBLISHED" and body["published_at"] and body["provider_product_id"].startswith("prod_")
    prices = {p["id"]: p for p in body["prices"]}
    assert prices[live["id"]]["provider_price_id"].startswith("price_")
    assert [p["provider_price_id"] for p in prices.values() if not p["active"]] == [None]
    # And Stripe got one product and one price, form-encoded at the pinned version, keyed by Tollgate's ids
    (made_product,) = _stripe_posts(stripe_api, "/v1/products")
    (made_price,) = _stripe_posts(stripe_api, "/v1/prices")
    assert made_product.headers["idempotency-key"] == f"tollgate-product-{product['id']}"
    assert made_product.headers["stripe-version"] == STRIPE_API_VERSION
    assert made_product.form["metadata[tollgate_product_id]"] == product["id"]
    assert made_product.form["name"] == "Course" and made_product.form["images[0]"] == "https://img.example/1.png"
    assert made_price.headers["idempotency-key"] == f"tollgate-price-{live['id']}-r1"
    assert (made_price.form["unit_amount"], made_price.form["currency"]) == ("4900", "usd")
    assert made_price.form["product"] == body["provider_product_id"]
    # And no products row was locked by anyone while Stripe was being called
    assert locks_during_calls == [0, 0]
    # And the publish is audited
    (row,) = audit_rows(db, "catalogue.product_publish")
    assert row["old_values"]["status"] == "DRAFT" and row["new_values"]["status"] == "PUBLISHED"


def test_publishing_again_creates_nothing_new_in_stripe(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    first = published_product(admin)
    calls = len(stripe_api.requests)
    # When the published product is published again
    again = admin_call(admin, "POST", f"/admin/products/{first['id']}/publish")
    # Then it answers the same product and Stripe is not called
    assert again.status == 200 and again.json["provider_product_id"] == first["provider_product_id"]
    assert len(stripe_api.requests) == calls
    assert len(state(stripe_api).products) == 1


def test_a_publish_whose_answer_was_lost_repeats_with_the_same_stripe_objects(
    db: Db, stripe_api: StripeStandIn
) -> None:
    # Given a draft whose first publish reached Stripe for the product, then failed on the price
    admin = new_user(db, "ADMIN")
    product = create_product(admin).json
    add_price(admin, product["id"])
    stripe_api.failures = []
    seen: list[str] = []

    def fail_prices(rec: Recorded) -> None:
        seen.append(rec.path)
        if rec.path == "/v1/prices" and seen.count("/v1/prices") == 1:
            stripe_api.failures.extend([500, 500])  # the SDK's retry fails too

    stripe_api.on_request = fail_prices
    failed = admin_call(admin, "POST", f"/admin/products/{product['id']}/publish")
    assert failed.status == 503 and failed.error_code == "payment_provider_error"
    # Then nothing was recorded: still a DRAFT without Stripe ids
    with UnitOfWork() as uow:
        row = uow.session.execute(
            text("SELECT status, provider_product_id FROM products WHERE id = :i"), {"i": product["id"]}
        ).one()
    assert (row.status, row.provider_product_id) == ("DRAFT", None)
    # When it is published again
    stripe_api.on_request = None
    again = admin_call(admin, "POST", f"/admin/products/{product['id']}/publish")
    # Then the same key answers the same Stripe product: one product in Stripe, one price
    assert again.status == 200, again.json
    assert len(state(stripe_api).products) == 1 and len(state(stripe_api).prices) == 1
    assert again.json["provider_product_id"] in state(stripe_api).products


def test_concurrent_publishes_make_one_stripe_product(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a draft with a price, published by two admins at the same moment
    admin = new_user(db, "ADMIN")
    product = create_product(admin).json
    add_price(admin, product["id"])
    barrier = threading.Barrier(2)
    answers: list[Any] = []

    def publish() -> None:
        barrier.wait()
        answers.append(admin_call(admin, "POST", f"/admin/products/{product['id']}/publish"))

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then both succeed with the same Stripe product: the keys from Tollgate's ids made one product and one price
    assert [a.status for a in answers] == [200, 200]
    assert len({a.json["provider_product_id"] for a in answers}) == 1
    assert len(state(stripe_api).products) == 1 and len(state(stripe_api).prices) == 1


def test_archive_deactivates_the_stripe_product_and_hides_it(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="to-archive")
    assert api_call("GET", "/products/to-archive").status == 200
    # When it is archived
    archived = admin_call(admin, "POST", f"/admin/products/{product['id']}/archive")
    # Then Stripe's product is inactive, the product ARCHIVED and no longer public
    assert archived.status == 200 and archived.json["status"] == "ARCHIVED"
    update = _stripe_posts(stripe_api, f"/v1/products/{product['provider_product_id']}")[-1]
    assert update.form == {"active": "false"}
    assert state(stripe_api).products[product["provider_product_id"]]["active"] is False
    assert api_call("GET", "/products/to-archive").status == 404
    assert api_call("GET", f"/products/{product['id']}").status == 404
    # And publishing again reactivates it in Stripe (no second product)
    again = admin_call(admin, "POST", f"/admin/products/{product['id']}/publish")
    assert again.status == 200 and again.json["status"] == "PUBLISHED"
    assert state(stripe_api).products[product["provider_product_id"]]["active"] is True
    assert len(state(stripe_api).products) == 1
    assert [r["new_values"]["status"] for r in audit_rows(db, "catalogue.product_archive")] == ["ARCHIVED"]


def test_archive_changes_nothing_when_stripe_fails(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="stays")
    stripe_api.failures = [500, 500]
    answer = admin_call(admin, "POST", f"/admin/products/{product['id']}/archive")
    assert answer.status == 503
    assert api_call("GET", "/products/stays").status == 200
    assert audit_rows(db, "catalogue.product_archive") == []


def test_a_published_products_new_name_goes_to_stripe(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin)
    answer = admin_call(admin, "PATCH", f"/admin/products/{product['id']}", {"name": "New name", "featured": True})
    assert answer.status == 200
    update = _stripe_posts(stripe_api, f"/v1/products/{product['provider_product_id']}")[-1]
    assert update.form == {"name": "New name"}  # only what Stripe keeps
    assert state(stripe_api).products[product["provider_product_id"]]["name"] == "New name"


# --- prices -------------------------------------------------------------------------------------------------
def test_price_rules(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    one_time = create_product(admin).json
    sub = create_product(admin, type="SUBSCRIPTION", billing_interval="month", trial_days=7).json
    cases = [
        (one_time, {"type": "recurring", "interval": "month"}, 422),  # a one-time product takes one-time prices
        (sub, {"type": "recurring"}, 422),  # recurring needs an interval
        (sub, {"type": "one_time"}, 422),
        (one_time, {"type": "one_time", "interval": "month"}, 422),
        (one_time, {"unit_amount": "-1"}, 422),
        (one_time, {"unit_amount": "1.001"}, 422),
        (one_time, {"type": "monthly"}, 422),
    ]
    for product, fields, status in cases:
        assert add_price(admin, product["id"], **fields).status == status, fields
    assert row_count(db, "prices") == 0
    # And good ones are taken: a recurring price carries its interval
    made = add_price(admin, sub["id"], "9.99", type="recurring", interval="month", interval_count=1)
    assert made.status == 201 and (made.json["interval"], made.json["unit_amount"]) == ("month", "9.99")
    yen = add_price(admin, one_time["id"], "500", currency="JPY")
    assert yen.status == 201 and yen.json["unit_amount"] == "500" and yen.json["currency"] == "jpy"
    assert add_price(admin, str(uuid.uuid4())).error_code == "product_not_found"


def test_a_published_products_new_price_is_created_in_stripe_at_once(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="more-prices")
    # When a price is added to the published product
    made = add_price(admin, product["id"], "99.00", nickname="Pro")
    # Then it is in Stripe already, under the product, keyed by its id
    assert made.status == 201 and made.json["provider_price_id"] in state(stripe_api).prices
    stripe_price = state(stripe_api).prices[made.json["provider_price_id"]]
    assert (stripe_price["product"], stripe_price["unit_amount"]) == (product["provider_product_id"], 9900)
    assert stripe_price["metadata"]["tollgate_price_id"] == made.json["id"]
    listed = api_call("GET", "/products/more-prices").json
    assert sorted(p["unit_amount"] for p in listed["prices"]) == ["49.00", "99.00"]


def test_a_price_stripe_refuses_is_not_left_behind(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin)
    stripe_api.failures = [500, 500]
    answer = add_price(admin, product["id"], "99.00")
    assert answer.status == 503
    with UnitOfWork() as uow:
        count = uow.session.execute(
            text("SELECT count(*) FROM prices WHERE product_id = :p"), {"p": product["id"]}
        ).scalar_one()
    assert count == 1  # only the price it was published with


def test_a_new_amount_makes_a_new_stripe_price_and_deactivates_the_old(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin)
    price = product["prices"][0]
    old_stripe = price["provider_price_id"]
    # When the amount changes
    changed = admin_call(admin, "PATCH", f"/admin/prices/{price['id']}", {"unit_amount": "59.00"})
    # Then the Tollgate price keeps its id with a new Stripe price; the old Stripe price is inactive
    assert changed.status == 200, changed.json
    assert changed.json["id"] == price["id"] and changed.json["unit_amount"] == "59.00"
    new_stripe = changed.json["provider_price_id"]
    assert new_stripe != old_stripe and state(stripe_api).prices[new_stripe]["unit_amount"] == 5900
    assert state(stripe_api).prices[old_stripe]["active"] is False
    # And no request ever tried to change an amount in Stripe
    assert not any("unit_amount" in r.form for r in _stripe_posts(stripe_api, "/v1/prices/"))
    # When the nickname and active flag change, Then the Stripe price is updated in place
    renamed = admin_call(admin, "PATCH", f"/admin/prices/{price['id']}", {"nickname": "Launch", "active": False})
    assert renamed.status == 200 and renamed.json["provider_price_id"] == new_stripe
    assert state(stripe_api).prices[new_stripe]["nickname"] == "Launch"
    assert state(stripe_api).prices[new_stripe]["active"] is False
    assert len(state(stripe_api).prices) == 2
    rows = audit_rows(db, "catalogue.price_update")
    assert (rows[0]["old_values"]["unit_amount"], rows[0]["new_values"]["unit_amount"]) == ("49.00", "59.00")


# --- the public catalogue ----------------------------------------------------------------------------------
def test_the_public_listing_serves_published_products_with_filters_and_a_cursor(
    db: Db, stripe_api: StripeStandIn
) -> None:
    # Given categories (courses > python), published products and a draft
    admin = new_user(db, "ADMIN")
    courses = admin_call(admin, "POST", "/admin/product-categories", {"name": "Courses", "slug": "courses"}).json
    python = admin_call(
        admin, "POST", "/admin/product-categories", {"name": "Python", "slug": "python", "parent_id": courses["id"]}
    ).json
    a = published_product(admin, slug="py-basics", name="Python Basics", category_ids=[python["id"]], tags=["intro"])
    b = published_product(admin, slug="go-basics", name="Go 100%_off", featured=True, category_ids=[courses["id"]])
    c = published_product(
        admin, slug="pro-plan", name="Pro plan", type="SUBSCRIPTION", billing_interval="month", base_price="9.00"
    )
    create_product(admin, slug="draft-only", name="Python Draft")

    def slugs(query: str = "") -> list[str]:
        answer = api_call("GET", "/products", query=query)
        assert answer.status == 200, answer.json
        return [p["slug"] for p in answer.json["items"]]

    # Then only published products are listed, newest first, each with its sellable prices
    assert slugs() == ["pro-plan", "go-basics", "py-basics"]
    listed = api_call("GET", "/products").json["items"][0]
    assert [p["unit_amount"] for p in listed["prices"]] == ["9.00"] and "provider_price_id" not in listed["prices"][0]
    assert "download_url" not in listed and "metadata" not in listed
    # And the filters narrow it: a category includes its descendants, by slug or id
    assert slugs("category=courses") == ["go-basics", "py-basics"]
    assert slugs(f"category={python['id']}") == ["py-basics"]
    assert slugs("category=nothing-here") == []
    assert slugs("type=SUBSCRIPTION") == ["pro-plan"]
    assert slugs("tag=intro") == ["py-basics"]
    assert slugs("featured=true") == ["go-basics"]
    assert slugs("q=PYTHON") == ["py-basics"]  # case-insensitive; the draft is not found
    assert slugs("q=100%25_") == ["go-basics"]  # % and _ match themselves
    assert slugs("q=%25") == ["go-basics"] and slugs("q=_") == ["go-basics"]
    assert api_call("GET", "/products", query="type=PHYSICAL").status == 422
    # And the cursor pages through without repeats
    first = api_call("GET", "/products", query="limit=2").json
    second = api_call("GET", "/products", query=f"limit=2&cursor={first['next_cursor']}").json
    assert [p["slug"] for p in first["items"] + second["items"]] == ["pro-plan", "go-basics", "py-basics"]
    assert second["next_cursor"] is None
    assert api_call("GET", "/products", query="cursor=forged").error_code == "invalid_cursor"
    # And one product is found by slug or id; a draft is not
    assert api_call("GET", "/products/py-basics").json["id"] == a["id"]
    assert api_call("GET", f"/products/{b['id']}").json["slug"] == "go-basics"
    assert api_call("GET", "/products/draft-only").status == 404
    assert c["status"] == "PUBLISHED"


def test_the_category_tree_and_its_rules(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    root = admin_call(admin, "POST", "/admin/product-categories", {"name": "Root", "slug": "root"}).json
    child = admin_call(
        admin, "POST", "/admin/product-categories", {"name": "Child", "slug": "child", "parent_id": root["id"]}
    ).json
    grandchild = admin_call(
        admin, "POST", "/admin/product-categories",
        {"name": "Grandchild", "slug": "grandchild", "parent_id": child["id"], "sort_order": 2},
    ).json  # fmt: skip
    # When the root is moved under its grandchild, or a category under itself
    cycle = admin_call(admin, "PATCH", f"/admin/product-categories/{root['id']}", {"parent_id": grandchild["id"]})
    itself = admin_call(admin, "PATCH", f"/admin/product-categories/{child['id']}", {"parent_id": child["id"]})
    # Then both are 409 category_cycle
    assert (cycle.status, cycle.error_code) == (409, "category_cycle")
    assert (itself.status, itself.error_code) == (409, "category_cycle")
    # And other bad changes are refused too
    assert admin_call(admin, "POST", "/admin/product-categories", {"name": "R", "slug": "root"}).status == 409
    unknown = admin_call(
        admin, "POST", "/admin/product-categories", {"name": "X", "slug": "x", "parent_id": str(uuid.uuid4())}
    )
    assert unknown.error_code == "unknown_category"
    assert admin_call(admin, "PATCH", f"/admin/product-categories/{uuid.uuid4()}", {"name": "n"}).status == 404
    # And a legal move works: the grandchild to the top level
    moved = admin_call(admin, "PATCH", f"/admin/product-categories/{grandchild['id']}", {"parent_id": None})
    assert moved.status == 200 and moved.json["parent_id"] is None
    tree = api_call("GET", "/product-categories").json["items"]
    assert [(n["slug"], [c["slug"] for c in n["children"]]) for n in tree] == [("root", ["child"]), ("grandchild", [])]
    assert [r["new_values"] for r in audit_rows(db, "catalogue.category_update")] == [{"parent_id": None}]


# --- who may do what ---------------------------------------------------------------------------------------
def test_admin_routes_refuse_users_and_support_and_the_listing_is_public(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="public-one")
    price_id = product["prices"][0]["id"]
    cat = admin_call(admin, "POST", "/admin/product-categories", {"name": "C", "slug": "c"}).json
    routes = [
        ("POST", "/admin/products", {"name": "X", "slug": "x-1", "type": "ONE_TIME", "base_price": "1"}),
        ("PATCH", f"/admin/products/{product['id']}", {"featured": True}),
        ("POST", f"/admin/products/{product['id']}/publish", None),
        ("POST", f"/admin/products/{product['id']}/prices", {"unit_amount": "5", "type": "one_time"}),
        ("PATCH", f"/admin/prices/{price_id}", {"nickname": "n"}),
        ("POST", "/admin/product-categories", {"name": "D", "slug": "d"}),
        ("PATCH", f"/admin/product-categories/{cat['id']}", {"name": "C2"}),
        ("POST", f"/admin/products/{product['id']}/archive", None),
    ]
    for role in ("USER", "SUPPORT"):
        caller = new_user(db, role)
        for method, path, body in routes:
            # When a user or support calls an admin route, Then 403 and nothing changes
            answer = api_call(method, path, body=body, as_user=caller, role=role)
            assert (answer.status, answer.error_code) == (403, "forbidden"), (role, method, path)
    assert row_count(db, "products") == 1 and row_count(db, "product_categories") == 1
    for method, path, body in routes:
        assert 200 <= admin_call(admin, method, path, body).status < 300, (method, path)
    # And through the real authorizer: an admin key with the admin scope may, the listing needs nothing
    key = api_key_for(admin, ("admin",))
    through = api_call("GET", "/products", through_authorizer=True)
    assert through.status == 200
    created = api_call(
        "POST", "/admin/products", body={"name": "Y", "slug": "y-1", "type": "SERVICE", "base_price": "0"},
        headers={"x-api-key": key}, through_authorizer=True,
    )  # fmt: skip
    assert created.status == 201, created.json
    anonymous = api_call("POST", "/admin/products", body={"name": "Z"}, through_authorizer=True)
    assert anonymous.status in {401, 403} and anonymous.error_code is None  # the gateway's own answer
    assert Decimal(created.json["base_price"]) == 0 and row_count(db, "products") == 3
