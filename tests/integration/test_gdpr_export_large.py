"""A GDPR export too large for one Lambda response: stored under exports/ in the files store and answered with a
short-lived download URL of the very JSON the inline answer would be; audited with its form. The bound counts the
body as Lambda's response carries it (quotes and backslashes escaped again). Local backend through the gateway,
and S3 (moto): the object is encrypted, typed and named outside users' files; a failed store answers 503 and
leaves no audit row."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import text

from tests.files_support import Db, FileEnv, files_env, gateway_request
from tests.support import ApiResponse, api_call, make_user
from tollgate.db.base import utcnow
from tollgate.models import User
from tollgate.models.auth import EmailLog
from tollgate.models.support import SupportTicket
from tollgate.services.gdpr import response_bytes
from tollgate.storage import get_storage
from tollgate.storage.local import LocalStorage, UrlRefused

__all__ = ["files_env"]  # the fixture, used by name
BUCKET = "tollgate-exports-test"
MAIL_ROWS = 120


def _admin(db: Db) -> User:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        uow.session.expunge(user)
        return user


def _heavy_customer(db: Db, *, description: str = "Where is my order?") -> uuid.UUID:
    """A customer with many mail rows and a ticket (its description is the test's to choose)."""
    with db() as uow:
        user = make_user(uow.session, name="Heavy Person")
        uow.session.add_all(
            EmailLog(user_id=user.id, recipient=user.email, type="receipt", subject=f"Your receipt #{i}",
                     status="delivered", provider="local", message_id=f"local-{uuid.uuid4()}")
            for i in range(MAIL_ROWS)
        )  # fmt: skip
        uow.session.add(SupportTicket(customer_id=user.id, subject="Order", description=description))
        uow.commit()
        return user.id


def _export(user_id: uuid.UUID, admin: User) -> ApiResponse:
    return api_call("POST", f"/admin/users/{user_id}/export", as_user=admin)


def _export_audits(db: Db, user_id: uuid.UUID) -> list[dict[str, Any]]:
    with db() as uow:
        rows = uow.session.execute(
            text(
                "SELECT details FROM audit_logs WHERE action = 'user.export' AND target_id = :t ORDER BY created_at, id"
            ),
            {"t": str(user_id)},
        ).scalars()
        return list(rows)


def _without_export_audits(document: dict[str, Any]) -> dict[str, Any]:
    """The export minus its time and the audit rows of earlier exports (each export is audited, so a later one
    holds the earlier ones' rows)."""
    sections = dict(document["sections"])
    sections["audit_logs"] = [r for r in sections["audit_logs"] if r["action"] != "user.export"]
    return {**document, "generated_at": None, "sections": sections}


def test_an_export_past_the_bound_is_the_inline_json_behind_a_short_lived_url(db: Db, files_env: FileEnv) -> None:
    # Given a customer with many rows, and their export answered inline under the default bound
    customer = _heavy_customer(db)
    admin = _admin(db)
    inline = _export(customer, admin)
    assert inline.status == 200, inline.json
    assert "download_url" not in inline.json and len(inline.json["sections"]["email_logs"]) == MAIL_ROWS
    # When the bound is lowered below what that answer takes, and the admin exports again
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=response_bytes(inline.body) - 1)
    before = utcnow()
    linked = _export(customer, admin)
    # Then the answer is a link, not the body: valid 15 minutes, with the stored size
    assert linked.status == 200, linked.json
    link = linked.json
    assert set(link) == {"user_id", "generated_at", "truncated", "download_url", "expires_at", "bytes"}
    assert link["user_id"] == str(customer) and link["truncated"] == []
    expires_at = datetime.fromisoformat(link["expires_at"])
    assert before + timedelta(seconds=895) <= expires_at <= utcnow() + timedelta(seconds=900)
    assert len(linked.body) < 1000
    # And the URL downloads the full export: the very JSON the inline answer is (byte for byte in form)
    download = gateway_request("GET", link["download_url"])
    assert download.status == 200 and download.headers["content-type"] == "application/json"
    assert len(download.body) == link["bytes"]
    stored = json.loads(download.body)
    assert list(stored) == list(inline.json) == ["user_id", "generated_at", "profile", "sections", "truncated"]
    assert stored["generated_at"] == link["generated_at"]
    assert _without_export_audits(stored) == _without_export_audits(inline.json)
    assert len(stored["sections"]["email_logs"]) == MAIL_ROWS
    # (the only difference: the stored one holds the audit row of the inline export before it)
    assert [r["action"] for r in stored["sections"]["audit_logs"]] == ["user.export"]
    assert inline.json["sections"]["audit_logs"] == []
    # And the object lives outside users' files, under this user's exports
    key = urlsplit(link["download_url"]).path.removeprefix("/_local/files/")
    assert key.startswith(f"exports/{customer}/") and key.endswith(".json")
    with db() as uow:
        assert uow.session.execute(text("SELECT count(*) FROM storage_objects")).scalar_one() == 0
    # And both exports are audited, saying which form each took
    audits = _export_audits(db, customer)
    assert [(a["form"], a.get("key")) for a in audits] == [("inline", None), ("stored", key)]
    assert audits[1]["bytes"] == link["bytes"] and audits[1]["rows"]["email_logs"] == MAIL_ROWS


