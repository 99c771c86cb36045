"""Signed URLs under attack (issue 15): a local download URL moved to another user's key or called with another
method, a form pointed at another user's object, encoded traversal, URLs of purged files; and the S3 presigned
POST's policy, decoded, pins exactly the bucket, the key, one content type and one size, with nothing open."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import boto3
import pytest
from moto import mock_aws

from tests.files_support import Db, FileEnv, files_env, gateway_request, new_user, start, upload_through_gateway
from tests.support import api_call
from tollgate.storage import get_storage

__all__ = ["files_env"]  # the fixture, used by name
BUCKET = "tollgate-files-attack"


def _ready(user: uuid.UUID, data: bytes) -> dict[str, str]:
    started = start(user, size=len(data)).json
    assert upload_through_gateway(started["upload"], data).status == 204
    assert api_call("POST", f"/files/{started['file_id']}/complete", as_user=user).status == 200
    one = api_call("GET", f"/files/{started['file_id']}", as_user=user).json
    return {"id": started["file_id"], "key": started["upload"]["fields"]["key"], "url": one["download_url"]}


def test_a_signed_download_never_reaches_another_key_or_another_method(db: Db, files_env: FileEnv) -> None:
    # Given Alice's and Mallory's READY files, and Mallory's own download URL
    alice, mallory = new_user(db), new_user(db)
    hers = _ready(alice, b"alice's secret")
    mine = _ready(mallory, b"mallory's file")
    parts = urlsplit(mine["url"])
    base = f"{parts.scheme}://{parts.netloc}/_local/files"
    # When Mallory keeps her signature and query but names Alice's key
    moved = gateway_request("GET", f"{base}/{hers['key']}?{parts.query}")
    # Then 403, and none of Alice's bytes
    assert moved.status == 403 and b"secret" not in moved.body
    # When her URL is called with methods that would write or delete
    writes = [gateway_request(m, mine["url"], body=b"overwrite").status for m in ("PUT", "DELETE", "PATCH")]
    posted = gateway_request("POST", mine["url"], body=b"overwrite", content_type="application/octet-stream")
    # Then none is served and her object is unchanged
    assert writes == [405, 405, 405] and posted.status in (400, 405)
    assert gateway_request("GET", mine["url"]).body == b"mallory's file"


def test_a_form_for_one_key_cannot_write_another_users_object(db: Db, files_env: FileEnv) -> None:
    # Given Alice's READY file and a fresh upload form of Mallory's of the same size
    alice, mallory = new_user(db), new_user(db)
    hers = _ready(alice, b"alice!")
    form = start(mallory, size=6).json["upload"]
    # When Mallory posts her signed form with Alice's key
    refused = upload_through_gateway({"url": form["url"], "fields": {**form["fields"], "key": hers["key"]}}, b"evil!!")
    # Then 403, and Alice's object is what she uploaded
    assert refused.status == 403
    assert gateway_request("GET", hers["url"]).body == b"alice!"


def test_encoded_traversal_and_purged_files_are_never_served(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    mine = _ready(user, b"data")
    query = urlsplit(mine["url"]).query
    # When a download path climbs out of the folder in encoded forms
    for path in ("users/%2e%2e/%2e%2e/etc/passwd", "users/..%2f..%2fetc/passwd", "users//etc/passwd", "%00"):
        answer = gateway_request("GET", f"http://127.0.0.1:3000/_local/files/{path}?{query}")
        # Then nothing is served
        assert answer.status in (400, 403), (path, answer.status)
    # When the file is erased from the store, Then its still-signed URL finds nothing
    get_storage().delete([mine["key"]])
    gone = gateway_request("GET", mine["url"])
    assert gone.status == 404 and gone.error_code == "NoSuchKey"


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
        files_env.set()


def test_the_s3_policy_pins_everything_and_leaves_nothing_open(db: Db, s3: object) -> None:
    # Given an upload declared in capitals with a parameter
    user = new_user(db, tier="PRO")
    before = datetime.now(UTC)
    answer = start(user, name="a.txt", content_type="Text/Plain ; Charset=UTF-8", size=77)
    assert answer.status == 201, answer.json
    fields = answer.json["upload"]["fields"]
    policy = json.loads(base64.b64decode(fields["policy"]))
    conditions = policy["conditions"]
    # Then the policy pins the bucket, this file's key, the one canonical type and exactly 77 bytes
    assert {"bucket": BUCKET} in conditions
    assert {"key": f"users/{user}/{answer.json['file_id']}"} in conditions
    assert {"Content-Type": "text/plain; charset=utf-8"} in conditions
    assert fields["Content-Type"] == "text/plain; charset=utf-8"
    assert ["content-length-range", 77, 77] in conditions
    # And no condition is a prefix match or names any other field than the signing ones
    assert not [c for c in conditions if isinstance(c, list) and c[0] != "content-length-range"]
    names = {name for c in conditions if isinstance(c, dict) for name in c}
    assert names <= {"bucket", "key", "Content-Type", "x-amz-algorithm", "x-amz-credential", "x-amz-date",
                     "x-amz-security-token"}  # fmt: skip
    # And it expires within FILE_UPLOAD_EXPIRY_SECONDS
    expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    assert expiration - before <= timedelta(seconds=601)
