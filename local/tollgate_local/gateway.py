"""The local gateway: serves every HttpApi route of template.yaml on 127.0.0.1 like API Gateway would.

For each request it builds the payload v2.0 event, runs the route's Lambda authorizer (simple responses),
calls the real handler with a Lambda context and turns the result back into HTTP. Requests are served
concurrently, each function instance taking one request at a time (see runtime.FunctionRunner), as on Lambda.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tollgate_local import local_files, local_pages
from tollgate_local.events import (
    HttpRequest,
    HttpResponse,
    build_authorizer_event,
    build_http_event,
    read_http_result,
)
from tollgate_local.runtime import DEFAULT_MAX_INSTANCES, FunctionRunner
from tollgate_local.template import RouteDef, Template

log = logging.getLogger("tollgate_local.gateway")
JSON_HEADERS = [("content-type", "application/json")]
LISTEN_BACKLOG = 128


def _error(status: int, code: str, message: str, extra_headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
    return HttpResponse(status, JSON_HEADERS + (extra_headers or []), body)


class Gateway:
    def __init__(self, template: Template, runner: FunctionRunner | None = None) -> None:
        self.template = template
        self.runner = runner or FunctionRunner(template.functions)

    def match(self, method: str, path: str) -> tuple[RouteDef | None, dict[str, str], list[str]]:
        """The route for (method, path), its path parameters, and the methods the path allows."""
        allowed: list[str] = []
        for route in self.template.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.method in {method, "ANY"}:
                return route, params, []
            allowed.append(route.method)
        return None, {}, allowed

    def authorize(self, route: RouteDef, event: dict[str, Any]) -> HttpResponse | dict[str, Any]:
        """Run the route's authorizer: its context on success, or the answer API Gateway would give."""
        assert route.authorizer is not None
        spec = self.template.authorizers.get(route.authorizer)
        if spec is None:
            return _error(500, "gateway_error", f"authorizer {route.authorizer} is not in the template")
        missing = [h for h in spec.identity_headers if h not in event["headers"]]
        if missing:
            return HttpResponse(401, JSON_HEADERS, b'{"message":"Unauthorized"}')
        result = self.runner.invoke(spec.function_id, build_authorizer_event(event, spec.identity_headers))
        if isinstance(result, dict) and result.get("isAuthorized") is True:
            context = result.get("context") or {}
            return context if isinstance(context, dict) else {}
        return HttpResponse(403, JSON_HEADERS, b'{"message":"Forbidden"}')

    def handle(self, request: HttpRequest) -> HttpResponse:
        files = local_files.serve(request)  # the local file store's signed upload and download URLs
        if files is not None:
            return files
        page = local_pages.serve(self, request)  # /docs, /openapi.json and the dev-only /_local/* pages
        if page is not None:
            return page

        # API Gateway (HTTP API) percent-decodes the path once, routes on that and hands it on decoded (rawPath,
        # http.path, pathParameters): `ada%40example.com` reaches the handler as `ada@example.com`, and an encoded
        # `/` splits segments as a plain one does. `+` stays `+` (it means a space only in a query).
        request = replace(request, raw_path=unquote(request.raw_path))
        route, params, allowed = self.match(request.method, request.raw_path)
        if route is None:
            if allowed:
                return _error(405, "method_not_allowed", f"{request.method} is not allowed here",
                              [("allow", ", ".join(sorted(set(allowed))))])  # fmt: skip
            return _error(404, "not_found", f"no route for {request.raw_path}")

        event = build_http_event(request, route.route_key, params)
        try:
            if route.authorizer is not None:
                outcome = self.authorize(route, event)
                if isinstance(outcome, HttpResponse):
                    return outcome
                event["requestContext"]["authorizer"] = {"lambda": outcome}
            return read_http_result(self.runner.invoke(route.function_id, event))
        except Exception:
            # What API Gateway answers when the function itself fails.
            log.error("function %s failed:\n%s", route.function_id, traceback.format_exc())
            return _error(500, "internal_error", "Internal Server Error")


class _RequestHandler(BaseHTTPRequestHandler):
    gateway: Gateway
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        request = HttpRequest(
            method=self.command.upper(),
            raw_path=parts.path or "/",
            raw_query=parts.query,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
        )
        response = self.gateway.handle(request)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def __getattr__(self, name: str) -> Any:
        # Every method reaches the route table (one no route takes answers 405 there, not http.server's 501).
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class GatewayServer(ThreadingHTTPServer):
    """A thread per connection, and a listen backlog a burst of clients fits in (socketserver's default is 5:
    the sixth client connecting at once would wait for a SYN retry or be reset)."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


def make_server(
    template_path: Path, host: str, port: int, *, max_instances: int = DEFAULT_MAX_INSTANCES
) -> GatewayServer:
    """The gateway for `template_path` on (host, port), at most `max_instances` instances per function."""
    template = Template(template_path)
    gateway = Gateway(template, FunctionRunner(template.functions, max_instances))
    handler = type("BoundHandler", (_RequestHandler,), {"gateway": gateway})
    return GatewayServer((host, port), handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="tollgate-gateway", daemon=True)
    thread.start()
    return thread
