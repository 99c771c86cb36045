"""The local gateway, end to end: real HTTP in, the template's routes, real handlers, real HTTP out."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tollgate_local.events import HttpRequest
from tollgate_local.gateway import Gateway, make_server
from tollgate_local.template import Template

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TEMPLATE = FIXTURES / "gateway_template.yaml"


@pytest.fixture(scope="module")
def gateway() -> Gateway:
    return Gateway(Template(TEMPLATE))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = make_server(TEMPLATE, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def call(base_url: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:  # fmt: skip
    request = urllib.request.Request(base_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def echoed(raw: bytes) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(raw)["event"]
    return event


def test_builds_the_v2_event_as_api_gateway_does(base_url: str) -> None:
    # Given a public route with a path parameter
    # When a request with a repeated query key, repeated headers and cookies reaches it
    status, _, raw = call(
        base_url, "GET", "/public/item-7?a=1&a=2&b=x%20y",
        headers={"X-Custom": "one", "Cookie": "c1=v1; c2=v2", "User-Agent": "tests"},
    )  # fmt: skip
    # Then the handler sees the payload 2.0 shape of the fixture, field for field
    assert status == 200
    event = echoed(raw)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "ANY /public/{item}"
    assert event["rawPath"] == "/public/item-7"
    assert event["rawQueryString"] == "a=1&a=2&b=x%20y"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y"}
    assert event["pathParameters"] == {"item": "item-7"}
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["headers"]["x-custom"] == "one"
    assert "cookie" not in event["headers"]
    assert all(name == name.lower() for name in event["headers"])
    ctx = event["requestContext"]
    assert ctx["http"] == {
        "method": "GET", "path": "/public/item-7", "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1", "userAgent": "tests",
    }  # fmt: skip
    assert ctx["routeKey"] == "ANY /public/{item}" and ctx["stage"] == "$default"
    assert event["isBase64Encoded"] is False
    assert "body" not in event
    # and every top-level and requestContext field of AWS's own example is there (TLS/authorizer aside)
    fixture = json.loads((FIXTURES / "providers/aws/apigw_http_api_v2.json").read_text())
    assert set(fixture) - {"stageVariables", "body"} <= set(event)
    assert set(fixture["requestContext"]) - {"authentication", "authorizer"} <= set(ctx)


def test_passes_a_lambda_context_from_the_template(base_url: str) -> None:
    _, _, raw = call(base_url, "GET", "/public/x")
    context = json.loads(raw)["context"]
    assert context["function_name"] == "EchoFunction"
    assert context["memory_limit_in_mb"] == 512  # the function's own, over the Globals' 256
    assert 0 < context["remaining_ms"] <= 7000  # the Globals' timeout


def test_returns_status_headers_and_cookies(base_url: str) -> None:
    status, headers, _ = call(base_url, "GET", "/public/x?status=418")
    assert status == 418
    assert headers["X-Echo"] == "yes"
    assert headers.get_all("Set-Cookie") == ["session=abc; HttpOnly", "theme=dark"]


def test_a_bare_return_value_is_a_200_json_answer(base_url: str) -> None:
    status, headers, raw = call(base_url, "GET", "/public/x?shape=bare")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(raw) == {"bare": True}


def test_binary_bodies_travel_base64_both_ways(base_url: str) -> None:
    payload = bytes(range(256))
    _, _, raw = call(base_url, "POST", "/public/x", body=payload, headers={"Content-Type": "image/png"})
    event = echoed(raw)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload

    status, headers, raw = call(base_url, "GET", "/public/x?shape=binary")
    assert status == 200 and raw == b"\x00\x01\xffbinary"
    assert headers["Content-Type"] == "application/octet-stream"


def test_text_bodies_travel_as_text(base_url: str) -> None:
    _, _, raw = call(base_url, "POST", "/public/x", body=b'{"a": 1}', headers={"Content-Type": "application/json"})
    event = echoed(raw)
    assert event["isBase64Encoded"] is False and event["body"] == '{"a": 1}'


def test_static_segments_win_over_parameters(gateway: Gateway) -> None:
    route, params, _ = gateway.match("GET", "/public/fixed")
    assert route is not None and route.path == "/public/fixed" and params == {}
    route, params, _ = gateway.match("GET", "/public/other")
    assert route is not None and route.path == "/public/{item}" and params == {"item": "other"}


def test_greedy_path_parameters_take_the_rest(base_url: str) -> None:
    _, _, raw = call(base_url, "GET", "/files/a/b/c.txt")
    assert echoed(raw)["pathParameters"] == {"key": "a/b/c.txt"}


def test_unknown_path_is_404_json(base_url: str) -> None:
    status, _, raw = call(base_url, "GET", "/nowhere")
    assert status == 404
    assert json.loads(raw)["error"]["code"] == "not_found"


def test_known_path_wrong_method_is_405_with_allow(base_url: str) -> None:
    status, headers, raw = call(base_url, "DELETE", "/whoami")
    assert status == 405
    assert headers["Allow"] == "GET"
    assert json.loads(raw)["error"]["code"] == "method_not_allowed"


def test_any_http_method_reaches_the_route_table(base_url: str) -> None:
    # TRACE and QUERY are methods of no route: the known path answers 405 (not the HTTP server's own 501)
    for method in ("TRACE", "QUERY"):
        status, _, raw = call(base_url, method, "/whoami")
        assert status == 405 and json.loads(raw)["error"]["code"] == "method_not_allowed", method


def test_authorizer_allows_and_its_context_reaches_the_handler(base_url: str) -> None:
    status, _, raw = call(base_url, "GET", "/whoami", headers={"Authorization": "Bearer good"})
    assert status == 200
    assert json.loads(raw) == {"user_id": "0190a0b0-0000-7000-8000-000000000001", "role": "ADMIN"}


def test_authorizer_event_is_a_v2_request_event(gateway: Gateway) -> None:
    seen: list[dict[str, Any]] = gateway.runner.module("GuardFunction").SEEN
    seen.clear()
    gateway.handle(HttpRequest("GET", "/whoami", "", [("Authorization", "Bearer good")], b"", "127.0.0.1"))
    event = seen[-1]
    assert event["type"] == "REQUEST" and event["version"] == "2.0"
    assert event["routeArn"].endswith("/$default/GET/whoami")
    assert event["routeKey"] == "GET /whoami"


def test_authorizer_denies(base_url: str) -> None:
    status, _, raw = call(base_url, "GET", "/whoami", headers={"Authorization": "Bearer bad"})
    assert status == 403 and json.loads(raw) == {"message": "Forbidden"}


def test_missing_identity_source_is_401_without_calling_the_authorizer(gateway: Gateway) -> None:
    seen: list[dict[str, Any]] = gateway.runner.module("GuardFunction").SEEN
    before = len(seen)
    response = gateway.handle(HttpRequest("GET", "/guarded", "", [], b"", "127.0.0.1"))
    assert response.status == 401
    assert len(seen) == before


def test_a_failing_function_is_a_500_json_error(base_url: str) -> None:
    status, _, raw = call(base_url, "GET", "/public/x?shape=fail")
    assert status == 500 and json.loads(raw)["error"]["code"] == "internal_error"


def test_serves_the_merged_openapi_document_and_docs(base_url: str) -> None:
    status, _, raw = call(base_url, "GET", "/openapi.json")
    assert status == 200
    document = json.loads(raw)
    assert "/widgets" in document["paths"] and "post" in document["paths"]["/widgets"]
    assert "Widget" in document["components"]["schemas"]
    status, _, raw = call(base_url, "GET", "/docs")
    assert status == 200 and b"swagger-ui" in raw


def test_the_real_template_serves_health(db: Any) -> None:
    # Given the project's own template
    gateway = Gateway(Template(Path(__file__).resolve().parents[2] / "template.yaml"))
    # When GET /health arrives
    response = gateway.handle(HttpRequest("GET", "/health", "", [], b"", "127.0.0.1"))
    # Then the real handler answers from the database
    assert response.status == 200
    body = json.loads(response.body)
    assert body["status"] == "ok" and body["database"] == "ok" and body["schema_version"]


def test_every_route_of_the_real_template_resolves_to_a_loadable_handler() -> None:
    gateway = Gateway(Template(Path(__file__).resolve().parents[2] / "template.yaml"))
    for route in gateway.template.routes:
        assert callable(gateway.runner.handler(route.function_id)), route.route_key
    for authorizer in gateway.template.authorizers.values():
        assert callable(gateway.runner.handler(authorizer.function_id))
