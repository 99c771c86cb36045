"""Attacks on the catalogue, its Stripe sync and reviews, through the real gateway: hidden products reached by
every public route, forged and replayed catalogue webhooks, Stripe-made prices on Tollgate's products, concurrent
amount changes, slug and category tricks, crafted listing input, hostile URLs and bodies, and reviews and votes
by the wrong people."""

# ruff: noqa: F401, F811
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, NullPool, create_engine, text

from tests.commerce_catalogue_standin import state
from tests.commerce_catalogue_support import (
    Db,
    add_price,
    admin_call,
    audit_rows,
    completed_order,
    create_product,
    new_user,
    published_product,
    row_count,
    send_catalogue_event,
)
from tests.gateway_support import api_key_for
from tests.payments_support import payments_env, send_stripe, stripe_api
from tests.provider_standins import StripeStandIn
from tests.support import ApiResponse, api_call
from tollgate.auth.scopes import SCOPES
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.db.engine import pg8000_url, reset_engine
from tollgate.models.storage import StorageObject
from tollgate.payments.adapters import StripeGateway, stripe_gateway
from tollgate.services import catalogue
from tollgate.services.authz import Actor
from tollgate_local.webhooks_cli import stripe_event


@pytest.fixture
def side(database_url: str) -> Iterator[Engine]:
    """Room for concurrent requests in this process, and a connection beside the application's pool."""
    saved = os.environ.get("DB_POOL_SIZE")
    os.environ["DB_POOL_SIZE"] = "4"
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


def _wait_for_waiters(engine: Engine, count: int) -> None:
    deadline = time.monotonic() + 15
    while _waiting_on_locks(engine) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _waiting_on_locks(engine) >= count


def _review(user: uuid.UUID, product: str, **body: Any) -> ApiResponse:
    return api_call(
        "POST", f"/products/{product}/reviews", body={"rating": 5, "content": "Great", **body}, as_user=user
    )


def _file(db: Db, owner: uuid.UUID, status: str = "READY") -> str:
    with db() as uow:
        row = StorageObject(
            user_id=owner, provider="local", key=f"k-{uuid.uuid4().hex}", pathname="f.zip", original_name="f.zip",
            content_type="application/zip", size=10, status=status, upload_expires_at=utcnow(),
        )  # fmt: skip
        uow.session.add(row)
        uow.session.flush()
        uow.commit()
        return str(row.id)


def _product_row(product_id: str) -> Any:
    with UnitOfWork() as uow:
        return uow.session.execute(
            text("SELECT name, status, active, provider_product_id FROM products WHERE id = :i"), {"i": product_id}
        ).one()


def _public_slugs(query: str = "") -> list[str]:
    answer = api_call("GET", "/products", query=query)
    assert answer.status == 200, answer.json
    return [p["slug"] for p in answer.json["items"]]


