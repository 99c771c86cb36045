"""Digital downloads of an order's items: a signed link to the product's uploaded file (or its URL), counted
atomically against the limit (a race at the limit never passes it), refused after the access period and after a
refund, and 404 for anything not the caller's."""

# ruff: noqa: F401, F811
from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from tests.commerce_refunds_standin import completed_order, download_product
from tests.files_support import FileEnv, files_env, gateway_request, new_user, start, upload_through_gateway
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import DownloadLimitReached, TollgateError
from tollgate.services import downloads
from tollgate.storage import get_storage

Db = Any


def _download(order_id: uuid.UUID, item_id: uuid.UUID, user: uuid.UUID) -> Any:
    return api_call("GET", f"/orders/{order_id}/items/{item_id}/download", as_user=user)


def _count(db: Db, item_id: uuid.UUID) -> int:
    with db() as uow:
        return int(
            uow.session.execute(
                text("SELECT download_count FROM order_items WHERE id = :i"), {"i": item_id}
            ).scalar_one()
        )


def test_an_uploaded_file_downloads_through_a_short_lived_link_until_the_limit(db: Db, files_env: FileEnv) -> None:
    # Given a product whose file was uploaded through /files, bought with a limit of 2 downloads
    seller, buyer = new_user(db), new_user(db)
    data = b"%PDF-1.7 the ebook"
    started = start(seller, name="Ebook.pdf", content_type="application/pdf", size=len(data)).json
    assert upload_through_gateway(started["upload"], data).status == 204
    assert api_call("POST", f"/files/{started['file_id']}/complete", as_user=seller).status == 200
    product = download_product(db, download_url=None, download_file_id=uuid.UUID(started["file_id"]))
    order = completed_order(db, buyer, product_id=product, download_limit=2)
    item = order.item_ids[0]
    # When the buyer downloads it
    first = _download(order.order_id, item, buyer)
    # Then a signed link that serves the file, expiring soon, with one download left
    assert first.status == 200, first.json
    assert first.json["downloads_left"] == 1 and first.json["expires_at"]
    served = gateway_request("GET", first.json["url"])
    assert served.status == 200 and served.body == data
    # When they download twice more, Then the second is the last and the third is refused; the count stays 2
    assert _download(order.order_id, item, buyer).json["downloads_left"] == 0
    third = _download(order.order_id, item, buyer)
    assert third.status == 403 and third.error_code == "download_limit_reached"
    assert _count(db, item) == 2


def test_a_product_url_is_answered_when_there_is_no_file_and_unlimited_items_count_on(db: Db) -> None:
    # Given a product with only a download URL and no limit
    buyer = new_user(db)
    order = completed_order(db, buyer, product_id=download_product(db, download_url="https://cdn.example.com/a.zip"))
    # When it is downloaded three times
    answers = [_download(order.order_id, order.item_ids[0], buyer) for _ in range(3)]
    # Then each answers the URL with no limit, and each was counted
    assert [a.json for a in answers] == [{"url": "https://cdn.example.com/a.zip", "expires_at": None,
                                          "downloads_left": None}] * 3  # fmt: skip
    assert _count(db, order.item_ids[0]) == 3


def test_the_access_period_ends_downloads(db: Db) -> None:
    # Given an item whose access ended a minute ago, and one bought 31 days ago for a 30-day product
    buyer = new_user(db)
    product = download_product(db, access_days=30)
    ended = completed_order(db, buyer, product_id=product, access_expires_at=utcnow() - timedelta(minutes=1))
    old = completed_order(db, buyer, product_id=product)
    with db() as uow:
        uow.session.execute(
            text("UPDATE orders SET completed_at = now() - interval '31 days' WHERE id = :i"), {"i": old.order_id}
        )
        uow.commit()
    # When each is downloaded, Then 403 access_expired, and nothing is counted
    for order in (ended, old):
        answer = _download(order.order_id, order.item_ids[0], buyer)
        assert answer.status == 403 and answer.error_code == "access_expired", answer.json
        assert _count(db, order.item_ids[0]) == 0


def test_a_refunded_item_is_refused(db: Db) -> None:
    # Given an item whose access was revoked by a refund
    buyer = new_user(db)
    order = completed_order(db, buyer, product_id=download_product(db))
    with db() as uow:
        uow.session.execute(
            text("UPDATE order_items SET access_revoked_at = now() WHERE id = :i"), {"i": order.item_ids[0]}
        )
        uow.commit()
    # When it is downloaded, Then 403 refunded, not counted
    answer = _download(order.order_id, order.item_ids[0], buyer)
    assert answer.status == 403 and answer.error_code == "refunded"
    assert _count(db, order.item_ids[0]) == 0


def test_another_users_order_a_wrong_item_and_non_downloads_are_refused(db: Db) -> None:
    # Given a buyer's download order, another user, a service order and a pending order
    buyer, mallory = new_user(db), new_user(db)
    order = completed_order(db, buyer, product_id=download_product(db))
    service = completed_order(db, buyer, product_id=download_product(db, type="SERVICE"))
    pending = completed_order(db, buyer, product_id=download_product(db))
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET status = 'PENDING' WHERE id = :i"), {"i": pending.order_id})
        uow.commit()
    # When each is asked for
    stolen = _download(order.order_id, order.item_ids[0], mallory)
    mismatched = _download(service.order_id, order.item_ids[0], buyer)
    not_download = _download(service.order_id, service.item_ids[0], buyer)
    not_paid = _download(pending.order_id, pending.item_ids[0], buyer)
    # Then another user's order and an item of another order are 404; a service and a pending order are 409
    assert (stolen.status, stolen.error_code) == (404, "order_item_not_found")
    assert (mismatched.status, mismatched.error_code) == (404, "order_item_not_found")
    assert (not_download.status, not_download.json["error"]["details"]["reason"]) == (409, "not_a_download")
    assert (not_paid.status, not_paid.json["error"]["details"]["reason"]) == (409, "order_not_completed")
    assert _count(db, order.item_ids[0]) == 0


def test_concurrent_downloads_at_the_limit_never_pass_it(db: Db) -> None:
    # Given an item with 3 downloads allowed, and 8 downloads starting at the same moment
    buyer = new_user(db)
    order = completed_order(db, buyer, product_id=download_product(db, download_limit=3))
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    outcomes: list[object] = []

    def fetch() -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.append(downloads.download(UnitOfWork(), get_storage(), buyer, order.order_id, order.item_ids[0]))
        except TollgateError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then exactly 3 pass, the others are refused at the limit, and the count is 3
    passed = [o for o in outcomes if isinstance(o, downloads.DownloadLink)]
    refused = [o for o in outcomes if isinstance(o, DownloadLimitReached)]
    assert len(passed) == 3 and len(refused) == 5, outcomes
    assert sorted(link.downloads_left or 0 for link in passed) == [0, 1, 2]
    assert _count(db, order.item_ids[0]) == 3
