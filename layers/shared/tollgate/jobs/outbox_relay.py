"""OutboxRelay: delivers every outbox event at least once to each of its targets (issue 17).

One pass, in three short steps so no lock is held while anything is delivered:
1. fan-out (one transaction): events not yet dispatched are claimed with FOR UPDATE SKIP LOCKED and get one
   `outbox_deliveries` row per target - the EventBridge bus (`eventbridge`), each internal consumer registered
   for the type (`consumer:<module.function>`), each live webhook endpoint subscribed (`webhook:<id>`);
2. claim (one transaction): due PENDING deliveries are claimed with FOR UPDATE SKIP LOCKED, their attempt counted
   and their `next_attempt_at` pushed to the end of a lease, then committed: a second relay skips them, and a
   relay that dies mid-delivery leaves them due again when the lease ends;
3. deliver outside any transaction (webhooks OUTBOX_WEBHOOK_CONCURRENCY at a time, a failure of any kind being
   that target's alone), then mark each row (DELIVERED, or due again after 2^n backoff, or DEAD after
   OUTBOX_MAX_ATTEMPTS) in one short transaction. A mark only lands if the row is still the same attempt.

At least once: a delivery that succeeded but whose mark was lost is delivered again; every copy carries the
event's stable id (EventBridge Detail.id, the webhook-id header, OutboxMessage.id) for consumers to deduplicate.
Events are not ordered across retries. A failing target delays nothing but itself.
"""

from __future__ import annotations

import importlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from tollgate.auth.sealing import unseal
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import ValidationFailed
from tollgate.observability import logger
from tollgate.outbound_webhooks import (
    Resolver,
    SendResult,
    resolve_url,
    secret_context,
    send,
    signed_headers,
    system_resolver,
)
from tollgate.outbox import OutboxMessage, consumer_by_name, consumers_for

# Modules that register internal consumers (`tollgate.outbox.register_consumer`) at import: the relay imports
# them before fanning out, so their event types get a `consumer:` delivery.
CONSUMER_MODULES: tuple[str, ...] = ("tollgate.services.auto_topup",)
# Sweeps each scheduled run makes once, before its passes: `module:function`, called with a unit-of-work factory.
# Auto top-up's re-drives or resolves attempts a dead delivery or a dead function left in flight.
SWEEPS: tuple[str, ...] = ("tollgate.services.auto_topup:recover_stale",)

EVENTBRIDGE = "eventbridge"
SOURCE = "tollgate"
PUT_EVENTS_BATCH = 10  # PutEvents takes at most 10 entries


def load_consumers() -> None:
    for module in CONSUMER_MODULES:
        importlib.import_module(module)


def backoff_seconds(attempts: int, settings: Settings) -> float:
    """The wait after the `attempts`-th failed attempt: base * 2^(attempts-1), capped."""
    return float(
        min(settings.outbox_backoff_base_seconds * 2 ** max(attempts - 1, 0), settings.outbox_backoff_max_seconds)
    )


# --- targets ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: uuid.UUID
    target: str
    attempts: int
    endpoint_id: uuid.UUID | None
    url: str | None
    secret_sealed: str | None
    message: OutboxMessage


