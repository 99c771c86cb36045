"""Outbound webhooks (issue 17): admin-only routes through the real handler, the secret shown once and stored
sealed, Standard Webhooks signatures verified with the `standardwebhooks` library, retries with the same
webhook-id, the delivery log and replay, and the SSRF refusals."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook

from tests.credits_support import admin
from tests.support import api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import ValidationFailed
from tollgate.jobs.outbox_relay import OutboxRelay
from tollgate.outbound_webhooks import check_url
from tollgate.outbox import emit


class Receiver:
    """A local endpoint that answers 500 `failures` times, then 200, and keeps every request."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if receiver.failures > 0 else 200
                receiver.failures -= 1
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"x" * 10_000)  # only a small prefix of it is kept

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class NullSink:
    def put(self, messages: Any) -> list[str | None]:
        return [None] * len(messages)


def test_admin_routes_refuse_users(db):
    # Given a USER
    with db() as uow:
        user = make_user(uow.session)
        uow.commit()
    endpoint, delivery = "00000000-0000-7000-8000-000000000001", "00000000-0000-7000-8000-000000000002"
    # When they call every webhook-endpoint route
    for method, path, body in [
        ("POST", "/admin/webhook-endpoints", {"url": "https://example.com/h", "events": ["credits.low"]}),
        ("GET", "/admin/webhook-endpoints", None),
        ("DELETE", f"/admin/webhook-endpoints/{endpoint}", None),
        ("GET", f"/admin/webhook-endpoints/{endpoint}/deliveries", None),
        ("POST", f"/admin/webhook-endpoints/{endpoint}/deliveries/{delivery}/replay", None),
    ]:
        response = api_call(method, path, body=body, as_user=user)
        # Then each answers 403
        assert (response.status, response.error_code) == (403, "forbidden"), (method, path)
    with db() as uow:
        assert uow.session.execute(text("SELECT count(*) FROM webhook_endpoints")).scalar_one() == 0


def test_signed_webhook_retried_with_the_same_id_logged_and_replayed(db, receiver: Receiver):
    # Given an admin who registers a local endpoint for credits.granted
    staff = admin(db)
    created = api_call(
        "POST", "/admin/webhook-endpoints", body={"url": receiver.url, "events": ["credits.granted"]}, as_user=staff
    )
    assert created.status == 201, created.json
    endpoint_id, secret = created.json["id"], created.json["secret"]
    assert secret.startswith("whsec_")
    # And the secret is stored sealed, and never shown again
    with db() as uow:
        sealed = uow.session.execute(text("SELECT secret_sealed FROM webhook_endpoints")).scalar_one()
    assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
    listed = api_call("GET", "/admin/webhook-endpoints", as_user=staff)
    assert [e["id"] for e in listed.json["items"]] == [endpoint_id] and "secret" not in listed.json["items"][0]
    # And one event of that type and one of another type
    with db() as uow:
        event_id = emit(uow.session, "credits.granted", user_id=staff.id, data={"amount": "5"})
        emit(uow.session, "credits.low", user_id=staff.id, data={})
        uow.commit()
    clock = Clock()
    relay = OutboxRelay(get_settings().model_copy(update={"outbox_delivery": "local"}), sink=NullSink(), clock=clock)
    # When the relay runs while the endpoint fails twice, then after each backoff
    for _ in range(3):
        relay.run_once()
        clock.now += timedelta(hours=2)
    # Then the endpoint got three signed attempts of the one event it subscribed to, all with the same id
    assert len(receiver.requests) == 3
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert ids == {str(event_id)}
    for headers, body in receiver.requests:
        payload = Webhook(secret).verify(body, headers)
        assert payload["id"] == str(event_id) and payload["type"] == "credits.granted"
        assert payload["data"] == {"amount": "5"}
    # And a wrong secret does not verify
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43).verify(receiver.requests[0][1], receiver.requests[0][0])
    # And the delivery log shows one delivered row, three attempts, a short response prefix
    log = api_call("GET", f"/admin/webhook-endpoints/{endpoint_id}/deliveries", as_user=staff)
    assert log.status == 200
    (row,) = log.json["items"]
    assert row["status"] == "DELIVERED" and row["attempts"] == 3 and row["event_id"] == str(event_id)
    assert row["last_status_code"] == 200 and len(row["last_response"]) <= 256
    # When the admin replays it
    replay = api_call("POST", f"/admin/webhook-endpoints/{endpoint_id}/deliveries/{row['id']}/replay", as_user=staff)
    assert replay.status == 202 and replay.json["status"] == "PENDING"
    relay.run_once()
    # Then it is delivered again, with the same id
    assert len(receiver.requests) == 4 and receiver.requests[-1][0]["webhook-id"] == str(event_id)
    # When the endpoint is deleted, it is no longer listed and receives nothing more
    assert api_call("DELETE", f"/admin/webhook-endpoints/{endpoint_id}", as_user=staff).status == 204
    assert api_call("GET", "/admin/webhook-endpoints", as_user=staff).json["items"] == []
    with db() as uow:
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    relay.run_once()
    assert len(receiver.requests) == 4