# --- hidden products through every public route ---------------------------------------------------------------
def test_draft_archived_and_deleted_products_are_invisible_everywhere(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a category with a draft, an archived and a Stripe-deleted product, each reviewed while it was public
    admin = new_user(db, "ADMIN")
    cat = admin_call(admin, "POST", "/admin/product-categories", {"name": "C", "slug": "hidden-cat"}).json
    draft = create_product(admin, slug="a-draft", name="Secret draft", category_ids=[cat["id"]]).json
    add_price(admin, draft["id"])
    archived = published_product(admin, slug="archived", name="Secret archived", category_ids=[cat["id"]])
    deleted = published_product(admin, slug="deleted", name="Secret deleted", category_ids=[cat["id"]])
    buyer, voter = new_user(db), new_user(db)
    reviews = {}
    for product in (archived, deleted):
        completed_order(db, buyer, product["id"])
        made = _review(buyer, product["slug"])
        assert made.status == 201
        reviews[product["slug"]] = made.json["id"]
    assert admin_call(admin, "POST", f"/admin/products/{archived['id']}/archive").status == 200
    seen = state(stripe_api).products[deleted["provider_product_id"]]
    send_catalogue_event("product.deleted", {**seen, "deleted": True, "updated": seen["updated"] + 1})
    assert _product_row(deleted["id"]).status == "DELETED"
    completed_order(db, buyer, draft["id"])
    # Then no public route shows any of them: listing (every filter), slug, id, reviews, a new review, a vote
    for query in ("", "category=hidden-cat", f"category={cat['id']}", "q=secret", "type=ONE_TIME"):
        assert _public_slugs(query) == [], query
    for product in (draft, archived, deleted):
        for ref in (product["slug"], product["id"], product["id"].upper()):
            assert api_call("GET", f"/products/{ref}").status == 404, ref
            assert api_call("GET", f"/products/{ref}/reviews").status == 404, ref
        assert _review(new_user(db), product["id"]).status == 404
    for review_id in reviews.values():
        vote = api_call("POST", f"/reviews/{review_id}/helpful", as_user=voter)
        assert (vote.status, vote.error_code) == (404, "review_not_found")
    assert row_count(db, "review_votes") == 0
    # And a mirror of a product made in Stripe (no slug) is not a catalogue product either
    mirror = {**seen, "id": "prod_mirror", "name": "Mirror", "active": True, "metadata": {}}
    assert send_catalogue_event("product.created", mirror).status == 200
    with UnitOfWork() as uow:
        mirror_id = uow.session.execute(
            text("SELECT id FROM products WHERE provider_product_id = 'prod_mirror'")
        ).scalar_one()
    assert api_call("GET", f"/products/{mirror_id}").status == 404 and _public_slugs() == []
    # And an inactive price of a published product is never shown
    live = published_product(admin, slug="live")
    extra = add_price(admin, live["id"], "99.00", nickname="hidden").json
    assert admin_call(admin, "PATCH", f"/admin/prices/{extra['id']}", {"active": False}).status == 200
    assert [p["unit_amount"] for p in api_call("GET", "/products/live").json["prices"]] == ["49.00"]


# --- forged and replayed webhooks -----------------------------------------------------------------------------
def test_a_forged_product_event_naming_another_product_changes_nothing(db: Db, stripe_api: StripeStandIn) -> None:
    # Given two published products, one then archived
    admin = new_user(db, "ADMIN")
    victim = published_product(admin, slug="victim", name="Victim")
    other = published_product(admin, slug="other", name="Other")
    assert admin_call(admin, "POST", f"/admin/products/{victim['id']}/archive").status == 200
    calls = len(stripe_api.requests)
    seen = state(stripe_api).products[other["provider_product_id"]]
    # When a product event for a Stripe product Tollgate does not know names the victim in its metadata
    forged = {
        **seen, "id": "prod_forged", "name": "Hijacked", "active": True, "updated": seen["updated"] + 100,
        "metadata": {"tollgate_product_id": victim["id"]},
    }  # fmt: skip
    for kind in ("product.created", "product.updated"):
        assert send_catalogue_event(kind, forged).status == 200
    # And the other product's own event carries the victim's id in its metadata
    send_catalogue_event(
        "product.updated",
        {
            **seen,
            "name": "Renamed",
            "updated": seen["updated"] + 101,
            "metadata": {"tollgate_product_id": victim["id"]},
        },
    )
    # Then the victim is still archived under its own name; the event applied to the product it is about
    assert tuple(_product_row(victim["id"]))[:3] == ("Victim", "ARCHIVED", False)
    assert _product_row(other["id"]).name == "Renamed"
    assert _public_slugs() == ["other"] and api_call("GET", "/products/victim").status == 404
    # And no Stripe call was made back
    assert len(stripe_api.requests) == calls


def test_an_older_event_replayed_after_a_newer_one_does_not_reactivate(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a product archived in Tollgate (Stripe says inactive, newer)
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="replayed", name="Replayed")
    before = dict(state(stripe_api).products[product["provider_product_id"]])
    assert admin_call(admin, "POST", f"/admin/products/{product['id']}/archive").status == 200
    after = dict(state(stripe_api).products[product["provider_product_id"]])
    assert after["updated"] > before["updated"]
    # When the older (active, other name) event is delivered again late, and a newer reactivation arrives
    assert send_catalogue_event("product.updated", {**before, "name": "Old name"}).status == 200
    row = _product_row(product["id"])
    assert (row.name, row.status, row.active) == ("Replayed", "ARCHIVED", False)
    send_catalogue_event("product.updated", {**after, "active": True, "updated": after["updated"] + 1})
    # Then it is never republished by a webhook
    assert _product_row(product["id"]).status == "ARCHIVED" and _public_slugs() == []


def test_price_events_cannot_change_amounts_or_move_a_price_between_products(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    a = published_product(admin, slug="price-a")
    b = published_product(admin, slug="price-b")
    price = a["prices"][0]
    seen = dict(state(stripe_api).prices[price["provider_price_id"]])
    # When a newer price.updated says the amount is 1 cent and the price belongs to B's Stripe product
    event = {**seen, "unit_amount": 1, "unit_amount_decimal": "1", "product": b["provider_product_id"]}
    assert send_catalogue_event("price.updated", event).status == 200
    # Then A still sells it at 49.00 and B has only its own price
    assert [p["unit_amount"] for p in api_call("GET", "/products/price-a").json["prices"]] == ["49.00"]
    assert [p["id"] for p in api_call("GET", "/products/price-b").json["prices"]] == [b["prices"][0]["id"]]
    with UnitOfWork() as uow:
        row = uow.session.execute(
            text("SELECT product_id, unit_amount FROM prices WHERE id = :i"), {"i": price["id"]}
        ).one()
    assert (str(row.product_id), str(row.unit_amount)) == (a["id"], "49.000")


def test_a_stripe_made_price_on_a_tollgate_product_is_never_sold(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a published product, and a Stripe price on its Stripe product that Tollgate did not record: made in
    # Stripe's dashboard, or left there by a price creation whose answer was lost and whose row was given back
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="guarded")
    template = dict(state(stripe_api).prices[product["prices"][0]["provider_price_id"]])
    for n, metadata in enumerate([{}, {"tollgate_price_id": str(uuid.uuid4()), "tollgate_product_id": product["id"]}]):
        stray = {
            **template,
            "id": f"price_stray{n}",
            "unit_amount": 1,
            "unit_amount_decimal": "1",
            "metadata": metadata,
        }
        # When its price.created arrives
        assert send_catalogue_event("price.created", stray).status == 200
        assert send_catalogue_event("price.updated", {**stray, "nickname": "again"}).status == 200
    # And a mirror of a price whose product Tollgate did not know is not moved onto the product by a later event
    orphan = {**template, "id": "price_orphan", "product": "prod_unknown", "metadata": {}}
    assert send_catalogue_event("price.created", orphan).status == 200
    moved = {**orphan, "product": product["provider_product_id"], "nickname": "moved"}
    assert send_catalogue_event("price.updated", moved).status == 200
    # Then the product still sells only its own price, and no price row names the product but Tollgate's
    assert [p["id"] for p in api_call("GET", "/products/guarded").json["prices"]] == [product["prices"][0]["id"]]
    with UnitOfWork() as uow:
        owned = uow.session.execute(
            text("SELECT count(*) FROM prices WHERE product_id = :p"), {"p": product["id"]}
        ).scalar_one()
    assert owned == 1


# --- concurrent amount changes --------------------------------------------------------------------------------
def test_two_concurrent_identical_amount_changes_leave_the_price_sellable_in_stripe(
    db: Db, stripe_api: StripeStandIn, side: Engine
) -> None:
    # Given a published product's price
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="raced")
    price = product["prices"][0]
    answers: list[ApiResponse] = []

    def change() -> None:
        answers.append(admin_call(admin, "PATCH", f"/admin/prices/{price['id']}", {"unit_amount": "59.00"}))

    # When two admins send the same new amount at once (both reach Stripe before either records its answer)
    with side.connect() as holder:
        holder.execute(text("SELECT 1 FROM prices WHERE id = :i FOR UPDATE"), {"i": price["id"]})
        threads = [threading.Thread(target=change) for _ in range(2)]
        for t in threads:
            t.start()
        _wait_for_waiters(side, 2)
        holder.rollback()
    for t in threads:
        t.join(timeout=30)
    # Then both are answered 200: the second found its change made already
    assert sorted(a.status for a in answers) == [200, 200], [a.json for a in answers]
    assert answers[0].json["provider_price_id"] == answers[1].json["provider_price_id"]
    # And Tollgate's price points at one Stripe price at 59.00 that is active in Stripe; the old one is inactive
    current = api_call("GET", "/products/raced").json["prices"]
    assert [p["unit_amount"] for p in current] == ["59.00"]
    with UnitOfWork() as uow:
        provider_id = uow.session.execute(
            text("SELECT provider_price_id FROM prices WHERE id = :i"), {"i": price["id"]}
        ).scalar_one()
    prices = state(stripe_api).prices
    assert prices[provider_id]["active"] is True and prices[provider_id]["unit_amount"] == 5900
    assert prices[price["provider_price_id"]]["active"] is False
    assert [p for p in prices.values() if p["active"]] == [prices[provider_id]]
    # And the change is audited once
    assert [r["new_values"]["unit_amount"] for r in audit_rows(db, "catalogue.price_update")] == ["59.00"]


def test_two_concurrent_different_amounts_leave_one_active_stripe_price(
    db: Db, stripe_api: StripeStandIn, side: Engine
) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="raced-two")
    price = product["prices"][0]
    answers: list[ApiResponse] = []

    def change(amount: str) -> None:
        answers.append(admin_call(admin, "PATCH", f"/admin/prices/{price['id']}", {"unit_amount": amount}))

    with side.connect() as holder:
        holder.execute(text("SELECT 1 FROM prices WHERE id = :i FOR UPDATE"), {"i": price["id"]})
        threads = [threading.Thread(target=change, args=(a,)) for a in ("59.00", "69.00")]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while len(answers) + _waiting_on_locks(side) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        holder.rollback()
    for t in threads:
        t.join(timeout=30)
    # Then one change won; at most one Stripe price of the product is active, and it is the one Tollgate sells
    assert sum(1 for a in answers if a.status == 200) == 1, [a.json for a in answers]
    sold = api_call("GET", "/products/raced-two").json["prices"]
    assert len(sold) == 1
    with UnitOfWork() as uow:
        provider_id = uow.session.execute(
            text("SELECT provider_price_id FROM prices WHERE id = :i"), {"i": price["id"]}
        ).scalar_one()
    active = [p["id"] for p in state(stripe_api).prices.values() if p["active"]]
    assert active == [provider_id]
    assert state(stripe_api).prices[provider_id]["unit_amount"] == int(sold[0]["unit_amount"].replace(".", ""))


