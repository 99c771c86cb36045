"""Fault injection against a real `tollgate serve` process: what the fault-injection test and bench/faults.py share.

Traffic is what providers and clients send: signed Stripe `checkout.session.completed` deliveries for a credit
pack, and `POST /credits/usage` charges carrying an `Idempotency-Key`. Each request is retried until it gets a
definitive answer (2xx, or a final 4xx): a refused or cut connection, a 5xx or a 429 is retried, as Stripe
redelivers and a careful client repeats a keyed charge. Meanwhile the serving process is killed with SIGKILL at
random moments and started again (or the database is stopped and started). Afterwards every balance must be
exactly what the acknowledged answers promise: each event granted once, each key charged once.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.credits_support import set_costs
from tests.gateway_support import api_key_for
from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.models.credits import CreditPack
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event, stripe_signature

STRIPE_SECRET = "whsec_fault_injection_secret"
START_CREDITS = Decimal(1000)  # enough that no charge of a run is refused whatever the order
PACK_CREDITS = Decimal(100)
PACK_PRICE_MINOR = 500
OPERATION = "chat"
OPERATION_COST = Decimal(1)
# The answers a provider or a client treats as "try again" (everything else is definitive).
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REQUEST_TIMEOUT_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve_environment(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `tollgate serve` child: the test's own settings, a database, no provider API keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "LEMONSQUEEZY_", "CLERK_"))}
    env.update(
        DATABASE_URL=database_url,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        PAYMENTS_LIVE_MODE="false",
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="WARNING",
        # The authorizer's verdicts stay warm across a database outage inside one process, as in a warm container.
        AUTHORIZER_CACHE_SECONDS="300",
        **extra,
    )
    env.setdefault("JWT_SIGNING_KEY", os.urandom(32).hex())
    return env


class ServeProcess:
    """`tollgate serve` as a child process on a fixed port; killed with SIGKILL and started again at will."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        *,
        port: int | None = None,
        migrate: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.env = env
        self.extra_args = list(extra_args or [])
        self.workdir = workdir
        self.port = port or free_port()
        self.migrate = migrate
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = workdir / "serve.log"

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self, timeout: float = 60.0) -> float:
        """Start the server and wait until /health answers 200; the seconds that took."""
        started = time.monotonic()
        command = [str(Path(sys.executable).with_name("tollgate")), "serve", "--port", str(self.port)]
        if not self.migrate:
            command.append("--no-migrate")
        command.extend(self.extra_args)
        with self.log_path.open("ab") as log:
            # cwd is a scratch folder: no developer .env is read, and local data stays out of the tree.
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"tollgate serve exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = request(self.address, "GET", "/health", timeout=2)
                if status == 200:
                    return time.monotonic() - started
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"tollgate serve was not ready within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_errors(self, limit: int = 20) -> str:
        """The server's error records, one line each: what a failed answer came from."""
        found: list[str] = []
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        for n, line in enumerate(lines):
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("level") == "ERROR":
                    cause = (record.get("exception") or "").strip().splitlines()[-1:] or [""]
                    found.append(f"{record.get('function_name')}: {record.get('message')}: {cause[0]}")
            elif line.startswith("ERROR tollgate_local.gateway"):
                cause = next((later for later in lines[n + 1 : n + 200] if later and not later[0].isspace()
                              and not later.startswith("Traceback")), "")  # fmt: skip
                found.append(f"{line}: {cause}")
        counted = Counter(found)
        return "\n".join(f"{count} x {text}" for text, count in counted.most_common(limit))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def request(
    address: tuple[str, int],
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> tuple[int, Any]:
    """One HTTP exchange on a fresh connection (a killed server leaves nothing to reuse)."""
    connection = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"connection": "close", **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        retry_after = response.getheader("retry-after")
    finally:
        connection.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = {"raw": raw.decode(errors="replace")}
    if isinstance(data, dict) and retry_after is not None:
        data["_retry_after"] = retry_after
    return response.status, data


@dataclass
class Tally:
    """What the traffic saw; shared by the client threads."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    kills: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    # Every answer that was not 2xx, by (path, status, error code): where a failure came from.
    failures: Counter[tuple[str, int, str | None]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, outcome: str) -> None:
        with self.lock:
            self.attempts += 1
            self.statuses[outcome] += 1


def until_definitive(
    address: tuple[str, int],
    method: str,
    path: str,
    make: Callable[[], tuple[bytes, dict[str, str]]],
    tally: Tally,
    *,
    give_up_after: float = 120.0,
    on_answer: Callable[[int, Any], None] | None = None,
) -> tuple[int, Any]:
    """Send until the answer is definitive; `make` builds each attempt (Stripe signs every redelivery anew)."""
    with tally.lock:
        tally.requests += 1
    deadline = time.monotonic() + give_up_after
    pause = 0.02
    first = True
    while True:
        if not first:
            with tally.lock:
                tally.retries += 1
        first = False
        body, headers = make()
        try:
            status, data = request(address, method, path, body=body, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            tally.count(type(exc).__name__)
        else:
            tally.count(str(status))
            if not 200 <= status < 300:
                error = data.get("error") if isinstance(data, dict) else None
                code = error.get("code") if isinstance(error, dict) else None
                with tally.lock:
                    tally.failures[(path, status, code)] += 1
            if on_answer is not None:
                on_answer(status, data)
            if status not in RETRY_STATUSES:
                return status, data
        if time.monotonic() > deadline:
            raise TimeoutError(f"{method} {path}: no definitive answer within {give_up_after}s")
        time.sleep(pause * (0.5 + random.random()))
        pause = min(pause * 2, 0.4)


# --- the world the traffic acts on -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Customer:
    user_id: uuid.UUID
    api_key: str
    stripe_customer: str


@dataclass(frozen=True)
class World:
    pack_id: uuid.UUID
    customers: tuple[Customer, ...]


def seed_world(users: int) -> World:
    """Users with START_CREDITS and an API key each, a pack, and the cost of OPERATION (committed)."""
    with UnitOfWork() as uow:
        set_costs(uow.session, {OPERATION: str(OPERATION_COST)})
        pack = CreditPack(
            name="Fault pack",
            credits=PACK_CREDITS,
            price=Decimal(PACK_PRICE_MINOR) / 100,
            currency="usd",
            expires_after_days=365,
            stripe_price_id=None,
            lemonsqueezy_variant_id=None,
            active=True,
        )
        uow.session.add(pack)
        ids = []
        for _ in range(users):
            user = make_user(uow.session)
            ledger.grant(uow.session, user.id, kind="promo", amount=START_CREDITS, source_key="promo:faults")
            ids.append(user.id)
        uow.session.flush()
        pack_id = pack.id
        uow.commit()
    customers = tuple(
        Customer(user_id, api_key_for(user_id, name="faults"), f"cus_f{n:04d}") for n, user_id in enumerate(ids)
    )
    return World(pack_id, customers)


# --- the two kinds of traffic ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """Acknowledged effects, and anything that broke the contract along the way."""

    events: dict[str, uuid.UUID] = field(default_factory=dict)  # acknowledged event id -> its buyer
    charges: dict[tuple[uuid.UUID, str], str] = field(default_factory=dict)  # (user, key) -> transaction id
    problems: list[str] = field(default_factory=list)
    phase: str = "traffic"  # what was being done to the server; each acknowledgement is tagged with it
    acked_in: dict[str, str] = field(default_factory=dict)  # event id or idempotency key -> phase
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def deliver_pack_purchase(
    address: tuple[str, int], world: World, customer: Customer, tally: Tally, outcome: Outcome, redeliver: bool
) -> None:
    """One checkout.session.completed, delivered until 2xx (and, like Stripe sometimes, once more after)."""
    session = stripe_checkout_session(
        user_id=str(customer.user_id), item_id=str(world.pack_id), amount_minor=PACK_PRICE_MINOR, currency="usd",
        customer=customer.stripe_customer,
    )  # fmt: skip
    event = stripe_event("checkout.session.completed", session)
    body = json.dumps(event)

    def make() -> tuple[bytes, dict[str, str]]:
        return body.encode(), {
            "content-type": "application/json",
            "stripe-signature": stripe_signature(body, STRIPE_SECRET),
        }

    for attempt in range(2 if redeliver else 1):
        status, data = until_definitive(address, "POST", "/webhooks/stripe", make, tally)
        if not 200 <= status < 300:
            outcome.problem(f"event {event['id']}: final {status} {data}")
            return
        if attempt == 0:
            with outcome.lock:
                outcome.events[event["id"]] = customer.user_id
                outcome.acked_in[event["id"]] = outcome.phase
        elif not (isinstance(data, dict) and data.get("duplicate") is True):
            outcome.problem(f"event {event['id']}: a redelivery after 2xx was not a duplicate: {status} {data}")


def charge_with_key(address: tuple[str, int], customer: Customer, tally: Tally, outcome: Outcome, replay: bool) -> None:
    """One keyed charge, repeated until answered (and, like a client unsure of its answer, once more after)."""
    key = f"fault-{uuid.uuid4().hex}"
    body = json.dumps({"operation": OPERATION}).encode()
    headers = {"content-type": "application/json", "x-api-key": customer.api_key, "idempotency-key": key}
    seen: list[str] = []
    for attempt in range(2 if replay else 1):
        status, data = until_definitive(address, "POST", "/credits/usage", lambda: (body, headers), tally)
        if status not in (200, 201) or not isinstance(data, dict) or "transaction_id" not in data:
            outcome.problem(f"charge {key}: final {status} {data}")
            return
        seen.append(str(data["transaction_id"]))
        if attempt == 0:
            with outcome.lock:
                outcome.charges[(customer.user_id, key)] = seen[0]
                outcome.acked_in[key] = outcome.phase
    if len(set(seen)) > 1:
        outcome.problem(f"charge {key}: a replay answered another transaction: {seen}")


def run_traffic(
    address: tuple[str, int],
    world: World,
    tally: Tally,
    outcome: Outcome,
    *,
    events_per_user: int,
    charges_per_user: int,
    workers: int,
    rng: random.Random,
) -> None:
    """Every customer's deliveries and charges, shuffled, from `workers` threads at once."""
    jobs: list[Callable[[], None]] = []
    for customer in world.customers:
        for _ in range(events_per_user):
            again = rng.random() < 0.2
            jobs.append(partial(deliver_pack_purchase, address, world, customer, tally, outcome, again))
        for _ in range(charges_per_user):
            again = rng.random() < 0.2
            jobs.append(partial(charge_with_key, address, customer, tally, outcome, again))
    rng.shuffle(jobs)
    queue = list(reversed(jobs))
    queue_lock = threading.Lock()

    def worker() -> None:
        while True:
            with queue_lock:
                if not queue:
                    return
                job = queue.pop()
            try:
                job()
            except Exception as exc:  # a job that never got a definitive answer is a finding, not a crash
                outcome.problem(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, name=f"traffic-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class Killer:
    """Kills the serving process with SIGKILL at random moments and starts it again, until stopped."""

    def __init__(self, serve: ServeProcess, tally: Tally, rng: random.Random, up: tuple[float, float]) -> None:
        self.serve, self.tally, self.rng, self.up = serve, tally, rng, up
        self.restart_seconds: list[float] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def __enter__(self) -> Killer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.rng.uniform(*self.up)):
                self.serve.kill()
                with self.tally.lock:
                    self.tally.kills += 1
                self.restart_seconds.append(self.serve.start())
        except BaseException as exc:  # surfaced by the caller: a server that cannot restart ends the run
            self.error = exc


# --- what the database says afterwards ------------------------------------------------------------------------
def mismatches(world: World, outcome: Outcome) -> list[str]:
    """Every way the database disagrees with the acknowledged answers (empty when exact)."""
    found: list[str] = []
    with UnitOfWork() as uow:
        session = uow.session
        for customer in world.customers:
            uid = customer.user_id
            events = sum(1 for buyer in outcome.events.values() if buyer == uid)
            charges = sum(1 for user, _ in outcome.charges if user == uid)
            expected = START_CREDITS + PACK_CREDITS * events - OPERATION_COST * charges
            actual = session.execute(
                text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": uid}
            ).scalar_one()
            if Decimal(actual) != expected:
                found.append(f"user {uid}: balance {actual}, acknowledged effects give {expected}")
            grants = session.execute(
                text("SELECT count(*) FROM credit_grants WHERE user_id = :u AND source_key LIKE 'stripe:%'"),
                {"u": uid},
            ).scalar_one()
            if grants != events:
                found.append(f"user {uid}: {grants} pack grants for {events} acknowledged events")
        stored = Counter(
            session.execute(text("SELECT event_id FROM webhook_events WHERE provider = 'stripe'")).scalars().all()
        )
        for event_id in outcome.events:
            if stored[event_id] != 1:
                found.append(f"event {event_id} ({outcome.acked_in.get(event_id)}): stored {stored[event_id]} times")
        rows = session.execute(
            text("SELECT user_id, idempotency_key, id FROM credit_transactions WHERE idempotency_key LIKE 'fault-%'")
        ).all()
        by_key: dict[tuple[uuid.UUID, str], list[Any]] = {}
        for row in rows:
            by_key.setdefault((row.user_id, row.idempotency_key), []).append(row)
        for (uid, key), transaction_id in outcome.charges.items():
            kept = by_key.pop((uid, key), [])
            if len(kept) != 1 or str(kept[0].id) != transaction_id:
                kept_ids = [str(r.id) for r in kept]
                phase = outcome.acked_in.get(key)
                found.append(f"charge {key} ({phase}): answered {transaction_id}, the ledger has {kept_ids}")
        for (_, key), kept in by_key.items():
            found.append(f"charge {key}: in the ledger ({len(kept)} rows) but never acknowledged")
        report = ledger.reconcile(session)
        found.extend(f"reconcile: {m.user_id} {', '.join(m.problems)}" for m in report.mismatches)
    return found


# --- the database going away ------------------------------------------------------------------------------------
class EmbeddedDatabase:
    """An embedded PostgreSQL of its own (never the shared test server), stopped and started under traffic."""

    def __init__(self, folder: Path, database: str) -> None:
        from tollgate_local.database import start_embedded

        self.server, self.url = start_embedded(folder / "pgdata", database, throwaway=True)

    def stop(self) -> None:
        """A fast shutdown: sessions are terminated (57P01), new connections refused, then the socket is gone."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import, one per binary

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        with self.server._lock:  # pgserver's own start, under its own lock, on the same socket folder
            self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


@dataclass(frozen=True)
class Probe:
    """One single-attempt request and what it got."""

    route: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    code: str | None
    retry_after: str | None
    detail: str = ""


def probe_round(address: tuple[str, int], world: World, customer: Customer, outcome: Outcome) -> list[Probe]:
    """A balance read, a keyed charge and a pack purchase, each sent once; acknowledged effects are recorded."""
    key = f"fault-{uuid.uuid4().hex}"
    session = stripe_checkout_session(
        user_id=str(customer.user_id), item_id=str(world.pack_id), amount_minor=PACK_PRICE_MINOR, currency="usd",
        customer=customer.stripe_customer,
    )  # fmt: skip
    event = stripe_event("checkout.session.completed", session)
    event_body = json.dumps(event)
    auth = {"x-api-key": customer.api_key, "content-type": "application/json"}
    sends: list[tuple[str, str, str, bytes | None, dict[str, str]]] = [
        ("balance", "GET", "/credits/balance", None, auth),
        ("charge", "POST", "/credits/usage", json.dumps({"operation": OPERATION}).encode(),
         {**auth, "idempotency-key": key}),
        ("webhook", "POST", "/webhooks/stripe", event_body.encode(),
         {"content-type": "application/json", "stripe-signature": stripe_signature(event_body, STRIPE_SECRET)}),
    ]  # fmt: skip
    probes: list[Probe] = []
    for route, method, path, body, headers in sends:
        started = time.monotonic()
        try:
            status, data = request(address, method, path, body=body, headers=headers, timeout=10)
        except (OSError, http.client.HTTPException):
            probes.append(Probe(route, started, time.monotonic(), None, None, None))
            continue
        ended = time.monotonic()
        error = data.get("error") if isinstance(data, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        retry_after = data.get("_retry_after") if isinstance(data, dict) else None
        detail = "" if 200 <= status < 300 else json.dumps(data)[:300]
        probes.append(Probe(route, started, ended, status, code, retry_after, detail))
        if 200 <= status < 300 and route == "charge":
            with outcome.lock:
                outcome.charges[(customer.user_id, key)] = str(data["transaction_id"])
                outcome.acked_in[key] = outcome.phase
        if 200 <= status < 300 and route == "webhook":
            with outcome.lock:
                outcome.events[event["id"]] = customer.user_id
                outcome.acked_in[event["id"]] = outcome.phase
    return probes


def steady_traffic(
    address: tuple[str, int], world: World, tally: Tally, outcome: Outcome, stop: threading.Event, workers: int
) -> list[threading.Thread]:
    """Workers sending keyed charges and pack purchases (each retried until definitive) until `stop` is set."""

    def work(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            customer = rng.choice(world.customers)
            try:
                if rng.random() < 0.5:
                    charge_with_key(address, customer, tally, outcome, replay=False)
                else:
                    deliver_pack_purchase(address, world, customer, tally, outcome, redeliver=False)
            except Exception as exc:
                outcome.problem(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(n,), name=f"steady-{n}", daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    return threads
