"""SnapStart hooks: before the snapshot the database connections are closed and the X-Ray recorder is built;
after a restore the pool starts empty (a new connection on first use) and pseudo-random state is re-seeded.
Lambda's `snapshot_restore_py` exists only in its runtimes: a stand-in records what is registered, and a snapshot
and a restore are simulated by calling the registered functions in the runtime's order."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from tollgate import snapstart
from tollgate.db import UnitOfWork, get_engine
from tollgate.observability import tracer


class HooksStandIn(ModuleType):
    """`snapshot_restore_py` as Lambda's runtime has it: two registration functions."""

    def __init__(self) -> None:
        super().__init__("snapshot_restore_py")
        self.before: list[Callable[[], Any]] = []
        self.after: list[Callable[[], Any]] = []

    def register_before_snapshot(self, hook: Callable[[], Any]) -> None:
        self.before.append(hook)

    def register_after_restore(self, hook: Callable[[], Any]) -> None:
        self.after.append(hook)


def _dbapi_connection() -> Any:
    with get_engine().connect() as conn:
        conn.execute(text("select 1"))
        return conn.connection.dbapi_connection


def test_outside_lambda_nothing_is_registered() -> None:
    # Given no Lambda runtime (its hooks module does not exist here)
    assert "snapshot_restore_py" not in sys.modules
    # When the hooks are registered, Then nothing happens and nothing fails
    assert snapstart.register() is False


def test_a_snapshot_and_a_restore_drop_connections_and_reseed(db: Callable[[], UnitOfWork]) -> None:
    # Given the hooks registered with the runtime, and an engine holding a pooled connection
    runtime = HooksStandIn()
    assert snapstart.register(runtime) is True
    assert runtime.before == [snapstart.before_snapshot] and runtime.after == [snapstart.after_restore]
    engine = get_engine()
    pooled = _dbapi_connection()
    assert _dbapi_connection() is pooled  # a warm container reuses its connection
    pool_at_init = engine.pool

    # When the runtime takes the snapshot
    for hook in runtime.before:
        hook()
    # Then no connection is left in the pool, and the recorder exists for the snapshot to keep
    assert engine.pool is not pool_at_init
    assert isinstance(engine.pool, QueuePool) and engine.pool.checkedin() == 0
    assert tracer.is_built

    # Given init-time random state that every restored clone would share
    random.seed(1234)
    shared = random.Random(1234).random()
    sampler_random = random.Random(99)
    _attach_to_xray_sampler(sampler_random)
    sampler_shared = random.Random(99).random()

    # When an environment is restored from it
    pool_in_snapshot = engine.pool
    for hook in runtime.after:
        hook()
    # Then the engine's pool is a new one, and the first query opens a new, working connection
    assert engine.pool is not pool_in_snapshot
    restored = _dbapi_connection()
    assert restored is not pooled
    with db() as uow:
        assert uow.session.execute(text("select 41 + 1")).scalar_one() == 42
    # And the generators seeded at init were re-seeded
    assert random.random() != shared
    assert sampler_random.random() != sampler_shared


def _attach_to_xray_sampler(generator: random.Random) -> None:
    # The X-Ray samplers keep a Random of their own (seeded once, when the recorder is built).
    from aws_xray_sdk.core import xray_recorder

    xray_recorder.sampler._random = generator
