"""Attacks on the stored GDPR export and on the suppression-removal routes, through the local gateway and the real
authorizer: the presigned export URL bent to other keys (traversal, users' files, another user's export, a later
expiry, another content type), staff and keys that must not export or lift a suppression, addresses written
another way, crafted cursors, and an erasure while an export is stored or being stored."""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import func, select, text

from tests.files_support import Db, FileEnv, files_env, gateway_request, new_user, start, upload_through_gateway
from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer
from tests.support import ApiResponse, api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import UserErased
from tollgate.mail.service import suppression_key
from tollgate.models import User
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import EmailSuppression
from tollgate.services import gdpr
from tollgate.services.authz import Actor
from tollgate.storage import get_storage
from tollgate.storage.local import LocalStorage

__all__ = ["auth_env", "files_env"]  # the fixtures, used by name
FILES = "/_local/files/"
SUPPRESSIONS = "/admin/email-suppressions"
TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


# --- helpers --------------------------------------------------------------------------------------------------
def _staff(db: Db, role: str) -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
        return user


def _customer(db: Db, rows: int = 40) -> uuid.UUID:
    """A customer with some mail rows (enough to pass a bound of one byte)."""
    with db() as uow:
        user = make_user(uow.session, name="Export Person")
        uow.session.add_all(
            EmailLog(user_id=user.id, recipient=user.email, type="receipt", subject=f"Receipt #{i}",
                     status="delivered", provider="local", message_id=f"local-{uuid.uuid4()}")
            for i in range(rows)
        )  # fmt: skip
        uow.commit()
        return user.id


def _signed_in_admin(db: Db, auth_env: AuthEnv) -> tuple[uuid.UUID, dict[str, str]]:
    """An admin who signed in with a password: their id and their session's headers."""
    email = auth_env.register_verified()
    with db() as uow:
        admin = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        admin.role = "ADMIN"
        uow.commit()
        admin_id = admin.id
    return admin_id, bearer(auth_env.login(email)["access_token"])


def _stored_export(customer: uuid.UUID, admin: User) -> dict[str, Any]:
    response = api_call("POST", f"/admin/users/{customer}/export", as_user=admin)
    assert response.status == 200 and "download_url" in response.json, response.json
    link: dict[str, Any] = response.json
    return link


def _key_and_query(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return parts.path.removeprefix(FILES), {k: v[0] for k, v in parse_qs(parts.query).items()}


def _get(key: str, query: dict[str, str]) -> ApiResponse:
    return gateway_request("GET", f"{FILES}{key}?{urlencode(query)}")


def _export_keys(folder: Path, user_id: uuid.UUID) -> list[str]:
    found = folder / "exports" / str(user_id)
    return sorted(p.name for p in found.iterdir() if not p.name.endswith(".meta.json")) if found.is_dir() else []


def _export_audits(db: Db, user_id: uuid.UUID) -> list[dict[str, Any]]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT details FROM audit_logs WHERE action = 'user.export' AND target_id = :t"),
                {"t": str(user_id)},
            ).scalars()
        )


def _suppress(db: Db, *emails: str) -> None:
    with db() as uow:
        for email in emails:
            uow.session.add(EmailSuppression(email=email, reason="complaint", created_at=utcnow()))
        uow.commit()


def _suppressed(db: Db) -> set[str]:
    with db() as uow:
        return set(uow.session.execute(select(EmailSuppression.email)).scalars())


def _removal_targets(db: Db) -> list[str | None]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT target_id FROM audit_logs WHERE action = 'email_suppression.remove' ORDER BY created_at")
            ).scalars()
        )


def _delete(path_email: str, headers: dict[str, str]) -> ApiResponse:
    """DELETE through the gateway and the authorizer, the address written into the path exactly as given."""
    return api_call("DELETE", f"{SUPPRESSIONS}/{path_email}", headers=headers, through_authorizer=True)


