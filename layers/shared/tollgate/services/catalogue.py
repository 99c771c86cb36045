"""The commerce catalogue (issue 13, seed 004): products and their prices, synchronised to Stripe; the category
tree; the public listing.

Stripe sync. A product lives only in Tollgate while it is a DRAFT. Publishing creates it in Stripe with every active
price, through the adapter and outside any transaction that holds locks: the first transaction checks and reads,
Stripe is called with idempotency keys derived from Tollgate's ids (a repeat or a concurrent publish gets the same
Stripe objects back, never a second product), and a new transaction records the provider ids. Stripe prices are
immutable in amount: a new amount is a new Stripe price (key `tollgate-price-<id>-r<revision>`) and the old one is
deactivated; the Tollgate price keeps its id, and the Stripe ids it had are kept in its metadata. Every object made
in Stripe carries `tollgate_product_id` / `tollgate_price_id` metadata, which is how the `product.*` / `price.*`
webhooks (services/payment_events/stripe_catalogue_events.py) tell Tollgate's objects from Stripe-made mirrors.

Category moves are serialised by one table lock (SHARE ROW EXCLUSIVE: it conflicts with itself, not with reads),
then a recursive CTE walks the new parent's ancestors: two concurrent moves can never make a cycle together.

Every admin change writes an audit row with old and new values in the same transaction.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Select, delete, func, literal, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import (
    CategoryCycle,
    CategoryNotFound,
    Conflict,
    DownloadFileNotReady,
    NoActivePrice,
    PriceNotFound,
    ProductNotEditable,
    ProductNotFound,
    SlugTaken,
    UnknownCategory,
    ValidationFailed,
)
from tollgate.models.commerce import ProductCategory, ProductCategoryLink
from tollgate.models.payments import PRODUCT_TYPES, Price, Product
from tollgate.models.storage import StorageObject
from tollgate.models.users import User
from tollgate.pagination import Page, keyset_page
from tollgate.payments.adapters import StripeGateway, stripe_gateway
from tollgate.payments.money import exponent, to_minor
from tollgate.services import authz
from tollgate.services.authz import ADMIN, Actor, require_role

SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
MAX_SLUG = 160
TAG = re.compile(r"[a-z0-9][a-z0-9 _.+#-]{0,63}")
MAX_TAGS = 20
MAX_CATEGORIES_PER_PRODUCT = 20
MAX_CATEGORIES = 2_000  # the public tree is served whole
MAX_DEPTH = 10  # levels of the category tree (the public tree is built and served level by level)
MAX_JSON_FIELD = 16_384  # bytes of a product's `files` or `metadata` as JSON
MAX_ROUNDS = 3  # publish rounds: a price added while a publish runs is synchronised by the next round
INTERVALS = frozenset({"day", "week", "month", "year"})
PRICE_TYPES = frozenset({"one_time", "recurring"})
CURRENCY = re.compile(r"[a-z]{3}")
DOWNLOAD_FIELDS = ("download_url", "download_file_id", "access_days")

PRODUCT_FIELDS = frozenset(
    {"name", "description", "short_description", "slug", "type", "base_price", "currency", "tax_rate",
     "download_url", "download_file_id", "download_limit", "access_days", "billing_interval", "trial_days", "images",
     "files", "meta_title", "meta_description", "tags", "featured", "track_inventory", "stock_quantity",
     "low_stock_threshold", "metadata"}
)  # fmt: skip
# What Stripe keeps of a product: a change to these on a published product is sent to Stripe.
STRIPE_PRODUCT_FIELDS = frozenset({"name", "description", "images"})
PRICE_FIELDS = frozenset({"unit_amount", "currency", "type", "interval", "interval_count", "nickname", "active"})
CATEGORY_FIELDS = frozenset({"name", "slug", "description", "parent_id", "sort_order"})

# Stripe is reached only when a change needs it: the adapter is made then (a draft catalogue needs no Stripe key).
GatewayFactory = Callable[[], StripeGateway]


# --- views: plain values made inside the unit of work (no ORM row outlives its session) ------------------------
@dataclass(frozen=True, slots=True)
class PriceView:
    id: uuid.UUID
    product_id: uuid.UUID | None
    unit_amount: Decimal | None
    currency: str
    type: str | None
    interval: str | None
    interval_count: int | None
    nickname: str | None
    active: bool
    provider_price_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ProductView:
    id: uuid.UUID
    name: str
    slug: str | None
    description: str | None
    short_description: str | None
    status: str
    type: str
    base_price: Decimal
    currency: str
    tax_rate: Decimal | None
    download_url: str | None
    download_file_id: uuid.UUID | None
    download_limit: int | None
    access_days: int | None
    billing_interval: str | None
    trial_days: int | None
    images: tuple[Any, ...]
    files: tuple[Any, ...]
    meta_title: str | None
    meta_description: str | None
    tags: tuple[str, ...]
    featured: bool
    track_inventory: bool
    stock_quantity: int
    low_stock_threshold: int | None
    active: bool
    metadata: dict[str, Any]
    provider_product_id: str | None
    provider_updated_at: datetime | None
    published_at: datetime | None
    created_at: datetime
    updated_at: datetime
    prices: tuple[PriceView, ...]
    category_ids: tuple[uuid.UUID, ...]


@dataclass(frozen=True, slots=True)
class CategoryView:
    id: uuid.UUID
    name: str
    slug: str
    description: str | None
    parent_id: uuid.UUID | None
    sort_order: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CategoryNode:
    category: CategoryView
    children: tuple[CategoryNode, ...]


@dataclass(frozen=True, slots=True)
class ProductFilters:
    category: str | None = None  # a slug or an id; its descendants count too
    type: str | None = None
    tag: str | None = None
    featured: bool | None = None
    q: str | None = None  # a case-insensitive search in the name


# --- shared checks ------------------------------------------------------------------------------------------
def _admin(actor: Actor) -> None:
    require_role(actor, ADMIN)


def _invalid(message: str, field: str, **details: Any) -> ValidationFailed:
    return ValidationFailed(message, details={"field": field, **details})


def _check_slug(slug: Any, field: str = "slug") -> str:
    if not isinstance(slug, str) or not 1 <= len(slug) <= MAX_SLUG or not SLUG.fullmatch(slug):
        raise _invalid("a slug is 1-160 of a-z, 0-9 in words joined by single hyphens", field)
    if _as_uuid(slug) is not None:
        # `/products/{slug}` and the category filter take a slug or an id: a slug that reads as an id would
        # never be found by its slug, and one equal to another row's id would be that row's.
        raise _invalid("a slug cannot be an id", field)
    return slug


def _check_url(value: Any, field: str) -> str:
    """Only https URLs reach a page or a buyer: javascript:, data:, file: and plain http are refused."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        hostname = parts.hostname if parts is not None else None
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        parts = hostname = None
    if (
        parts is None
        or not isinstance(value, str)
        or parts.scheme != "https"
        or not value.startswith("https://")
        or not hostname
        or parts.username is not None
        or parts.password is not None
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise _invalid("a URL here is an https:// address with a host (no credentials, no spaces)", field)
    return value


def _check_json_size(value: Any, field: str) -> None:
    """Free-form JSON is served back with every product: bound its size, not only its number of items."""
    if len(json.dumps(value, separators=(",", ":"), default=str)) > MAX_JSON_FIELD:
        raise _invalid(f"{field} is at most {MAX_JSON_FIELD} bytes as JSON", field, limit=MAX_JSON_FIELD)


def _check_currency(currency: Any, field: str = "currency") -> str:
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency.lower()):
        raise _invalid("currency is a three-letter ISO code", field)
    return currency.lower()


