"""Product reviews (issue 13, seed 004): one per user per product, only from a buyer (a COMPLETED order holding the
product: the review is then `verified`), rating 1-5; helpful votes, one per user (the vote's primary key is the
rule, and the count moves in the same statement's transaction); the public listing with the average rating.
Answers are views (frozen dataclasses of plain values made inside the unit of work), never ORM rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from tollgate.db import UnitOfWork
from tollgate.errors import AlreadyReviewed, NotABuyer, OwnReview, ReviewNotFound, ValidationFailed
from tollgate.models.commerce import Order, OrderItem, ProductReview, ReviewVote
from tollgate.models.payments import Product
from tollgate.pagination import Page, keyset_page
from tollgate.services.catalogue import published_product
from tollgate.services.views import row_view

MAX_TITLE = 255
MAX_CONTENT = 5_000


@dataclass(frozen=True, slots=True)
class ReviewView:
    """A review as shown to anyone (who wrote it is not part of it)."""

    id: uuid.UUID
    product_id: uuid.UUID
    rating: int
    title: str | None
    content: str
    verified: bool
    helpful: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ReviewPage:
    items: list[ReviewView]
    next_cursor: str | None
    average_rating: Decimal | None  # None while the product has no review
    count: int


@dataclass(frozen=True, slots=True)
class HelpfulVote:
    review_id: uuid.UUID
    helpful: int
    counted: bool  # False: the caller had already voted, nothing changed


def _review_view(r: ProductReview) -> ReviewView:
    return row_view(ReviewView, r)


def list_reviews(uow: UnitOfWork, product_ref: str, *, cursor: str | None, limit: int | None) -> ReviewPage:
    """A published product's reviews, newest first, with the average rating and count over all of them."""
    with uow:
        s = uow.session
        product = published_product(s, product_ref)
        average, count = s.execute(
            select(func.avg(ProductReview.rating), func.count()).where(ProductReview.product_id == product.id)
        ).one()
        page: Page[ProductReview] = keyset_page(
            s, select(ProductReview).where(ProductReview.product_id == product.id), ProductReview.id,
            cursor=cursor, limit=limit, descending=True,
        )  # fmt: skip
        items = [_review_view(r) for r in page.items]
    rating = Decimal(average).quantize(Decimal("0.01"), ROUND_HALF_UP) if average is not None else None
    return ReviewPage(items=items, next_cursor=page.next_cursor, average_rating=rating, count=int(count))


def create_review(
    uow: UnitOfWork, user_id: uuid.UUID, product_ref: str, *, rating: int, title: str | None, content: str
) -> ReviewView:
    if not 1 <= rating <= 5:
        raise ValidationFailed("rating is 1-5", details={"field": "rating"})
    title = title.strip() if title else None
    content = content.strip()
    if title is not None and len(title) > MAX_TITLE:
        raise ValidationFailed(f"title is at most {MAX_TITLE} characters", details={"field": "title"})
    if not 1 <= len(content) <= MAX_CONTENT:
        raise ValidationFailed(f"content is 1-{MAX_CONTENT} characters", details={"field": "content"})
    with uow:
        s = uow.session
        product = published_product(s, product_ref)
        bought = s.execute(
            select(
                exists().where(
                    Order.user_id == user_id,
                    Order.status == "COMPLETED",
                    OrderItem.order_id == Order.id,
                    OrderItem.product_id == product.id,
                )
            )
        ).scalar_one()
        if not bought:
            raise NotABuyer(
                "only a customer with a completed order of this product may review it",
                details={"product_id": str(product.id)},
            )
        review = ProductReview(
            product_id=product.id, user_id=user_id, rating=rating, title=title or None, content=content, verified=True
        )
        s.add(review)
        product_id = product.id  # a failed flush expires every loaded row
        try:
            s.flush()
        except IntegrityError as exc:
            if "uq_product_reviews_product_id_user_id" in str(exc.orig):
                raise AlreadyReviewed(
                    "you have already reviewed this product", details={"product_id": str(product_id)}
                ) from None
            raise
        view = _review_view(review)
        uow.commit()
    return view


def vote_helpful(uow: UnitOfWork, user_id: uuid.UUID, review_id: uuid.UUID) -> HelpfulVote:
    """One helpful vote per user: a second one answers the count unchanged (counted=False)."""
    with uow:
        s = uow.session
        # Only a review of a published product is there to vote on (the others are not shown anywhere).
        review = s.execute(
            select(ProductReview)
            .join(Product, Product.id == ProductReview.product_id)
            .where(ProductReview.id == review_id, Product.status == "PUBLISHED", Product.slug.is_not(None))
        ).scalar_one_or_none()
        if review is None:
            raise ReviewNotFound("no such review", details={"review_id": str(review_id)})
        if review.user_id == user_id:
            raise OwnReview("you cannot vote for your own review", details={"review_id": str(review_id)})
        inserted = s.execute(
            insert(ReviewVote)
            .values(review_id=review_id, user_id=user_id)
            .on_conflict_do_nothing()
            .returning(ReviewVote.review_id)
        ).first()
        if inserted is not None:
            helpful = s.execute(
                update(ProductReview)
                .where(ProductReview.id == review_id)
                .values(helpful=ProductReview.helpful + 1)
                .returning(ProductReview.helpful)
            ).scalar_one()
        else:
            helpful = s.execute(select(ProductReview.helpful).where(ProductReview.id == review_id)).scalar_one()
        uow.commit()
    return HelpfulVote(review_id=review_id, helpful=int(helpful), counted=inserted is not None)
