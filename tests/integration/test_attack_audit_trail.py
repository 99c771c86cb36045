# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""The audit trail attacked from outside (issue 14 review): spoofed and hostile request origins, every way a row
might be rewritten or removed (the application role, the ORM, retention, a GDPR erase), crafted filters and
cursors, secrets that must never reach a row, a demoted admin's key, and failed sign-ins spelled differently.
Through the real gateway and authorizer where a route is involved."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.conftest import TEST_DATABASE
from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer, clear_caches  # noqa: F401
from tests.support import api_call, make_user
from tollgate import request_origin
from tollgate.db import UnitOfWork
from tollgate.db.engine import pg8000_url, sqlstate
from tollgate.db.roles import ensure_app_role
from tollgate.jobs.retention import Retention
from tollgate.jobs.runner import run_job
from tollgate.models import User
from tollgate.models.credits import AuditLog
from tollgate.pagination import encode_cursor
from tollgate.services import authz
from tollgate.services.authz import Actor

Db = Callable[[], UnitOfWork]
SOURCE_IP = "203.0.113.9"  # the address tests.support.api_call sends from
APP_ROLE = "tollgate_app_audit_attack"
INSUFFICIENT_PRIVILEGE = "42501"


def _admin(db: Db, role: str = "ADMIN") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
        return user


def _rows(where: str = "TRUE", **params: Any) -> list[dict[str, Any]]:
    with UnitOfWork() as uow:
        found = uow.session.execute(text(f"SELECT * FROM audit_logs WHERE {where} ORDER BY created_at, id"), params)
        return [dict(r._mapping) for r in found]


def _write(actor: Actor, action: str, target_id: str, at: datetime | None = None) -> None:
    with UnitOfWork() as uow:
        authz.audit(uow.session, actor, action=action, target_type="thing", target_id=target_id, now=at)
        uow.commit()


def _feature(admin: User, name: str, headers: dict[str, str] | None = None) -> Any:
    body = {"workspace_id": "ws-attack", "name": name}
    return api_call("POST", "/admin/features", body=body, as_user=admin, headers=headers)


# --- the origin of a request ----------------------------------------------------------------------------------
def test_a_forwarded_for_header_does_not_change_the_recorded_address(db: Db) -> None:
    # Given an admin who sends X-Forwarded-For / X-Real-IP / Forwarded headers naming someone else
    admin = _admin(db)
    spoof = {"x-forwarded-for": "198.51.100.7, 10.0.0.1", "x-real-ip": "198.51.100.8", "forwarded": "for=1.2.3.4"}
    # When an audited change arrives with them
    assert _feature(admin, "spoofed", spoof).status == 201
    # Then the row records the connection's source address (requestContext.http.sourceIp), not a header
    (row,) = _rows("action = 'feature.create'")
    assert row["ip_address"] == SOURCE_IP


@pytest.mark.parametrize(
    "agent",
    [
        "A" * 100_000,
        "evil\r\nX-Injected: 1\r\n" + "z" * 10,
        "\x1b[31mred\x1b[0m\u202egnp.exe\u200b\ufeff",
        "\ud800lonely surrogate",
        "\t \x7f\x00 ",
    ],
)
def test_a_hostile_user_agent_is_stored_bounded_and_printable_and_the_change_still_lands(db: Db, agent: str) -> None:
    # Given a user agent of 100 KB, with CR/LF, ANSI escapes, bidi overrides, a lone surrogate or only control chars
    admin = _admin(db)
    # When an audited change arrives with it
    created = _feature(admin, "ua", {"user-agent": agent})
    # Then the change succeeds; the row's agent is at most 512 printable characters (none when nothing is left)
    assert created.status == 201, created.json
    (row,) = _rows("action = 'feature.create'")
    stored = row["user_agent"]
    assert stored is None or (len(stored) <= request_origin.USER_AGENT_MAX_LENGTH and stored.isprintable())
    assert stored is None or not any(ch in stored for ch in "\r\n\x1b\u202e\u200b\ufeff\x00")