def _check_amount(amount: Any, currency: str, field: str) -> Decimal:
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise _invalid(f"{field} is a decimal amount", field) from None
    if not value.is_finite() or value < 0 or value >= Decimal("1e11"):
        raise _invalid(f"{field} is 0 or more (and under 100,000,000,000)", field)
    try:
        to_minor(value, currency)
    except ValueError:
        raise _invalid(
            f"{field} has more decimals than {currency} allows", field, decimals=exponent(currency)
        ) from None
    return value


def _is_unique_violation(exc: IntegrityError, *names: str) -> bool:
    text_ = str(exc.orig)
    return any(name in text_ for name in names)


def _flush_slug(session: Session, slug: str | None, constraint: str) -> None:
    try:
        session.flush()
    except IntegrityError as exc:
        if _is_unique_violation(exc, constraint):
            raise SlugTaken("this slug is taken", details={"slug": slug}) from None
        raise


def _json_safe(value: Any) -> Any:
    if isinstance(value, (Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _product_snapshot(product: Product, category_ids: Iterable[uuid.UUID] | None = None) -> dict[str, Any]:
    snap = {f: _json_safe(getattr(product, "metadata_" if f == "metadata" else f)) for f in sorted(PRODUCT_FIELDS)}
    snap["base_price"] = _amount_str(product.base_price, product.currency)
    snap["status"] = product.status
    snap["provider_product_id"] = product.provider_product_id
    if category_ids is not None:
        snap["category_ids"] = sorted(str(c) for c in category_ids)
    return snap


def _amount_str(value: Decimal | None, currency: str) -> str | None:
    """An amount as the audit trail shows it: at the currency's scale, whatever scale it was read or given at."""
    if value is None:
        return None
    return format(Decimal(value).quantize(Decimal(1).scaleb(-exponent(currency))), "f")


def _price_snapshot(price: Price) -> dict[str, Any]:
    return {
        "unit_amount": _amount_str(price.unit_amount, price.currency), "currency": price.currency, "type": price.type,
        "interval": price.interval, "interval_count": price.interval_count, "nickname": price.nickname,
        "active": price.active, "provider_price_id": price.provider_price_id,
    }  # fmt: skip


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    changed = [k for k in new if old.get(k) != new.get(k)]
    return {k: old.get(k) for k in changed}, {k: new.get(k) for k in changed}


# --- products: the rules --------------------------------------------------------------------------------------
def _check_tags(tags: Any) -> list[str]:
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise _invalid(f"tags is a list of at most {MAX_TAGS}", "tags")
    out: list[str] = []
    for tag in tags:
        value = tag.strip().lower() if isinstance(tag, str) else ""
        if not TAG.fullmatch(value):
            raise _invalid("a tag is 1-64 of a-z, 0-9, space and _ . + # -, starting with a letter or digit", "tags")
        if value not in out:
            out.append(value)
    return out


def _check_product(session: Session, product: Product, *, check_file: bool = True) -> None:
    """The rules a product's whole state must keep, after a create or a change (the download file is checked when
    it is set: a product keeps the file it was given)."""
    _check_slug(product.slug)
    if product.download_url is not None:
        _check_url(product.download_url, "download_url")
    if not isinstance(product.images, list):
        raise _invalid("images is a list of https URLs", "images")
    for image in product.images:
        _check_url(image, "images")
    _check_json_size(product.files, "files")
    _check_json_size(product.metadata_, "metadata")
    if product.type not in PRODUCT_TYPES:
        raise _invalid("type is one of " + ", ".join(PRODUCT_TYPES), "type")
    product.currency = _check_currency(product.currency)
    product.base_price = _check_amount(product.base_price, product.currency, "base_price")
    if product.tax_rate is not None:
        rate = Decimal(str(product.tax_rate))
        if not (0 <= rate < 1) or rate.as_tuple().exponent < -4:  # type: ignore[operator]
            raise _invalid("tax_rate is a fraction from 0 up to (not including) 1, at most 4 decimals", "tax_rate")
        product.tax_rate = rate
    product.tags = _check_tags(product.tags)
    download = product.type == "DIGITAL_DOWNLOAD"
    if not download:
        given = [f for f in DOWNLOAD_FIELDS if getattr(product, f) is not None]
        if product.download_limit not in (None, -1):
            given.append("download_limit")
        if given:
            raise ValidationFailed(
                "download fields are only for DIGITAL_DOWNLOAD products", details={"fields": sorted(given)}
            )
    if product.download_limit is not None and (product.download_limit == 0 or product.download_limit < -1):
        raise _invalid("download_limit is -1 (unlimited) or at least 1", "download_limit")
    if product.access_days is not None and product.access_days < 1:
        raise _invalid("access_days is at least 1 (absent: lifetime)", "access_days")
    if product.type == "SUBSCRIPTION":
        if product.billing_interval not in INTERVALS:
            raise _invalid("a SUBSCRIPTION needs billing_interval: day, week, month or year", "billing_interval")
    else:
        if product.billing_interval is not None:
            raise _invalid("billing_interval is only for SUBSCRIPTION products", "billing_interval")
        if product.trial_days:
            raise _invalid("trial_days is only for SUBSCRIPTION products", "trial_days")
    if product.trial_days is not None and product.trial_days < 0:
        raise _invalid("trial_days is 0 or more", "trial_days")
    if product.stock_quantity < 0:
        raise _invalid("stock_quantity is 0 or more", "stock_quantity")
    if product.low_stock_threshold is not None and product.low_stock_threshold < 0:
        raise _invalid("low_stock_threshold is 0 or more", "low_stock_threshold")
    if product.download_file_id is not None and check_file:
        # The staff's own upload: a customer's private file must never become what buyers download.
        found = session.execute(
            select(StorageObject.status, User.role)
            .join(User, User.id == StorageObject.user_id)
            .where(StorageObject.id == product.download_file_id)
        ).one_or_none()
        status = found.status if found is not None else None
        if found is None or found.status != "READY" or found.role != ADMIN:
            raise DownloadFileNotReady(
                "download_file_id must be a READY file uploaded by an admin",
                details={"field": "download_file_id", "file_id": str(product.download_file_id), "status": status},
            )


def _check_category_ids(session: Session, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > MAX_CATEGORIES_PER_PRODUCT:
        raise _invalid(f"at most {MAX_CATEGORIES_PER_PRODUCT} categories", "category_ids")
    if not wanted:
        return []
    found = set(session.execute(select(ProductCategory.id).where(ProductCategory.id.in_(wanted))).scalars())
    missing = [str(i) for i in wanted if i not in found]
    if missing:
        raise UnknownCategory("no such categories", details={"field": "category_ids", "category_ids": missing})
    return wanted


def _set_categories(session: Session, product_id: uuid.UUID, ids: list[uuid.UUID]) -> None:
    session.execute(delete(ProductCategoryLink).where(ProductCategoryLink.product_id == product_id))
    session.add_all([ProductCategoryLink(product_id=product_id, category_id=c) for c in ids])


def _category_ids(session: Session, product_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.execute(
            select(ProductCategoryLink.category_id)
            .where(ProductCategoryLink.product_id == product_id)
            .order_by(ProductCategoryLink.category_id)
        ).scalars()
    )


def _prices_of(session: Session, product_id: uuid.UUID) -> list[Price]:
    return list(
        session.execute(select(Price).where(Price.product_id == product_id).order_by(Price.created_at, Price.id))
        .scalars()
        .all()
    )


def _price_view(price: Price) -> PriceView:
    return PriceView(
        id=price.id, product_id=price.product_id, unit_amount=price.unit_amount, currency=price.currency,
        type=price.type, interval=price.interval, interval_count=price.interval_count, nickname=price.nickname,
        active=price.active, provider_price_id=price.provider_price_id, created_at=price.created_at,
        updated_at=price.updated_at,
    )  # fmt: skip


def _product_view(product: Product, prices: Iterable[Price], category_ids: Iterable[uuid.UUID]) -> ProductView:
    """The product as plain values; its JSON fields are copied, so the view shares nothing with the row."""
    p = product
    return ProductView(
        id=p.id, name=p.name, slug=p.slug, description=p.description, short_description=p.short_description,
        status=p.status, type=p.type, base_price=p.base_price, currency=p.currency, tax_rate=p.tax_rate,
        download_url=p.download_url, download_file_id=p.download_file_id, download_limit=p.download_limit,
        access_days=p.access_days, billing_interval=p.billing_interval, trial_days=p.trial_days,
        images=tuple(copy.deepcopy(p.images)), files=tuple(copy.deepcopy(p.files)), meta_title=p.meta_title,
        meta_description=p.meta_description, tags=tuple(p.tags), featured=p.featured,
        track_inventory=p.track_inventory, stock_quantity=p.stock_quantity, low_stock_threshold=p.low_stock_threshold,
        active=p.active, metadata=copy.deepcopy(p.metadata_), provider_product_id=p.provider_product_id,
        provider_updated_at=p.provider_updated_at, published_at=p.published_at, created_at=p.created_at,
        updated_at=p.updated_at, prices=tuple(_price_view(x) for x in prices), category_ids=tuple(category_ids),
    )  # fmt: skip


def _view(session: Session, product: Product) -> ProductView:
    return _product_view(product, _prices_of(session, product.id), _category_ids(session, product.id))


def _product_for_update(session: Session, product_id: uuid.UUID) -> Product:
    product = session.execute(
        select(Product).where(Product.id == product_id, Product.slug.is_not(None)).with_for_update()
    ).scalar_one_or_none()
    if product is None:  # a Stripe-made mirror (no slug) is not managed here
        raise ProductNotFound("no such product", details={"product_id": str(product_id)})
    return product


def _assign(product: Product, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        setattr(product, "metadata_" if key == "metadata" else key, value)


# --- products: admin ------------------------------------------------------------------------------------------
def create_product(uow: UnitOfWork, actor: Actor, fields: Mapping[str, Any]) -> ProductView:
    """A DRAFT product (nothing in Stripe until it is published)."""
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PRODUCT_FIELDS and v is not None}
    with uow:
        s = uow.session
        product = Product(provider="stripe", status="DRAFT", active=True)
        _assign(product, {"images": [], "files": [], "tags": [], "metadata": {}, "download_limit": -1, **values})
        if product.type != "DIGITAL_DOWNLOAD" and "download_limit" not in values:
            product.download_limit = -1
        _check_product(s, product)
        categories = _check_category_ids(s, fields.get("category_ids") or [])
        s.add(product)
        _flush_slug(s, product.slug, "uq_products_slug")
        _set_categories(s, product.id, categories)
        s.flush()
        authz.audit(
            s, actor, action="catalogue.product_create", target_type="product", target_id=str(product.id),
            new_values=_product_snapshot(product, categories),
        )  # fmt: skip
        view = _view(s, product)
        uow.commit()
    return view


def update_product(
    uow: UnitOfWork,
    actor: Actor,
    product_id: uuid.UUID,
    fields: Mapping[str, Any],
    *,
    gateway: GatewayFactory = stripe_gateway,
) -> ProductView:
    """Change a product. On a published product, a new name, description or images are then sent to Stripe (after
    the commit, outside the row lock); a failure there answers 503 with the change kept, and the same PATCH again
    sends it again."""
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PRODUCT_FIELDS}
    with uow:
        s = uow.session
        product = _product_for_update(s, product_id)
        if product.status == "DELETED":
            raise ProductNotEditable("a deleted product cannot change", details={"status": product.status})
        if "type" in values and values["type"] != product.type and product.status != "DRAFT":
            raise ProductNotEditable(
                "a product's type can change only while it is a DRAFT", details={"status": product.status}
            )
        if "type" in values and values["type"] != product.type:
            # Its prices were checked against the old type (recurring only for a SUBSCRIPTION).
            kinds = {p.type for p in _prices_of(s, product.id) if not p.deleted}
            if kinds - {"recurring" if values["type"] == "SUBSCRIPTION" else "one_time"}:
                raise ValidationFailed(
                    "the product's prices do not fit this type: SUBSCRIPTION products take recurring prices; "
                    "other products take one_time prices",
                    details={"field": "type", "price_types": sorted(str(k) for k in kinds)},
                )
        old_categories = _category_ids(s, product.id)
        old = _product_snapshot(product, old_categories)
        old_file = product.download_file_id
        _assign(product, values)
        _check_product(s, product, check_file=product.download_file_id != old_file)
        categories = old_categories
        if fields.get("category_ids") is not None:
            categories = _check_category_ids(s, fields["category_ids"])
            _set_categories(s, product.id, categories)
        product.updated_at = utcnow()
        _flush_slug(s, product.slug, "uq_products_slug")
        before, after = _diff(old, _product_snapshot(product, categories))
        if after:
            authz.audit(
                s, actor, action="catalogue.product_update", target_type="product", target_id=str(product.id),
                old_values=before, new_values=after,
            )  # fmt: skip
        view = _view(s, product)
        uow.commit()
    push = STRIPE_PRODUCT_FIELDS & set(values)
    if push and view.provider_product_id and view.status == "PUBLISHED":
        answer = gateway().update_product(view.provider_product_id, _stripe_product_fields(view, push))
        _record_product_answer(uow, view.id, answer)
    return view


def _stripe_product_fields(product: ProductView, names: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        if name == "name":
            out["name"] = product.name
        elif name == "description":
            out["description"] = product.description or ""
        elif name == "images":
            out["images"] = [str(i) for i in product.images if isinstance(i, str)][:8]
    return out


def _stripe_time(answer: Mapping[str, Any]) -> datetime | None:
    stamp = answer.get("updated") or answer.get("created")
    return datetime.fromtimestamp(int(stamp), tz=utcnow().tzinfo) if isinstance(stamp, int) else None


def _record_product_answer(uow: UnitOfWork, product_id: uuid.UUID, answer: Mapping[str, Any]) -> None:
    """Remember when Stripe last changed the product as Tollgate sent it: older webhooks then change nothing."""
    moment = _stripe_time(answer)
    if moment is None:
        return
    with uow:
        product = uow.session.execute(select(Product).where(Product.id == product_id).with_for_update()).scalar_one()
        if product.provider_updated_at is None or product.provider_updated_at < moment:
            product.provider_updated_at = moment
        uow.commit()


def _product_metadata(product: Product) -> dict[str, str]:
    return {"tollgate_product_id": str(product.id), "tollgate_slug": str(product.slug)}


@dataclass(frozen=True, slots=True)
class _StripePrice:
    """What Stripe is sent of a price: read inside a unit of work, sent after it (no row is held over the call)."""

    id: uuid.UUID
    product_id: uuid.UUID | None
    unit_amount: Decimal | None
    currency: str
    interval: str | None
    interval_count: int | None
    nickname: str | None
    active: bool
    revision: int  # which of this price's Stripe prices is made next, from 1: its idempotency key names it


def _stripe_price(price: Price) -> _StripePrice:
    revision = len((price.metadata_ or {}).get("previous_provider_price_ids") or []) + 1
    return _StripePrice(
        id=price.id, product_id=price.product_id, unit_amount=price.unit_amount, currency=price.currency,
        interval=price.interval, interval_count=price.interval_count, nickname=price.nickname, active=price.active,
        revision=revision,
    )  # fmt: skip


def _create_stripe_price(gateway: StripeGateway, price: _StripePrice, provider_product_id: str) -> dict[str, Any]:
    assert price.unit_amount is not None  # every Tollgate price has one
    return gateway.create_price(
        product_id=provider_product_id,
        unit_amount_minor=to_minor(price.unit_amount, price.currency),
        currency=price.currency,
        interval=price.interval,
        interval_count=price.interval_count,
        nickname=price.nickname,
        active=price.active,
        metadata={"tollgate_price_id": str(price.id), "tollgate_product_id": str(price.product_id)},
        idempotency_key=f"tollgate-price-{price.id}-r{price.revision}",
    )


def publish_product(
    uow: UnitOfWork, actor: Actor, product_id: uuid.UUID, *, gateway: GatewayFactory = stripe_gateway
) -> ProductView:
    """DRAFT or ARCHIVED -> PUBLISHED, creating the Stripe product and its active prices (or reactivating it).
    Publishing a published product again creates whatever is still missing in Stripe and changes nothing else."""
    _admin(actor)
    for _ in range(MAX_ROUNDS):
        # 1. Check and read, then let go of every lock before Stripe is called.
        with uow:
            s = uow.session
            product = _product_for_update(s, product_id)
            if product.status == "DELETED":
                raise ProductNotEditable("a deleted product cannot be published", details={"status": product.status})
            prices = [p for p in _prices_of(s, product.id) if p.active]
            if not prices:
                raise NoActivePrice("publish needs at least one active price", details={"product_id": str(product_id)})
            missing = [_stripe_price(p) for p in prices if p.provider_price_id is None]
            reactivate = product.provider_product_id is not None and product.status != "PUBLISHED"
            provider_product_id = product.provider_product_id
            stripe_product: dict[str, Any] = {
                "name": product.name,
                "description": product.description,
                "images": [str(i) for i in product.images if isinstance(i, str)],
                "metadata": _product_metadata(product),
            }
        # 2. Stripe, with keys from Tollgate's ids: a repeat answers the same objects.
        product_answer: dict[str, Any] | None = None
        stripe = gateway()
        if provider_product_id is None:
            product_answer = stripe.create_product(**stripe_product, idempotency_key=f"tollgate-product-{product_id}")
            provider_product_id = str(product_answer["id"])
        elif reactivate:
            product_answer = stripe.update_product(provider_product_id, {"active": True})
        made = {p.id: _create_stripe_price(stripe, p, provider_product_id) for p in missing}
        # 3. Record what Stripe answered.
        with uow:
            s = uow.session
            product = _product_for_update(s, product_id)
            old = {"status": product.status, "provider_product_id": product.provider_product_id}
            if product.provider_product_id is None:
                product.provider_product_id = provider_product_id
            moment = _stripe_time(product_answer) if product_answer else None
            if moment is not None and (product.provider_updated_at is None or product.provider_updated_at < moment):
                product.provider_updated_at = moment
            recorded: dict[str, str] = {}
            for price in _prices_of(s, product.id):
                answer = made.get(price.id)
                if answer is not None and price.provider_price_id is None:
                    price.provider_price_id = str(answer["id"])
                    price.provider_product_id = provider_product_id
                    price.recurring = answer.get("recurring")
                    recorded[str(price.id)] = price.provider_price_id
            now = utcnow()
            if product.status != "PUBLISHED":
                product.status = "PUBLISHED"
                product.active = True
                product.published_at = now
            product.updated_at = now
            new = {"status": product.status, "provider_product_id": product.provider_product_id}
            if old != new or recorded:
                authz.audit(
                    s, actor, action="catalogue.product_publish", target_type="product", target_id=str(product.id),
                    old_values=old, new_values={**new, "provider_price_ids": recorded},
                )  # fmt: skip
            s.flush()
            pending = [p for p in _prices_of(s, product.id) if p.active and p.provider_price_id is None]
            view = _view(s, product)
            uow.commit()
        if not pending:
            return view
    return view


def archive_product(
    uow: UnitOfWork, actor: Actor, product_id: uuid.UUID, *, gateway: GatewayFactory = stripe_gateway
) -> ProductView:
    """PUBLISHED (or DRAFT) -> ARCHIVED: no longer listed or sold; the Stripe product is set active=false first,
    so a Stripe failure changes nothing here."""
    _admin(actor)
    with uow:
        product = _product_for_update(uow.session, product_id)
        if product.status == "DELETED":
            raise ProductNotEditable("a deleted product cannot be archived", details={"status": product.status})
        provider_product_id = product.provider_product_id
    answer: dict[str, Any] | None = None
    if provider_product_id is not None:
        answer = gateway().update_product(provider_product_id, {"active": False})
    with uow:
        s = uow.session
        product = _product_for_update(s, product_id)
        old = {"status": product.status, "active": product.active}
        product.status = "ARCHIVED"
        product.active = False
        product.updated_at = utcnow()
        moment = _stripe_time(answer) if answer else None
        if moment is not None and (product.provider_updated_at is None or product.provider_updated_at < moment):
            product.provider_updated_at = moment
        if old != {"status": "ARCHIVED", "active": False}:
            authz.audit(
                s, actor, action="catalogue.product_archive", target_type="product", target_id=str(product.id),
                old_values=old, new_values={"status": "ARCHIVED", "active": False},
            )  # fmt: skip
        view = _view(s, product)
        uow.commit()
    return view


# --- prices ---------------------------------------------------------------------------------------------------
def _check_price(product: Product, price: Price) -> None:
    price.currency = _check_currency(price.currency)
    price.unit_amount = _check_amount(price.unit_amount, price.currency, "unit_amount")
    if price.type not in PRICE_TYPES:
        raise _invalid("type is one_time or recurring", "type")
    if price.type == "recurring":
        if price.interval not in INTERVALS:
            raise _invalid("a recurring price needs interval: day, week, month or year", "interval")
        price.interval_count = price.interval_count or 1
        if not 1 <= price.interval_count <= 365:
            raise _invalid("interval_count is 1-365", "interval_count")
    elif price.interval is not None or price.interval_count is not None:
        raise _invalid("interval is only for recurring prices", "interval")
    # One flow sells everything: a subscription's checkout needs recurring prices, anything else one-time ones.
    if (price.type == "recurring") != (product.type == "SUBSCRIPTION"):
        raise ValidationFailed(
            "SUBSCRIPTION products take recurring prices; other products take one_time prices",
            details={"field": "type", "product_type": product.type},
        )


def create_price(
    uow: UnitOfWork,
    actor: Actor,
    product_id: uuid.UUID,
    fields: Mapping[str, Any],
    *,
    gateway: GatewayFactory = stripe_gateway,
) -> PriceView:
    """A price of a product; on a product already in Stripe it is created there at once (and removed again here
    if Stripe refuses, so no price is left that cannot be sold)."""
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PRICE_FIELDS and v is not None}
    with uow:
        s = uow.session
        product = _product_for_update(s, product_id)
        if product.status == "DELETED":
            raise ProductNotEditable("a deleted product takes no prices", details={"status": product.status})
        price = Price(provider="stripe", product_id=product.id, metadata_={}, **{"active": True, **values})
        _check_price(product, price)
        s.add(price)
        s.flush()
        provider_product_id = product.provider_product_id
        authz.audit(
            s, actor, action="catalogue.price_create", target_type="price", target_id=str(price.id),
            new_values={**_price_snapshot(price), "product_id": str(product.id)},
        )  # fmt: skip
        view, draft = _price_view(price), _stripe_price(price)
        uow.commit()
    if provider_product_id is None:
        return view
    try:
        answer = _create_stripe_price(gateway(), draft, provider_product_id)
    except Exception:
        with uow:  # give back what was reserved: a price Stripe does not know cannot be sold
            uow.session.execute(delete(Price).where(Price.id == draft.id, Price.provider_price_id.is_(None)))
            uow.commit()
        raise
    with uow:
        row = uow.session.execute(select(Price).where(Price.id == draft.id).with_for_update()).scalar_one()
        if row.provider_price_id is None:
            row.provider_price_id = str(answer["id"])
            row.provider_product_id = provider_product_id
            row.recurring = answer.get("recurring")
        uow.session.flush()  # the view shows the row as stored (its updated_at moves on this write)
        view = _price_view(row)
        uow.commit()
    return view


def update_price(
    uow: UnitOfWork,
    actor: Actor,
    price_id: uuid.UUID,
    fields: Mapping[str, Any],
    *,
    gateway: GatewayFactory = stripe_gateway,
) -> PriceView:
    """`unit_amount` (a new Stripe price, the old one deactivated), `nickname` and `active` (changed in place)."""
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in {"unit_amount", "nickname", "active"}}
    with uow:
        s = uow.session
        price = s.execute(select(Price).where(Price.id == price_id)).scalar_one_or_none()
        product = s.get(Product, price.product_id) if price is not None and price.product_id else None
        if price is None or product is None or product.slug is None:
            raise PriceNotFound("no such price", details={"price_id": str(price_id)})
        if "active" in values and values["active"] is None:
            raise _invalid("active cannot be null", "active")
        amount = price.unit_amount
        if values.get("unit_amount") is not None:
            amount = _check_amount(values["unit_amount"], price.currency, "unit_amount")
        new_amount = amount != price.unit_amount
        synced = price.provider_price_id
        current, provider_product_id = _stripe_price(price), product.provider_product_id
    answer: dict[str, Any] | None = None
    stripe: StripeGateway | None = None
    if synced is not None:
        stripe = gateway()
        if new_amount:
            assert provider_product_id is not None and amount is not None
            draft = replace(
                current, unit_amount=amount, nickname=values.get("nickname", current.nickname),
                active=bool(values.get("active", current.active)),
                revision=current.revision + 1,  # the Stripe price being replaced counts too
            )  # fmt: skip
            answer = _create_stripe_price(stripe, draft, provider_product_id)
            stripe.update_price(synced, {"active": False})
        else:
            change = {k: v for k, v in values.items() if k in {"nickname", "active"}}
            if "nickname" in change and change["nickname"] is None:
                change["nickname"] = ""  # Stripe clears a field sent empty
            if change:
                stripe.update_price(synced, change)
    with uow:
        s = uow.session
        row = s.execute(select(Price).where(Price.id == price_id).with_for_update()).scalar_one()
        # The same change sent twice at once gets the same Stripe price back (the same idempotency key and
        # amount): the one recorded second finds it done already.
        already = answer is not None and row.provider_price_id == str(answer["id"])
        winner = row.provider_price_id
        lost = row.provider_price_id != synced and not already
        if not lost:
            _record_price_change(s, actor, row, values, amount if new_amount and not already else None, synced, answer)
            view = _price_view(row)
            uow.commit()
    if lost:
        # Another change of this price's amount won the race: this one's Stripe price is left inactive - after the
        # row lock is let go, and never the winner's own Stripe price.
        if answer is not None and stripe is not None and str(answer["id"]) != winner:
            stripe.update_price(str(answer["id"]), {"active": False})
        raise Conflict("the price changed meanwhile: read it and try again", details={"price_id": str(price_id)})
    return view


def _record_price_change(
    s: Session,
    actor: Actor,
    row: Price,
    values: Mapping[str, Any],
    amount: Decimal | None,
    synced: str | None,
    answer: Mapping[str, Any] | None,
) -> None:
    """The price as changed (`amount`: a new amount, None when it stays), audited with old and new values."""
    old = _price_snapshot(row)
    if "nickname" in values:
        row.nickname = values["nickname"]
    if "active" in values:
        row.active = bool(values["active"])
    if amount is not None:
        row.unit_amount = amount
        if answer is not None:
            history = list((row.metadata_ or {}).get("previous_provider_price_ids") or [])
            row.metadata_ = {**(row.metadata_ or {}), "previous_provider_price_ids": [*history, synced]}
            row.provider_price_id = str(answer["id"])
            row.recurring = answer.get("recurring")
    row.updated_at = utcnow()
    before, after = _diff(old, _price_snapshot(row))
    if after:
        authz.audit(
            s, actor, action="catalogue.price_update", target_type="price", target_id=str(row.id),
            old_values=before, new_values=after,
        )  # fmt: skip


# --- categories -----------------------------------------------------------------------------------------------
def _lock_tree(session: Session) -> None:
    """Serialise changes of the tree's shape: this mode conflicts with itself, not with readers."""
    session.execute(text("LOCK TABLE product_categories IN SHARE ROW EXCLUSIVE MODE"))


def _ancestors_of(session: Session, start: uuid.UUID) -> set[uuid.UUID]:
    """`start` and every category above it (a recursive CTE; bounded by the table, so a cycle cannot loop)."""
    up = (
        select(ProductCategory.id, ProductCategory.parent_id)
        .where(ProductCategory.id == start)
        .cte("ancestors", recursive=True)
    )
    parent = ProductCategory.__table__.alias("parent")
    up = up.union(select(parent.c.id, parent.c.parent_id).join(up, parent.c.id == up.c.parent_id))
    return set(session.execute(select(up.c.id)).scalars())


def _check_parent(session: Session, category_id: uuid.UUID | None, parent_id: uuid.UUID | None) -> None:
    if parent_id is None:
        return
    if session.get(ProductCategory, parent_id) is None:
        raise UnknownCategory("no such parent category", details={"field": "parent_id", "parent_id": str(parent_id)})
    if category_id is not None and category_id in _ancestors_of(session, parent_id):
        raise CategoryCycle(
            "a category cannot move under itself or its descendants",
            details={"category_id": str(category_id), "parent_id": str(parent_id)},
        )
    levels = len(_ancestors_of(session, parent_id)) + (_height(session, category_id) if category_id else 1)
    if levels > MAX_DEPTH:
        raise _invalid(
            f"the category tree is at most {MAX_DEPTH} levels deep", "parent_id", levels=levels, limit=MAX_DEPTH
        )


def _height(session: Session, top: uuid.UUID) -> int:
    """How many levels the subtree under `top` spans, `top` included (counted no further than the bound)."""
    down = (
        select(ProductCategory.id, literal(1).label("level"))
        .where(ProductCategory.id == top)
        .cte("subtree", recursive=True)
    )
    child = ProductCategory.__table__.alias("child")
    down = down.union_all(
        select(child.c.id, (down.c.level + 1).label("level"))
        .join(down, child.c.parent_id == down.c.id)
        .where(down.c.level <= MAX_DEPTH)
    )
    return int(session.execute(select(func.max(down.c.level))).scalar_one() or 1)


def _category_snapshot(category: ProductCategory) -> dict[str, Any]:
    return {f: _json_safe(getattr(category, f)) for f in sorted(CATEGORY_FIELDS)}


def _category_view(c: ProductCategory) -> CategoryView:
    return CategoryView(
        id=c.id, name=c.name, slug=c.slug, description=c.description, parent_id=c.parent_id,
        sort_order=c.sort_order, created_at=c.created_at, updated_at=c.updated_at,
    )  # fmt: skip


def create_category(uow: UnitOfWork, actor: Actor, fields: Mapping[str, Any]) -> CategoryView:
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in CATEGORY_FIELDS}
    with uow:
        s = uow.session
        category = ProductCategory(sort_order=0)
        for key, value in values.items():
            if value is not None:
                setattr(category, key, value)
        _check_slug(category.slug)
        _lock_tree(s)  # the count and the parent's depth hold until this commits
        if s.execute(select(func.count()).select_from(ProductCategory)).scalar_one() >= MAX_CATEGORIES:
            raise _invalid(f"there are at most {MAX_CATEGORIES} categories", "categories", limit=MAX_CATEGORIES)
        _check_parent(s, None, category.parent_id)
        s.add(category)
        _flush_slug(s, category.slug, "uq_product_categories_slug")
        authz.audit(
            s, actor, action="catalogue.category_create", target_type="product_category",
            target_id=str(category.id), new_values=_category_snapshot(category),
        )  # fmt: skip
        view = _category_view(category)
        uow.commit()
    return view