@pytest.mark.parametrize(
    ("url", "addresses", "why"),
    [
        ("http://example.com/hook", ["93.184.216.34"], "https"),
        ("https://internal.example/hook", ["10.0.0.5"], "private"),
        ("https://metadata.example/hook", ["169.254.169.254"], "private"),
        ("https://loop.example/hook", ["127.0.0.1"], "private"),
        ("https://v6.example/hook", ["::1"], "private"),
        ("https://mapped.example/hook", ["::ffff:192.168.1.1"], "private"),
        ("https://mixed.example/hook", ["93.184.216.34", "172.16.0.1"], "private"),
        ("https://localhost/hook", ["127.0.0.1"], "private"),
        ("https://user:pw@example.com/hook", ["93.184.216.34"], "credentials"),
        ("ftp://example.com/hook", ["93.184.216.34"], "https"),
    ],
)
def test_ssrf_refusals_in_aws(url: str, addresses: list[str], why: str):
    # Given a URL whose host resolves to `addresses`, checked as in AWS
    # When it is checked, Then it is refused (nothing is requested)
    with pytest.raises(ValidationFailed, match=why):
        check_url(url, allow_local=False, resolver=lambda host, port: addresses)


def test_public_https_is_allowed_and_localhost_only_locally():
    public = check_url("https://hooks.example.com/in", allow_local=False, resolver=lambda h, p: ["93.184.216.34"])
    assert public == "https://hooks.example.com/in"
    assert check_url("http://localhost:9000/h", allow_local=True) == "http://localhost:9000/h"
    with pytest.raises(ValidationFailed):
        check_url("http://localhost:9000/h", allow_local=False, resolver=lambda h, p: ["127.0.0.1"])


def test_registering_a_private_url_in_aws_mode_is_refused(db, monkeypatch: pytest.MonkeyPatch):
    # Given AWS mode
    monkeypatch.setenv("OUTBOX_DELIVERY", "aws")
    get_settings.cache_clear()
    staff = admin(db)
    try:
        # When an admin registers a loopback URL
        response = api_call(
            "POST", "/admin/webhook-endpoints", body={"url": "http://127.0.0.1:8080/x", "events": ["*"]}, as_user=staff
        )
    finally:
        monkeypatch.delenv("OUTBOX_DELIVERY")
        get_settings.cache_clear()
    # Then it is refused and nothing is stored
    assert response.status == 422 and response.error_code == "validation_error"
    with UnitOfWork() as uow:
        assert uow.session.execute(text("SELECT count(*) FROM webhook_endpoints")).scalar_one() == 0
    assert json.loads(response.body)["error"]["details"]["field"] == "url"


def test_unknown_event_types_are_refused(db):
    staff = admin(db)
    response = api_call(
        "POST", "/admin/webhook-endpoints", body={"url": "http://localhost:1/x", "events": ["credits.nope"]},
        as_user=staff,
    )  # fmt: skip
    assert response.status == 422
