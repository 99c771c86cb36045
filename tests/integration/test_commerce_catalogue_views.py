"""The catalogue and review services hand out views, never ORM rows: every value they return, down to the last
nested field, is a frozen dataclass or a plain value made inside the unit of work, so nothing a caller holds can
reach back into a closed session (a lazy load, an expired attribute, a flush of a change made by accident)."""

# ruff: noqa: F401, F811
from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import inspect

from tests.commerce_catalogue_support import Db, completed_order, new_user
from tests.payments_support import payments_env, stripe_api
from tests.provider_standins import StripeStandIn
from tollgate.models.commerce import ProductCategory
from tollgate.pagination import Page
from tollgate.services import catalogue, reviews
from tollgate.services.authz import Actor

PLAIN = (str, int, float, Decimal, uuid.UUID, datetime)
USD = {"currency": "usd"}


def assert_plain(value: Any, where: str = "answer") -> None:
    """`value` holds no ORM instance anywhere: only frozen dataclasses, tuples, lists, str-keyed dicts and
    plain scalars."""
    assert inspect(value, raiseerr=False) is None, f"{where} is mapped: {type(value).__name__}"
    if value is None or isinstance(value, PLAIN):  # bool is an int
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            assert_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), f"{where} has a key of type {type(key).__name__}"
            assert_plain(item, f"{where}[{key!r}]")
        return
    assert dataclasses.is_dataclass(value) and not isinstance(value, type), f"{where}: {type(value).__name__}"
    assert type(value).__dataclass_params__.frozen, f"{where}: {type(value).__name__} is not frozen"  # type: ignore[attr-defined]
    for field in dataclasses.fields(value):
        assert_plain(getattr(value, field.name), f"{where}.{field.name}")


def test_the_check_itself_refuses_an_orm_row_and_a_mutable_dataclass() -> None:
    # Given an ORM row (never added to a session) and a dataclass that is not frozen, each nested in a plain value
    @dataclasses.dataclass
    class Loose:
        value: int

    row = ProductCategory(id=uuid.uuid4(), name="Row", slug="row", sort_order=0)
    # When either is checked, Then the check fails and names where it sits
    with pytest.raises(AssertionError, match=r"answer\[0\]\['x'\] is mapped: ProductCategory"):
        assert_plain([{"x": row}])
    with pytest.raises(AssertionError, match="Loose is not frozen"):
        assert_plain(Page(items=[Loose(1)], next_cursor=None))
    # And plain views pass
    assert_plain(Page(items=[reviews.HelpfulVote(uuid.uuid4(), 1, True)], next_cursor=None))


def test_every_catalogue_and_review_answer_is_plain_values(db: Db, stripe_api: StripeStandIn) -> None:
    # Given an admin, a buyer and a second user
    admin, buyer, voter = new_user(db, "ADMIN"), new_user(db), new_user(db)
    staff = Actor.user(admin, "ADMIN")
    answers: dict[str, Any] = {}

    # When every public catalogue function runs: categories (a tree of two levels) ...
    top = catalogue.create_category(db(), staff, {"name": "Courses", "slug": "courses"})
    child = catalogue.create_category(db(), staff, {"name": "Python", "slug": "python", "parent_id": top.id})
    answers["create_category"] = top
    answers["update_category"] = catalogue.update_category(db(), staff, child.id, {"sort_order": 3})
    answers["category_tree"] = catalogue.category_tree(db())
    # ... a product with every JSON field filled, its prices before and after it is in Stripe ...
    fields = {
        **USD, "name": "Course", "slug": "course", "type": "DIGITAL_DOWNLOAD", "base_price": "49.00",
        "tax_rate": "0.0825", "download_url": "https://files.example.com/c.zip", "stock_quantity": 0,
        "images": ["https://img.example.com/a.png"], "files": [{"name": "c.zip", "size": 1}],
        "metadata": {"level": {"min": 1}}, "tags": ["python"], "category_ids": [child.id],
    }  # fmt: skip
    product = catalogue.create_product(db(), staff, fields)
    answers["create_product"] = product
    draft_price = catalogue.create_price(db(), staff, product.id, {**USD, "unit_amount": "49.00", "type": "one_time"})
    answers["create_price (draft)"] = draft_price
    answers["publish_product"] = catalogue.publish_product(db(), staff, product.id)
    answers["create_price (in Stripe)"] = catalogue.create_price(
        db(), staff, product.id, {**USD, "unit_amount": "59.00", "type": "one_time", "nickname": "Pro"}
    )
    answers["update_price (new amount)"] = catalogue.update_price(db(), staff, draft_price.id, {"unit_amount": "45"})
    answers["update_price (in place)"] = catalogue.update_price(db(), staff, draft_price.id, {"nickname": "Base"})
    answers["update_product (sent to Stripe)"] = catalogue.update_product(db(), staff, product.id, {"name": "Course 2"})
    # ... the public reads, filtered and not ...
    answers["list_products"] = catalogue.list_products(db(), catalogue.ProductFilters(), cursor=None, limit=10)
    answers["list_products (category)"] = catalogue.list_products(
        db(), catalogue.ProductFilters(category="courses", q="course"), cursor=None, limit=10
    )
    answers["get_product"] = catalogue.get_product(db(), "course")
    # ... and reviews: one written, voted on twice, listed
    completed_order(db, buyer, str(product.id))
    review = reviews.create_review(db(), buyer, "course", rating=4, title="Good", content="Worth it")
    answers["create_review"] = review
    answers["vote_helpful"] = reviews.vote_helpful(db(), voter, review.id)
    answers["vote_helpful (again)"] = reviews.vote_helpful(db(), voter, review.id)
    answers["list_reviews"] = reviews.list_reviews(db(), "course", cursor=None, limit=10)
    answers["archive_product"] = catalogue.archive_product(db(), staff, product.id)

    # Then no answer holds an ORM instance, at any depth
    for name, answer in answers.items():
        assert_plain(answer, name)
    # And the views carry what was read: the nested prices and categories, the listing's average
    listed = answers["list_products (category)"]
    assert [p.slug for p in listed.items] == ["course"]
    assert [p.unit_amount for p in listed.items[0].prices] == [Decimal("45.00"), Decimal("59.00")]
    assert listed.items[0].category_ids == (child.id,) and listed.items[0].metadata == {"level": {"min": 1}}
    (node,) = answers["category_tree"]
    assert (node.category.slug, [c.category.slug for c in node.children]) == ("courses", ["python"])
    page = answers["list_reviews"]
    assert (page.count, page.average_rating, [r.id for r in page.items]) == (1, Decimal("4.00"), [review.id])
    assert (answers["vote_helpful"].counted, answers["vote_helpful (again)"].helpful) == (True, 1)
    assert answers["archive_product"].status == "ARCHIVED"
