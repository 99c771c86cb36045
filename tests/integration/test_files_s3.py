"""Files on S3 (moto): the presigned POST's policy, completion's HEAD checks (missing, wrong size, wrong type),
the presigned GET, and Retention deleting the objects before their rows."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws

from tests.files_support import Db, FileEnv, files_env, new_user, start
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.jobs import run_job
from tollgate.jobs.retention import Retention
from tollgate.models.storage import StorageObject
from tollgate.services import files
from tollgate.storage import get_storage

__all__ = ["files_env"]  # the fixture, used by name
BUCKET = "tollgate-files-test"


@pytest.fixture
def s3(files_env: FileEnv) -> Iterator[object]:
    files_env.set(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        STORAGE_BACKEND="s3",
        STORAGE_BUCKET=BUCKET,
    )
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client
        files_env.set()  # the next test builds its own client


def _put(client, key: str, body: bytes, content_type: str) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body, ContentType=content_type)


def test_the_presigned_post_pins_bucket_key_type_exact_size_and_a_short_expiry(db: Db, s3) -> None:
    # When an upload of 1,234 PNG bytes starts
    user = new_user(db, tier="PRO")
    before = datetime.now(UTC)
    answer = start(user, name="cat.png", content_type="image/png", size=1234)
    assert answer.status == 201, answer.json
    upload = answer.json["upload"]
    fields = upload["fields"]
    policy = json.loads(base64.b64decode(fields["policy"]))
    # Then the form goes to the bucket, signed with SigV4, for this user's key
    assert BUCKET in upload["url"]
    assert fields["key"] == f"users/{user}/{answer.json['file_id']}"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and fields["x-amz-signature"]
    # And the policy pins the bucket, the key, the exact type and exactly the declared size
    conditions = policy["conditions"]
    assert {"bucket": BUCKET} in conditions
    assert {"key": fields["key"]} in conditions
    assert {"Content-Type": "image/png"} in conditions
    assert ["content-length-range", 1234, 1234] in conditions
    # And it expires in FILE_UPLOAD_EXPIRY_SECONDS (600), as the answer says
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert timedelta(seconds=590) <= expiration - before <= timedelta(seconds=610)
    assert abs(datetime.fromisoformat(answer.json["expires_at"]) - expiration) < timedelta(seconds=5)


def test_completion_heads_the_object_and_refuses_what_differs(db: Db, s3) -> None:
    user = new_user(db)
    answer = start(user, name="a.txt", content_type="text/plain", size=5).json
    key, file_id = answer["upload"]["fields"]["key"], answer["file_id"]

    def complete():
        return api_call("POST", f"/files/{file_id}/complete", as_user=user)

    # When nothing was uploaded
    missing = complete()
    # Then 409 upload_incomplete, reason missing
    assert (missing.status, missing.error_code) == (409, "upload_incomplete")
    assert missing.json["error"]["details"]["reason"] == "missing"
    # When an object of another size is there
    _put(s3, key, b"1234", "text/plain")
    assert complete().json["error"]["details"]["reason"] == "size_mismatch"
    # When the size is right but the type differs
    _put(s3, key, b"12345", "text/html")
    wrong_type = complete()
    assert wrong_type.json["error"]["details"]["reason"] == "type_mismatch"
    assert wrong_type.json["error"]["details"]["found"] == {"size": 5, "content_type": "text/html"}
    # Then the file stayed PENDING throughout
    assert api_call("GET", f"/files/{file_id}", as_user=user).json["status"] == "PENDING"
    # When the object is what was declared
    _put(s3, key, b"12345", "text/plain")
    done = complete()
    # Then it is READY, with the object's ETag; completing again answers the same file
    assert done.status == 200 and done.json["status"] == "READY"
    assert done.json["checksum"] == s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
    assert complete().json["status"] == "READY"


def test_a_ready_file_answers_a_short_lived_presigned_get(db: Db, s3) -> None:
    user = new_user(db)
    answer = start(user, name="Report 2026.pdf", content_type="application/pdf", size=3).json
    _put(s3, answer["upload"]["fields"]["key"], b"pdf", "application/pdf")
    assert api_call("POST", f"/files/{answer['file_id']}/complete", as_user=user).status == 200
    # When the file is read
    one = api_call("GET", f"/files/{answer['file_id']}", as_user=user).json
    # Then its URL is a SigV4 presigned GET of its key, valid FILE_DOWNLOAD_EXPIRY_SECONDS (300), as an attachment
    url = urlsplit(one["download_url"])
    query = parse_qs(url.query)
    assert url.path.endswith(answer["upload"]["fields"]["key"])
    assert query["X-Amz-Expires"] == ["300"] and query["X-Amz-Signature"]
    assert query["response-content-disposition"][0].startswith('attachment; filename="Report 2026.pdf"')
    assert query["response-content-type"] == ["application/pdf"]


def test_retention_deletes_the_objects_then_the_rows_of_expired_files_only(db: Db, s3) -> None:
    user = new_user(db, tier="PRO")
    storage = get_storage()
    now = utcnow()

    def made(name: str, *, started, ready: bool, deleted=None) -> files.StoredFile:
        up = files.start_upload(UnitOfWork(), storage, user, name=name, content_type="text/plain", size=2, now=started)
        _put(s3, up.file.key, b"ok", "text/plain")
        if ready:
            files.complete_upload(UnitOfWork(), storage, user, up.file.id, now=started)
        if deleted is not None:
            files.delete_file(UnitOfWork(), user, up.file.id, now=deleted)
        return up.file

    # Given a file deleted 31 days ago, one deleted yesterday, an upload abandoned two hours ago, a live upload
    # and a READY file
    old_deleted = made("old", started=now - timedelta(days=40), ready=True, deleted=now - timedelta(days=31))
    recent_deleted = made("recent", started=now - timedelta(days=2), ready=True, deleted=now - timedelta(days=1))
    abandoned = made("abandoned", started=now - timedelta(hours=2), ready=False)
    live_upload = made("live", started=now - timedelta(minutes=5), ready=False)
    ready = made("ready", started=now - timedelta(days=3), ready=True)
    # When Retention runs one row at a time (so the files sweep takes several steps)
    report = run_job(Retention(batch_size=1), now=now, remaining_ms=lambda: 600_000)
    # Then the expired ones lost object and row; the others kept both
    assert report.complete and report.stats.get("storage_objects") == 2
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert keys == {recent_deleted.key, live_upload.key, ready.key}
    with db() as uow:
        left = {row.id for row in uow.session.query(StorageObject)}
    assert left == {recent_deleted.id, live_upload.id, ready.id}
    assert old_deleted.key not in keys and abandoned.key not in keys


def test_erasing_a_user_removes_every_object_and_row(db: Db, s3) -> None:
    user, other = new_user(db), new_user(db)
    storage = get_storage()
    mine = [
        files.start_upload(UnitOfWork(), storage, user, name=f"{i}", content_type="text/plain", size=1).file
        for i in range(3)
    ]
    theirs = files.start_upload(UnitOfWork(), storage, other, name="x", content_type="text/plain", size=1).file
    for row in [*mine, theirs]:
        _put(s3, row.key, b"x", "text/plain")
    # When the user's files are erased
    assert files.erase_user_files(UnitOfWork(), storage, user, batch=2) == 3
    # Then only the other user's object and row remain
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert keys == {theirs.key}
    assert api_call("GET", "/files", as_user=user).json["items"] == []
