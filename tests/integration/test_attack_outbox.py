"""The outbox, its relay and the outbound webhooks attacked from outside (issue 17 review): SSRF in every address
form, DNS rebinding between check and connect, endpoints that answer garbage, trickle or never stop talking,
admin routes called by everyone else, one endpoint's deliveries replayed through another, the signing secret,
poisoned payloads, consumers that never succeed, and the retention of delivered events."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from tests.credits_support import admin
from tests.support import api_call, make_user
from tollgate import outbox
from tollgate.auth.sealing import seal
from tollgate.auth.secrets import hash_secret
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import ValidationFailed
from tollgate.jobs.outbox_relay import OutboxRelay
from tollgate.jobs.retention import Retention
from tollgate.models.auth import ApiKey
from tollgate.models.outbox import WebhookEndpoint
from tollgate.observability import tracer
from tollgate.outbound_webhooks import SendResult, check_url, new_secret, secret_context, send
from tollgate.outbox import OutboxMessage, emit

ENDPOINTS = "/admin/webhook-endpoints"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class NullSink:
    def put(self, messages: Any) -> list[str | None]:
        return [None] * len(messages)


class RawServer:
    """A TCP endpoint on 127.0.0.1 that answers each connection with `respond(conn)` and records what it read."""

    def __init__(self, respond: Callable[[socket.socket], None]) -> None:
        self.requests: list[bytes] = []
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn: socket.socket = self.request
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    while len(rest) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        rest += chunk
                    server.requests.append(head + b"\r\n\r\n" + rest)
                    respond(conn)
                except OSError:
                    pass  # the client gave up (its deadline): that is the point of some tests

        socketserver.ThreadingTCPServer.daemon_threads = True
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://localhost:{self.port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


def garbage(conn: socket.socket) -> None:
    conn.sendall(b"THIS IS NOT HTTP\r\n\r\n")


def trickle(conn: socket.socket) -> None:
    # One byte of the status line every 0.3 s: each read is quick, the whole answer never ends.
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60:
        conn.sendall(bytes([byte]))
        time.sleep(0.3)


def endless(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    for _ in range(2000):
        conn.sendall(b"y" * 65536)


@pytest.fixture
def servers() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    started: list[RawServer] = []

    def start(respond: Callable[[socket.socket], None]) -> RawServer:
        server = RawServer(respond)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def local_settings(**changes: Any) -> Settings:
    return get_settings().model_copy(update={"outbox_delivery": "local", **changes})


def register(staff: Any, url: str, events: list[str] | None = None) -> dict[str, Any]:
    created = api_call("POST", ENDPOINTS, body={"url": url, "events": events or ["*"]}, as_user=staff)
    assert created.status == 201, created.json
    return dict(created.json)


def delivery_rows(db: Callable[[], UnitOfWork]) -> dict[str, Any]:
    with db() as uow:
        rows = uow.session.execute(text("SELECT * FROM outbox_deliveries ORDER BY id")).mappings().all()
        return {str(r["endpoint_id"]) if r["endpoint_id"] else r["target"]: r for r in rows}


# --- SSRF: every form of an inside address --------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://2130706433/h",  # 127.0.0.1 as one decimal number
        "https://0177.0.0.1/h",  # octal
        "https://0x7f.0.0.1/h",  # hexadecimal
        "https://127.1/h",  # shortened
        "https://0.0.0.0/h",
        "https://[::1]/h",
        "https://[::ffff:127.0.0.1]/h",  # IPv4-mapped
        "https://[::ffff:a9fe:a9fe]/latest/meta-data",  # mapped instance metadata
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/latest/meta-data",  # the IPv6 instance metadata service
        "https://[2002:7f00:1::]/h",  # 6to4 wrapping of 127.0.0.1
        "https://[2002:a9fe:a9fe::]/h",  # 6to4 wrapping of 169.254.169.254
        "https://[64:ff9b::a9fe:a9fe]/h",  # NAT64 of 169.254.169.254
        "https://public@127.0.0.1/h",  # userinfo
        "https://127.0.0.1#@example.com/h",
        "https://localhost./h",  # trailing dot
    ],
)
def test_inside_addresses_in_every_spelling_are_refused(url: str) -> None:
    # Given a URL naming an inside address in some spelling, checked as in AWS with the system resolver
    # When it is checked, Then it is refused
    with pytest.raises(ValidationFailed):
        check_url(url, allow_local=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com:22/h",  # ssh
        "https://hooks.example.com:25/h",  # smtp
        "https://hooks.example.com:0/h",
        "https://hooks.example.com:99999/h",
        "https://hooks.example.com/a b",
        "https://hooks.example.com/a\r\nX-Injected: 1",
        "https://hooks.example.com/a\x00b",
    ],
)
def test_odd_ports_and_control_characters_are_refused(url: str) -> None:
    # Given a public host, but a privileged non-https port or characters no URL carries
    # When it is checked, Then it is refused
    with pytest.raises(ValidationFailed):
        check_url(url, allow_local=False, resolver=lambda host, port: ["93.184.216.34"])


def test_a_public_high_port_is_allowed() -> None:
    # Given a public host on an unprivileged port, When checked, Then it passes
    url = "https://hooks.example.com:8443/h"
    assert check_url(url, allow_local=False, resolver=lambda host, port: ["93.184.216.34"]) == url


def test_the_relay_connects_to_the_address_it_checked_not_a_rebound_one(db) -> None:
    # Given an endpoint whose name answers a public address once, and 127.0.0.1 to anyone asking after that
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    resolved: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        answer = next(answers)
        resolved.extend(answer)
        return answer

    with db() as uow:
        endpoint_id = uuid.uuid4()
        uow.session.add(
            WebhookEndpoint(
                id=endpoint_id, url="https://rebind.example/h", events=["*"],
                secret_sealed=seal(new_secret(), secret_context(endpoint_id)),
            )
        )  # fmt: skip
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    sent: list[tuple[str, tuple[str, ...]]] = []

    def sender(url: str, body: str, headers: dict[str, str], timeout: float, addresses: tuple[str, ...]) -> SendResult:
        sent.append((url, tuple(addresses)))
        return SendResult(True, 200, "", None)

    # When the relay (as in AWS) checks the URL and delivers
    settings = get_settings().model_copy(update={"outbox_delivery": "aws"})
    OutboxRelay(settings, sink=NullSink(), sender=sender, resolver=resolver).run_once()
    # Then it connected to the address it checked, asking DNS once for the delivery
    assert sent == [("https://rebind.example/h", ("93.184.216.34",))]
    assert resolved == ["93.184.216.34"]


def test_send_connects_to_the_given_address_with_the_name_as_host(servers) -> None:
    # Given a listener on 127.0.0.1 and a name no DNS knows
    server = servers(ok)
    # When a request to that name is sent pinned to the listener's address
    result = send(f"http://pinned.invalid:{server.port}/h", "{}", {}, timeout=3, addresses=("127.0.0.1",))
    # Then it arrived there, with the name as its Host
    assert result.ok and result.status_code == 200
    assert b"Host: pinned.invalid:" in server.requests[0]


# --- endpoints that misbehave ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_an_endpoint_that_answers_garbage_does_not_stop_the_others(db, servers) -> None:
    # Given one endpoint answering something that is not HTTP, one whose sealed secret no longer opens, and one good
    staff = admin(db)
    bad, good = servers(garbage), servers(ok)
    broken = servers(ok)
    bad_id = register(staff, bad.url)["id"]
    broken_id = register(staff, broken.url)["id"]
    good_id = register(staff, good.url)["id"]
    with db() as uow:
        uow.session.execute(
            text("UPDATE webhook_endpoints SET secret_sealed = 'not-a-sealed-secret' WHERE id = :id"), {"id": broken_id}
        )
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    # When the relay runs
    report = OutboxRelay(local_settings(), sink=NullSink()).run_once()
    # Then the good endpoint got its delivery, and the two bad ones are retried later with a reason
    rows = delivery_rows(db)
    assert rows[good_id]["status"] == "DELIVERED" and len(good.requests) == 1
    assert rows[bad_id]["status"] == "PENDING" and rows[bad_id]["last_error"]
    assert rows[broken_id]["status"] == "PENDING" and rows[broken_id]["last_error"]
    assert report.failed == 2 and report.delivered == 2  # the good endpoint and the bus


@pytest.mark.timeout(60)
def test_a_trickling_endpoint_is_cut_off_at_the_timeout(servers) -> None:
    # Given an endpoint that sends its answer one byte every 0.3 s (every read is fast, the answer never ends)
    server = servers(trickle)
    started = time.monotonic()
    # When one request is sent with a 1 s timeout
    result = send(server.url, "{}", {}, timeout=1.0)
    # Then the whole request took about the timeout, not the 20 s of the trickle
    elapsed = time.monotonic() - started
    assert not result.ok and result.error
    assert elapsed < 3.0, elapsed


@pytest.mark.timeout(60)
def test_a_huge_answer_is_not_read_beyond_its_prefix(servers) -> None:
    # Given an endpoint answering 200 with an endless body (128 MB)
    server = servers(endless)
    started = time.monotonic()
    # When a request is sent
    result = send(server.url, "{}", {}, timeout=5.0)
    # Then it is delivered, only a short prefix is kept, and the rest was never read
    assert result.ok and result.response_prefix is not None and len(result.response_prefix) <= 256
    assert time.monotonic() - started < 3.0


@pytest.mark.timeout(90)
def test_slow_endpoints_do_not_hold_up_the_others_in_a_pass(db, servers) -> None:
    # Given a slow endpoint (it never answers) and a good one, and 8 events
    staff = admin(db)

    def silent(conn: socket.socket) -> None:
        time.sleep(5)

    slow, good = servers(silent), servers(ok)
    register(staff, slow.url)
    good_id = register(staff, good.url)["id"]
    with db() as uow:
        for i in range(8):
            emit(uow.session, "credits.granted", user_id=None, data={"i": i})
        uow.commit()
    # When one pass runs with a 1 s timeout
    started = time.monotonic()
    OutboxRelay(local_settings(webhook_delivery_timeout_seconds=1.0), sink=NullSink()).run_once()
    elapsed = time.monotonic() - started
    # Then the slow endpoint's 8 timeouts ran side by side: the pass took far less than 8 s
    assert elapsed < 5.0, elapsed
    with db() as uow:
        statuses = (
            uow.session.execute(text("SELECT status FROM outbox_deliveries WHERE endpoint_id = :id"), {"id": good_id})
            .scalars()
            .all()
        )
    assert statuses == ["DELIVERED"] * 8


# --- the admin routes -------------------------------------------------------------------------------------------
ROUTES = [
    ("POST", ENDPOINTS, {"url": "https://example.com/h", "events": ["credits.low"]}),
    ("GET", ENDPOINTS, None),
    ("DELETE", f"{ENDPOINTS}/{{e}}", None),
    ("GET", f"{ENDPOINTS}/{{e}}/deliveries", None),
    ("POST", f"{ENDPOINTS}/{{e}}/deliveries/{{d}}/replay", None),
    ("GET", "/admin/outbox/deliveries", None),
]


def _seed_delivery(db: Callable[[], UnitOfWork], staff: Any, url: str) -> tuple[str, str]:
    endpoint_id = register(staff, url)["id"]
    with db() as uow:
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    OutboxRelay(local_settings(), sink=NullSink(), sender=lambda *a: SendResult(False, 500, "", "HTTP 500")).run_once()
    with db() as uow:
        delivery_id = uow.session.execute(
            text("SELECT id FROM outbox_deliveries WHERE endpoint_id = :e"), {"e": endpoint_id}
        ).scalar_one()
    return endpoint_id, str(delivery_id)


def test_support_and_user_callers_are_refused_on_every_admin_route(db) -> None:
    # Given an endpoint with a delivery, and a SUPPORT and a USER caller
    staff = admin(db)
    endpoint_id, delivery_id = _seed_delivery(db, staff, "http://localhost:9/h")
    with db() as uow:
        support, user = make_user(uow.session, role="SUPPORT"), make_user(uow.session)
        uow.commit()
    for caller in (support, user):
        for method, path, body in ROUTES:
            # When they call it
            response = api_call(method, path.format(e=endpoint_id, d=delivery_id), body=body, as_user=caller)
            # Then it answers 403 and changes nothing
            assert (response.status, response.error_code) == (403, "forbidden"), (caller.role, method, path)
    with db() as uow:
        assert (
            uow.session.execute(text("SELECT count(*) FROM webhook_endpoints WHERE deleted_at IS NULL")).scalar() == 1
        )
        (attempts,) = uow.session.execute(
            text("SELECT attempts FROM outbox_deliveries WHERE id = :d"), {"d": delivery_id}
        ).one()
    assert attempts == 1


def _key(db: Callable[[], UnitOfWork], user_id: uuid.UUID, scopes: list[str]) -> str:
    key = f"tg_{uuid.uuid4().hex}{uuid.uuid4().hex}"
    with db() as uow:
        uow.session.add(ApiKey(user_id=user_id, name="k", prefix=key[:16], key_hash=hash_secret(key), scopes=scopes))
        uow.commit()
    return key


def test_api_keys_without_admin_scope_or_role_are_refused_through_the_authorizer(db) -> None:
    # Given an admin's key without the admin scope, and a USER's key that was given the admin scope anyway
    staff = admin(db)
    endpoint_id, delivery_id = _seed_delivery(db, staff, "http://localhost:9/h")
    with db() as uow:
        user = make_user(uow.session)
        uow.commit()
    keys = [_key(db, staff.id, ["profile:read", "credits:read", "credits:write"]), _key(db, user.id, ["admin"])]
    for key in keys:
        for method, path, body in ROUTES:
            # When the key calls the route through the real authorizer
            response = api_call(
                method, path.format(e=endpoint_id, d=delivery_id), body=body, headers={"x-api-key": key},
                through_authorizer=True,
            )  # fmt: skip
            # Then it is refused
            assert response.status == 403, (method, path, response.status)
    # And an admin's key with the admin scope is let in
    admin_key = _key(db, staff.id, ["admin"])
    assert api_call("GET", ENDPOINTS, headers={"x-api-key": admin_key}, through_authorizer=True).status == 200


def test_a_delivery_cannot_be_replayed_or_read_through_another_endpoint(db) -> None:
    # Given two endpoints, each with a delivery of the same event
    staff = admin(db)
    a_id = register(staff, "http://localhost:9/a")["id"]
    b_id = register(staff, "http://localhost:9/b")["id"]
    with db() as uow:
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    OutboxRelay(local_settings(), sink=NullSink(), sender=lambda *a: SendResult(False, 500, "", "HTTP 500")).run_once()
    rows = delivery_rows(db)
    a_delivery, b_delivery = str(rows[a_id]["id"]), str(rows[b_id]["id"])
    # When B's delivery is replayed through A's path
    response = api_call("POST", f"{ENDPOINTS}/{a_id}/deliveries/{b_delivery}/replay", as_user=staff)
    # Then it is not found and B's delivery is untouched
    assert response.status == 404
    assert delivery_rows(db)[b_id]["attempts"] == 1
    # And each endpoint's log shows only its own delivery
    for endpoint_id, own in ((a_id, a_delivery), (b_id, b_delivery)):
        log = api_call("GET", f"{ENDPOINTS}/{endpoint_id}/deliveries", as_user=staff)
        assert [row["id"] for row in log.json["items"]] == [own]


def test_duplicate_huge_and_empty_registrations_are_refused(db) -> None:
    staff = admin(db)
    # Given one endpoint registered
    register(staff, "http://localhost:9/dup", ["credits.low"])
    # When the same URL is registered again, Then it is a conflict
    again = api_call("POST", ENDPOINTS, body={"url": "http://localhost:9/dup", "events": ["*"]}, as_user=staff)
    assert (again.status, again.error_code) == (409, "conflict")
    # When a URL is too long, the event list too long or empty, or a type unknown, Then 422
    for body in [
        {"url": "http://localhost:9/" + "a" * 3000, "events": ["*"]},
        {"url": "http://localhost:9/x", "events": ["credits.low"] * 33},
        {"url": "http://localhost:9/x", "events": []},
        {"url": "http://localhost:9/x", "events": ["credits.stolen"]},
    ]:
        assert api_call("POST", ENDPOINTS, body=body, as_user=staff).status == 422
    with db() as uow:
        assert uow.session.execute(text("SELECT count(*) FROM webhook_endpoints")).scalar() == 1


@pytest.mark.timeout(60)
def test_concurrent_duplicate_registrations_make_one_endpoint(db) -> None:
    # Given 4 admins registering the same URL at once
    staff = admin(db)
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def create() -> None:
        barrier.wait()
        statuses.append(
            api_call("POST", ENDPOINTS, body={"url": "http://localhost:9/race", "events": ["*"]}, as_user=staff).status
        )

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then one was created and the others are conflicts
    assert sorted(statuses) == [201, 409, 409, 409]


# --- the secret -------------------------------------------------------------------------------------------------
def test_the_secret_is_answered_once_and_never_logged_audited_or_traced(
    db, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the tracer's record of handler answers (what X-Ray would keep)
    traced: list[Any] = []

    def record(method_name: Any = None, data: Any = None, subsegment: Any = None, capture_response: Any = None) -> None:
        if capture_response:
            traced.append(data)

    monkeypatch.setattr(tracer.build(), "_add_response_as_metadata", record)
    staff = admin(db)
    # When an endpoint is registered, listed, and its log read
    created = register(staff, "http://localhost:9/secret")
    secret = created["secret"]
    listed = api_call("GET", ENDPOINTS, as_user=staff)
    log = api_call("GET", f"{ENDPOINTS}/{created['id']}/deliveries", as_user=staff)
    # Then the secret is in the creation answer only
    key = secret.removeprefix("whsec_")
    assert key not in listed.body.decode() and key not in log.body.decode()
    # And not in the console, the logs, the traces, or the audit log
    out = capsys.readouterr()
    assert key not in out.out + out.err
    assert key not in caplog.text
    assert all(key not in json.dumps(t, default=str) for t in traced)
    with db() as uow:
        audit = uow.session.execute(text("SELECT details::text FROM audit_logs")).scalars().all()
        stored = uow.session.execute(text("SELECT secret_sealed FROM webhook_endpoints")).scalar_one()
    assert audit and all(key not in a for a in audit)
    assert key not in stored


def test_each_attempt_is_signed_at_its_own_time_and_the_timestamp_is_covered(db, servers) -> None:
    # Given an event written an hour ago and an endpoint
    staff = admin(db)
    server = servers(ok)
    secret = register(staff, server.url)["secret"]
    with db() as uow:
        event_id = emit(uow.session, "credits.granted", user_id=None, data={"a": "1"})
        uow.session.execute(
            text("UPDATE outbox_events SET created_at = now() - interval '1 hour' WHERE id = :id"), {"id": event_id}
        )
        uow.commit()
    # When the relay delivers it now
    OutboxRelay(local_settings(), sink=NullSink()).run_once()
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in head.decode().split("\r\n")[1:])
    }
    # Then the standardwebhooks library verifies it within its 5-minute tolerance
    assert Webhook(secret).verify(body, headers)["id"] == str(event_id)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    # And a changed timestamp (a replay made to look fresh) does not verify
    replayed = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 120)}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body, replayed)


# --- events and consumers -----------------------------------------------------------------------------------------
def test_a_poisoned_payload_never_breaks_the_change_it_announces(db) -> None:
    # Given event data JSON cannot carry as it is: an object, bytes, NaN, infinity, a NUL character
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    data: dict[Any, Any] = {
        "obj": Opaque(),
        "raw": b"\x00\xff",
        "nan": math.nan,
        "inf": -math.inf,
        "nul": "a\x00b",
        1: "int key",
    }
    # When it is emitted and the transaction commits
    with db() as uow:
        user = make_user(uow.session)
        event_id = emit(uow.session, "credits.granted", user_id=user.id, data=data)
        uow.commit()
    # Then the change and the event were both stored, the event as plain JSON
    with db() as uow:
        stored = uow.session.execute(
            text("SELECT data FROM outbox_events WHERE id = :id"), {"id": event_id}
        ).scalar_one()
        assert uow.session.execute(text("SELECT count(*) FROM users WHERE id = :u"), {"u": user.id}).scalar() == 1
    assert stored["obj"] == "opaque" and stored["1"] == "int key" and stored["nul"] == "a\ufffdb"
    assert isinstance(stored["raw"], str) and stored["nan"] == "NaN" and stored["inf"] == "-Infinity"


def test_a_consumer_that_always_raises_goes_dead_and_blocks_nothing(db) -> None:
    # Given a consumer of credits.low that always fails, and a working consumer of credits.granted
    seen: list[uuid.UUID] = []

    def broken(message: OutboxMessage) -> None:
        raise RuntimeError("never works")

    def working(message: OutboxMessage) -> None:
        seen.append(message.id)

    outbox.register_consumer("credits.low", broken)
    outbox.register_consumer("credits.granted", working)
    try:
        clock = Clock()
        relay = OutboxRelay(local_settings(outbox_max_attempts=3), sink=NullSink(), clock=clock)
        with db() as uow:
            emit(uow.session, "credits.low", user_id=None, data={})
            uow.commit()
        # When passes run across the backoffs, and new events keep arriving
        for i in range(4):
            with db() as uow:
                emit(uow.session, "credits.granted", user_id=None, data={"i": i})
                uow.commit()
            relay.run_once()
            clock.now += timedelta(hours=2)
        # Then the broken one is DEAD after 3 attempts, and every other delivery went through
        rows = delivery_rows(db)
        dead = rows[f"consumer:{outbox.consumer_name(broken)}"]
        assert dead["status"] == "DEAD" and dead["attempts"] == 3 and "never works" in dead["last_error"]
        assert len(seen) == 4
        with db() as uow:
            others = (
                uow.session.execute(
                    text("SELECT DISTINCT status FROM outbox_deliveries WHERE target <> :t"),
                    {"t": f"consumer:{outbox.consumer_name(broken)}"},
                )
                .scalars()
                .all()
            )
        assert others == ["DELIVERED"]
        # And admins see it among the dead deliveries
        staff = admin(db)
        listed = api_call("GET", "/admin/outbox/deliveries", query="status=DEAD", as_user=staff)
        assert listed.status == 200, listed.json
        assert [row["target"] for row in listed.json["items"]] == [f"consumer:{outbox.consumer_name(broken)}"]
    finally:
        outbox.unregister_consumer("credits.low", broken)
        outbox.unregister_consumer("credits.granted", working)


# --- retention ------------------------------------------------------------------------------------------------
def test_retention_removes_old_finished_events_in_batches_and_never_an_undelivered_one(db) -> None:
    # Given old events: delivered, dead, still pending, not yet fanned out, and one that guards a dedupe key
    with db() as uow:
        ids = {name: emit(uow.session, "credits.granted", user_id=None, data={}) for name in
               ("delivered", "dead", "pending", "undispatched", "recent")}  # fmt: skip
        ids["keyed"] = emit(uow.session, "credits.low", user_id=None, data={}, dedupe_key="credits.low:u:episode")
        uow.commit()
    OutboxRelay(local_settings(), sink=NullSink()).fan_out(100)
    with db() as uow:
        s = uow.session
        s.execute(text("UPDATE outbox_events SET dispatched_at = NULL WHERE id = :id"), {"id": ids["undispatched"]})
        s.execute(text("DELETE FROM outbox_deliveries WHERE event_id = :id"), {"id": ids["undispatched"]})
        for name, status in [
            ("delivered", "DELIVERED"),
            ("dead", "DEAD"),
            ("keyed", "DELIVERED"),
            ("recent", "DELIVERED"),
        ]:
            s.execute(
                text("UPDATE outbox_deliveries SET status = :s, delivered_at = CASE WHEN :s = 'DELIVERED' "
                     "THEN now() END WHERE event_id = :id"),
                {"s": status, "id": ids[name]},
            )  # fmt: skip
        old = [ids[n] for n in ("delivered", "dead", "pending", "undispatched", "keyed")]
        s.execute(
            text("UPDATE outbox_events SET created_at = now() - interval '40 days' WHERE id = ANY(:ids)"), {"ids": old}
        )
        s.execute(
            text("UPDATE outbox_deliveries SET created_at = now() - interval '40 days', "
                 "delivered_at = CASE WHEN delivered_at IS NULL THEN NULL ELSE now() - interval '40 days' END, "
                 "last_attempt_at = now() - interval '40 days' WHERE event_id = ANY(:ids)"),
            {"ids": old},
        )  # fmt: skip
        uow.commit()
    with db() as uow:
        finished = uow.session.execute(
            text("SELECT count(*) FROM outbox_deliveries WHERE event_id = ANY(:ids)"),
            {"ids": [ids["delivered"], ids["dead"], ids["keyed"]]},
        ).scalar()
    # When retention runs with 30 days and batches of 1
    job = Retention(get_settings().model_copy(update={"outbox_retention_days": 30}), batch_size=1)
    now, cursor = datetime.now(UTC), None
    removed: dict[str, int] = {}
    for _ in range(200):
        with db() as uow:
            step = job.step(uow.session, now, cursor)
            uow.commit()
        for name, n in step.counts.items():
            removed[name] = removed.get(name, 0) + n
        cursor = step.cursor
        if step.done:
            break
    # Then the delivered and dead events went with their deliveries, one row per batch
    with db() as uow:
        left = set(uow.session.execute(text("SELECT id FROM outbox_events")).scalars())
        keyed_deliveries = uow.session.execute(
            text("SELECT count(*) FROM outbox_deliveries WHERE event_id = :id"), {"id": ids["keyed"]}
        ).scalar()
        pending = uow.session.execute(
            text("SELECT status FROM outbox_deliveries WHERE event_id = :id"), {"id": ids["pending"]}
        ).scalar_one()
    assert ids["delivered"] not in left and ids["dead"] not in left
    # And the pending, the undispatched, the recent and the dedupe-key events stay (the key's delivery may go)
    assert {ids["pending"], ids["undispatched"], ids["recent"], ids["keyed"]} <= left
    assert pending == "PENDING" and keyed_deliveries == 0
    assert removed["outbox_deliveries"] == finished and removed["outbox_events"] == 2


@pytest.mark.timeout(60)
def test_tls_to_a_pinned_address_names_the_host_for_sni_and_the_certificate(tmp_path: Any) -> None:
    # Given a TLS listener on 127.0.0.1 with a self-signed certificate, recording the SNI name it is asked for
    import datetime as dt
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned.invalid")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("pinned.invalid")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    names: list[str | None] = []
    context.sni_callback = lambda sock, server_name, ctx: names.append(server_name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    # When a webhook to that name is sent pinned to 127.0.0.1
    result = send(f"https://pinned.invalid:{port}/h", "{}", {}, timeout=3, addresses=("127.0.0.1",))
    thread.join(5)
    listener.close()
    # Then the handshake named the URL's host, and a certificate no public CA signed is refused
    assert names == ["pinned.invalid"]
    assert not result.ok and result.error and "CERTIFICATE_VERIFY_FAILED" in result.error