class EventSink(Protocol):
    def put(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        """Publish; per message None (accepted) or why it failed."""
        ...


class EventBridgeSink:
    def __init__(self, bus_name: str, client: Any) -> None:
        self.bus_name = bus_name
        self.client = client

    def put(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        entries = [
            {
                "Source": SOURCE,
                "DetailType": m.type,
                "Detail": json.dumps(m.as_payload(), separators=(",", ":")),
                "EventBusName": self.bus_name,
                "Time": m.created_at,
            }
            for m in messages
        ]
        try:
            answer = self.client.put_events(Entries=entries)
        except Exception as exc:  # the whole call failed (throttled, network): every entry is retried
            return [f"{type(exc).__name__}: {exc}"[:500]] * len(messages)
        results: list[str | None] = []
        for entry in answer.get("Entries", []):
            code = entry.get("ErrorCode")
            results.append(f"{code}: {entry.get('ErrorMessage', '')}"[:500] if code else None)
        return results + ["no answer for the entry"] * (len(messages) - len(results))


class ConsoleSink:
    """Locally: every event is one JSON line on the console (as the bus would receive it)."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write

    def put(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        for m in messages:
            self.write(json.dumps({"source": SOURCE, "detail-type": m.type, "detail": m.as_payload()}))
        return [None] * len(messages)


def default_sink(settings: Settings) -> EventSink:
    if settings.outbox_delivery == "aws":
        if not settings.outbox_event_bus_name:
            from tollgate.errors import ConfigurationError

            raise ConfigurationError("OUTBOX_EVENT_BUS_NAME is required when OUTBOX_DELIVERY=aws")
        import boto3  # only the relay talks to EventBridge

        return EventBridgeSink(settings.outbox_event_bus_name, boto3.client("events", region_name=settings.aws_region))
    return ConsoleSink()


# --- one pass ---------------------------------------------------------------------------------------------------
FAN_OUT = text(
    "SELECT id, type FROM outbox_events WHERE dispatched_at IS NULL ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
)
ENDPOINTS = text("SELECT id, events FROM webhook_endpoints WHERE deleted_at IS NULL")
INSERT_DELIVERIES = text(
    "INSERT INTO outbox_deliveries (id, event_id, target, endpoint_id, status, attempts, next_attempt_at, created_at) "
    "SELECT d.id, d.event_id, d.target, d.endpoint_id, 'PENDING', 0, :now, :now FROM unnest(CAST(:ids AS uuid[]), "
    "CAST(:events AS uuid[]), CAST(:targets AS text[]), CAST(:endpoints AS uuid[])) AS d(id, event_id, target, "
    "endpoint_id) ON CONFLICT (event_id, target) DO NOTHING"
)
MARK_DISPATCHED = text("UPDATE outbox_events SET dispatched_at = :now WHERE id = ANY(CAST(:ids AS uuid[]))")
CLAIM = text(
    """
    WITH due AS (
        SELECT id FROM outbox_deliveries WHERE status = 'PENDING' AND next_attempt_at <= :now
        ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox_deliveries d SET attempts = d.attempts + 1, last_attempt_at = :now, next_attempt_at = :lease_end
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.target, d.attempts, d.endpoint_id, d.event_id
    """
)
CLAIMED_DETAILS = text(
    "SELECT e.id, e.type, e.created_at, e.user_id, e.data, w.url, w.secret_sealed, w.deleted_at "
    "FROM outbox_events e LEFT JOIN webhook_endpoints w ON w.id = CAST(:endpoint AS uuid) WHERE e.id = :event"
)
EVENTS_BY_ID = text(
    "SELECT id, type, created_at, user_id, data FROM outbox_events WHERE id = ANY(CAST(:ids AS uuid[]))"
)
ENDPOINTS_BY_ID = text(
    "SELECT id, url, secret_sealed, deleted_at FROM webhook_endpoints WHERE id = ANY(CAST(:ids AS uuid[]))"
)
# Every row of a batch in one statement; a row is marked only if it is still the attempt this relay claimed.
MARK = text(
    """
    UPDATE outbox_deliveries d SET status = m.status, next_attempt_at = m.next, delivered_at = m.delivered_at,
        last_error = m.error, last_status_code = m.status_code, last_response = m.response
    FROM unnest(CAST(:ids AS uuid[]), CAST(:attempts AS integer[]), CAST(:statuses AS text[]),
                CAST(:nexts AS timestamptz[]), CAST(:delivered AS timestamptz[]), CAST(:errors AS text[]),
                CAST(:codes AS integer[]), CAST(:responses AS text[]))
        AS m(id, attempts, status, next, delivered_at, error, status_code, response)
    WHERE d.id = m.id AND d.attempts = m.attempts AND d.status = 'PENDING'
    """
)


@dataclass
class RelayReport:
    dispatched: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    passes: int = 0
    by_target: dict[str, int] = field(default_factory=dict)

    def add(self, other: RelayReport) -> None:
        self.dispatched += other.dispatched
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.passes += other.passes

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": "OutboxRelay", "dispatched": self.dispatched, "delivered": self.delivered,
            "failed": self.failed, "dead": self.dead, "passes": self.passes,
        }  # fmt: skip

    @property
    def worked(self) -> bool:
        return bool(self.dispatched or self.delivered or self.failed or self.dead)


def _subscribed(events: Sequence[str], event_type: str) -> bool:
    return "*" in events or event_type in events


# (url, body, headers, timeout, the addresses the URL was checked at) -> the answer
Sender = Callable[[str, str, dict[str, str], float, tuple[str, ...]], SendResult]


def _send(url: str, body: str, headers: dict[str, str], timeout: float, addresses: tuple[str, ...]) -> SendResult:
    return send(url, body, headers, timeout=timeout, addresses=addresses)


class OutboxRelay:
    name = "OutboxRelay"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        sink: EventSink | None = None,
        session_factory: sessionmaker[Session] | None = None,
        sender: Sender | None = None,
        clock: Callable[[], datetime] = utcnow,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings or get_settings()
        self._sink = sink
        self.session_factory = session_factory
        self.sender = sender or _send
        self.clock = clock
        self.resolver = resolver

    @property
    def sink(self) -> EventSink:
        if self._sink is None:
            self._sink = default_sink(self.settings)
        return self._sink

    def _uow(self) -> UnitOfWork:
        return UnitOfWork(self.session_factory)

    # step 1
    def fan_out(self, limit: int) -> int:
        load_consumers()
        now = self.clock()
        with self._uow() as uow:
            s = uow.session
            events = s.execute(FAN_OUT, {"limit": limit}).all()
            if not events:
                return 0
            endpoints = s.execute(ENDPOINTS).all()
            ids: list[uuid.UUID] = []
            event_ids: list[uuid.UUID] = []
            targets: list[str] = []
            endpoint_ids: list[uuid.UUID | None] = []

            def add(event_id: uuid.UUID, target: str, endpoint: uuid.UUID | None) -> None:
                ids.append(new_id())
                event_ids.append(event_id)
                targets.append(target)
                endpoint_ids.append(endpoint)

            for event in events:
                add(event.id, EVENTBRIDGE, None)
                for name in consumers_for(event.type):
                    add(event.id, f"consumer:{name}", None)
                for endpoint in endpoints:
                    if _subscribed(endpoint.events, event.type):
                        add(event.id, f"webhook:{endpoint.id}", endpoint.id)
            s.execute(
                INSERT_DELIVERIES,
                {"ids": ids, "events": event_ids, "targets": targets, "endpoints": endpoint_ids, "now": now},
            )
            s.execute(MARK_DISPATCHED, {"ids": [e.id for e in events], "now": now})
            uow.commit()
            return len(events)

    # step 2
    def claim(self, limit: int) -> list[Claimed]:
        now = self.clock()
        lease_end = now + timedelta(seconds=self.settings.outbox_lease_seconds)
        with self._uow() as uow:
            s = uow.session
            rows = s.execute(CLAIM, {"now": now, "limit": limit, "lease_end": lease_end}).all()
            if not rows:
                return []
            events = {e.id: e for e in s.execute(EVENTS_BY_ID, {"ids": list({r.event_id for r in rows})}).all()}
            endpoint_ids = list({r.endpoint_id for r in rows if r.endpoint_id is not None})
            endpoints = (
                {w.id: w for w in s.execute(ENDPOINTS_BY_ID, {"ids": endpoint_ids}).all()} if endpoint_ids else {}
            )
            uow.commit()
        claimed = []
        for r in rows:
            e = events[r.event_id]
            w = endpoints.get(r.endpoint_id) if r.endpoint_id is not None else None
            message = OutboxMessage(e.id, e.type, e.created_at, e.user_id, dict(e.data))
            claimed.append(
                Claimed(
                    r.id,
                    r.target,
                    r.attempts,
                    r.endpoint_id,
                    w.url if w is not None and w.deleted_at is None else None,
                    w.secret_sealed if w is not None else None,
                    message,
                )
            )
        return claimed

    # step 3
    def deliver(self, claimed: Sequence[Claimed]) -> dict[uuid.UUID, SendResult]:
        results: dict[uuid.UUID, SendResult] = {}
        bus = [c for c in claimed if c.target == EVENTBRIDGE]
        for start in range(0, len(bus), PUT_EVENTS_BATCH):
            chunk = bus[start : start + PUT_EVENTS_BATCH]
            try:
                errors = self.sink.put([c.message for c in chunk])
            except Exception as exc:  # a sink that raises fails its chunk, not the pass
                errors = [f"{type(exc).__name__}: {exc}"[:500]] * len(chunk)
            for c, error in zip(chunk, errors, strict=True):
                results[c.delivery_id] = SendResult(error is None, None, None, error)
        for c in claimed:
            if c.target.startswith("consumer:"):
                results[c.delivery_id] = self._guarded(self._consume, c)
        # Webhooks side by side: a slow endpoint costs the pass one timeout, not one per delivery.
        hooks = [c for c in claimed if c.target.startswith("webhook:")]
        if hooks:
            workers = min(self.settings.outbox_webhook_concurrency, len(hooks))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="outbox-webhook") as pool:
                for c, result in zip(hooks, pool.map(lambda c: self._guarded(self._webhook, c), hooks), strict=True):
                    results[c.delivery_id] = result
        for c in claimed:  # a target of no known kind fails (retried, then DEAD) rather than stopping the pass
            results.setdefault(c.delivery_id, SendResult(False, None, None, "unknown target"))
        return results

    @staticmethod
    def _guarded(deliver: Callable[[Claimed], SendResult], c: Claimed) -> SendResult:
        """One target's failure of any kind (a secret that no longer unseals, a bug) is that target's alone."""
        try:
            return deliver(c)
        except Exception as exc:
            logger.warning("outbox delivery failed", extra={"target": c.target, "event_id": str(c.message.id)})
            return SendResult(False, None, None, f"{type(exc).__name__}: {exc}"[:500])

    def _consume(self, c: Claimed) -> SendResult:
        fn = consumer_by_name(c.target.removeprefix("consumer:"))
        if fn is None:
            return SendResult(False, None, None, "the consumer is not registered in this process")
        try:
            fn(c.message)
        except Exception as exc:  # a consumer's failure is retried later; it must not stop the pass
            logger.warning("outbox consumer failed", extra={"target": c.target, "event_id": str(c.message.id)})
            return SendResult(False, None, None, f"{type(exc).__name__}: {exc}"[:500])
        return SendResult(True, None, None, None)

    def _webhook(self, c: Claimed) -> SendResult:
        if c.url is None or c.secret_sealed is None:
            return SendResult(False, None, None, "the endpoint was deleted")
        try:
            checked = resolve_url(c.url, allow_local=self.settings.outbox_delivery == "local", resolver=self.resolver)
        except ValidationFailed as exc:
            return SendResult(False, None, None, f"refused: {exc}")
        body = json.dumps(c.message.as_payload(), separators=(",", ":"))
        secret = unseal(c.secret_sealed, secret_context(c.endpoint_id or ""))
        headers = signed_headers(secret, str(c.message.id), body)
        # Connect to the addresses just checked, never to a fresh DNS answer (rebinding).
        return self.sender(c.url, body, headers, self.settings.webhook_delivery_timeout_seconds, checked.addresses)

    def mark(self, claimed: Sequence[Claimed], results: dict[uuid.UUID, SendResult], report: RelayReport) -> None:
        now = self.clock()
        rows: list[tuple[Any, ...]] = []
        for c in claimed:
            r = results[c.delivery_id]
            if r.ok:
                status, nxt, delivered_at = "DELIVERED", now, now
                report.delivered += 1
            elif c.attempts >= self.settings.outbox_max_attempts or (c.target.startswith("webhook:") and c.url is None):
                status, nxt, delivered_at = "DEAD", now, None
                report.dead += 1
            else:
                status, nxt, delivered_at = (
                    "PENDING",
                    now + timedelta(seconds=backoff_seconds(c.attempts, self.settings)),
                    None,
                )
                report.failed += 1
            rows.append(
                (c.delivery_id, c.attempts, status, nxt, delivered_at, r.error, r.status_code, r.response_prefix)
            )
        columns = ("ids", "attempts", "statuses", "nexts", "delivered", "errors", "codes", "responses")
        params = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
        with self._uow() as uow:
            uow.session.execute(MARK, params)
            uow.commit()

    def sweep(self) -> None:
        for spec in SWEEPS:
            module, name = spec.split(":")
            try:
                getattr(importlib.import_module(module), name)(self._uow)
            except Exception:  # a sweep's failure must not stop the delivery of events; the next run retries
                logger.exception("outbox relay sweep failed", extra={"sweep": spec})

    def run_once(self) -> RelayReport:
        report = RelayReport(passes=1)
        limit = self.settings.outbox_batch_size
        report.dispatched = self.fan_out(limit)
        claimed = self.claim(limit)
        if claimed:
            self.mark(claimed, self.deliver(claimed), report)
        return report

    def run(
        self,
        *,
        run_seconds: float | None = None,
        remaining_ms: Callable[[], int] | None = None,
        poll_seconds: float = 1.0,
        stop: Callable[[], bool] | None = None,
    ) -> RelayReport:
        """Passes until nothing is due; then, for up to `run_seconds`, poll every `poll_seconds` for new events."""
        total = RelayReport()
        self.sweep()
        run_for = self.settings.outbox_relay_run_seconds if run_seconds is None else run_seconds
        deadline = time.monotonic() + run_for
        while True:
            if remaining_ms is not None and remaining_ms() < self.settings.job_safety_ms:
                break
            if stop is not None and stop():
                break
            report = self.run_once()
            total.add(report)
            if report.worked:
                continue
            if time.monotonic() >= deadline:
                break
            time.sleep(poll_seconds)
        return total