def test_a_hostile_user_agent_on_a_failed_public_sign_in_is_bounded_too(auth_env: AuthEnv) -> None:
    # Given a threshold of one failure, so the first failed sign-in writes a burst row
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT=1)
    email = auth_env.register_verified()
    # When an anonymous caller fails with a 100 KB agent full of line breaks
    agent = "bot\n" * 25_000
    failed = api_call(
        "POST", "/auth/login", body={"email": email, "password": "wrong" * 3}, headers={"user-agent": agent}
    )
    # Then the refusal is the usual one and the row holds a bounded, printable agent
    assert failed.status == 401
    (row,) = _rows("action = 'auth.sign_in_failures'")
    assert len(row["user_agent"]) <= request_origin.USER_AGENT_MAX_LENGTH and row["user_agent"].isprintable()


def test_a_failing_request_leaves_no_origin_bound_for_what_runs_next(db: Db) -> None:
    # Given a request that fails inside the handler (an unknown feature: a domain error)
    admin = _admin(db)
    missing = api_call("DELETE", f"/admin/features/{uuid.uuid4()}", as_user=admin, headers={"user-agent": "first"})
    assert missing.status == 404
    # Then nothing stays bound on this thread, and a job's audit row afterwards carries no origin
    assert request_origin.current() == request_origin.RequestOrigin()
    _write(Actor.operator("job"), "job.thing", "t1")
    (row,) = _rows("action = 'job.thing'")
    assert row["ip_address"] is None and row["user_agent"] is None
    # And a refused delete of an unknown feature wrote no audit row
    assert _rows("target_type = 'feature'") == []


# --- nothing rewrites or removes a row ------------------------------------------------------------------------
@pytest.fixture
def app_engine(database_url: str, pg_server: Any) -> Iterator[Engine]:
    """The test database's application role, as the migration step keeps it (a second login, least privilege),
    straight on PostgreSQL."""
    direct: str = pg_server.get_uri(TEST_DATABASE)
    owner = create_engine(pg8000_url(direct))
    with owner.begin() as conn:
        ensure_app_role(conn, APP_ROLE)
    owner.dispose()
    engine = create_engine(pg8000_url(direct).set(username=APP_ROLE))
    yield engine
    engine.dispose()
    owner = create_engine(pg8000_url(direct))
    with owner.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{APP_ROLE}"'))
        conn.execute(text(f'DROP ROLE "{APP_ROLE}"'))
    owner.dispose()


def _refusal(engine: Engine, statement: str) -> tuple[str | None, str]:
    """The SQLSTATE and message `statement` fails with as `engine`'s role (None: it succeeded; rolled back)."""
    with engine.connect() as conn:
        try:
            conn.execute(text(statement))
        except DBAPIError as exc:
            return sqlstate(exc), str(exc)
        finally:
            conn.rollback()
    return None, ""


@pytest.mark.direct_database("connects as a second role straight on PostgreSQL")
def test_the_application_role_can_only_append_to_the_audit_trail(db: Db, app_engine: Engine) -> None:
    # Given an audit row
    admin = _admin(db)
    _write(Actor.user(admin.id, "ADMIN"), "thing.change", "t1")
    # Then the application role may read and append
    with Session(app_engine) as session:
        authz.audit(session, Actor.user(admin.id, "ADMIN"), action="thing.again", target_type="thing", target_id="t2")
        session.commit()
        assert session.execute(text("SELECT count(*) FROM audit_logs")).scalar_one() == 2
    # But it may not rewrite, remove or empty rows: refused at the privilege level, before the trigger
    for statement in (
        "UPDATE audit_logs SET action = 'rewritten'",
        "DELETE FROM audit_logs",
        "TRUNCATE audit_logs",
    ):
        state, message = _refusal(app_engine, statement)
        assert state == INSUFFICIENT_PRIVILEGE and "permission denied" in message, statement
    # Nor switch the trigger off, drop it, replace its function, or skip triggers for its session
    for statement in (
        "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_immutable",
        "ALTER TABLE audit_logs DISABLE TRIGGER USER",
        "DROP TRIGGER audit_logs_immutable ON audit_logs",
        "DROP FUNCTION tollgate_audit_immutable() CASCADE",
        "CREATE OR REPLACE FUNCTION tollgate_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN OLD; END $$",
        "SET session_replication_role = replica",
        "ALTER TABLE audit_logs DROP COLUMN old_values",
    ):
        state, _ = _refusal(app_engine, statement)
        assert state == INSUFFICIENT_PRIVILEGE, statement
    # And the rows are as written
    assert [r["action"] for r in _rows()] == ["thing.change", "thing.again"]