# --- who may export -------------------------------------------------------------------------------------------
def test_support_a_user_and_an_admin_key_cannot_export_only_an_admin_in_person(
    db: Db, files_env: FileEnv, auth_env: AuthEnv
) -> None:
    # Given a customer, a support agent, the customer themself, and an admin with a session and an admin-scoped key
    customer = _customer(db)
    support = _staff(db, "SUPPORT")
    admin_id, session = _signed_in_admin(db, auth_env)
    key = {"x-api-key": api_key_for(admin_id, scopes=("admin",))}
    path = f"/admin/users/{customer}/export"
    # When support, the customer (their own id) and the admin's key ask for the export
    answers = [
        api_call("POST", path, as_user=support, role="SUPPORT"),
        api_call("POST", path, as_user=customer, role="USER"),
        api_call("POST", path, headers=key, through_authorizer=True),
    ]
    # Then each is refused, and nothing is exported or stored
    assert [a.status for a in answers] == [403, 403, 403]
    assert _export_audits(db, customer) == [] and not (files_env.folder / "exports").exists()
    # And with a lowered bound the admin's session gets a stored export (the route works for the one it is for)
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    allowed = api_call("POST", path, headers=session, through_authorizer=True)
    assert allowed.status == 200 and "download_url" in allowed.json


def test_an_admin_suspended_meanwhile_cannot_export_or_lift_on_a_stale_verdict(db: Db, files_env: FileEnv) -> None:
    # Given an admin suspended by another admin, still carrying an ADMIN verdict (a warm authorizer cache)
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    stale, other = _staff(db, "ADMIN"), _staff(db, "ADMIN")
    customer = _customer(db)
    _suppress(db, "suspended-case@example.com")
    assert api_call("PATCH", f"/admin/users/{stale.id}", body={"status": "SUSPENDED"}, as_user=other).status == 200
    # When they export a large export, or lift a suppression
    export = api_call("POST", f"/admin/users/{customer}/export", as_user=stale, role="ADMIN")
    lift = api_call("DELETE", f"{SUPPRESSIONS}/suspended-case@example.com", as_user=stale, role="ADMIN")
    # Then the database decides: both refused, nothing stored, the address still suppressed
    assert (export.status, lift.status) == (403, 403)
    assert _export_keys(files_env.folder, customer) == [] and "suspended-case@example.com" in _suppressed(db)


# --- the stored export's URL ----------------------------------------------------------------------------------
def test_the_export_url_cannot_be_bent_to_users_files_another_key_a_later_expiry_or_another_type(
    db: Db, files_env: FileEnv
) -> None:
    # Given a customer's stored export, and a file of the customer's own with its signed download URL
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    admin = _staff(db, "ADMIN")
    customer = new_user(db)
    upload = start(customer, size=4).json
    assert upload_through_gateway(upload["upload"], b"mine").status == 204
    done = api_call("POST", f"/files/{upload['file_id']}/complete", as_user=customer)
    assert done.status == 200, done.json
    file_url = api_call("GET", f"/files/{upload['file_id']}", as_user=customer).json["download_url"]
    file_key, file_query = _key_and_query(file_url)
    link = _stored_export(customer, admin)
    export_key, export_query = _key_and_query(link["download_url"])
    assert export_key.startswith(f"exports/{customer}/") and file_key.startswith(f"users/{customer}/")
    # When the export URL's signature is put on the customer's file, or the file URL's on the export
    swapped = [_get(file_key, export_query), _get(export_key, file_query)]
    # And when the export key climbs to the file (plain or encoded) with the export URL's signature
    climbs = [
        gateway_request("GET", f"{FILES}exports/{customer}/../../{file_key}?{urlencode(export_query)}"),
        gateway_request("GET", f"{FILES}exports/{customer}/%2e%2e/%2e%2e/{file_key}?{urlencode(export_query)}"),
        gateway_request("GET", f"{FILES}{export_key}/../../../{file_key}?{urlencode(export_query)}"),
    ]
    # And when its expiry is pushed later, its content type made HTML, or its signature dropped
    later = _get(export_key, {**export_query, "expires": str(int(export_query["expires"]) + 86_400)})
    html = _get(export_key, {**export_query, "type": "text/html"})
    unsigned = _get(export_key, {k: v for k, v in export_query.items() if k != "signature"})
    # Then every one is refused, and nothing of the export or the file is served
    for answer in [*swapped, *climbs, later, html, unsigned]:
        assert answer.status in (400, 403), answer.status
        assert b"Export Person" not in answer.body and b"mine" not in answer.body
    # And the URLs as issued still work, each for its own object only
    assert json.loads(_get(export_key, export_query).body)["user_id"] == str(customer)
    assert _get(file_key, file_query).body == b"mine"


