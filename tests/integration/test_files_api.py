"""Files through the HTTP API with the local backend: the browser flow (presigned POST to the local gateway,
completion, download), validation, quotas, soft delete and restore, IDOR."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import timedelta

from sqlalchemy import select

from tests.files_support import Db, FileEnv, files_env, gateway_request, new_user, start, upload_through_gateway
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import QuotaExceeded, RestoreWindowPassed, TollgateError
from tollgate.models.storage import StorageObject
from tollgate.services import files
from tollgate.storage import get_storage

__all__ = ["files_env"]  # the fixture, used by name


def _row(db: Db, file_id: str) -> StorageObject:
    with db() as uow:
        row = uow.session.scalars(select(StorageObject).where(StorageObject.id == uuid.UUID(file_id))).one()
        uow.session.expunge(row)
        return row


def test_the_browser_flow_uploads_completes_lists_and_downloads(db: Db, files_env: FileEnv) -> None:
    # Given a user
    user = new_user(db)
    data = b"hello, files"
    # When they start an upload
    started = start(user, name="Notes ü.txt", content_type="text/plain", size=len(data))
    # Then they get a presigned POST on the local gateway and a PENDING file
    assert started.status == 201, started.json
    answer = started.json
    assert set(answer) >= {"file_id", "upload", "expires_at"}
    assert answer["upload"]["url"] == "http://127.0.0.1:3000/_local/files/upload"
    assert answer["upload"]["fields"]["Content-Type"] == "text/plain"
    assert _row(db, answer["file_id"]).status == "PENDING"
    # When the browser posts the form to the gateway and the client completes the upload
    posted = upload_through_gateway(answer["upload"], data)
    assert posted.status == 204, posted.body
    completed = api_call("POST", f"/files/{answer['file_id']}/complete", as_user=user)
    # Then the file is READY, with the store's checksum
    assert completed.status == 200, completed.json
    assert completed.json["status"] == "READY" and completed.json["size"] == len(data)
    assert completed.json["checksum"]
    # And it is listed, and counted in the usage
    listed = api_call("GET", "/files", as_user=user).json
    assert [f["id"] for f in listed["items"]] == [answer["file_id"]] and listed["next_cursor"] is None
    usage = api_call("GET", "/files/usage", as_user=user).json
    assert usage == {"used_bytes": len(data), "quota_bytes": 1000, "files": 1, "max_file_bytes": 600, "tier": "FREE"}
    # And GET answers a short-lived download URL that serves the bytes as an attachment
    one = api_call("GET", f"/files/{answer['file_id']}", as_user=user).json
    assert one["download_url"] and one["download_expires_at"]
    downloaded = gateway_request("GET", one["download_url"])
    assert downloaded.status == 200 and downloaded.body == data
    assert downloaded.headers["content-type"] == "text/plain"
    assert "Notes" in downloaded.headers["content-disposition"]


def test_content_types_outside_the_allow_list_and_oversized_files_are_refused(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    # When a type outside the allow-list is declared
    refused = start(user, name="run.exe", content_type="application/x-msdownload")
    # Then 415 content_type_not_allowed, and nothing is stored
    assert refused.status == 415 and refused.error_code == "content_type_not_allowed"
    # When a file over the tier's largest is declared
    large = start(user, size=601)
    # Then 413 file_too_large with the limit
    assert large.status == 413 and large.error_code == "file_too_large"
    assert large.json["error"]["details"]["max_bytes"] == 600
    # And a size that is not positive is a validation error
    assert start(user, size=0).status == 422
    assert api_call("GET", "/files", as_user=user).json["items"] == []


def test_the_quota_counts_ready_and_pending_bytes_and_answers_the_usage(db: Db, files_env: FileEnv) -> None:
    # Given 600 bytes pending and 300 ready of a 1,000-byte quota
    user = new_user(db)
    assert start(user, size=600).status == 201
    ready = start(user, size=300).json
    assert upload_through_gateway(ready["upload"], b"x" * 300).status == 204
    assert api_call("POST", f"/files/{ready['file_id']}/complete", as_user=user).status == 200
    # When 101 more bytes are asked for
    over = start(user, size=101)
    # Then 413 quota_exceeded with the usage in the body
    assert over.status == 413 and over.error_code == "quota_exceeded"
    assert over.json["error"]["details"] == {"used": 900, "quota": 1000, "requested": 101, "tier": "FREE"}
    # And exactly what fits is still admitted
    assert start(user, size=100).status == 201


def test_an_upload_past_its_completion_window_stops_counting_and_cannot_complete(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    long_ago = utcnow() - timedelta(minutes=61)
    # Given an upload started more than FILE_UPLOAD_COMPLETE_MINUTES ago (60) and never completed
    stale = files.start_upload(
        UnitOfWork(), get_storage(), user, name="a.txt", content_type="text/plain", size=600, now=long_ago
    )
    # Then it no longer counts against the quota, and completing it is refused with upload_expired
    assert api_call("GET", "/files/usage", as_user=user).json["used_bytes"] == 0
    late = api_call("POST", f"/files/{stale.file.id}/complete", as_user=user)
    assert late.status == 409 and late.error_code == "upload_expired"


def test_two_uploads_that_together_pass_the_quota_race_and_exactly_one_is_refused(db: Db, files_env: FileEnv) -> None:
    # Given a 1,000-byte quota and two uploads of 600 bytes started at the same moment, many times over
    for _ in range(5):
        user = new_user(db)
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def upload(user_id: uuid.UUID = user, gate: threading.Barrier = barrier, out: list[object] = outcomes) -> None:
            gate.wait(timeout=30)
            try:
                out.append(
                    files.start_upload(
                        UnitOfWork(), get_storage(), user_id, name="a.txt", content_type="text/plain", size=600
                    )
                )
            except TollgateError as exc:
                out.append(exc)

        threads = [threading.Thread(target=upload) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        # Then exactly one is admitted and one refused, and the stored bytes stay within the quota
        refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
        assert len(outcomes) == 2 and len(refused) == 1, outcomes
        assert refused[0].details["used"] == 600
        assert files.usage(UnitOfWork(), user).used_bytes == 600


def test_soft_delete_hides_the_file_frees_its_bytes_and_restore_brings_it_back(db: Db, files_env: FileEnv) -> None:
    # Given a READY file
    user = new_user(db)
    upload = start(user, size=4).json
    assert upload_through_gateway(upload["upload"], b"data").status == 204
    assert api_call("POST", f"/files/{upload['file_id']}/complete", as_user=user).status == 200
    # When it is deleted (twice: the second changes nothing)
    assert api_call("DELETE", f"/files/{upload['file_id']}", as_user=user).status == 204
    assert api_call("DELETE", f"/files/{upload['file_id']}", as_user=user).status == 204
    # Then it leaves the list and the usage, shows with include_deleted, and has no download URL
    assert api_call("GET", "/files", as_user=user).json["items"] == []
    assert api_call("GET", "/files/usage", as_user=user).json["used_bytes"] == 0
    shown = api_call("GET", "/files", query="include_deleted=true", as_user=user).json["items"]
    assert [(f["id"], f["status"]) for f in shown] == [(upload["file_id"], "DELETED")]
    assert shown[0]["restorable_until"]
    one = api_call("GET", f"/files/{upload['file_id']}", as_user=user).json
    assert one["status"] == "DELETED" and one["download_url"] is None
    # When it is restored
    restored = api_call("POST", f"/files/{upload['file_id']}/restore", as_user=user)
    # Then it is READY again and counts again
    assert restored.status == 200 and restored.json["status"] == "READY"
    assert restored.json["deleted_at"] is None
    assert api_call("GET", "/files/usage", as_user=user).json["used_bytes"] == 4


def test_restore_is_refused_past_the_window_and_when_the_quota_is_full(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    first = files.start_upload(UnitOfWork(), get_storage(), user, name="a.txt", content_type="text/plain", size=500)
    files.delete_file(UnitOfWork(), user, first.file.id)
    # Given the quota filled while the file was deleted
    files.start_upload(UnitOfWork(), get_storage(), user, name="b.txt", content_type="text/plain", size=600)
    # Then restoring it would pass the quota: 413, and it stays deleted
    full = api_call("POST", f"/files/{first.file.id}/restore", as_user=user)
    assert full.status == 413 and full.error_code == "quota_exceeded"
    assert _row(db, str(first.file.id)).status == "DELETED"
    # And past FILE_RESTORE_DAYS (30) it is refused whatever the quota
    later = utcnow() + timedelta(days=31)
    try:
        files.restore_file(UnitOfWork(), user, first.file.id, now=later)
    except RestoreWindowPassed as exc:
        assert exc.code == "restore_window_passed"
    else:
        raise AssertionError("a restore past the window was accepted")


def test_another_users_file_answers_404_on_every_route(db: Db, files_env: FileEnv) -> None:
    # Given Alice's file
    alice, mallory = new_user(db), new_user(db)
    upload = start(alice, size=4).json
    assert upload_through_gateway(upload["upload"], b"data").status == 204
    file_id = upload["file_id"]
    # When Mallory names its id on each route
    answers = [
        api_call("POST", f"/files/{file_id}/complete", as_user=mallory),
        api_call("GET", f"/files/{file_id}", as_user=mallory),
        api_call("DELETE", f"/files/{file_id}", as_user=mallory),
        api_call("POST", f"/files/{file_id}/restore", as_user=mallory),
    ]
    # Then each answers 404 file_not_found, as for an id that does not exist
    assert [(a.status, a.error_code) for a in answers] == [(404, "file_not_found")] * 4
    missing = api_call("GET", f"/files/{uuid.uuid4()}", as_user=mallory)
    assert (missing.status, missing.error_code) == (404, "file_not_found")
    # And her list does not show it, while Alice's file is untouched
    assert api_call("GET", "/files", query="include_deleted=true", as_user=mallory).json["items"] == []
    assert _row(db, file_id).status == "PENDING"


def test_the_list_pages_with_cursors_and_filters_by_content_type(db: Db, files_env: FileEnv) -> None:
    user = new_user(db, tier="PRO")
    made = [
        start(user, name=f"f{i}", content_type=ct, size=10).json["file_id"]
        for i, ct in enumerate(["image/png", "text/plain", "image/jpeg", "application/pdf", "image/png"])
    ]
    # When the list is read two at a time
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api_call("GET", "/files", query=query, as_user=user).json
        seen += [f["id"] for f in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Then every file comes once, newest first
    assert seen == list(reversed(made))
    # And filters take an exact type or a family
    exact = api_call("GET", "/files", query="content_type=image/png", as_user=user).json["items"]
    family = api_call("GET", "/files", query="content_type=image/*", as_user=user).json["items"]
    assert {f["id"] for f in exact} == {made[0], made[4]}
    assert {f["id"] for f in family} == {made[0], made[2], made[4]}
    # And a cursor the server did not issue is refused
    assert api_call("GET", "/files", query="cursor=forged", as_user=user).error_code == "invalid_cursor"


def test_the_presigned_post_pins_key_type_and_exact_size(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    upload = start(user, content_type="image/png", size=42).json
    policy = json.loads(base64.b64decode(upload["upload"]["fields"]["policy"]))
    key = upload["upload"]["fields"]["key"]
    # Then the policy names this user's key, the declared type and exactly the declared size
    assert key == f"users/{user}/{upload['file_id']}"
    assert {"key": key} in policy["conditions"]
    assert {"Content-Type": "image/png"} in policy["conditions"]
    assert ["content-length-range", 42, 42] in policy["conditions"]