def test_the_link_expires_and_cannot_be_bent_to_another_key(db: Db, files_env: FileEnv) -> None:
    # Given a stored export's URL
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    customer = _heavy_customer(db)
    other = _heavy_customer(db)
    admin = _admin(db)
    link = _export(customer, admin).json
    other_link = _export(other, admin).json
    url = urlsplit(link["download_url"])
    key = url.path.removeprefix("/_local/files/")
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    storage = get_storage()
    assert isinstance(storage, LocalStorage)
    # When it is used after its expiry, Then the store refuses it
    with pytest.raises(UrlRefused) as late:
        storage.open_download(key, query, now=utcnow() + timedelta(seconds=901))
    assert late.value.status == 403
    # When its signature is put on the other customer's export key, Then it is refused too
    other_key = urlsplit(other_link["download_url"]).path.removeprefix("/_local/files/")
    assert other_key != key
    bent = gateway_request("GET", f"/_local/files/{other_key}?{url.query}")
    assert bent.status == 403
    # And within its life it downloads this customer's export only
    assert json.loads(gateway_request("GET", link["download_url"]).body)["user_id"] == str(customer)


def test_the_bound_counts_the_escapes_lambda_adds_not_only_the_body(db: Db, files_env: FileEnv) -> None:
    # Given a customer whose data is full of backslashes and quotes (each takes twice as much again in the
    # response, where the body is itself a JSON string)
    customer = _heavy_customer(db, description='\\"' * 20_000)
    admin = _admin(db)
    inline = _export(customer, admin)
    assert inline.status == 200 and "sections" in inline.json
    body, carried = len(inline.body), response_bytes(inline.body)
    assert carried > body + 70_000  # 20,000 pairs: 40,000 characters, written as 80,000 and carried as 160,000
    # When the bound lies between the body's size (plus room for the audit row the next export adds) and what
    # the response would carry
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=body + 2_000)
    linked = _export(customer, admin)
    # Then the export is stored, though its body alone would have fit
    assert linked.status == 200, linked.json
    assert "download_url" in linked.json and linked.json["bytes"] < body + 2_000
    stored = json.loads(gateway_request("GET", linked.json["download_url"]).body)
    assert stored["sections"]["support_tickets"][0]["description"] == '\\"' * 20_000


def test_a_small_export_stays_inline_and_is_audited_as_such(db: Db, files_env: FileEnv) -> None:
    # Given a customer, When an admin exports their data under the default bound
    customer = _heavy_customer(db)
    response = _export(customer, _admin(db))
    # Then it is answered inline, and audited as inline with its size
    assert response.status == 200 and "profile" in response.json
    [audit] = _export_audits(db, customer)
    assert audit["form"] == "inline" and audit["bytes"] == len(response.body)
    # And nothing was stored
    assert not (files_env.folder / "exports").exists()


# --- S3 (moto) ------------------------------------------------------------------------------------------------
@pytest.fixture
def s3(files_env: FileEnv) -> Iterator[Any]:
    files_env.set(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        STORAGE_BACKEND="s3",
        STORAGE_BUCKET=BUCKET,
        GDPR_EXPORT_INLINE_MAX_BYTES=20_000,
    )
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
        files_env.set()  # the next test builds its own client


def test_on_s3_the_export_is_an_encrypted_json_object_with_an_attachment_url(db: Db, s3: Any) -> None:
    # Given a customer whose export passes the bound
    customer = _heavy_customer(db)
    admin = _admin(db)
    # When an admin exports it
    response = _export(customer, admin)
    # Then the answer links a presigned GET of the bucket's object under exports/, valid 15 minutes, as a download
    assert response.status == 200, response.json
    link = response.json
    url = urlsplit(link["download_url"])
    params = parse_qs(url.query)
    key = url.path.lstrip("/")
    assert BUCKET in url.netloc and key.startswith(f"exports/{customer}/")
    assert params["X-Amz-Expires"] == ["900"] and params["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert params["response-content-disposition"][0].startswith("attachment;")
    # And the object is the whole export, typed JSON, encrypted at rest
    stored = s3.get_object(Bucket=BUCKET, Key=key)
    data = stored["Body"].read()
    assert stored["ServerSideEncryption"] == "AES256" and stored["ContentType"] == "application/json"
    assert len(data) == link["bytes"] and response_bytes(data) > 20_000
    document = json.loads(data)
    assert document["user_id"] == str(customer) and len(document["sections"]["email_logs"]) == MAIL_ROWS
    assert [a["form"] for a in _export_audits(db, customer)] == ["stored"]


def test_a_store_that_fails_answers_503_and_audits_nothing(db: Db, s3: Any) -> None:
    # Given a bucket that is gone
    s3.delete_bucket(Bucket=BUCKET)
    customer = _heavy_customer(db)
    # When an admin exports a large export
    response = _export(customer, _admin(db))
    # Then the answer says the store is unavailable, and no export is recorded as delivered
    assert response.status == 503 and response.error_code == "storage_unavailable"
    assert _export_audits(db, customer) == []