# --- slugs ------------------------------------------------------------------------------------------------------
def test_slug_tricks_are_refused(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    other = create_product(admin, slug="first").json
    bad = [
        other["id"],  # another product's id: GET /products/{slug} would find the other one
        str(uuid.uuid4()),
        uuid.uuid4().hex,  # 32 hex digits also parse as an id
        "Upper-Case",
        "\uff46\uff55\uff4c\uff4c",  # fullwidth letters
        "caf\u00e9",
        "p\u0430ypal",  # Cyrillic a
        "x" * 161,
        "tab\there",
        "-lead",
        "trail-",
    ]
    for slug in bad:
        answer = create_product(admin, slug=slug)
        assert (answer.status, answer.error_code) == (422, "validation_error"), slug
        patched = admin_call(admin, "PATCH", f"/admin/products/{other['id']}", {"slug": slug})
        assert patched.status == 422, slug
        category = admin_call(admin, "POST", "/admin/product-categories", {"name": "C", "slug": slug})
        assert category.status == 422, slug
    # And reserved-looking but valid words are plain slugs, found as slugs; surrounding space is trimmed
    assert create_product(admin, slug="admin").status == 201
    assert create_product(admin, slug="  spaced  ").json["slug"] == "spaced"
    assert row_count(db, "products") == 3 and row_count(db, "product_categories") == 0


# --- categories ------------------------------------------------------------------------------------------------
def test_category_depth_is_bounded_and_a_deep_tree_still_serves(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    parent: str | None = None
    made: list[str] = []
    # When a chain is built one level at a time
    for level in range(40):
        answer = admin_call(
            admin, "POST", "/admin/product-categories", {"name": f"L{level}", "slug": f"l{level}", "parent_id": parent}
        )
        if answer.status != 201:
            break
        parent = answer.json["id"]
        made.append(parent)
    # Then it stops at a bound with a code, and nothing past it was written
    assert answer.status == 422 and answer.error_code == "validation_error", answer.json
    depth = len(made)
    assert 3 <= depth < 40 and row_count(db, "product_categories") == depth
    # And a move that would put a subtree past the bound is refused too
    top = admin_call(admin, "POST", "/admin/product-categories", {"name": "T", "slug": "top"}).json
    child = admin_call(
        admin, "POST", "/admin/product-categories", {"name": "TC", "slug": "top-child", "parent_id": top["id"]}
    ).json
    moved = admin_call(admin, "PATCH", f"/admin/product-categories/{top['id']}", {"parent_id": made[-2]})
    assert moved.status == 422, moved.json
    assert admin_call(admin, "PATCH", f"/admin/product-categories/{child['id']}", {"parent_id": made[-2]}).status == 200
    # And a tree written around the service, 3,000 levels deep, still answers (cut at the bound)
    with UnitOfWork() as uow:
        uow.session.execute(
            text(
                "INSERT INTO product_categories (id, name, slug, parent_id, sort_order, created_at, updated_at) "
                "SELECT gen_random_uuid(), 'd' || g, 'deep-' || g, NULL, 0, now(), now() "
                "FROM generate_series(1, 3000) g"
            )
        )
        uow.session.execute(
            text(
                "UPDATE product_categories c SET parent_id = p.id FROM product_categories p "
                "WHERE c.slug LIKE 'deep-%' AND p.slug = 'deep-' || (substr(c.slug, 6)::int - 1)"
            )
        )
        uow.commit()
    tree = api_call("GET", "/product-categories")
    assert tree.status == 200, tree.json


def test_the_public_tree_is_bounded_in_size(db: Db, payments_env: None) -> None:
    # Given all but one of the categories the public tree may hold
    admin = new_user(db, "ADMIN")
    with UnitOfWork() as uow:
        uow.session.execute(
            text(
                "INSERT INTO product_categories (id, name, slug, parent_id, sort_order, created_at, updated_at) "
                "SELECT gen_random_uuid(), 'c' || g, 'many-' || g, NULL, 0, now(), now() "
                "FROM generate_series(1, :n) g"
            ),
            {"n": catalogue.MAX_CATEGORIES - 1},
        )
        uow.commit()
    # When two more are created, Then the last one is refused and the tree serves every category there is
    assert admin_call(admin, "POST", "/admin/product-categories", {"name": "L", "slug": "last"}).status == 201
    over = admin_call(admin, "POST", "/admin/product-categories", {"name": "O", "slug": "over"})
    assert (over.status, over.error_code) == (422, "validation_error")
    tree = api_call("GET", "/product-categories")
    assert tree.status == 200 and len(tree.json["items"]) == catalogue.MAX_CATEGORIES


def test_a_category_cannot_be_its_own_parent_and_two_crossing_moves_make_no_cycle(
    db: Db, payments_env: None, side: Engine
) -> None:
    admin = new_user(db, "ADMIN")
    a = admin_call(admin, "POST", "/admin/product-categories", {"name": "A", "slug": "a"}).json
    b = admin_call(admin, "POST", "/admin/product-categories", {"name": "B", "slug": "b"}).json
    itself = admin_call(admin, "PATCH", f"/admin/product-categories/{a['id']}", {"parent_id": a["id"]})
    assert (itself.status, itself.error_code) == (409, "category_cycle")
    answers: list[ApiResponse] = []

    def move(child: dict[str, Any], parent: dict[str, Any]) -> None:
        answers.append(
            admin_call(admin, "PATCH", f"/admin/product-categories/{child['id']}", {"parent_id": parent["id"]})
        )

    # When a -> b and b -> a are sent at once
    with side.connect() as holder:
        holder.execute(text("LOCK TABLE product_categories IN SHARE ROW EXCLUSIVE MODE"))
        threads = [threading.Thread(target=move, args=(a, b)), threading.Thread(target=move, args=(b, a))]
        for t in threads:
            t.start()
        _wait_for_waiters(side, 2)
        holder.rollback()
    for t in threads:
        t.join(timeout=30)
    # Then one wins and the other is a cycle
    assert sorted((r.status, r.error_code) for r in answers) == [(200, None), (409, "category_cycle")]
    tree = api_call("GET", "/product-categories").json["items"]
    assert len(tree) == 1 and len(tree[0]["children"]) == 1


# --- the listing's input ---------------------------------------------------------------------------------------
def test_crafted_listing_input_is_refused_or_harmless(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    published_product(admin, slug="plain-one", name="Plain")
    published_product(admin, slug="odd-one", name="50% off_now \\ really")
    reviewed = published_product(admin, slug="reviewed-one", name="Reviewed")
    # LIKE wildcards and the escape character match only themselves
    assert _public_slugs("q=%25") == ["odd-one"]
    assert _public_slugs("q=_") == ["odd-one"]
    assert _public_slugs("q=%5C") == ["odd-one"]
    assert _public_slugs("q=%5C%25") == []
    # NUL in any query parameter or in the path is refused before any query runs; huge input is refused
    for query in ("q=a%00b", "tag=a%00", "category=x%00"):
        answer = api_call("GET", "/products", query=query)
        assert (answer.status, answer.error_code) == (400, "invalid_text"), query
    assert api_call("GET", "/products/a%00b").status in {400, 404}
    assert api_call("GET", "/products", query="q=" + "a" * 10_240).status == 422
    assert api_call("GET", "/products", query="tag=" + "a" * 10_240).status == 422
    assert api_call("GET", "/products", query="limit=100000").status == 422
    # A cursor from another listing (reviews), a tampered one, and one from another filter
    buyer = new_user(db)
    for _ in range(2):
        user = new_user(db)
        completed_order(db, user, reviewed["id"])
        assert _review(user, "reviewed-one").status == 201
    review_cursor = api_call("GET", "/products/reviewed-one/reviews", query="limit=1").json["next_cursor"]
    assert review_cursor
    for cursor in (review_cursor, review_cursor[:-2] + "xx", "e30", "." * 50):
        answer = api_call("GET", "/products", query=f"cursor={cursor}")
        assert (answer.status, answer.error_code) == (400, "invalid_cursor"), cursor
    product_cursor = api_call("GET", "/products", query="limit=1").json["next_cursor"]
    answer = api_call("GET", "/products/reviewed-one/reviews", query=f"cursor={product_cursor}")
    assert (answer.status, answer.error_code) == (400, "invalid_cursor")
    swapped = api_call("GET", "/products", query=f"limit=1&type=SUBSCRIPTION&cursor={product_cursor}")
    assert swapped.status == 200 and swapped.json["items"] == []
    assert buyer


# --- hostile product bodies ------------------------------------------------------------------------------------
def test_only_https_urls_are_taken_for_downloads_and_images(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    for url in (
        "javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,<script>x</script>", "http://x.example/f.zip",
        "file:///etc/passwd", "//x.example/f.zip", "https:/x", "https://", "ftp://x.example/f", " javascript:x",
        "https://x.example/\u0000", "https://user:pass@x.example/f.zip",
    ):  # fmt: skip
        download = create_product(admin, type="DIGITAL_DOWNLOAD", download_url=url)
        assert download.status in {400, 422}, (url, download.json)
        image = create_product(admin, images=[url])
        assert image.status in {400, 422}, (url, image.json)
    ok = create_product(admin, type="DIGITAL_DOWNLOAD", download_url="https://files.example.com/f.zip",
                        images=["https://cdn.example.com/a.png"])  # fmt: skip
    assert ok.status == 201, ok.json
    # And a PATCH cannot slip one in either
    patched = admin_call(admin, "PATCH", f"/admin/products/{ok.json['id']}", {"download_url": "javascript:alert(1)"})
    assert patched.status == 422
    assert row_count(db, "products") == 1


def test_bounded_lists_and_json_fields(db: Db, payments_env: None) -> None:
    admin = new_user(db, "ADMIN")
    cases: list[dict[str, Any]] = [
        {"tags": [f"t{i}" for i in range(10_000)]},
        {"images": ["https://cdn.example.com/a.png"] * 21},
        {"files": [{"name": "x"}] * 51},
        {"files": [{"blob": "x" * 200_000}]},
        {"metadata": {f"k{i}": "v" * 100 for i in range(5_000)}},
        {"category_ids": [str(uuid.uuid4()) for _ in range(10_000)]},
    ]
    for fields in cases:
        answer = create_product(admin, **fields)
        assert answer.status in {413, 422}, (list(fields), answer.status)
    # A JSON bomb of nesting is refused at the edge
    deep = '{"name":"x","slug":"deep","type":"ONE_TIME","base_price":"1","files":[' + "[" * 5_000 + "]" * 5_000 + "]}"
    answer = api_call("POST", "/admin/products", raw_body=deep.encode(), as_user=admin, role="ADMIN")
    assert answer.status in {400, 413, 422}
    assert row_count(db, "products") == 0


def test_a_download_file_must_be_the_staffs_ready_upload(db: Db, payments_env: None) -> None:
    admin, customer = new_user(db, "ADMIN"), new_user(db)
    theirs = _file(db, customer)  # a customer's private upload
    failed = _file(db, admin, "PENDING")
    mine = _file(db, admin)
    for file_id in (theirs, failed, str(uuid.uuid4())):
        answer = create_product(admin, type="DIGITAL_DOWNLOAD", download_file_id=file_id)
        assert (answer.status, answer.error_code) == (422, "download_file_not_ready"), file_id
    made = create_product(admin, type="DIGITAL_DOWNLOAD", download_file_id=mine)
    assert made.status == 201
    patched = admin_call(admin, "PATCH", f"/admin/products/{made.json['id']}", {"download_file_id": theirs})
    assert (patched.status, patched.error_code) == (422, "download_file_not_ready")
    assert row_count(db, "products") == 1


# --- reviews ---------------------------------------------------------------------------------------------------
def test_only_completed_orders_make_a_buyer(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="buyers-only")
    other = published_product(admin, slug="something-else")
    for status in ("PENDING", "PROCESSING", "CANCELLED", "REFUNDED"):
        user = new_user(db)
        completed_order(db, user, product["id"], status=status)
        answer = _review(user, "buyers-only")
        assert (answer.status, answer.error_code) == (403, "not_a_buyer"), status
    # A completed order of another product, or another user's completed order, does not count
    elsewhere, stranger = new_user(db), new_user(db)
    completed_order(db, elsewhere, other["id"])
    assert _review(elsewhere, "buyers-only").error_code == "not_a_buyer"
    buyer = new_user(db)
    completed_order(db, buyer, product["id"])
    assert _review(stranger, "buyers-only").error_code == "not_a_buyer"
    # And an order item can hold a product only as a product item (the schema's rule)
    with pytest.raises(Exception, match="one_kind"), db() as uow:
        uow.session.execute(
            text(
                "INSERT INTO order_items (id, order_id, kind, product_id, pack_id, name, quantity, unit_price, "
                "total_price) SELECT gen_random_uuid(), o.id, 'pack', :p, NULL, 'x', 1, 1, 1 FROM orders o LIMIT 1"
            ),
            {"p": product["id"]},
        )
    assert row_count(db, "product_reviews") == 0


def test_review_bodies_and_votes(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="bodies")
    buyer = new_user(db)
    completed_order(db, buyer, product["id"])
    for body in (
        {"rating": 0}, {"rating": 6}, {"rating": 3.5}, {"rating": "5"}, {"rating": True}, {"rating": None},
        {"rating": 5.0}, {"rating": -1}, {"rating": 10**20}, {"content": "x" * 5_001}, {"content": " \n\t "},
        {"title": "t" * 256}, {"content": {"$gt": ""}}, {"verified": False}, {"helpful": 100}, {"user_id": str(buyer)},
    ):  # fmt: skip
        answer = _review(buyer, "bodies", **body)
        assert answer.status in {400, 422}, (body, answer.json)
    assert row_count(db, "product_reviews") == 0
    made = _review(buyer, "bodies", content="x" * 5_000)
    assert made.status == 201 and made.json["verified"] is True
    # The author's vote, by session, is refused; an API key of the author is the same person
    own = api_call("POST", f"/reviews/{made.json['id']}/helpful", as_user=buyer)
    assert (own.status, own.error_code) == (403, "own_review")
    assert api_call("POST", "/reviews/not-a-uuid/helpful", as_user=buyer).status in {400, 404, 422}
    assert row_count(db, "review_votes") == 0


def test_two_concurrent_first_reviews_make_one(db: Db, stripe_api: StripeStandIn, side: Engine) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="first-review")
    buyer = new_user(db)
    completed_order(db, buyer, product["id"])
    barrier = threading.Barrier(4)
    answers: list[ApiResponse] = []

    def review() -> None:
        barrier.wait()
        answers.append(_review(buyer, "first-review"))

    threads = [threading.Thread(target=review) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted((a.status, a.error_code) for a in answers) == [(201, None)] + [(409, "already_reviewed")] * 3
    assert row_count(db, "product_reviews") == 1


# --- publish racing archive ------------------------------------------------------------------------------------
class _PausedGateway:
    """Stripe as the publish sees it: its reactivation reaches Stripe, then the publish waits (an archive runs
    whole meanwhile) before it records the answer."""

    def __init__(self, real: StripeGateway, called: threading.Event, go: threading.Event) -> None:
        self._real, self._called, self._go = real, called, go

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def update_product(self, product_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        answer = self._real.update_product(product_id, fields)
        self._called.set()
        assert self._go.wait(timeout=30)
        return answer


def test_a_publish_racing_an_archive_ends_consistent_with_stripe(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a product that was published, then archived
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="contested")
    assert admin_call(admin, "POST", f"/admin/products/{product['id']}/archive").status == 200
    called, go = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def publish() -> None:
        try:
            catalogue.publish_product(
                UnitOfWork(), Actor.user(admin, "ADMIN"), uuid.UUID(product["id"]),
                gateway=lambda: _PausedGateway(stripe_gateway(), called, go),
            )  # fmt: skip
        except BaseException as exc:  # reported below
            failures.append(exc)

    # When a publish has reactivated it in Stripe, an archive runs whole, and only then the publish records
    thread = threading.Thread(target=publish)
    thread.start()
    assert called.wait(timeout=30)
    assert admin_call(admin, "POST", f"/admin/products/{product['id']}/archive").status == 200
    go.set()
    thread.join(timeout=30)
    assert not failures
    # And Stripe's events for both changes arrive (in either order, each once)
    seen = state(stripe_api).products[product["provider_product_id"]]
    assert seen["active"] is False  # the archive reached Stripe last
    for event in (
        {**seen, "active": True, "updated": seen["updated"] - 1},
        {**seen},
    ):  # fmt: skip
        assert send_catalogue_event("product.updated", event).status == 200
    # Then Tollgate agrees with Stripe: not sold, not listed
    row = _product_row(product["id"])
    assert (row.status, row.active) == ("ARCHIVED", False)
    assert _public_slugs() == [] and api_call("GET", "/products/contested").status == 404


def test_a_late_price_event_replayed_after_a_newer_one_does_not_reactivate(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a published price the admin deactivated, and Stripe's event of that deactivation processed
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="late-price")
    price = product["prices"][0]
    created = dict(state(stripe_api).prices[price["provider_price_id"]])
    assert admin_call(admin, "PATCH", f"/admin/prices/{price['id']}", {"active": False}).status == 200
    deactivated = dict(state(stripe_api).prices[price["provider_price_id"]])
    now = int(time.time())
    assert send_stripe(stripe_event("price.updated", deactivated, created=now)).status == 200
    # When the older price.created (active) is delivered late, or replayed
    for _ in range(2):
        assert send_stripe(stripe_event("price.created", created, created=now - 60)).status == 200
    # Then the price stays inactive and is not sold
    assert api_call("GET", "/products/late-price").json["prices"] == []


def test_admin_routes_do_not_manage_stripe_mirrors(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a product and a price made in Stripe (mirrors, no slug)
    admin = new_user(db, "ADMIN")
    product = {"id": "prod_dashboard", "object": "product", "name": "Dashboard", "active": True, "metadata": {},
               "updated": int(time.time())}  # fmt: skip
    assert send_catalogue_event("product.created", product).status == 200
    price = {"id": "price_dashboard", "object": "price", "active": True, "currency": "usd", "metadata": {},
             "product": "prod_dashboard", "type": "one_time", "unit_amount": 100, "recurring": None}  # fmt: skip
    assert send_catalogue_event("price.created", price).status == 200
    with UnitOfWork() as uow:
        ids = uow.session.execute(
            text(
                "SELECT p.id AS product_id, pr.id AS price_id FROM products p JOIN prices pr ON pr.product_id = p.id "
                "WHERE p.provider_product_id = 'prod_dashboard'"
            )
        ).one()
    calls = len(stripe_api.requests)
    # When the admin routes are pointed at them, Then each is not found and Stripe is not called
    for method, path, body in (
        ("PATCH", f"/admin/products/{ids.product_id}", {"name": "Mine now"}),
        ("POST", f"/admin/products/{ids.product_id}/publish", None),
        ("POST", f"/admin/products/{ids.product_id}/archive", None),
        ("POST", f"/admin/products/{ids.product_id}/prices", {"unit_amount": "1", "type": "one_time"}),
        ("PATCH", f"/admin/prices/{ids.price_id}", {"unit_amount": "0.01"}),
    ):
        assert admin_call(admin, method, path, body).status == 404, path
    assert len(stripe_api.requests) == calls
    assert _public_slugs() == [] and api_call("GET", f"/products/{ids.product_id}").status == 404


def test_keys_cannot_review_or_vote_and_a_demoted_or_suspended_admins_key_manages_nothing(
    db: Db, stripe_api: StripeStandIn
) -> None:
    # Given a buyer's key with every scope a customer may hold, and an admin's key with the admin scope
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="keyed")
    buyer, author = new_user(db), new_user(db)
    completed_order(db, buyer, product["id"])
    completed_order(db, author, product["id"])
    review = _review(author, "keyed").json
    buyer_key = api_key_for(buyer, tuple(s for s in SCOPES if s != "admin"))
    # When the key reviews or votes, Then the gateway's authorizer refuses: only a session may
    for path, body in ((f"/products/{product['id']}/reviews", {"rating": 1, "content": "spam"}),
                       (f"/reviews/{review['id']}/helpful", None)):  # fmt: skip
        answer = api_call("POST", path, body=body, headers={"x-api-key": buyer_key}, through_authorizer=True)
        assert answer.status in {401, 403}, (path, answer.json)
    assert row_count(db, "product_reviews") == 1 and row_count(db, "review_votes") == 0
    # When the admin is demoted, then suspended, their key reaches no admin route
    admin_key = api_key_for(admin, ("admin",))
    body = {"name": "X", "slug": "by-key", "type": "SERVICE", "base_price": "0"}
    for change in ("role = 'USER'", "role = 'ADMIN', status = 'SUSPENDED'"):
        with db() as uow:
            uow.session.execute(text(f"UPDATE users SET {change} WHERE id = :i"), {"i": admin})
            uow.commit()
        for method, path, payload in (
            ("POST", "/admin/products", body),
            ("POST", f"/admin/products/{product['id']}/archive", None),
            ("PATCH", f"/admin/prices/{product['prices'][0]['id']}", {"unit_amount": "0.01"}),
        ):
            answer = api_call(method, path, body=payload, headers={"x-api-key": admin_key}, through_authorizer=True)
            assert answer.status in {401, 403}, (change, path, answer.json)
    assert _public_slugs() == ["keyed"]
    assert [p["unit_amount"] for p in api_call("GET", "/products/keyed").json["prices"]] == ["49.00"]


def test_a_drafts_type_cannot_change_away_from_its_prices(db: Db, payments_env: None) -> None:
    # Given a draft with a one-time price
    admin = new_user(db, "ADMIN")
    draft = create_product(admin, slug="typed").json
    assert add_price(admin, draft["id"]).status == 201
    # When it is made a SUBSCRIPTION (whose checkout needs recurring prices), Then it is refused and unchanged
    answer = admin_call(
        admin, "PATCH", f"/admin/products/{draft['id']}", {"type": "SUBSCRIPTION", "billing_interval": "month"}
    )
    assert (answer.status, answer.error_code) == (422, "validation_error"), answer.json
    assert _product_row(draft["id"]).name == "Course"
    with UnitOfWork() as uow:
        assert uow.session.execute(
            text("SELECT type FROM products WHERE id = :i"), {"i": draft["id"]}
        ).scalar_one() == ("ONE_TIME")
    # And a draft without prices may still change its type
    bare = create_product(admin, slug="bare").json
    changed = admin_call(admin, "PATCH", f"/admin/products/{bare['id']}", {"type": "SERVICE"})
    assert changed.status == 200 and changed.json["type"] == "SERVICE"