def test_an_expired_export_url_is_refused_through_the_gateway(db: Db, files_env: FileEnv) -> None:
    # Given a stored export, and a URL for it signed by the deployment but already past its expiry
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    customer = _customer(db)
    key, _ = _key_and_query(_stored_export(customer, _staff(db, "ADMIN"))["download_url"])
    storage = get_storage()
    assert isinstance(storage, LocalStorage)
    expired = storage.presign_get(key, expires_in=-1, filename="export.json", content_type="application/json")
    # When it is used, Then the store refuses it as S3 would
    answer = gateway_request("GET", expired)
    assert answer.status == 403 and answer.error_code == "AccessDenied"


def test_an_upload_form_cannot_be_pointed_at_an_export_key(db: Db, files_env: FileEnv) -> None:
    # Given a customer's stored export, and another user's upload form
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    customer = _customer(db)
    link = _stored_export(customer, _staff(db, "ADMIN"))
    export_key, export_query = _key_and_query(link["download_url"])
    attacker = new_user(db)
    form = start(attacker, size=2).json["upload"]
    # When the attacker posts their form with the export's key in place of theirs
    forged = upload_through_gateway({**form, "fields": {**form["fields"], "key": export_key}}, b"{}")
    # Then the policy refuses it, and the export is what was stored
    assert forged.status == 403
    assert json.loads(_get(export_key, export_query).body)["user_id"] == str(customer)


# --- erase while exports are stored ---------------------------------------------------------------------------
def test_an_erase_removes_the_persons_stored_exports_and_no_one_elses(db: Db, files_env: FileEnv) -> None:
    # Given two stored exports of a customer (one whose audit row was never written: a stray object), and one of
    # another customer
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    admin = _staff(db, "ADMIN")
    customer, other = _customer(db), _customer(db)
    first = _stored_export(customer, admin)
    _stored_export(customer, admin)
    get_storage().put(f"exports/{customer}/{uuid.uuid4()}.json", b"{}", content_type="application/json")
    kept = _stored_export(other, admin)
    assert len(_export_keys(files_env.folder, customer)) == 3
    # When an admin erases the customer
    erased = api_call("POST", f"/admin/users/{customer}/erase", as_user=admin)
    # Then every export of theirs is gone, and their still-valid URL finds nothing
    assert erased.status == 200, erased.json
    assert erased.json["exports_removed"] == 3 and _export_keys(files_env.folder, customer) == []
    gone = gateway_request("GET", first["download_url"])
    assert gone.status == 404 and gone.error_code == "NoSuchKey"
    # And the other customer's export stays and downloads
    assert json.loads(gateway_request("GET", kept["download_url"]).body)["user_id"] == str(other)
    # And a repeat erase finds nothing more to remove
    again = api_call("POST", f"/admin/users/{customer}/erase", as_user=admin)
    assert again.status == 200 and again.json["already_erased"] is True and again.json["exports_removed"] == 0


