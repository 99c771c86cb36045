"""Reviews through the gateway: only buyers (a COMPLETED order holding the product), one per user per product,
bounded input, the public listing with its average and cursor, and helpful votes (one per user, never on one's own
review, counted exactly under concurrent votes)."""

# ruff: noqa: F401, F811
from __future__ import annotations

import threading
import uuid
from typing import Any

from tests.commerce_catalogue_support import (
    Db,
    admin_call,
    completed_order,
    new_user,
    published_product,
    row_count,
)
from tests.payments_support import payments_env, stripe_api
from tests.provider_standins import StripeStandIn
from tests.support import ApiResponse, api_call


def _review(user: uuid.UUID, product: str, **body: Any) -> ApiResponse:
    return api_call(
        "POST", f"/products/{product}/reviews", body={"rating": 5, "content": "Great", **body}, as_user=user
    )


def test_only_a_buyer_with_a_completed_order_may_review_once(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a published product, a buyer with a completed order, and users whose orders are not completed
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="reviewed")
    buyer, pending, stranger = new_user(db), new_user(db), new_user(db)
    completed_order(db, buyer, product["id"])
    completed_order(db, pending, product["id"], status="PENDING")
    # When a user without a completed order reviews it, Then 403 not_a_buyer
    for user in (pending, stranger):
        refused = _review(user, "reviewed")
        assert (refused.status, refused.error_code) == (403, "not_a_buyer")
    # When the buyer reviews it (by slug)
    made = _review(buyer, "reviewed", rating=4, title="  Solid  ", content="  Worth it  ")
    # Then it is stored verified, trimmed
    assert made.status == 201, made.json
    assert (made.json["rating"], made.json["title"], made.json["content"], made.json["verified"]) == (
        4, "Solid", "Worth it", True,
    )  # fmt: skip
    # And a second review by the same buyer, by id this time, is 409 already_reviewed
    again = _review(buyer, product["id"])
    assert (again.status, again.error_code) == (409, "already_reviewed")
    assert row_count(db, "product_reviews") == 1


def test_bad_reviews_are_refused_and_nothing_is_written(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="strict")
    buyer = new_user(db)
    completed_order(db, buyer, product["id"])
    for body in (
        {"rating": 0}, {"rating": 6}, {"rating": "5"}, {"rating": 4.5}, {"content": ""}, {"content": "   "},
        {"content": "x" * 5001}, {"title": "t" * 256}, {"extra": True},
    ):  # fmt: skip
        answer = _review(buyer, "strict", **body)
        assert answer.status == 422 and answer.error_code == "validation_error", body
    # And a product that is not published cannot be reviewed
    draft = admin_call(
        admin, "POST", "/admin/products", {"name": "D", "slug": "d", "type": "SERVICE", "base_price": "0"}
    )
    completed_order(db, buyer, draft.json["id"])
    assert _review(buyer, "d").error_code == "product_not_found"
    assert _review(buyer, "no-such-product").status == 404
    assert row_count(db, "product_reviews") == 0


def test_the_listing_is_public_with_average_count_and_cursor(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="listed")
    ratings = [5, 4, 4]
    for rating in ratings:
        user = new_user(db)
        completed_order(db, user, product["id"])
        assert _review(user, "listed", rating=rating).status == 201
    # When anyone reads the reviews (no caller at all, through the authorizer)
    first = api_call("GET", "/products/listed/reviews", query="limit=2", through_authorizer=True)
    # Then they see the newest first, the average over all of them, and the count
    assert first.status == 200, first.json
    assert (first.json["average_rating"], first.json["count"]) == ("4.33", 3)
    assert [r["rating"] for r in first.json["items"]] == [4, 4]
    second = api_call("GET", "/products/listed/reviews", query=f"limit=2&cursor={first.json['next_cursor']}")
    assert [r["rating"] for r in second.json["items"]] == [5] and second.json["next_cursor"] is None
    assert "user_id" not in first.json["items"][0]
    # And a product without reviews has no average; an unknown one is 404
    empty = published_product(admin, slug="quiet")
    assert api_call("GET", f"/products/{empty['id']}/reviews").json == {
        "items": [], "next_cursor": None, "average_rating": None, "count": 0,
    }  # fmt: skip
    assert api_call("GET", "/products/nothing/reviews").error_code == "product_not_found"
    assert api_call("GET", "/products/listed/reviews", query="cursor=bad").error_code == "invalid_cursor"


def test_helpful_votes_are_one_per_user_and_not_for_ones_own_review(db: Db, stripe_api: StripeStandIn) -> None:
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="voted")
    author = new_user(db)
    completed_order(db, author, product["id"])
    review = _review(author, "voted").json
    path = f"/reviews/{review['id']}/helpful"
    voter = new_user(db)
    # When a user votes, and votes again
    first = api_call("POST", path, as_user=voter)
    second = api_call("POST", path, as_user=voter)
    # Then the first counts, the second answers the same count and changes nothing
    assert (first.status, first.json["helpful"], first.json["counted"]) == (200, 1, True)
    assert (second.status, second.json["helpful"], second.json["counted"]) == (200, 1, False)
    # And the author cannot vote for their own review; an unknown review is 404
    own = api_call("POST", path, as_user=author)
    assert (own.status, own.error_code) == (403, "own_review")
    assert api_call("POST", f"/reviews/{uuid.uuid4()}/helpful", as_user=voter).error_code == "review_not_found"
    # And without a caller the vote is refused by the gateway's authorizer
    assert api_call("POST", path, through_authorizer=True).status in {401, 403}
    assert row_count(db, "review_votes") == 1


def test_concurrent_votes_are_each_counted_once(db: Db, stripe_api: StripeStandIn) -> None:
    # Given a review and eight voters, each voting twice at the same moment
    admin = new_user(db, "ADMIN")
    product = published_product(admin, slug="busy")
    author = new_user(db)
    completed_order(db, author, product["id"])
    review = _review(author, "busy").json
    voters = [new_user(db) for _ in range(8)]
    barrier = threading.Barrier(16)
    answers: list[ApiResponse] = []

    def vote(user: uuid.UUID) -> None:
        barrier.wait()
        answers.append(api_call("POST", f"/reviews/{review['id']}/helpful", as_user=user))

    threads = [threading.Thread(target=vote, args=(v,)) for v in voters for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then every answer is 200, eight counted, and the review shows exactly eight
    assert sorted(a.status for a in answers) == [200] * 16
    assert sum(1 for a in answers if a.json["counted"]) == 8
    listed = api_call("GET", "/products/busy/reviews").json["items"][0]
    assert listed["helpful"] == 8 and row_count(db, "review_votes") == 8
