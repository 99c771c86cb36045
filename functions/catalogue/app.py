"""Catalogue (API.md "Commerce"): the public product listing, one product, the category tree and reviews; the
admin routes for products, prices (synchronised to Stripe) and categories. Each route validates its input, calls
one service function and returns a typed model. Amounts are decimal strings at the currency's scale."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints

from tollgate.db import UnitOfWork
from tollgate.errors import ValidationFailed
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import Cursor, Limit, StrictBody, documented_errors
from tollgate.observability import logger, metrics, tracer
from tollgate.payments.money import exponent
from tollgate.services import catalogue, reviews

app = create_app("catalogue")

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
Slug = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=160)]
LongText = Annotated[str, StringConstraints(max_length=20_000)]
ShortText = Annotated[str, StringConstraints(max_length=500)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2_000)]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{3}$", to_lower=True)]
Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, max_digits=14, decimal_places=3)]
TaxRate = Annotated[Decimal, Field(ge=0, lt=1, allow_inf_nan=False, decimal_places=4)]
ProductType = Literal["ONE_TIME", "SUBSCRIPTION", "DIGITAL_DOWNLOAD", "SERVICE"]
Interval = Literal["day", "week", "month", "year"]
SortOrder = Annotated[int, Field(ge=-10_000, le=10_000)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000)]


# --- bodies ---------------------------------------------------------------------------------------------------
class ProductIn(StrictBody):
    name: Name
    slug: Slug
    type: ProductType
    base_price: Money
    currency: Currency = "usd"
    description: LongText | None = None
    short_description: ShortText | None = None
    tax_rate: TaxRate | None = None
    download_url: Url | None = None
    download_file_id: uuid.UUID | None = None
    download_limit: int | None = Field(default=None, ge=-1, le=1_000_000)
    access_days: int | None = Field(default=None, ge=1, le=36_500)
    billing_interval: Interval | None = None
    trial_days: int | None = Field(default=None, ge=0, le=730)
    images: list[Url] = Field(default_factory=list, max_length=20)
    files: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    meta_title: Name | None = None
    meta_description: ShortText | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=catalogue.MAX_TAGS)
    featured: bool = False
    track_inventory: bool = False
    stock_quantity: Count = 0
    low_stock_threshold: Count | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    category_ids: list[uuid.UUID] = Field(default_factory=list, max_length=catalogue.MAX_CATEGORIES_PER_PRODUCT)


class ProductPatch(StrictBody):
    name: Name | None = None
    slug: Slug | None = None
    type: ProductType | None = None
    base_price: Money | None = None
    currency: Currency | None = None
    description: LongText | None = None
    short_description: ShortText | None = None
    tax_rate: TaxRate | None = None
    download_url: Url | None = None
    download_file_id: uuid.UUID | None = None
    download_limit: int | None = Field(default=None, ge=-1, le=1_000_000)
    access_days: int | None = Field(default=None, ge=1, le=36_500)
    billing_interval: Interval | None = None
    trial_days: int | None = Field(default=None, ge=0, le=730)
    images: list[Url] | None = Field(default=None, max_length=20)
    files: list[dict[str, Any]] | None = Field(default=None, max_length=50)
    meta_title: Name | None = None
    meta_description: ShortText | None = None
    tags: list[Tag] | None = Field(default=None, max_length=catalogue.MAX_TAGS)
    featured: bool | None = None
    track_inventory: bool | None = None
    stock_quantity: Count | None = None
    low_stock_threshold: Count | None = None
    metadata: dict[str, Any] | None = None
    category_ids: list[uuid.UUID] | None = Field(default=None, max_length=catalogue.MAX_CATEGORIES_PER_PRODUCT)


NOT_NULL_PRODUCT = frozenset(
    {"name", "slug", "type", "base_price", "currency", "images", "files", "tags", "featured", "track_inventory",
     "stock_quantity", "metadata", "category_ids"}
)  # fmt: skip


class PriceIn(StrictBody):
    unit_amount: Money
    currency: Currency = "usd"
    type: Literal["one_time", "recurring"]
    interval: Interval | None = None
    interval_count: int | None = Field(default=None, ge=1, le=365)
    nickname: Name | None = None
    active: bool = True


class PricePatch(StrictBody):
    unit_amount: Money | None = None
    nickname: Name | None = None
    active: bool | None = None


class CategoryIn(StrictBody):
    name: Name
    slug: Slug
    description: LongText | None = None
    parent_id: uuid.UUID | None = None
    sort_order: SortOrder = 0


class CategoryPatch(StrictBody):
    name: Name | None = None
    slug: Slug | None = None
    description: LongText | None = None
    parent_id: uuid.UUID | None = None  # null: move to the top level
    sort_order: SortOrder | None = None


class ReviewIn(StrictBody):
    rating: StrictInt = Field(ge=1, le=5)
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=reviews.MAX_TITLE)] | None = None
    content: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=reviews.MAX_CONTENT)]


def _no_nulls(body: BaseModel, fields: frozenset[str]) -> None:
    nulls = sorted(f for f in body.model_fields_set & fields if getattr(body, f) is None)
    if nulls:
        raise ValidationFailed("these fields cannot be null", details={"fields": nulls})


# --- answers --------------------------------------------------------------------------------------------------
def _money(value: Decimal | None, currency: str) -> str | None:
    if value is None:
        return None
    return format(value.quantize(Decimal(1).scaleb(-exponent(currency))), "f")


class PriceOut(BaseModel):
    id: uuid.UUID
    product_id: uuid.UUID | None
    unit_amount: str | None = Field(json_schema_extra={"example": "19.00"})
    currency: str
    type: str | None
    interval: str | None
    interval_count: int | None
    nickname: str | None
    active: bool


class AdminPriceOut(PriceOut):
    provider_price_id: str | None
    created_at: datetime
    updated_at: datetime


class ProductOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str | None
    description: str | None
    short_description: str | None
    status: str
    type: str
    base_price: str | None = Field(json_schema_extra={"example": "49.00"})
    currency: str
    tax_rate: str | None = Field(json_schema_extra={"example": "0.0825"})
    download_limit: int | None
    access_days: int | None
    billing_interval: str | None
    trial_days: int | None
    images: list[Any]
    files: list[Any]
    meta_title: str | None
    meta_description: str | None
    tags: list[str]
    featured: bool
    in_stock: bool  # always true for a product whose stock is not tracked
    category_ids: list[uuid.UUID]
    prices: list[PriceOut]
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime


class AdminProductOut(ProductOut):
    prices: list[AdminPriceOut]  # type: ignore[assignment]
    active: bool
    download_url: str | None
    download_file_id: uuid.UUID | None
    track_inventory: bool
    stock_quantity: int
    low_stock_threshold: int | None
    metadata: dict[str, Any]
    provider_product_id: str | None
    provider_updated_at: datetime | None


class ProductPageOut(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None


class CategoryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the service's CategoryView

    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    parent_id: uuid.UUID | None
    sort_order: int
    created_at: datetime
    updated_at: datetime


class CategoryNodeOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    sort_order: int
    children: list[CategoryNodeOut]


class CategoryTreeOut(BaseModel):
    items: list[CategoryNodeOut]


class ReviewOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the service's ReviewView

    id: uuid.UUID
    product_id: uuid.UUID
    rating: int
    title: str | None
    content: str
    verified: bool
    helpful: int
    created_at: datetime
    updated_at: datetime


class ReviewPageOut(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None
    average_rating: str | None = Field(json_schema_extra={"example": "4.50"})
    count: int


class HelpfulOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the service's HelpfulVote

    review_id: uuid.UUID
    helpful: int
    counted: bool  # false: the caller had voted already; nothing changed


def _price_fields(price: catalogue.PriceView) -> dict[str, Any]:
    return {
        "id": price.id, "product_id": price.product_id, "unit_amount": _money(price.unit_amount, price.currency),
        "currency": price.currency, "type": price.type, "interval": price.interval,
        "interval_count": price.interval_count, "nickname": price.nickname, "active": price.active,
    }  # fmt: skip


def _admin_price_out(price: catalogue.PriceView) -> AdminPriceOut:
    return AdminPriceOut(
        **_price_fields(price),
        provider_price_id=price.provider_price_id,
        created_at=price.created_at,
        updated_at=price.updated_at,
    )


def _product_fields(p: catalogue.ProductView) -> dict[str, Any]:
    return {
        "id": p.id, "name": p.name, "slug": p.slug, "description": p.description,
        "short_description": p.short_description, "status": p.status, "type": p.type,
        "base_price": _money(p.base_price, p.currency), "currency": p.currency,
        "tax_rate": format(p.tax_rate, "f") if p.tax_rate is not None else None,
        "download_limit": p.download_limit, "access_days": p.access_days, "billing_interval": p.billing_interval,
        "trial_days": p.trial_days, "images": list(p.images), "files": list(p.files), "meta_title": p.meta_title,
        "meta_description": p.meta_description, "tags": list(p.tags), "featured": p.featured,
        "in_stock": not p.track_inventory or p.stock_quantity > 0, "category_ids": list(p.category_ids),
        "published_at": p.published_at, "created_at": p.created_at, "updated_at": p.updated_at,
    }  # fmt: skip


def _product_out(view: catalogue.ProductView) -> ProductOut:
    return ProductOut(**_product_fields(view), prices=[PriceOut(**_price_fields(x)) for x in view.prices])


def _admin_product_out(p: catalogue.ProductView) -> AdminProductOut:
    return AdminProductOut(
        **_product_fields(p),
        prices=[_admin_price_out(x) for x in p.prices],
        active=p.active,
        download_url=p.download_url,
        download_file_id=p.download_file_id,
        track_inventory=p.track_inventory,
        stock_quantity=p.stock_quantity,
        low_stock_threshold=p.low_stock_threshold,
        metadata=p.metadata,
        provider_product_id=p.provider_product_id,
        provider_updated_at=p.provider_updated_at,
    )


def _node_out(node: catalogue.CategoryNode) -> CategoryNodeOut:
    c = node.category
    return CategoryNodeOut(
        id=c.id, name=c.name, slug=c.slug, description=c.description, sort_order=c.sort_order,
        children=[_node_out(child) for child in node.children],
    )  # fmt: skip


# --- public ---------------------------------------------------------------------------------------------------
@app.get(
    "/products",
    summary="PUBLISHED products with their active prices, newest first",
    responses=documented_errors({400: "invalid_cursor", 422: "validation_error"}),
)
def list_products(
    cursor: Cursor = None,
    limit: Limit = 20,
    category: Annotated[str | None, Query(min_length=1, max_length=160)] = None,
    type: Annotated[ProductType | None, Query()] = None,
    tag: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    featured: Annotated[bool | None, Query()] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
) -> ProductPageOut:
    filters = catalogue.ProductFilters(category=category, type=type, tag=tag, featured=featured, q=q)
    page = catalogue.list_products(UnitOfWork(), filters, cursor=cursor, limit=limit)
    return ProductPageOut(items=[_product_out(v) for v in page.items], next_cursor=page.next_cursor)


@app.get(
    "/products/<slug>",
    summary="One PUBLISHED product by slug or id",
    responses=documented_errors({404: "product_not_found"}),
)
def get_product(slug: str) -> ProductOut:
    return _product_out(catalogue.get_product(UnitOfWork(), slug))


@app.get("/product-categories", summary="The category tree")
def category_tree() -> CategoryTreeOut:
    return CategoryTreeOut(items=[_node_out(n) for n in catalogue.category_tree(UnitOfWork())])


@app.get(
    "/products/<slug>/reviews",
    summary="A product's reviews, newest first, with the average rating and count",
    responses=documented_errors({404: "product_not_found"}),
)
def list_reviews(slug: str, cursor: Cursor = None, limit: Limit = 20) -> ReviewPageOut:
    page = reviews.list_reviews(UnitOfWork(), slug, cursor=cursor, limit=limit)
    return ReviewPageOut(
        items=[ReviewOut.model_validate(r) for r in page.items],
        next_cursor=page.next_cursor,
        average_rating=format(page.average_rating, "f") if page.average_rating is not None else None,
        count=page.count,
    )


# --- the caller's -----------------------------------------------------------------------------------------------
@app.post(
    "/products/<slug>/reviews",
    summary="Review a product bought in a completed order (one review per product)",
    responses=documented_errors({403: "not_a_buyer", 404: "product_not_found", 409: "already_reviewed"}, success=201),
)
def create_review(slug: str, body: ReviewIn) -> tuple[ReviewOut, int]:
    review = reviews.create_review(
        UnitOfWork(), current_principal(app).user_id, slug, rating=body.rating, title=body.title, content=body.content
    )
    return ReviewOut.model_validate(review), 201


@app.post(
    "/reviews/<review_id>/helpful",
    summary="Vote a review helpful (once; a repeat changes nothing)",
    responses=documented_errors({403: "own_review", 404: "review_not_found"}),
)
def vote_helpful(review_id: uuid.UUID) -> HelpfulOut:
    return HelpfulOut.model_validate(reviews.vote_helpful(UnitOfWork(), current_principal(app).user_id, review_id))


# --- admin ------------------------------------------------------------------------------------------------------
@app.post(
    "/admin/products",
    summary="Create a DRAFT product",
    responses=documented_errors(
        {409: "slug_taken", 422: "validation_error, unknown_category or download_file_not_ready"}, success=201
    ),
)
def admin_create_product(body: ProductIn) -> tuple[AdminProductOut, int]:
    view = catalogue.create_product(UnitOfWork(), current_actor(app), body.model_dump())
    return _admin_product_out(view), 201


@app.patch(
    "/admin/products/<product_id>",
    summary="Change a product (a published one's name, description and images go to Stripe too)",
    responses=documented_errors(
        {404: "product_not_found", 409: "slug_taken or product_not_editable", 503: "payment_provider_error"}
    ),
)
def admin_update_product(product_id: uuid.UUID, body: ProductPatch) -> AdminProductOut:
    _no_nulls(body, NOT_NULL_PRODUCT)
    changes = body.model_dump(exclude_unset=True)
    return _admin_product_out(catalogue.update_product(UnitOfWork(), current_actor(app), product_id, changes))


@app.post(
    "/admin/products/<product_id>/publish",
    summary="Publish: the product and its active prices are created in Stripe",
    responses=documented_errors(
        {404: "product_not_found", 409: "no_active_price or product_not_editable", 503: "payment_provider_error"}
    ),
)
def admin_publish_product(product_id: uuid.UUID) -> AdminProductOut:
    return _admin_product_out(catalogue.publish_product(UnitOfWork(), current_actor(app), product_id))


@app.post(
    "/admin/products/<product_id>/archive",
    summary="Archive: no longer listed or sold (the Stripe product is deactivated)",
    responses=documented_errors({404: "product_not_found", 503: "payment_provider_error"}),
)
def admin_archive_product(product_id: uuid.UUID) -> AdminProductOut:
    return _admin_product_out(catalogue.archive_product(UnitOfWork(), current_actor(app), product_id))


@app.post(
    "/admin/products/<product_id>/prices",
    summary="Add a price (created in Stripe at once when the product is published)",
    responses=documented_errors({404: "product_not_found", 503: "payment_provider_error"}, success=201),
)
def admin_create_price(product_id: uuid.UUID, body: PriceIn) -> tuple[AdminPriceOut, int]:
    price = catalogue.create_price(UnitOfWork(), current_actor(app), product_id, body.model_dump())
    return _admin_price_out(price), 201


@app.patch(
    "/admin/prices/<price_id>",
    summary="Change a price: a new amount makes a new Stripe price; nickname and active change in place",
    responses=documented_errors({404: "price_not_found", 409: "conflict", 503: "payment_provider_error"}),
)
def admin_update_price(price_id: uuid.UUID, body: PricePatch) -> AdminPriceOut:
    _no_nulls(body, frozenset({"unit_amount", "active"}))
    changes = body.model_dump(exclude_unset=True)
    return _admin_price_out(catalogue.update_price(UnitOfWork(), current_actor(app), price_id, changes))


@app.post(
    "/admin/product-categories",
    summary="Create a category",
    responses=documented_errors({409: "slug_taken", 422: "unknown_category"}, success=201),
)
def admin_create_category(body: CategoryIn) -> tuple[CategoryOut, int]:
    return CategoryOut.model_validate(
        catalogue.create_category(UnitOfWork(), current_actor(app), body.model_dump())
    ), 201


@app.patch(
    "/admin/product-categories/<category_id>",
    summary="Rename or move a category",
    responses=documented_errors(
        {404: "category_not_found", 409: "category_cycle or slug_taken", 422: "unknown_category"}
    ),
)
def admin_update_category(category_id: uuid.UUID, body: CategoryPatch) -> CategoryOut:
    _no_nulls(body, frozenset({"name", "slug", "sort_order"}))
    changes = body.model_dump(exclude_unset=True)
    return CategoryOut.model_validate(catalogue.update_category(UnitOfWork(), current_actor(app), category_id, changes))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