class _EraseDuringPut(LocalStorage):
    """The store, with an erasure committing the moment an export's object is stored (before its audit)."""

    def __init__(self, base: LocalStorage, eraser: Actor) -> None:
        super().__init__(base.root, base.base_url)
        self.eraser = eraser

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        super().put(key, data, content_type=content_type)
        user_id = uuid.UUID(key.split("/")[1])
        done = gdpr.erase_user(UnitOfWork(), get_storage(), self.eraser, user_id)
        assert done.already_erased is False


def test_an_erase_overtaking_a_stored_export_leaves_no_copy_and_no_link(db: Db, files_env: FileEnv) -> None:
    # Given a large export under way, and another admin erasing the customer between its store and its audit
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    exporter, eraser = _staff(db, "ADMIN"), _staff(db, "ADMIN")
    customer = _customer(db)
    base = get_storage()
    assert isinstance(base, LocalStorage)
    racing = _EraseDuringPut(base, Actor.user(eraser.id, "ADMIN"))
    # When the export finishes
    with pytest.raises(UserErased):
        gdpr.export_user(UnitOfWork(), racing, Actor.user(exporter.id, "ADMIN"), customer)
    # Then no copy of the erased person's data is left, no link was given and no export is recorded
    assert _export_keys(files_env.folder, customer) == [] and _export_audits(db, customer) == []
    # And an export of the erased account (what is left: the accounting) is still possible, and stays until erased
    link = _stored_export(customer, exporter)
    assert json.loads(gateway_request("GET", link["download_url"]).body)["profile"]["status"] == "DELETED"


def _export_racing_erase(db: Db) -> tuple[uuid.UUID, list[str]]:
    """A customer that one admin exports (large) while another erases them, at the same moment; what each got."""
    exporter, eraser = _staff(db, "ADMIN"), _staff(db, "ADMIN")
    customer = _customer(db)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def export() -> None:
        barrier.wait()
        try:
            gdpr.export_user(UnitOfWork(), get_storage(), Actor.user(exporter.id, "ADMIN"), customer)
            outcomes.append("exported")
        except UserErased:
            outcomes.append("overtaken")

    def erase() -> None:
        barrier.wait()
        gdpr.erase_user(UnitOfWork(), get_storage(), Actor.user(eraser.id, "ADMIN"), customer)
        outcomes.append("erased")

    threads = [threading.Thread(target=export), threading.Thread(target=erase)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return customer, outcomes


def test_an_erase_and_a_stored_export_racing_leave_no_copy_of_what_was_erased(db: Db, files_env: FileEnv) -> None:
    # Given large exports, each of a customer another admin erases at the same moment (real threads)
    files_env.set(GDPR_EXPORT_INLINE_MAX_BYTES=1)
    for _ in range(3):
        customer, outcomes = _export_racing_erase(db)
        # Then both finished, and whichever came first, an export left behind holds only the erased account
        assert "erased" in outcomes and len(outcomes) == 2, outcomes
        for name in _export_keys(files_env.folder, customer):
            document = json.loads((files_env.folder / "exports" / str(customer) / name).read_bytes())
            assert document["profile"]["status"] == "DELETED"
            assert document["profile"]["email"].endswith("@erased.invalid") and document["profile"]["name"] is None
            assert document["sections"]["email_logs"][0]["recipient"].endswith("@erased.invalid")


@pytest.fixture
def s3(files_env: FileEnv) -> Iterator[Any]:
    files_env.set(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", STORAGE_BACKEND="s3",
        STORAGE_BUCKET="tollgate-attack-exports", GDPR_EXPORT_INLINE_MAX_BYTES=1,
    )  # fmt: skip
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="tollgate-attack-exports")
        yield client
        files_env.set()


