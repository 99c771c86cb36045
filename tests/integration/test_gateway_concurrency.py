"""The local gateway under concurrency behaves like Lambda: one request per function instance at a time, every
caller answered as itself, and a burst of clients connecting at once all served."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.credits_support import assert_consistent, balance, funded_user
from tests.gateway_support import api_key_for
from tollgate.db import UnitOfWork
from tollgate_local import TEMPLATE_PATH
from tollgate_local.gateway import GatewayServer, make_server, serve_in_thread
from tollgate_local.runtime import FunctionRunner
from tollgate_local.template import FunctionDef

FIXTURE_TEMPLATE = Path(__file__).resolve().parents[1] / "fixtures" / "gateway_template.yaml"

# A handler that keeps the current request on its module, as a powertools resolver keeps `current_event` on
# itself: two requests inside one instance at once would read each other's.
OCCUPANCY_HANDLER = """
import threading
import time

_lock = threading.Lock()
inside = 0
most_inside = 0
current = None


def lambda_handler(event, context):
    global inside, most_inside, current
    with _lock:
        inside += 1
        most_inside = max(most_inside, inside)
    current = event
    time.sleep(0.02)
    seen = current["n"]
    with _lock:
        inside -= 1
    return {"n": seen, "instance": __name__}
"""


@pytest.fixture
def occupancy_runner(tmp_path: Path) -> FunctionRunner:
    (tmp_path / "app.py").write_text(OCCUPANCY_HANDLER)
    function = FunctionDef("OccupancyFunction", tmp_path, "app.lambda_handler", 30, 128, {})
    return FunctionRunner({"OccupancyFunction": function}, max_instances=8)


def test_no_instance_serves_two_requests_at_once(occupancy_runner: FunctionRunner) -> None:
    # Given a handler that keeps the request it is serving in module state
    # When 64 requests arrive from 16 threads at once
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: occupancy_runner.invoke("OccupancyFunction", {"n": n}), range(64)))
    # Then every request read its own event back
    assert [a["n"] for a in answers] == list(range(64))
    # And no instance ever had two requests inside it, while several instances shared the work (up to the cap)
    modules = occupancy_runner.modules("OccupancyFunction")
    assert 1 < len(modules) <= 8
    assert all(m.most_inside == 1 for m in modules), [m.most_inside for m in modules]
    assert len({a["instance"] for a in answers}) == len(modules)


def test_a_lone_caller_is_served_by_the_first_instance_again(occupancy_runner: FunctionRunner) -> None:
    # Given a function that has scaled out to several instances
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: occupancy_runner.invoke("OccupancyFunction", {"n": n}), range(32)))
    first = occupancy_runner.module("OccupancyFunction")
    # When requests come one after another
    instances = {occupancy_runner.invoke("OccupancyFunction", {"n": n})["instance"] for n in range(5)}
    # Then each is served by the first instance (its warm state, e.g. a cache a test clears, is the one used)
    assert instances == {first.__name__}


def test_a_full_pool_queues_callers_instead_of_failing(tmp_path: Path) -> None:
    # Given a function capped at two instances
    (tmp_path / "app.py").write_text(OCCUPANCY_HANDLER)
    runner = FunctionRunner({"F": FunctionDef("F", tmp_path, "app.lambda_handler", 30, 128, {})}, max_instances=2)
    # When ten callers arrive at once
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda n: runner.invoke("F", {"n": n}), range(10)))
    # Then all are answered, by no more than two instances, one request each at a time
    assert sorted(a["n"] for a in answers) == list(range(10))
    assert len(runner.modules("F")) == 2
    assert all(m.most_inside == 1 for m in runner.modules("F"))


# A powertools resolver route that reads the current event after a pause (as a route does after a query).
RESOLVER_HANDLER = """
import time

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()


@app.get("/n/<n>")
def get_n(n):
    time.sleep(0.01)
    return {"path": n, "event": app.current_event.path_parameters["n"]}


def lambda_handler(event, context):
    return app.resolve(event, context)