def test_the_orm_cannot_rewrite_or_delete_an_audit_row(db: Db) -> None:
    # Given an audit row loaded through the ORM
    admin = _admin(db)
    _write(Actor.user(admin.id, "ADMIN"), "thing.change", "t1")
    for change in ("update", "delete"):
        with db() as uow:
            row = uow.session.query(AuditLog).one()
            # When the ORM changes or deletes it and flushes
            if change == "update":
                row.details = {"rewritten": True}
            else:
                uow.session.delete(row)
            # Then the database refuses
            with pytest.raises(DBAPIError) as refused:
                uow.session.flush()
            assert "audit_logs is append-only" in str(refused.value), change
    assert [(r["action"], r["details"]) for r in _rows()] == [("thing.change", {})]


def test_the_retention_job_keeps_every_audit_row_however_old(db: Db) -> None:
    # Given audit rows of ten years ago and of today
    admin = _admin(db)
    long_ago = datetime.now(UTC) - timedelta(days=3650)
    _write(Actor.user(admin.id, "ADMIN"), "thing.old", "t1", long_ago)
    _write(Actor.user(admin.id, "ADMIN"), "thing.new", "t2")
    # When the retention job runs to its end
    run_job(Retention(batch_size=10), now=datetime.now(UTC), remaining_ms=lambda: 600_000)
    # Then both rows are still there
    assert [r["action"] for r in _rows()] == ["thing.old", "thing.new"]


def test_a_gdpr_erase_keeps_the_user_s_audit_rows_unchanged(db: Db) -> None:
    # Given a user who acted (an audited change of their own) and was acted on (an admin's change)
    admin = _admin(db)
    subject = _admin(db, role="USER")
    _write(Actor.user(subject.id, "USER"), "thing.by_subject", "t1")
    with UnitOfWork() as uow:
        authz.audit(
            uow.session, Actor.user(admin.id, "ADMIN"), action="user.note", target_type="user",
            target_id=str(subject.id), old_values={"a": 1}, new_values={"a": 2},
        )  # fmt: skip
        uow.commit()
    before = _rows()
    # When an admin erases the user through the gateway
    erased = api_call("POST", f"/admin/users/{subject.id}/erase", as_user=admin)
    # Then the erase succeeds, the earlier rows are exactly as written, and the erase is one more row
    assert erased.status == 200, erased.json
    after = _rows()
    assert after[: len(before)] == before
    assert [r["action"] for r in after[len(before) :]] == ["user.erase"]


# --- reading: filters, times and cursors ----------------------------------------------------------------------
@pytest.fixture
def trail(db: Db) -> dict[str, Any]:
    a, b = _admin(db), _admin(db)
    day = datetime(2026, 11, 1, tzinfo=UTC)
    _write(Actor.user(a.id, "ADMIN"), "plan.create", "p1", day)
    _write(Actor.user(a.id, "ADMIN"), "plan.update", "p%", day + timedelta(days=1))
    _write(Actor.user(b.id, "ADMIN"), "feature.create", "f_1", day + timedelta(days=2))
    return {"a": a, "b": b, "day": day}


def _actions(admin: User, query: str) -> list[str]:
    response = api_call("GET", "/admin/audit-logs", query=query, as_user=admin)
    assert response.status == 200, (query, response.json)
    return [i["action"] for i in response.json["items"]]