def test_on_s3_an_erase_deletes_the_exports_under_the_persons_prefix_only(db: Db, s3: Any) -> None:
    # Given stored exports of a customer and of a customer whose id shares nothing but the prefix folder
    admin = _staff(db, "ADMIN")
    customer, other = _customer(db), _customer(db)
    _stored_export(customer, admin)
    _stored_export(customer, admin)
    _stored_export(other, admin)

    def keys(user_id: uuid.UUID) -> list[str]:
        listed = s3.list_objects_v2(Bucket="tollgate-attack-exports", Prefix=f"exports/{user_id}/")
        return [o["Key"] for o in listed.get("Contents") or []]

    assert len(keys(customer)) == 2
    # When an admin erases the customer
    erased = api_call("POST", f"/admin/users/{customer}/erase", as_user=admin)
    # Then the bucket holds none of theirs, and the other customer's export stays
    assert erased.status == 200 and erased.json["exports_removed"] == 2
    assert keys(customer) == [] and len(keys(other)) == 1


def test_the_admin_function_may_delete_only_under_users_and_exports() -> None:
    # Given the AdminFunction's block of the template
    block = TEMPLATE.read_text().split(">>> admin functions", 1)[1].split("<<< admin functions", 1)[0]
    statements = re.findall(r"- Effect: Allow\n\s+Action: (.+)\n\s+Resource: (.+)", block)
    # Then every statement that deletes or writes objects names a prefix, never the whole bucket
    writes = [(a, r) for a, r in statements if "DeleteObject" in a or "PutObject" in a]
    assert sorted(r.strip() for _, r in writes) == [
        "!Sub ${FilesBucket.Arn}/exports/*",
        "!Sub ${FilesBucket.Arn}/users/*",
    ]
    assert all("*" not in a.replace("Object", "") for a, _ in statements)  # no s3:* or wildcard actions


# --- lifting a suppression: addresses written another way -----------------------------------------------------
def test_a_suppression_is_lifted_only_for_its_own_address_however_the_path_is_written(
    db: Db, auth_env: AuthEnv
) -> None:
    # Given a suppressed address, its plus-addressed neighbour suppressed too, and an admin
    tag = uuid.uuid4().hex[:8]
    kate, plus = f"kate{tag}@example.com", f"kate{tag}+news@example.com"
    _suppress(db, kate, plus)
    _, session = _signed_in_admin(db, auth_env)
    # When the admin names addresses that only look like Kate's (another plus tag, a Cyrillic a, a full-width k,
    # an encoded slash, a NUL, an address past the column; a trailing dot is Kate's own: test_suppression_addresses)
    near = [
        f"kate{tag}+other@example.com", f"k\u0430te{tag}@example.com",
        f"\uff4bate{tag}@example.com", f"kate{tag}%2F..%2F@example.com", f"kate{tag}%00@example.com",
        "k" * 400 + "@example.com",
    ]  # fmt: skip
    answers = {address: _delete(quote(address, safe="@+%"), session) for address in near}
    # Then none lifts anything: 404 for an address not on the list, 400 for a NUL, 422 for one past the column,
    # 404 from the gateway for a path an encoded slash splits
    for address, answer in answers.items():
        assert answer.status in (400, 404, 422), (address, answer.status, answer.body[:200])
    assert _suppressed(db) >= {kate, plus} and _removal_targets(db) == []
    # When the plus-addressed one is named with `+` written plainly, Then it alone goes (`+` is no space in a path)
    assert _delete(plus, session).status == 204
    assert kate in _suppressed(db) and plus not in _suppressed(db)
    # When Kate's is named percent-encoded, in capitals and padded with spaces, as a browser's fetch would send it
    lifted = _delete(quote(f" KATE{tag.upper()}@EXAMPLE.COM ", safe=""), session)
    # Then the gateway decodes it as API Gateway does, and the suppression the mail service consults goes
    assert lifted.status == 204, lifted.body
    assert kate not in _suppressed(db) and _removal_targets(db) == [plus, kate]


