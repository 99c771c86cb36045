"""Bad input at the HTTP edge: a clear 4xx with a code, never a 500, and the handler never runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tollgate.config import get_settings
from tollgate_local.events import HttpRequest
from tollgate_local.gateway import Gateway
from tollgate_local.template import Template

TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "gateway_template.yaml"


@pytest.fixture(scope="module")
def gateway() -> Gateway:
    return Gateway(Template(TEMPLATE))


def post(gateway: Gateway, body: bytes, content_type: str | None = "application/json") -> tuple[int, dict[str, Any]]:
    headers = [("Content-Type", content_type)] if content_type else []
    response = gateway.handle(HttpRequest("POST", "/widgets", "", headers, body, "127.0.0.1"))
    return response.status, json.loads(response.body)


def test_a_valid_body_reaches_the_route(gateway: Gateway) -> None:
    status, body = post(gateway, b'{"name": "gear", "size": 3}')
    assert status == 201 and body == {"name": "gear", "size": 3}


def test_malformed_json_is_400(gateway: Gateway) -> None:
    status, body = post(gateway, b'{"name": "gear", ')
    assert status == 400 and body["error"]["code"] == "malformed_json"


def test_a_wrong_content_type_is_415(gateway: Gateway) -> None:
    status, body = post(gateway, b"name=gear&size=3", "application/x-www-form-urlencoded")
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, body = post(gateway, b'{"name": "gear", "size": 3}', None)
    assert status == 415


@pytest.fixture
def small_body_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TOLLGATE_MAX_BODY_BYTES", "64")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("TOLLGATE_MAX_BODY_BYTES")
    get_settings.cache_clear()


def test_a_body_over_the_limit_is_413(gateway: Gateway, small_body_limit: None) -> None:
    status, body = post(gateway, json.dumps({"name": "g" * 100, "size": 1}).encode())
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert body["error"]["details"] == {"limit": 64}


def test_schema_violations_are_422_without_echoing_input(gateway: Gateway) -> None:
    status, body = post(gateway, b'{"name": "", "size": 0, "password": "hunter2"}')
    assert status == 422 and body["error"]["code"] == "validation_error"
    fields = {tuple(d["loc"])[-1] for d in body["error"]["details"]}
    assert {"name", "size"} <= fields
    assert "hunter2" not in json.dumps(body) and "input" not in json.dumps(body["error"]["details"])


def test_wrong_types_are_422(gateway: Gateway) -> None:
    status, body = post(gateway, b'["not", "an", "object"]')
    assert status == 422 and body["error"]["code"] == "validation_error"


def test_a_protected_route_without_identity_is_401(gateway: Gateway) -> None:
    # Given a route behind the default authorizer, called with an authorizer context lacking a user
    from tollgate_local.events import build_http_event

    request = HttpRequest("GET", "/whoami", "", [], b"", "127.0.0.1")
    event = build_http_event(request, "GET /whoami", {})
    event["requestContext"]["authorizer"] = {"lambda": {}}
    # When the handler runs
    result = gateway.runner.invoke("EchoFunction", event)
    # Then it refuses with the error body, not a crash
    assert result["statusCode"] == 401
    assert json.loads(result["body"])["error"]["code"] == "unauthenticated"


def test_text_postgres_cannot_store_is_400_in_the_body(gateway: Gateway) -> None:
    # NUL and unpaired surrogates are valid JSON escapes but no PostgreSQL text can hold them
    for body in (b'{"name": "a\\u0000b", "size": 1}', b'{"name": "\\udbd7x", "size": 1}'):
        status, answer = post(gateway, body)
        assert status == 400 and answer["error"]["code"] == "invalid_text", body


def test_text_postgres_cannot_store_is_400_in_the_query(gateway: Gateway) -> None:
    # Given a route served by the shared resolver, called with a NUL in its query
    request = HttpRequest("GET", "/whoami", "q=a%00b", [("Authorization", "Bearer good")], b"", "127.0.0.1")
    response = gateway.handle(request)
    # Then the resolver refuses it before the route runs
    assert response.status == 400 and json.loads(response.body)["error"]["code"] == "invalid_text"
