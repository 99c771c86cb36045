"""Digital downloads (API.md "Commerce": GET /orders/{order_id}/items/{item_id}/download).

A download is counted by ONE conditional UPDATE of the item: it increments `download_count` only while the count
is under the limit, the access period runs and access was not revoked (a refund). Concurrent downloads at the
limit therefore never pass it: each UPDATE re-checks the row it waited for (and the database's CHECK
download_count <= download_limit backs it). Only a counted download answers a URL: a short-lived presigned GET
of the product's uploaded file through the storage backend, or else the product's `download_url`.

Another user's order, or an item not in the order, answers 404 like a missing one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import AccessExpired, DownloadLimitReached, DownloadNotFound, DownloadRefunded, NotDownloadable
from tollgate.models.commerce import Order, OrderItem
from tollgate.models.payments import Product
from tollgate.models.storage import FileStatus, StorageObject
from tollgate.storage import Storage

DIGITAL_DOWNLOAD = "DIGITAL_DOWNLOAD"
UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class DownloadLink:
    url: str
    expires_at: datetime | None  # None: the product's own URL, which Tollgate does not sign
    downloads_left: int | None  # None: unlimited
    download_count: int


@dataclass(frozen=True, slots=True)
class _Source:
    key: str | None
    filename: str | None
    content_type: str | None
    url: str | None


def _limit(item: OrderItem, product: Product) -> int | None:
    limit = item.download_limit if item.download_limit is not None else product.download_limit
    return None if limit is None or limit == UNLIMITED else limit


def _access_ends(item: OrderItem, order: Order, product: Product) -> datetime | None:
    if item.access_expires_at is not None:
        return item.access_expires_at
    start = order.completed_at or order.paid_at
    if product.access_days and start is not None:  # an item fulfilled without its expiry: the product's period
        return start + timedelta(days=product.access_days)
    return None


def download(
    uow: UnitOfWork,
    storage: Storage,
    user_id: uuid.UUID,
    order_id: uuid.UUID,
    item_id: uuid.UUID,
    *,
    now: datetime | None = None,
) -> DownloadLink:
    """Count one download of the caller's item and answer its link (see the module docstring)."""
    moment = now or utcnow()
    with uow:
        session = uow.session
        found = session.execute(
            select(OrderItem, Order)
            .join(Order, Order.id == OrderItem.order_id)
            .where(OrderItem.id == item_id, Order.id == order_id, Order.user_id == user_id)
        ).first()
        if found is None:
            raise DownloadNotFound("no such item in your orders", details={"order_id": str(order_id)})
        item, order = found
        product = session.get(Product, item.product_id) if item.product_id is not None else None
        if product is None or (item.product_type or product.type) != DIGITAL_DOWNLOAD:
            raise NotDownloadable("this item is not a digital download", details={"reason": "not_a_download"})
        if item.access_revoked_at is not None or order.status == "REFUNDED":
            raise DownloadRefunded("this purchase was refunded", details={"revoked_at": item.access_revoked_at})
        if order.status != "COMPLETED":
            raise NotDownloadable(
                "the order is not completed", details={"reason": "order_not_completed", "status": order.status}
            )
        ends = _access_ends(item, order, product)
        if ends is not None and ends <= moment:
            raise AccessExpired("the access period of this download ended", details={"expired_at": ends})
        source = _source(session, product)
        limit = _limit(item, product)
        conditions = [
            OrderItem.id == item.id,
            OrderItem.access_revoked_at.is_(None),
            or_(OrderItem.access_expires_at.is_(None), OrderItem.access_expires_at > moment),
        ]
        if limit is not None:
            conditions.append(OrderItem.download_count < limit)
        counted = session.execute(
            update(OrderItem)
            .where(*conditions)
            .values(download_count=OrderItem.download_count + 1)
            .returning(OrderItem.download_count)
        ).scalar_one_or_none()
        if counted is None:
            session.rollback()
            session.refresh(item)
            if item.access_revoked_at is not None:
                raise DownloadRefunded("this purchase was refunded", details={"revoked_at": item.access_revoked_at})
            raise DownloadLimitReached(
                "this item's download limit is reached", details={"limit": limit, "download_count": item.download_count}
            )
        uow.commit()
    left = None if limit is None else max(limit - counted, 0)
    if source.key is not None:
        assert source.filename is not None and source.content_type is not None
        expires_in = get_settings().file_download_expiry_seconds
        url = storage.presign_get(
            source.key, expires_in=expires_in, filename=source.filename, content_type=source.content_type
        )
        return DownloadLink(url, moment + timedelta(seconds=expires_in), left, counted)
    assert source.url is not None
    return DownloadLink(source.url, None, left, counted)


def _https(url: str) -> bool:
    """Only a plain https address with a host is handed out: a `javascript:`, `data:`, `http:` or scheme-relative
    URL stored on a product would otherwise reach the buyer's browser as their download."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and not any(ch.isspace() for ch in url.strip())


def _source(session: Session, product: Product) -> _Source:
    if product.download_file_id is not None:
        stored = session.get(StorageObject, product.download_file_id)
        if stored is not None and stored.status == FileStatus.READY:
            return _Source(stored.key, stored.original_name, stored.content_type, None)
    if product.download_url and _https(product.download_url):
        return _Source(None, None, None, product.download_url)
    raise NotDownloadable("the product has no file to download yet", details={"reason": "no_file"})