def test_filters_match_exactly_never_as_patterns(trail: dict[str, Any]) -> None:
    a = trail["a"]
    # When resource_id carries LIKE wildcards or quotes
    for value in ("%25", "_", "p_", "f%251", "f__", "%27%20OR%201%3D1--"):
        # Then only a row with exactly that id matches (none here)
        assert _actions(a, f"resource_id={value}") == [], value
    # And the literal id with a percent sign matches itself only
    assert _actions(a, "resource_id=p%25") == ["plan.update"]
    # And action/resource refuse anything outside their names (a wildcard is not a name)
    for query in ("action=plan.%25", "action=plan.*", "resource=%25", "action=PLAN.CREATE"):
        assert api_call("GET", "/admin/audit-logs", query=query, as_user=a).status == 422, query


def test_times_outside_the_bounds_are_refused_and_offsets_are_honoured(trail: dict[str, Any]) -> None:
    a, day = trail["a"], trail["day"]
    # When since/until lie before 1970 or past 9999-01-01, or are not times at all
    for query in (
        "since=0001-01-01T00:00:00Z",
        "until=9999-12-31T23:59:59Z",
        "since=9999-12-31T23:59:59-14:00",
        "since=NaN",
        "until=inf",
        "since=1e308",
        "since=2026-02-30T00:00:00Z",
    ):
        # Then 422, nothing runs
        response = api_call("GET", "/admin/audit-logs", query=query, as_user=a)
        assert response.status == 422 and response.error_code == "validation_error", (query, response.json)
    # And an offset names the same instant as its UTC spelling; a time without one is UTC
    second_day = day + timedelta(days=1)
    as_plus_one = (second_day + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S") + "%2B01:00"
    assert _actions(a, f"since={as_plus_one}") == ["feature.create", "plan.update"]
    assert _actions(a, f"since={second_day.strftime('%Y-%m-%dT%H:%M:%S')}") == ["feature.create", "plan.update"]
    # And since == until is refused (an empty range is a mistake, not a page)
    same = second_day.isoformat().replace("+00:00", "Z")
    assert api_call("GET", "/admin/audit-logs", query=f"since={same}&until={same}", as_user=a).status == 422


def test_a_cursor_replayed_under_other_filters_stays_inside_those_filters(trail: dict[str, Any]) -> None:
    a, b = trail["a"], trail["b"]
    # Given a cursor issued for admin A's rows, past their newest
    first = api_call("GET", "/admin/audit-logs", query=f"actor_id={a.id}&limit=1", as_user=a).json
    cursor = first["next_cursor"]
    assert first["items"][0]["action"] == "plan.update" and cursor
    # When it is replayed with admin B's filter
    replayed = _actions(a, f"actor_id={b.id}&cursor={cursor}")
    # Then the filter still holds: only B's rows older than the cursor's position (none), never A's
    assert replayed == []
    # And with no filter it continues past the position: only older rows
    assert _actions(a, f"cursor={cursor}") == ["plan.create"]


def test_cursors_of_other_lists_are_refused(trail: dict[str, Any], db: Db) -> None:
    a = trail["a"]
    # Given a cursor the public features list issued, and cursors signed for other scopes with the trail's types
    for n in range(3):
        assert _feature(a, f"f{n}").status == 201
    features_cursor = api_call("GET", "/workspaces/ws-attack/features", query="limit=1").json["next_cursor"]
    assert features_cursor
    ledger_like = encode_cursor(
        "credit_transactions.created_at,credit_transactions.id:desc", [trail["day"], uuid.uuid4()]
    )
    # When they are presented to the trail
    for cursor in (features_cursor, ledger_like):
        refused = api_call("GET", "/admin/audit-logs", query=f"cursor={cursor}", as_user=a)
        # Then 400 invalid_cursor
        assert refused.status == 400 and refused.error_code == "invalid_cursor", refused.json
    # And the trail's own cursor is refused by the public features list
    trail_cursor = api_call("GET", "/admin/audit-logs", query="limit=1", as_user=a).json["next_cursor"]
    refused = api_call("GET", "/workspaces/ws-attack/features", query=f"cursor={trail_cursor}")
    assert refused.status == 400 and refused.error_code == "invalid_cursor"


# --- who may read ---------------------------------------------------------------------------------------------
def _signed_in_admin(auth_env: AuthEnv) -> tuple[uuid.UUID, dict[str, Any]]:
    email = auth_env.register_verified()
    with UnitOfWork() as uow:
        user_id: uuid.UUID = uow.session.execute(
            text("UPDATE users SET role = 'ADMIN' WHERE lower(email) = :e RETURNING id"), {"e": email.lower()}
        ).scalar_one()
        uow.commit()
    return user_id, auth_env.login(email)


def test_an_admin_key_of_a_demoted_admin_no_longer_reads_the_trail(auth_env: AuthEnv) -> None:
    # Given an admin with an API key scoped `admin`, and a second admin who will demote them
    user_id, tokens = _signed_in_admin(auth_env)
    other_id, other_tokens = _signed_in_admin(auth_env)
    made = api_call(
        "POST", "/auth/api-keys", body={"name": "ops", "scopes": ["admin"]}, headers=bearer(tokens["access_token"]),
        through_authorizer=True,
    )  # fmt: skip
    assert made.status == 201, made.json
    key = {"x-api-key": made.json["key"]}
    assert api_call("GET", "/admin/audit-logs", headers=key, through_authorizer=True).status == 200
    # When the other admin demotes them to USER through the admin route
    demoted = api_call(
        "PATCH", f"/admin/users/{user_id}", body={"role": "USER"}, headers=bearer(other_tokens["access_token"]),
        through_authorizer=True,
    )  # fmt: skip
    assert demoted.status == 200, demoted.json
    clear_caches()  # another authorizer container, or this one past AUTHORIZER_CACHE_SECONDS
    # Then the key is refused the trail and the feature routes (its role is read again, not remembered)
    assert api_call("GET", "/admin/audit-logs", headers=key, through_authorizer=True).status == 403
    create = api_call(
        "POST", "/admin/features", body={"workspace_id": "w", "name": "n"}, headers=key, through_authorizer=True
    )
    assert create.status == 403
    # And the demotion itself is in the trail, naming who did it
    (row,) = _rows("action = 'user.role_change'")
    assert row["actor_id"] == other_id and row["new_values"] == {"role": "USER"}


def test_a_user_s_own_key_cannot_claim_the_admin_scope(auth_env: AuthEnv) -> None:
    # Given a plain user
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    # When it asks for an `admin` key
    made = api_call(
        "POST", "/auth/api-keys", body={"name": "x", "scopes": ["admin"]}, headers=bearer(tokens["access_token"]),
        through_authorizer=True,
    )  # fmt: skip
    # Then it is refused and nothing of a key is recorded
    assert made.status in (403, 422), made.json
    assert _rows("action = 'auth.api_key.created'") == []


# --- secrets never reach a row --------------------------------------------------------------------------------
def test_no_password_token_key_totp_secret_or_recovery_code_reaches_the_trail(auth_env: AuthEnv) -> None:
    # Given an account that signs in, makes a key, enrols TOTP, signs in with it, resets and changes its password
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    email = auth_env.register_verified()
    tokens = auth_env.login(email)
    auth = bearer(tokens["access_token"])
    key = api_call("POST", "/auth/api-keys", body={"name": "ci"}, headers=auth, through_authorizer=True).json["key"]
    setup = api_call("POST", "/auth/two-factor/totp/setup", headers=auth, through_authorizer=True).json
    totp = pyotp.TOTP(setup["secret"])
    enabled = api_call(
        "POST", "/auth/two-factor/totp/enable", body={"code": totp.now()}, headers=auth, through_authorizer=True
    )
    assert enabled.status == 200, enabled.json
    codes: list[str] = enabled.json["recovery_codes"]
    challenge = auth_env.login(email)["challenge_id"]
    signed = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge, "code": codes[0]})
    assert signed.status == 200, signed.json
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    reset_token = auth_env.token_from(email, "password_reset")
    new_password = "an entirely new passphrase"
    assert api_call("POST", "/auth/password/reset", body={"token": reset_token, "password": new_password}).status == 200
    # Then the trail recorded these events
    actions = {r["action"] for r in _rows()}
    assert {"auth.sign_in", "auth.api_key.created", "auth.two_factor.enabled", "auth.password_reset.completed"} <= (
        actions
    )
    # And no row holds any of the secrets, nor their hashes' sources, anywhere in it
    dumped = repr(_rows())
    for secret in (PASSWORD, new_password, key, setup["secret"], reset_token, *codes, signed.json["access_token"]):
        assert secret not in dumped
    assert signed.json["refresh_token"] not in dumped and tokens["refresh_token"] not in dumped