def test_an_address_the_mail_service_takes_for_a_suppressed_one_lifts_that_one_and_the_audit_says_which(
    db: Db, auth_env: AuthEnv
) -> None:
    # Given a suppressed address, and the look-alike written with the Kelvin sign suppressed too (lower() makes the
    # sign a `k`, but the mail service keys it apart: `suppression_key` folds a letter only into its own lower case)
    tag = uuid.uuid4().hex[:8]
    kate = f"kate{tag}@example.com"
    kelvin = f"\u212aate{tag}@example.com"
    assert kelvin.strip().lower() == kate and suppression_key(kelvin) == kelvin
    _suppress(db, kate, kelvin)
    _, session = _signed_in_admin(db, auth_env)
    # When the admin lifts the look-alike, written in capitals
    answer = _delete(quote(f"\u212aATE{tag}@EXAMPLE.com", safe="@"), session)
    # Then the one row the mail service consults for it goes, the plain address stays, and the audit says which
    assert answer.status == 204
    assert kelvin not in _suppressed(db) and kate in _suppressed(db) and _removal_targets(db) == [kelvin]


def test_listing_refuses_a_nul_and_an_overlong_address_and_reads_encoded_ones(db: Db, auth_env: AuthEnv) -> None:
    # Given a suppressed plus-address, and an admin
    tag = uuid.uuid4().hex[:8]
    plus = f"ann{tag}+x@example.com"
    _suppress(db, plus)
    _, session = _signed_in_admin(db, auth_env)

    def listing(query: str) -> ApiResponse:
        return api_call("GET", SUPPRESSIONS, query=query, headers=session, through_authorizer=True)

    # When the filter carries a NUL or 321 characters, Then it is refused, never a server error
    assert listing("email=a%00b@example.com").status in (400, 422)
    assert listing("email=" + "a" * 321).status == 422
    # When the plus is sent encoded, Then it finds the address; sent plainly it is a space in a query, so it does not
    assert [i["email"] for i in listing(f"email={quote(plus, safe='@')}").json["items"]] == [plus]
    assert listing(f"email={plus}").json["items"] == []


# --- crafted cursors ------------------------------------------------------------------------------------------
def test_the_suppression_list_takes_only_its_own_cursors(db: Db, auth_env: AuthEnv) -> None:
    # Given suppressed addresses, other users (so the user list pages too), and an admin
    tag = uuid.uuid4().hex[:8]
    _suppress(db, *(f"{c}-{tag}@example.com" for c in "abc"))
    for _ in range(2):
        _staff(db, "USER")
    _, session = _signed_in_admin(db, auth_env)

    def get(path: str, query: str) -> ApiResponse:
        return api_call("GET", path, query=query, headers=session, through_authorizer=True)

    own = get(SUPPRESSIONS, "limit=1").json["next_cursor"]
    users_cursor = get("/admin/users", "limit=1").json["next_cursor"]
    assert own and users_cursor
    payload, _, mac = own.partition(".")
    forged_payload = base64.urlsafe_b64encode(json.dumps({"k": "s", "v": ["a"]}).encode()).decode().rstrip("=")
    # When the list is given another list's cursor, its own payload with a new value, a MAC with its first
    # character changed (the last only carries two bits: some changes decode alike), one too long, or one with
    # characters no cursor has
    crafted = [users_cursor, f"{forged_payload}.{mac}", f"{payload}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}",
               own + "A" * 600, quote(own + "\u00e9")]  # fmt: skip
    # Then each is refused as not this list's, before any row is read
    for cursor in crafted:
        answer = get(SUPPRESSIONS, f"cursor={cursor}")
        assert answer.status == 400 and answer.error_code == "invalid_cursor", (cursor[:40], answer.status)
    # And its own cursor pages on, under a filter too (it positions; it never widens what the filter shows)
    assert get(SUPPRESSIONS, f"cursor={own}").status == 200
    filtered = get(SUPPRESSIONS, f"cursor={own}&email=a-{tag}@example.com").json["items"]
    assert all(item["email"] == f"a-{tag}@example.com" for item in filtered)