def update_category(uow: UnitOfWork, actor: Actor, category_id: uuid.UUID, fields: Mapping[str, Any]) -> CategoryView:
    """Rename or move a category; a move under itself or a descendant is 409 `category_cycle`."""
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in CATEGORY_FIELDS}
    with uow:
        s = uow.session
        moving = "parent_id" in values
        if moving:
            _lock_tree(s)  # before reading: the check then sees every committed move
        category = s.execute(
            select(ProductCategory).where(ProductCategory.id == category_id).with_for_update()
        ).scalar_one_or_none()
        if category is None:
            raise CategoryNotFound("no such category", details={"category_id": str(category_id)})
        old = _category_snapshot(category)
        for key, value in values.items():
            if key in {"name", "slug", "sort_order"} and value is None:
                raise _invalid(f"{key} cannot be null", key)
            setattr(category, key, value)
        _check_slug(category.slug)
        if moving:
            _check_parent(s, category.id, category.parent_id)
        category.updated_at = utcnow()
        _flush_slug(s, category.slug, "uq_product_categories_slug")
        before, after = _diff(old, _category_snapshot(category))
        if after:
            authz.audit(
                s, actor, action="catalogue.category_update", target_type="product_category",
                target_id=str(category.id), old_values=before, new_values=after,
            )  # fmt: skip
        view = _category_view(category)
        uow.commit()
    return view


