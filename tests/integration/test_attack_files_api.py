"""Files under attack (issue 15): names and metadata a database or a browser would trip on, content types with
case and parameters, sizes that are not sizes, completion of deleted or expired uploads, quota races with a
restore, the Retention sweep racing a completion or a restore, and what API keys and suspended users reach."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select, update

from tests.files_support import Db, FileEnv, files_env, new_user, start, upload_through_gateway
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import QuotaExceeded, TollgateError
from tollgate.jobs import run_job
from tollgate.jobs.retention import Retention
from tollgate.models import User
from tollgate.models.storage import StorageObject
from tollgate.services import files
from tollgate.storage import ObjectInfo, PresignedPost, Storage, get_storage

__all__ = ["auth_env", "files_env"]  # the fixtures, used by name


def _row(file_id: uuid.UUID | str) -> StorageObject | None:
    with UnitOfWork() as uow:
        row = uow.session.get(StorageObject, uuid.UUID(str(file_id)))
        if row is not None:
            uow.session.expunge(row)
        return row


def _ready(user: uuid.UUID, data: bytes = b"data", content_type: str = "text/plain") -> str:
    started = start(user, content_type=content_type, size=len(data))
    assert started.status == 201, started.json
    assert upload_through_gateway(started.json["upload"], data).status == 204
    done = api_call("POST", f"/files/{started.json['file_id']}/complete", as_user=user)
    assert done.status == 200, done.json
    return str(started.json["file_id"])


# --- names, metadata, types, sizes -------------------------------------------------------------------------------
def test_names_with_nul_controls_or_bidi_overrides_are_refused_and_never_reach_the_key(
    db: Db, files_env: FileEnv
) -> None:
    user = new_user(db)
    # When names carrying a NUL, a control character or a right-to-left override (the "gpj.exe" trick) are sent
    answers = [start(user, name=name).status for name in ("a\x00b.txt", "a\x07b.txt", "invoice\u202egpj.exe")]
    # Then each is refused as invalid input (never a 500 from the database), and nothing is stored
    assert answers[0] in (400, 422) and answers[1:] == [422, 422], answers
    assert api_call("GET", "/files", query="include_deleted=true", as_user=user).json["items"] == []


def test_traversal_and_unicode_names_are_kept_as_names_only(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    for name in ("../../etc/passwd", "..\\..\\boot.ini", "\uff46\uff55\uff4c\uff4c\uff0f\uff57.txt", "ü" * 255):
        # When an upload names a path, full-width slashes or 255 two-byte characters
        answer = start(user, name=name)
        assert answer.status == 201, answer.json
        fields = answer.json["upload"]["fields"]
        # Then the key is the user's and the file's ids only, and the pathname is plain ASCII without a separator
        assert fields["key"] == f"users/{user}/{answer.json['file_id']}"
        row = _row(answer.json["file_id"])
        assert row is not None and row.original_name == name
        assert "/" not in row.pathname and "\\" not in row.pathname and ".." not in row.pathname
        assert row.pathname.isascii()
    # And a name past 255 characters is refused
    assert start(user, name="a" * 256).status == 422


def test_metadata_that_postgres_or_the_quota_would_choke_on_is_refused(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)

    def with_metadata(metadata: object) -> int:
        body = {"name": "a.txt", "content_type": "text/plain", "size": 4, "metadata": metadata}
        return api_call("POST", "/files", body=body, as_user=user).status

    # When metadata carries a NUL (jsonb refuses it) or is far larger than S3's 2 KB of user metadata
    nul = with_metadata({"note": "a\u0000b"})
    nul_key = with_metadata({"a\u0000": "b"})
    huge = with_metadata({"blob": "x" * 100_000})
    # Then each is invalid input, not a 500, and small plain metadata is kept
    assert nul in (400, 422) and nul_key in (400, 422) and huge == 422, (nul, nul_key, huge)
    assert with_metadata({"album": "summer", "n": 3}) == 201


def test_content_types_are_checked_without_their_case_or_parameters(db: Db, files_env: FileEnv) -> None:
    user = new_user(db, tier="PRO")
    # When types off the list hide behind case, parameters or a list
    refused = [
        start(user, content_type=ct).status
        for ct in ("TEXT/HTML", "text/html; charset=utf-8", "image/png, text/html", "image/png\ttext/html", "image")
    ]
    assert refused[:3] == [415, 415, 415] and all(s in (415, 422) for s in refused[3:]), refused
    # And an allowed type arrives in capitals with a parameter and odd spacing
    answer = start(user, content_type="IMAGE/PNG ;  Charset=UTF-8")
    assert answer.status == 201, answer.json
    fields = answer.json["upload"]["fields"]
    policy = json.loads(base64.b64decode(fields["policy"]))
    # Then the type the policy pins is the one stored, in one canonical spelling
    row = _row(answer.json["file_id"])
    assert row is not None
    assert {"Content-Type": row.content_type} in policy["conditions"] and fields["Content-Type"] == row.content_type
    assert row.content_type == "image/png; charset=utf-8"
    # And the list's exact filter finds it
    found = api_call("GET", "/files", query="content_type=image/png", as_user=user).json["items"]
    assert [f["id"] for f in found] == [answer.json["file_id"]]


def test_sizes_that_are_not_positive_integers_are_refused(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    sizes: Sequence[object] = (0, -1, 1.5, "5", True, 2**70, None, "1e3")
    answers = [
        api_call("POST", "/files", body={"name": "a", "content_type": "text/plain", "size": s}, as_user=user).status
        for s in sizes
    ]
    # Then none is admitted (422, or 413 for a size past the tier's largest file)
    assert all(a in (413, 422) for a in answers), dict(zip(map(repr, sizes), answers, strict=True))
    over = start(user, size=601)  # FREE files are at most 600 bytes here
    assert (over.status, over.error_code) == (413, "file_too_large")


# --- completion ---------------------------------------------------------------------------------------------------
def test_a_deleted_upload_cannot_be_completed_and_an_expired_one_cannot_either(db: Db, files_env: FileEnv) -> None:
    user = new_user(db)
    upload = start(user, size=4).json
    assert upload_through_gateway(upload["upload"], b"data").status == 204
    # When the PENDING file is deleted and then completed
    assert api_call("DELETE", f"/files/{upload['file_id']}", as_user=user).status == 204
    late = api_call("POST", f"/files/{upload['file_id']}/complete", as_user=user)
    # Then 404, and the file stays deleted
    assert (late.status, late.error_code) == (404, "file_not_found")
    row = _row(upload["file_id"])
    assert row is not None and row.status == "DELETED"


class _Interleaved:
    """A store that runs `between` once, at the moment the service calls `method` (a race made deterministic)."""

    def __init__(self, inner: Storage, method: str, between: object) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.bucket = inner.bucket
        self.method = method
        self.between = between

    def _maybe(self, method: str) -> None:
        if method == self.method and callable(self.between):
            between, self.between = self.between, None
            between()

    def presign_post(
        self, key: str, *, content_type: str, size: int, expires_in: int, now: datetime | None = None
    ) -> PresignedPost:
        return self.inner.presign_post(key, content_type=content_type, size=size, expires_in=expires_in, now=now)

    def head(self, key: str) -> ObjectInfo | None:
        found = self.inner.head(key)
        self._maybe("head")
        return found

    def presign_get(self, key: str, *, expires_in: int, filename: str, content_type: str) -> str:
        return self.inner.presign_get(key, expires_in=expires_in, filename=filename, content_type=content_type)

    def delete(self, keys: Sequence[str]) -> None:
        self._maybe("delete")
        self.inner.delete(keys)


def _ready_rows_have_objects(storage: Storage, user: uuid.UUID) -> None:
    with UnitOfWork() as uow:
        rows = uow.session.execute(
            select(StorageObject.id, StorageObject.key).where(
                StorageObject.user_id == user, StorageObject.status == "READY"
            )
        ).all()
    for file_id, key in rows:
        assert storage.head(key) is not None, f"READY file {file_id} has no object"


def test_retention_racing_a_completion_never_leaves_a_ready_file_without_its_object(db: Db, files_env: FileEnv) -> None:
    # Given an upload whose bytes arrived, completed a second before its completion window closes
    user = new_user(db)
    storage = get_storage()
    started_at = utcnow() - timedelta(minutes=60) + timedelta(seconds=1)
    up = files.start_upload(
        UnitOfWork(), storage, user, name="a.txt", content_type="text/plain", size=4, now=started_at
    )
    fresh = storage.presign_post(up.file.key, content_type="text/plain", size=4, expires_in=600)  # bytes that came
    assert upload_through_gateway({"url": fresh.url, "fields": fresh.fields}, b"data").status == 204
    completing_at = started_at + timedelta(minutes=60) - timedelta(seconds=1)

    # When the daily Retention runs (two seconds later) while the completion waits on the store's HEAD
    def sweep() -> None:
        run_job(Retention(storage=storage), now=completing_at + timedelta(seconds=2), remaining_ms=lambda: 600_000)

    with contextlib.suppress(TollgateError):  # refusing the completion is fine; a READY row without bytes is not
        files.complete_upload(UnitOfWork(), _Interleaved(storage, "head", sweep), user, up.file.id, now=completing_at)
    # Then no READY file lacks its object
    _ready_rows_have_objects(storage, user)


def test_a_completion_landing_between_retentions_choice_and_its_deletes_keeps_its_object(
    db: Db, files_env: FileEnv
) -> None:
    # Given an upload whose bytes arrived, completed a second before its completion window closes
    user = new_user(db)
    storage = get_storage()
    started_at = utcnow() - timedelta(minutes=60) + timedelta(seconds=1)
    completing_at = started_at + timedelta(minutes=60) - timedelta(seconds=1)
    up = files.start_upload(
        UnitOfWork(), storage, user, name="b.txt", content_type="text/plain", size=4, now=started_at
    )
    fresh = storage.presign_post(up.file.key, content_type="text/plain", size=4, expires_in=600)
    assert upload_through_gateway({"url": fresh.url, "fields": fresh.fields}, b"data").status == 204

    # When Retention has chosen its rows and the completion lands before it deletes the objects
    def complete() -> None:
        with contextlib.suppress(TollgateError):
            files.complete_upload(UnitOfWork(), storage, user, up.file.id, now=completing_at)

    sweeping = Retention(storage=_Interleaved(storage, "delete", complete))
    run_job(sweeping, now=completing_at + timedelta(seconds=2), remaining_ms=lambda: 600_000)
    # Then no READY file lacks its object either
    _ready_rows_have_objects(storage, user)


def test_retention_racing_a_restore_never_leaves_a_ready_file_without_its_object(db: Db, files_env: FileEnv) -> None:
    # Given a READY file deleted almost FILE_RESTORE_DAYS (30) ago
    user = new_user(db)
    storage = get_storage()
    file_id = uuid.UUID(_ready(user))
    deleted_at = utcnow() - timedelta(days=30) + timedelta(seconds=1)
    files.delete_file(UnitOfWork(), user, file_id, now=deleted_at)
    restoring_at = deleted_at + timedelta(days=30) - timedelta(seconds=1)

    # When Retention (two seconds later) has chosen its rows and the restore lands before it deletes the objects
    def restore() -> None:
        files.restore_file(UnitOfWork(), user, file_id, now=restoring_at)

    sweeping = Retention(storage=_Interleaved(storage, "delete", restore))
    run_job(sweeping, now=restoring_at + timedelta(seconds=2), remaining_ms=lambda: 600_000)
    # Then no READY file lacks its object
    _ready_rows_have_objects(storage, user)
    # And once the window and its margin are long past, Retention removes a deleted file's object and row
    files.delete_file(UnitOfWork(), user, file_id, now=restoring_at)
    run_job(Retention(storage=storage), now=restoring_at + timedelta(days=31), remaining_ms=lambda: 600_000)
    assert _row(file_id) is None


# --- quota races ------------------------------------------------------------------------------------------------
def test_a_restore_racing_an_upload_cannot_pass_the_quota_together(db: Db, files_env: FileEnv) -> None:
    for _ in range(4):
        # Given a 1,000-byte quota, a deleted 600-byte file, and a 600-byte upload starting as it is restored
        user = new_user(db)
        started = start(user, size=600).json
        assert upload_through_gateway(started["upload"], b"x" * 600).status == 204
        assert api_call("POST", f"/files/{started['file_id']}/complete", as_user=user).status == 200
        assert api_call("DELETE", f"/files/{started['file_id']}", as_user=user).status == 204
        gate = threading.Barrier(2)
        outcomes: list[object] = []

        def restore(
            user_id: uuid.UUID = user,
            file_id: str = started["file_id"],
            gate: threading.Barrier = gate,
            outcomes: list[object] = outcomes,
        ) -> None:
            gate.wait(timeout=30)
            try:
                outcomes.append(files.restore_file(UnitOfWork(), user_id, uuid.UUID(file_id)))
            except TollgateError as exc:
                outcomes.append(exc)

        def upload(
            user_id: uuid.UUID = user, gate: threading.Barrier = gate, outcomes: list[object] = outcomes
        ) -> None:
            gate.wait(timeout=30)
            try:
                outcomes.append(
                    files.start_upload(
                        UnitOfWork(), get_storage(), user_id, name="b", content_type="text/plain", size=600
                    )
                )
            except TollgateError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=restore), threading.Thread(target=upload)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        # Then exactly one wins, and the counted bytes stay within the quota
        assert len(outcomes) == 2 and sum(isinstance(o, QuotaExceeded) for o in outcomes) == 1, outcomes
        assert files.usage(UnitOfWork(), user).used_bytes == 600


# --- who may ------------------------------------------------------------------------------------------------------
def _as(headers: dict[str, str], method: str, path: str, body: object = None) -> int:
    return api_call(method, path, headers=headers, through_authorizer=True, body=body).status


def test_api_key_scopes_split_reading_files_from_writing_them(auth_env: AuthEnv, files_env: FileEnv) -> None:
    # Given a user with a READY file, a files:read key and a files:write key
    email = auth_env.register_verified()
    session = bearer(auth_env.login(email)["access_token"])
    keys = {}
    for scope in ("files:read", "files:write"):
        made = api_call("POST", "/auth/api-keys", headers=session, through_authorizer=True,
                        body={"name": scope, "scopes": [scope]})  # fmt: skip
        assert made.status == 201, made.json
        keys[scope] = {"x-api-key": made.json["key"]}
    new = {"name": "a.txt", "content_type": "text/plain", "size": 4}
    started = api_call("POST", "/files", headers=session, through_authorizer=True, body=new)
    assert started.status == 201, started.json
    file_id = started.json["file_id"]
    reader, writer = keys["files:read"], keys["files:write"]
    # Then the reader lists, reads and sees usage, and writes nothing
    assert [
        _as(reader, "GET", "/files"),
        _as(reader, "GET", f"/files/{file_id}"),
        _as(reader, "GET", "/files/usage"),
    ] == [200] * 3
    assert [
        _as(reader, "POST", "/files", new),
        _as(reader, "POST", f"/files/{file_id}/complete"),
        _as(reader, "DELETE", f"/files/{file_id}"),
        _as(reader, "POST", f"/files/{file_id}/restore"),
    ] == [403] * 4
    # And the writer uploads and deletes, and reads nothing
    assert _as(writer, "POST", "/files", new) == 201
    assert _as(writer, "DELETE", f"/files/{file_id}") == 204
    assert [_as(writer, "GET", "/files"), _as(writer, "GET", f"/files/{file_id}")] == [403, 403]


def test_a_suspended_user_reaches_no_files_route(auth_env: AuthEnv, files_env: FileEnv) -> None:
    # Given a signed-in user with a file, who is then suspended
    email = auth_env.register_verified()
    session = bearer(auth_env.login(email)["access_token"])
    new = {"name": "a.txt", "content_type": "text/plain", "size": 4}
    file_id = api_call("POST", "/files", headers=session, through_authorizer=True, body=new).json["file_id"]
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(User.email == email).values(status="SUSPENDED"))
        uow.commit()
    auth_env.set()  # a fresh authorizer container: no cached verdict
    # When the session calls each files route, Then each is refused before any handler runs
    answers = [
        _as(session, "GET", "/files"),
        _as(session, "POST", "/files", new),
        _as(session, "GET", f"/files/{file_id}"),
        _as(session, "POST", f"/files/{file_id}/complete"),
        _as(session, "DELETE", f"/files/{file_id}"),
        _as(session, "GET", "/files/usage"),
    ]
    assert all(a in (401, 403) for a in answers), answers


def test_retention_keeps_an_uncompleted_upload_while_its_form_can_still_upload(db: Db, files_env: FileEnv) -> None:
    # Given forms valid for an hour but a completion window of one minute (both are settings)
    files_env.set(FILE_UPLOAD_EXPIRY_SECONDS=3600, FILE_UPLOAD_COMPLETE_MINUTES=1)
    user = new_user(db)
    started_at = utcnow() - timedelta(minutes=30)
    up = files.start_upload(
        UnitOfWork(), get_storage(), user, name="a.txt", content_type="text/plain", size=4, now=started_at
    )
    assert up.post.expires_at > utcnow()
    # When Retention runs while the form still works
    run_job(Retention(), now=utcnow(), remaining_ms=lambda: 600_000)
    # Then the row stays: were it gone, bytes the form still uploads would be an object no row names
    assert _row(up.file.id) is not None
    # And once the form has expired too (and the margin passed), Retention removes it
    run_job(Retention(), now=started_at + timedelta(days=1), remaining_ms=lambda: 600_000)
    assert _row(up.file.id) is None