# --- failed sign-ins spelled differently ----------------------------------------------------------------------
def test_case_and_whitespace_variants_of_an_email_count_as_one_account(auth_env: AuthEnv) -> None:
    # Given an account locked after 3 failures (and a per-address limit far away)
    auth_env.set(LOGIN_MAX_FAILURES_PER_ACCOUNT=3, LOGIN_MAX_FAILURES_PER_IP=100)
    email = auth_env.register_verified()
    local, _, domain = email.partition("@")
    variants = [email.upper(), f"  {email}\t", f"{local.title()}@{domain.upper()}"]
    # When the wrong password is tried once with each spelling
    statuses = [api_call("POST", "/auth/login", body={"email": v, "password": "wrong" * 3}).status for v in variants]
    # Then the three count together: the third reaches the threshold, the account is locked for every spelling
    assert statuses == [401, 401, 401]
    assert api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD}).status == 429
    # And the burst is recorded once, against the account
    rows = _rows("action = 'auth.sign_in_failures'")
    assert [(r["target_type"], r["details"]) for r in rows] == [("user", {"scope": "account"})]


def test_a_key_with_an_expiry_is_recorded_with_it_and_without_its_secret(auth_env: AuthEnv) -> None:
    # Given a signed-in account
    email = auth_env.register_verified()
    auth = bearer(auth_env.login(email)["access_token"])
    # When it makes a key that expires in 30 days (a time in the row's new values)
    made = api_call(
        "POST", "/auth/api-keys", body={"name": "ci", "expires_in_days": 30}, headers=auth, through_authorizer=True
    )
    # Then 201, and the row carries the expiry as text, the prefix, and never the key
    assert made.status == 201, made.json
    (row,) = _rows("action = 'auth.api_key.created'")
    assert datetime.fromisoformat(row["new_values"]["expires_at"]) == datetime.fromisoformat(made.json["expires_at"])
    assert made.json["key"] not in repr(row) and made.json["key"].startswith(row["new_values"]["prefix"])


def test_new_recovery_codes_are_a_security_event_and_the_codes_stay_out_of_it(auth_env: AuthEnv) -> None:
    # Given a TOTP user (a stolen, stepped-up session could make itself a way back in with fresh codes)
    email = auth_env.register_verified()
    auth = bearer(auth_env.login(email)["access_token"])
    setup = api_call("POST", "/auth/two-factor/totp/setup", headers=auth, through_authorizer=True).json
    code = pyotp.TOTP(setup["secret"]).now()
    enabled = api_call(
        "POST", "/auth/two-factor/totp/enable", body={"code": code}, headers=auth, through_authorizer=True
    )
    assert enabled.status == 200, enabled.json
    # When the session makes new recovery codes
    fresh = api_call("POST", "/auth/two-factor/recovery-codes", headers=auth, through_authorizer=True)
    assert fresh.status == 200, fresh.json
    # Then the trail records it, naming the user, with the request's origin, and none of the codes
    (row,) = _rows("action = 'auth.two_factor.recovery_codes_created'")
    assert str(row["actor_id"]) == row["target_id"] and row["ip_address"] == SOURCE_IP
    assert not any(c in repr(row) for c in fresh.json["recovery_codes"])
