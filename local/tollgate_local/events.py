"""API Gateway HTTP API payload v2.0 events and responses, built and read the way AWS does."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from tollgate_local.runtime import ACCOUNT_ID, REGION

API_ID = "local"
STAGE = "$default"
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
              "application/x-www-form-urlencoded")  # fmt: skip


@dataclass
class HttpRequest:
    method: str
    raw_path: str
    raw_query: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _is_text(content_type: str) -> bool:
    ct = content_type.split(";")[0].strip().lower()
    return ct.startswith(TEXT_TYPES) or ct.endswith(("+json", "+xml"))


def _header_map(request: HttpRequest) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    return merged


def _cookies(request: HttpRequest) -> list[str]:
    cookies: list[str] = []
    for name, value in request.headers:
        if name.lower() == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
    return cookies


def _query_parameters(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


def _request_context(request: HttpRequest, route_key: str, headers: dict[str, str]) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": headers.get("host", "localhost"),
        "domainPrefix": headers.get("host", "localhost").split(".")[0].split(":")[0],
        "http": {
            "method": request.method,
            "path": request.raw_path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": route_key,
        "stage": STAGE,
        "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(time.time() * 1000),
    }


def build_http_event(request: HttpRequest, route_key: str, path_parameters: dict[str, str]) -> dict[str, Any]:
    headers = _header_map(request)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.raw_path,
        "rawQueryString": request.raw_query,
        "headers": headers,
        "requestContext": _request_context(request, route_key, headers),
        "isBase64Encoded": False,
    }
    cookies = _cookies(request)
    if cookies:
        event["cookies"] = cookies
    query = _query_parameters(request.raw_query)
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = path_parameters
    if request.body:
        text: str | None = None
        if _is_text(headers.get("content-type", "")):
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is None:
            event["body"] = base64.b64encode(request.body).decode("ascii")
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


def build_authorizer_event(http_event: dict[str, Any], identity_headers: tuple[str, ...]) -> dict[str, Any]:
    """The REQUEST authorizer event (payload 2.0) for the route the HTTP event is about to reach."""
    method, _, path = http_event["routeKey"].partition(" ")
    event = {k: v for k, v in http_event.items() if k not in {"body", "isBase64Encoded"}}
    event["type"] = "REQUEST"
    event["routeArn"] = f"arn:aws:execute-api:{REGION}:{ACCOUNT_ID}:{API_ID}/{STAGE}/{method}{path}"
    event["identitySource"] = [http_event["headers"][h] for h in identity_headers if h in http_event["headers"]]
    return event


def _encode_body(body: Any, is_base64: bool) -> bytes:
    if body is None:
        return b""
    if is_base64:
        return base64.b64decode(body)
    return body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode("utf-8")


def read_http_result(result: Any) -> HttpResponse:
    """Turn a handler's return value into an HTTP response as API Gateway (format 2.0) does."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # A bare value: API Gateway answers 200 with it as JSON.
        return HttpResponse(200, [("content-type", "application/json")], json.dumps(result).encode("utf-8"))
    headers: list[tuple[str, str]] = [(k.lower(), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((name.lower(), str(v)) for v in values)
    headers.extend(("set-cookie", str(c)) for c in result.get("cookies") or ())
    if not any(name == "content-type" for name, _ in headers):
        headers.append(("content-type", "application/json"))
    body = _encode_body(result.get("body"), bool(result.get("isBase64Encoded")))
    return HttpResponse(int(result["statusCode"]), headers, body)