def category_tree(uow: UnitOfWork) -> list[CategoryNode]:
    """Every category as a tree, each level by sort_order then name."""
    with uow:
        rows = [
            _category_view(c)
            for c in uow.session.execute(
                select(ProductCategory)
                .order_by(ProductCategory.sort_order, ProductCategory.name, ProductCategory.id)
                .limit(MAX_CATEGORIES)
            ).scalars()
        ]
    children: dict[uuid.UUID | None, list[CategoryView]] = {}
    known = {c.id for c in rows}
    for row in rows:
        children.setdefault(row.parent_id if row.parent_id in known else None, []).append(row)

    def build(parent: uuid.UUID | None, depth: int) -> tuple[CategoryNode, ...]:
        if depth >= MAX_DEPTH:  # defensive: a deeper tree or a cycle written around the service stops here
            return ()
        return tuple(CategoryNode(c, build(c.id, depth + 1)) for c in children.get(parent, []))

    return list(build(None, 0))


# --- the public catalogue -------------------------------------------------------------------------------------
def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _like_pattern(q: str) -> str:
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _category_and_descendants(session: Session, ref: str) -> set[uuid.UUID] | None:
    ref_id = _as_uuid(ref)
    start = session.execute(
        select(ProductCategory.id).where(ProductCategory.id == ref_id if ref_id else ProductCategory.slug == ref)
    ).scalar_one_or_none()
    if start is None:
        return None
    down = select(ProductCategory.id).where(ProductCategory.id == start).cte("descendants", recursive=True)
    child = ProductCategory.__table__.alias("child")
    down = down.union(select(child.c.id).join(down, child.c.parent_id == down.c.id))
    return set(session.execute(select(down.c.id)).scalars())


