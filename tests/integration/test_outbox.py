"""Domain events out (issue 17): the outbox row is written with its change and rolled back with it, ids are stable
and deduplicated, every emission point emits, and the relay delivers at least once with retries and backoff, with
SKIP LOCKED sharing work between relays, to EventBridge (moto) and to internal consumers."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import text

from tests.credits_support import funded_user, set_costs
from tests.support import make_user
from tollgate import ledger, outbox
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import InsufficientCredits
from tollgate.jobs.outbox_relay import EventBridgeSink, OutboxRelay, backoff_seconds
from tollgate.outbox import EventType, OutboxMessage, emit

D = Decimal


def events(db: Callable[[], UnitOfWork], event_type: str | None = None) -> list[Any]:
    with db() as uow:
        sql = "SELECT * FROM outbox_events" + (" WHERE type = :t" if event_type else "") + " ORDER BY id"
        return list(uow.session.execute(text(sql), {"t": event_type}).mappings())


def deliveries(db: Callable[[], UnitOfWork]) -> list[Any]:
    with db() as uow:
        return list(uow.session.execute(text("SELECT * FROM outbox_deliveries ORDER BY target, id")).mappings())


class ListSink:
    """An EventBridge stand-in that records what it was given and can fail a set number of times."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[OutboxMessage] = []
        self.lock = threading.Lock()

    def put(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                return ["ThrottlingException: slow down"] * len(messages)
            self.received.extend(messages)
            return [None] * len(messages)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def relay_settings(**changes: Any) -> Settings:
    return get_settings().model_copy(update={"outbox_backoff_base_seconds": 30.0, **changes})


# --- the outbox row and its transaction ----------------------------------------------------------------------
def test_an_event_is_written_with_its_change_and_rolled_back_with_it(db):
    # Given a user with credits
    user_id = funded_user(db, "10")
    before = len(events(db))
    # When a change emits an event and the transaction rolls back
    with db() as uow:
        ledger.grant(uow.session, user_id, kind="promo", amount=D(5), source_key="promo:rolled-back")
        uow.rollback()
    # Then no event is left
    assert len(events(db)) == before
    # When it commits
    with db() as uow:
        result = ledger.grant(uow.session, user_id, kind="promo", amount=D(5), source_key="promo:kept")
        uow.commit()
    # Then exactly its event exists, carrying the grant
    granted = [e for e in events(db, "credits.granted") if e["data"]["grant_id"] == str(result.grant_id)]
    assert len(granted) == 1
    assert granted[0]["user_id"] == user_id and granted[0]["data"]["amount"] == "5.0000"


def test_a_failed_charge_leaves_no_event(db):
    # Given a user with 1 credit and a cost of 5 per chat
    user_id = funded_user(db, "1", costs={"chat": "5"})
    before = events(db)
    # When a charge fails for want of credits
    with pytest.raises(InsufficientCredits), db() as uow:
        ledger.charge(uow.session, user_id, operation="chat")
    # Then nothing was emitted
    assert events(db) == before


def test_dedupe_key_makes_a_second_emit_a_no_op_returning_the_first_id(db):
    # Given an event emitted with a dedupe key
    with db() as uow:
        first = emit(uow.session, "credits.low", user_id=None, data={"n": 1}, dedupe_key="k-1")
        uow.commit()
    # When another transaction emits with the same key
    with db() as uow:
        second = emit(uow.session, "credits.low", user_id=None, data={"n": 2}, dedupe_key="k-1")
        uow.commit()
    # Then it answers the first id and stored nothing new
    assert second == first
    rows = events(db)
    assert [r["id"] for r in rows] == [first] and rows[0]["data"] == {"n": 1}
    # And an id is a UUIDv7 (time-ordered, made in Python)
    assert first.version == 7


def test_credits_low_once_per_crossing_with_projected_hours_and_depleted_at_zero(db):
    # Given a user with 10 credits, chat costs 1
    user_id = funded_user(db, "10", costs={"chat": "1"})
    # When they charge 9 times (recent usage 9: ~1.3/hour over 7 days, far past the 3-day threshold)
    for _ in range(9):
        with db() as uow:
            ledger.charge(uow.session, user_id, operation="chat")
            uow.commit()
    # Then one credits.low was emitted (not one per charge), with the projected hours to empty
    low = events(db, "credits.low")
    assert len(low) == 1
    hours = D(low[0]["data"]["projected_hours_to_empty"])
    assert D(0) < hours <= D(72)
    assert low[0]["dedupe_key"].startswith(f"credits.low:{user_id}:")
    assert events(db, "credits.depleted") == []
    # When the last credit is spent
    with db() as uow:
        ledger.charge(uow.session, user_id, operation="chat")
        uow.commit()
    # Then credits.depleted is emitted once
    depleted = events(db, "credits.depleted")
    assert len(depleted) == 1 and D(depleted[0]["data"]["available"]) == 0
    # And a top-up starts a new episode: the next crossing is announced again
    with db() as uow:
        ledger.grant(uow.session, user_id, kind="promo", amount=D(2), source_key="promo:top-up")
        uow.commit()
    with db() as uow:
        ledger.charge(uow.session, user_id, operation="chat")
        uow.commit()
    assert len(events(db, "credits.low")) == 2


def test_a_hold_can_cross_into_low(db):
    # Given recent usage and a balance that a hold pushes under the threshold
    user_id = funded_user(db, "10", costs={"chat": "1"})
    with db() as uow:
        ledger.charge(uow.session, user_id, operation="chat")
        uow.commit()
    assert events(db, "credits.low") == []  # 9 left at ~0.006/hour is weeks away
    # When a hold reserves most of what is left
    with db() as uow:
        ledger.hold(uow.session, user_id, amount=D("8.9"))
        uow.commit()
    # Then the available balance (balance - held) crossed: credits.low
    (low,) = events(db, "credits.low")
    assert D(low["data"]["available"]) == D("0.1")


def test_allowances_in_a_batch_each_emit_credits_granted(db):
    # Given two users
    with db() as uow:
        users = [make_user(uow.session).id for _ in range(2)]
        uow.commit()
    # When their allowances are issued in one batch
    with db() as uow:
        ledger.issue_allowances(
            uow.session,
            [ledger.AllowanceRequest(u, "2026-12", amount=D(50), rollover="none") for u in users],
            now=datetime.now(UTC),
        )
        uow.commit()
    # Then each got one credits.granted of kind allowance
    granted = [e for e in events(db, "credits.granted") if e["data"]["kind"] == "allowance"]
    assert sorted(e["user_id"] for e in granted) == sorted(users)
    assert {e["data"]["metadata"]["period"] for e in granted} == {"2026-12"}


# --- the relay ----------------------------------------------------------------------------------------------------
def test_relay_retries_with_backoff_and_delivers_the_same_id(db):
    # Given one event, and an EventBridge that fails twice then accepts
    with db() as uow:
        event_id = emit(uow.session, EventType.CREDITS_DEPLETED, user_id=None, data={"x": 1})
        uow.commit()
    sink, clock = ListSink(failures=2), Clock()
    settings = relay_settings()
    relay = OutboxRelay(settings, sink=sink, clock=clock)
    # When the relay runs: the first attempt fails and waits one backoff
    assert relay.run_once().failed == 1
    (row,) = deliveries(db)
    assert row["status"] == "PENDING" and row["attempts"] == 1 and "Throttling" in row["last_error"]
    assert row["next_attempt_at"] == clock.now + timedelta(seconds=30)
    # And a run before the backoff ends does nothing
    assert relay.run_once().worked is False
    # When time passes: the second attempt fails and waits twice as long
    clock.now += timedelta(seconds=31)
    assert relay.run_once().failed == 1
    (row,) = deliveries(db)
    assert row["attempts"] == 2 and row["next_attempt_at"] == clock.now + timedelta(seconds=60)
    # When the third attempt comes
    clock.now += timedelta(seconds=61)
    assert relay.run_once().delivered == 1
    # Then it is delivered once, with the event's own id
    (row,) = deliveries(db)
    assert row["status"] == "DELIVERED" and row["attempts"] == 3
    assert [m.id for m in sink.received] == [event_id]
    assert backoff_seconds(20, settings) == settings.outbox_backoff_max_seconds


def test_a_delivery_gives_up_into_dead_after_max_attempts(db):
    # Given a target that always fails and two attempts allowed
    with db() as uow:
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    clock = Clock()
    relay = OutboxRelay(relay_settings(outbox_max_attempts=2), sink=ListSink(failures=99), clock=clock)
    relay.run_once()
    clock.now += timedelta(hours=1)
    report = relay.run_once()
    # Then it is DEAD (visible to admins) and never tried again
    assert report.dead == 1
    (row,) = deliveries(db)
    assert row["status"] == "DEAD" and row["attempts"] == 2
    clock.now += timedelta(days=1)
    assert relay.run_once().worked is False


def test_a_relay_that_dies_mid_delivery_is_redelivered_with_the_same_id_after_its_lease(db):
    # Given a relay that claimed an event and never marked it (it crashed while delivering)
    with db() as uow:
        event_id = emit(uow.session, "purchase.completed", user_id=None, data={})
        uow.commit()
    clock, sink = Clock(), ListSink()
    crashed = OutboxRelay(relay_settings(), sink=sink, clock=clock)
    crashed.fan_out(10)
    assert len(crashed.claim(10)) == 1
    # When another relay runs before the lease ends, it skips it; after, it delivers it
    other = OutboxRelay(relay_settings(), sink=sink, clock=clock)
    assert other.run_once().delivered == 0
    clock.now += timedelta(seconds=get_settings().outbox_lease_seconds + 1)
    assert other.run_once().delivered == 1
    # Then the event went out with its stable id
    assert [m.id for m in sink.received] == [event_id]


@pytest.mark.timeout(120)
def test_two_relays_at_once_deliver_each_event_once(db):
    # Given 200 events
    with db() as uow:
        ids = {emit(uow.session, "credits.granted", user_id=None, data={"i": i}) for i in range(200)}
        uow.commit()
    sink = ListSink()
    settings = relay_settings(outbox_batch_size=20)
    relays = [OutboxRelay(settings, sink=sink) for _ in range(2)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(relay: OutboxRelay) -> None:
        try:
            barrier.wait()
            relay.run(run_seconds=0)
        except BaseException as exc:
            errors.append(exc)

    # When two relays run at the same time
    threads = [threading.Thread(target=run, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every event was delivered exactly once (SKIP LOCKED: no relay took another's rows)
    assert errors == []
    received = [m.id for m in sink.received]
    assert sorted(received) == sorted(ids) and len(set(received)) == len(received) == 200
    assert {d["status"] for d in deliveries(db)} == {"DELIVERED"}
    assert {d["attempts"] for d in deliveries(db)} == {1}


def test_internal_consumers_run_outside_the_relay_transaction_and_retry_without_blocking_others(db):
    # Given a consumer of credits.low that fails once, and one of credits.granted that always works
    calls: list[tuple[str, uuid.UUID]] = []
    state = {"fail": 1}

    def on_low(message: OutboxMessage) -> None:
        # Outside any relay transaction: the delivery row is not locked, so another connection may lock it
        with UnitOfWork() as uow:
            uow.session.execute(text("SELECT 1 FROM outbox_deliveries FOR UPDATE NOWAIT"))
        calls.append(("low", message.id))
        if state["fail"]:
            state["fail"] -= 1
            raise RuntimeError("provider said no")

    def on_granted(message: OutboxMessage) -> None:
        calls.append(("granted", message.id))

    outbox.register_consumer("credits.low", on_low)
    outbox.register_consumer("credits.granted", on_granted)
    try:
        with db() as uow:
            low = emit(uow.session, "credits.low", user_id=None, data={})
            granted = emit(uow.session, "credits.granted", user_id=None, data={})
            uow.commit()
        clock = Clock()
        relay = OutboxRelay(relay_settings(), sink=ListSink(), clock=clock)
        # When the relay runs: the low consumer fails, the granted one is delivered anyway
        relay.run_once()
        rows = {d["target"]: d for d in deliveries(db)}
        assert rows[f"consumer:{outbox.consumer_name(on_low)}"]["status"] == "PENDING"
        assert rows[f"consumer:{outbox.consumer_name(on_granted)}"]["status"] == "DELIVERED"
        # When its backoff passed
        clock.now += timedelta(minutes=5)
        relay.run_once()
        # Then it ran again with the same event id and is delivered
        assert [c for c in calls if c[0] == "low"] == [("low", low), ("low", low)]
        assert ("granted", granted) in calls
        assert {d["status"] for d in deliveries(db)} == {"DELIVERED"}
    finally:
        outbox.unregister_consumer("credits.low", on_low)
        outbox.unregister_consumer("credits.granted", on_granted)


def test_eventbridge_receives_source_detail_type_and_detail(db, monkeypatch: pytest.MonkeyPatch):
    # Given an event and an EventBridge bus with a rule that copies tollgate's events to a queue (moto)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    user_id = funded_user(db, "0")
    with db() as uow:
        event_id = emit(uow.session, "refund.completed", user_id=user_id, data={"amount": D("2.5")})
        uow.commit()
    with mock_aws():
        events_client = boto3.client("events", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        bus = events_client.create_event_bus(Name="tollgate-events")["EventBusArn"].split("/")[-1]
        queue = sqs.create_queue(QueueName="product-backend")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events_client.put_rule(Name="all", EventBusName=bus, EventPattern=json.dumps({"source": ["tollgate"]}))
        events_client.put_targets(Rule="all", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
        # When the relay runs against it
        report = OutboxRelay(relay_settings(), sink=EventBridgeSink(bus, events_client)).run_once()
        # Then the product's rule received the event as PutEvents sent it
        (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert report.delivered == 1
    envelope = json.loads(message["Body"])
    assert envelope["source"] == "tollgate" and envelope["detail-type"] == "refund.completed"
    assert envelope["detail"]["id"] == str(event_id) and envelope["detail"]["type"] == "refund.completed"
    assert envelope["detail"]["user_id"] == str(user_id) and envelope["detail"]["data"] == {"amount": "2.5"}
    assert "created_at" in envelope["detail"]
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_local_mode_writes_events_to_the_console(db, capsys: pytest.CaptureFixture[str]):
    # Given an event and the local relay (no bus)
    with db() as uow:
        event_id = emit(uow.session, "order.completed", user_id=None, data={"order": "o1"})
        uow.commit()
    # When it runs
    OutboxRelay(relay_settings(outbox_delivery="local")).run_once()
    # Then the event is one JSON line on the console
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"detail-type"' in line]
    assert [(line["detail-type"], line["detail"]["id"]) for line in lines] == [("order.completed", str(event_id))]


def test_a_charge_under_eight_threads_emits_one_low_event(db):
    # Given a user whose usage makes every further charge "low"
    user_id = funded_user(db, "20", costs={"chat": "1"})
    with db() as uow:
        set_costs(uow.session, {"chat": "1"})
        uow.commit()
    barrier = threading.Barrier(8)

    def spend() -> None:
        barrier.wait()
        for _ in range(2):
            with UnitOfWork() as uow:
                ledger.charge(uow.session, user_id, operation="chat")
                uow.commit()

    # When 8 threads charge at once until 16 of 20 credits are gone
    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the crossing was announced once
    assert len(events(db, "credits.low")) == 1