"""


def _resolver_event(n: int) -> dict[str, Any]:
    return {
        "version": "2.0", "routeKey": "GET /n/{n}", "rawPath": f"/n/{n}", "rawQueryString": "", "headers": {},
        "pathParameters": {"n": str(n)}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": f"/n/{n}", "sourceIp": "127.0.0.1"}, "stage": "$default"},
    }  # fmt: skip


def test_requests_to_different_functions_never_see_each_others_event(tmp_path: Path) -> None:
    # Given two functions whose resolvers read the current event mid-request (powertools keeps it per process)
    (tmp_path / "app.py").write_text(RESOLVER_HANDLER)
    functions = {name: FunctionDef(name, tmp_path, "app.lambda_handler", 30, 128, {}) for name in ("A", "B")}
    runner = FunctionRunner(functions, max_instances=4)

    def call(n: int) -> dict[str, Any]:
        answer: dict[str, Any] = runner.invoke("AB"[n % 2], _resolver_event(n))
        return json.loads(answer["body"])

    # When 200 requests run 16 at a time across both
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(200)))
    # Then each handler read its own request's event
    assert [a for a in answers if a["path"] != a["event"]] == []


@pytest.fixture
def live_gateway(db: Callable[[], UnitOfWork]) -> Iterator[str]:
    server = make_server(TEMPLATE_PATH, "127.0.0.1", 0)
    serve_in_thread(server)
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _request(address: str, method: str, path: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, body=payload, headers={"content-type": "application/json", **headers})
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def test_concurrent_users_each_get_their_own_answers(db: Callable[[], UnitOfWork], live_gateway: str) -> None:
    # Given 8 users, each with a different balance and an API key, through the real template and authorizer
    users: list[tuple[uuid.UUID, str, Decimal]] = []
    for i in range(8):
        start = Decimal(1000 + 100 * i)
        user_id = funded_user(db, str(start))
        key = api_key_for(user_id)
        users.append((user_id, key, start))
    mismatches: list[str] = []

    def session(user_id: uuid.UUID, key: str, start: Decimal) -> Decimal:
        headers = {"x-api-key": key}
        expected = start
        for n in range(20):
            status, body = _request(live_gateway, "GET", "/credits/balance", headers)
            if status != 200 or Decimal(body["balance"]) != expected:
                mismatches.append(f"{user_id} balance #{n}: {status} {body} (expected {expected})")
            status, held = _request(live_gateway, "POST", "/credits/holds", headers, {"amount": "2"})
            if status != 201:
                mismatches.append(f"{user_id} hold #{n}: {status} {held}")
                continue
            path = f"/credits/holds/{held['hold_id']}/capture"
            status, captured = _request(live_gateway, "POST", path, headers, {"amount": "1"})
            if status == 200:
                expected -= 1
            if status != 200 or Decimal(captured["balance"]) != expected or captured["charged"] != "1.0000":
                mismatches.append(f"{user_id} capture #{n}: {status} {captured} (expected {expected})")
        return expected

    # When all 8 work at once: 20 rounds each of balance, hold, capture (480 requests)
    with ThreadPoolExecutor(len(users)) as pool:
        finals = list(pool.map(lambda u: session(*u), users))
    # Then every answer was the caller's own, and each balance is exactly what that user's captures left
    assert mismatches == []
    for (user_id, _, start), final in zip(users, finals, strict=True):
        assert final == start - 20
        assert balance(db, user_id) == final
    assert_consistent(db)


def test_fifty_clients_connecting_at_once_are_all_served(db: Callable[[], UnitOfWork]) -> None:
    # Given a gateway whose accept loop has not started yet (a burst that arrives faster than it accepts)
    server = make_server(FIXTURE_TEMPLATE, "127.0.0.1", 0)
    assert isinstance(server, GatewayServer)
    port = server.server_address[1]
    serving = False
    try:
        # When 50 clients connect at once
        sockets: list[socket.socket] = []
        refused: list[str] = []
        for _ in range(50):
            try:
                sockets.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
            except OSError as exc:
                refused.append(type(exc).__name__)
        # Then the listen backlog holds every one of them
        assert refused == [], f"{len(refused)} of 50 connections were not accepted: {set(refused)}"
        serve_in_thread(server)
        serving = True
        # And each is served once the gateway runs
        started = time.monotonic()

        def ask(sock: socket.socket) -> bytes:
            with sock:
                sock.settimeout(10)
                sock.sendall(b"GET /public/x?shape=bare HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)

        with ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(ask, sockets))
        assert all(r.startswith(b"HTTP/1.1 200") and r.endswith(b'{"bare": true}') for r in replies)
        assert time.monotonic() - started < 10
    finally:
        if serving:  # shutdown() waits for a serve_forever loop
            server.shutdown()
        server.server_close()


def test_concurrent_requests_keep_their_own_route_and_body() -> None:
    # Given the fixture template's resolver route (POST /widgets validates and echoes its body)
    server = make_server(FIXTURE_TEMPLATE, "127.0.0.1", 0)
    serve_in_thread(server)
    address = f"127.0.0.1:{server.server_address[1]}"
    errors: list[str] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        status, body = _request(address, "POST", "/widgets", {}, {"name": f"w{n}", "size": n + 1})
        if status != 201 or body != {"name": f"w{n}", "size": n + 1}:
            with lock:
                errors.append(f"{n}: {status} {body}")

    try:
        # When 300 requests with different bodies run 24 at a time
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(post, range(300)))
        # Then each answer is its own request's
        assert errors == []
    finally:
        server.shutdown()
        server.server_close()
