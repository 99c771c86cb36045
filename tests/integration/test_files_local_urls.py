"""The local backend's signed URLs, served by the local gateway: an expired or tampered upload form or download
URL answers 403 (as S3 does), a size outside the policy 400, and nothing is stored."""

from __future__ import annotations

import uuid
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

from tests.files_support import Db, FileEnv, files_env, gateway_request, new_user, start, upload_through_gateway
from tests.support import api_call
from tollgate.db.base import utcnow
from tollgate.storage import get_storage
from tollgate.storage.local import SIGNATURE_FIELD

__all__ = ["files_env"]  # the fixture, used by name


def _fresh_upload(db: Db, size: int = 4) -> tuple[uuid.UUID, dict]:
    user = new_user(db)
    answer = start(user, size=size).json
    return user, answer


def test_an_expired_upload_form_is_refused_with_403(db: Db, files_env: FileEnv) -> None:
    # Given a form whose policy expired a second ago
    post = get_storage().presign_post(
        "users/x/expired", content_type="text/plain", size=4, expires_in=60, now=utcnow() - timedelta(seconds=61)
    )
    # When the browser posts it
    answer = upload_through_gateway({"url": post.url, "fields": post.fields}, b"data")
    # Then 403, and no object exists
    assert answer.status == 403 and answer.error_code == "AccessDenied"
    assert get_storage().head("users/x/expired") is None


def test_a_tampered_upload_form_is_refused_with_403(db: Db, files_env: FileEnv) -> None:
    _, answer = _fresh_upload(db)
    fields = answer["upload"]["fields"]
    key = fields["key"]
    tampered = [
        {**fields, SIGNATURE_FIELD: "0" * 64},  # a forged signature
        {**fields, "Content-Type": "text/html"},  # a field the policy pins
        {**fields, "key": key.rsplit("/", 1)[0] + "/someone-else"},  # another key
        {**fields, "policy": fields["policy"][:-4] + "AAAA"},  # an edited policy
    ]
    # When each is posted, Then each is refused with 403 and nothing is stored
    for form in tampered:
        refused = upload_through_gateway({"url": answer["upload"]["url"], "fields": form}, b"data")
        assert refused.status == 403, (form, refused.body)
    assert get_storage().head(key) is None


def test_a_size_outside_the_policy_is_refused_and_the_file_stays_pending(db: Db, files_env: FileEnv) -> None:
    user, answer = _fresh_upload(db, size=4)
    # When fewer or more bytes than declared are posted
    small = upload_through_gateway(answer["upload"], b"abc")
    large = upload_through_gateway(answer["upload"], b"abcde")
    # Then S3's answers: 400 EntityTooSmall / EntityTooLarge
    assert (small.status, small.error_code) == (400, "EntityTooSmall")
    assert (large.status, large.error_code) == (400, "EntityTooLarge")
    # And completion finds no object: 409 upload_incomplete, the file stays PENDING
    completed = api_call("POST", f"/files/{answer['file_id']}/complete", as_user=user)
    assert completed.status == 409 and completed.error_code == "upload_incomplete"
    assert completed.json["error"]["details"]["reason"] == "missing"
    assert api_call("GET", f"/files/{answer['file_id']}", as_user=user).json["status"] == "PENDING"


def test_a_download_url_that_expired_or_was_tampered_with_is_refused_with_403(db: Db, files_env: FileEnv) -> None:
    # Given a READY file and its download URL
    user, answer = _fresh_upload(db)
    assert upload_through_gateway(answer["upload"], b"data").status == 204
    assert api_call("POST", f"/files/{answer['file_id']}/complete", as_user=user).status == 200
    url = api_call("GET", f"/files/{answer['file_id']}", as_user=user).json["download_url"]
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    assert gateway_request("GET", url).status == 200

    def variant(path: str = parts.path, **changes: str) -> str:
        return f"{parts.scheme}://{parts.netloc}{path}?{urlencode({**query, **changes})}"

    # When its expiry is moved, its name or type changed, its signature forged, or another key named
    attempts = [
        variant(expires=str(int(query["expires"]) + 3600)),
        variant(name="other.html"),
        variant(type="text/html"),
        variant(signature="f" * 64),
        variant(path=parts.path.rsplit("/", 1)[0] + "/other"),
    ]
    # Then each is refused with 403
    assert [gateway_request("GET", attempt).status for attempt in attempts] == [403] * len(attempts)
    # And a URL signed with an expiry already past is refused with 403 too
    store = get_storage()
    expired = store.presign_get(
        answer["upload"]["fields"]["key"], expires_in=-1, filename="notes.txt", content_type="text/plain"
    )
    refused = gateway_request("GET", expired)
    assert refused.status == 403 and refused.error_code == "AccessDenied"


def test_a_key_that_would_leave_the_folder_is_never_served(db: Db, files_env: FileEnv) -> None:
    # When a download path climbs out of the files folder
    answer = gateway_request("GET", "http://127.0.0.1:3000/_local/files/../../etc/passwd?expires=9999999999")
    # Then nothing is served
    assert answer.status in {400, 403}