def _public_prices(session: Session, product_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Price]]:
    """Active prices that can be sold (they exist in Stripe), per product."""
    out: dict[uuid.UUID, list[Price]] = {pid: [] for pid in product_ids}
    if not product_ids:
        return out
    rows = session.execute(
        select(Price)
        .where(
            Price.product_id.in_(product_ids),
            Price.active.is_(True),
            Price.deleted.is_(False),
            Price.provider_price_id.is_not(None),
        )
        .order_by(Price.unit_amount, Price.id)
    ).scalars()
    for price in rows:
        assert price.product_id is not None
        out[price.product_id].append(price)
    return out


def _links(session: Session, product_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    out: dict[uuid.UUID, list[uuid.UUID]] = {pid: [] for pid in product_ids}
    if product_ids:
        for link in session.execute(
            select(ProductCategoryLink)
            .where(ProductCategoryLink.product_id.in_(product_ids))
            .order_by(ProductCategoryLink.category_id)
        ).scalars():
            out[link.product_id].append(link.category_id)
    return out


def _published() -> Select[Any]:
    return select(Product).where(Product.status == "PUBLISHED", Product.slug.is_not(None))


def list_products(
    uow: UnitOfWork, filters: ProductFilters, *, cursor: str | None, limit: int | None
) -> Page[ProductView]:
    """PUBLISHED products, newest published first, with their active prices."""
    statement = _published()
    if filters.type is not None:
        if filters.type not in PRODUCT_TYPES:
            raise _invalid("type is one of " + ", ".join(PRODUCT_TYPES), "type")
        statement = statement.where(Product.type == filters.type)
    if filters.tag is not None:
        statement = statement.where(Product.tags.contains([filters.tag.strip().lower()]))
    if filters.featured is not None:
        statement = statement.where(Product.featured.is_(filters.featured))
    if filters.q:
        statement = statement.where(Product.name.ilike(_like_pattern(filters.q), escape="\\"))
    with uow:
        s = uow.session
        if filters.category is not None:
            ids = _category_and_descendants(s, filters.category)
            if not ids:
                return Page(items=[], next_cursor=None)
            linked = select(ProductCategoryLink.product_id).where(ProductCategoryLink.category_id.in_(ids))
            statement = statement.where(Product.id.in_(linked))
        page = keyset_page(s, statement, Product.published_at, Product.id, cursor=cursor, limit=limit, descending=True)
        ids_ = [p.id for p in page.items]
        prices = _public_prices(s, ids_)
        links = _links(s, ids_)
        views = [_product_view(p, prices[p.id], links[p.id]) for p in page.items]
    return Page(items=views, next_cursor=page.next_cursor)


def published_product(session: Session, ref: str, *, lock: bool = False) -> Product:
    """A PUBLISHED product by slug or id; anything else (draft, archived, mirror, missing) is not found."""
    ref_id = _as_uuid(ref)
    statement = _published().where(Product.id == ref_id if ref_id else Product.slug == ref)
    if lock:
        statement = statement.with_for_update(key_share=True)
    product: Product | None = session.execute(statement).scalar_one_or_none()
    if product is None:
        raise ProductNotFound("no such product", details={"product": ref})
    return product


def get_product(uow: UnitOfWork, ref: str) -> ProductView:
    with uow:
        s = uow.session
        product = published_product(s, ref)
        return _product_view(product, _public_prices(s, [product.id])[product.id], _links(s, [product.id])[product.id])


__all__ = [
    "CategoryNode",
    "CategoryView",
    "PriceView",
    "ProductFilters",
    "ProductView",
    "archive_product",
    "category_tree",
    "create_category",
    "create_price",
    "create_product",
    "get_product",
    "list_products",
    "publish_product",
    "published_product",
    "update_category",
    "update_price",
    "update_product",
]
