"""SnapStart runtime hooks: what must not be shared by every environment restored from one snapshot.

With the template's `SnapStart` parameter on, Lambda runs a function's init once, snapshots the environment, and
restores many environments from that one snapshot. So, registered with the runtime's `snapshot_restore_py`:
- before the snapshot: the database engine's pooled connections are closed (a socket in the snapshot is dead on
  restore, and would be one socket shared by every clone), and the X-Ray recorder is built so that restored
  environments start with it (see `tollgate.observability`);
- after each restore: the pool is emptied again without touching any socket it might hold, so the first query
  opens a new connection with a fresh IAM token; and pseudo-random state seeded at init is re-seeded (the
  `random` module's generator and the X-Ray samplers' generators), or every clone would draw the same numbers.
  `os.urandom`, `secrets` and `uuid.uuid4` read the kernel's generator on every call and need nothing.

`snapshot_restore_py` exists only in Lambda's Python runtimes (3.12 and later): elsewhere `register()` does
nothing, and the hook functions can be called directly (tests simulate a snapshot and a restore that way).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any


def _engine_if_built() -> Any:
    # Only an engine that exists has connections; building one here would only to drop it.
    from tollgate.db.engine import get_engine

    return get_engine() if get_engine.cache_info().currsize else None


def before_snapshot() -> None:
    """Close every pooled database connection, and build the X-Ray recorder while init is still running."""
    from tollgate.observability import logger, tracer

    engine = _engine_if_built()
    if engine is not None:
        engine.dispose()
    tracer.build()
    logger.info("snapshot hooks ran", extra={"engine_disposed": engine is not None})


def _reseed(obj: object, depth: int = 2, seen: set[int] | None = None) -> int:
    """Re-seed every `random.Random` reachable from `obj`'s attributes (to `depth` levels); how many were."""
    seen = seen if seen is not None else set()
    if id(obj) in seen or not hasattr(obj, "__dict__"):
        return 0
    seen.add(id(obj))
    count = 0
    for value in vars(obj).values():
        if isinstance(value, random.Random) and not isinstance(value, random.SystemRandom):
            value.seed()  # from os.urandom
            count += 1
        elif depth > 0 and not isinstance(value, (str, bytes, int, float, bool, type(None))):
            count += _reseed(value, depth - 1, seen)
    return count


def after_restore() -> None:
    """Forget the snapshot's connections (a restored environment connects anew) and re-seed randomness."""
    engine = _engine_if_built()
    if engine is not None:
        # close=False: any socket in the snapshot is the same one in every clone; closing it would send a
        # termination on another clone's behalf. The pool is replaced and the next checkout connects.
        engine.dispose(close=False)
    random.seed()
    xray = sys.modules.get("aws_xray_sdk.core")
    if xray is not None:
        _reseed(xray.xray_recorder.sampler)


def register(hooks_module: Any = None) -> bool:
    """Register the hooks with Lambda's runtime, if this is one (`hooks_module` stands in for it in tests);
    whether they were registered."""
    if hooks_module is None:
        try:
            import snapshot_restore_py as hooks_module  # type: ignore[import-not-found,no-redef]
        except ImportError:  # not in a Lambda runtime with SnapStart support: nothing to register with
            return False
    register_before: Callable[[Callable[[], None]], Any] = hooks_module.register_before_snapshot
    register_after: Callable[[Callable[[], None]], Any] = hooks_module.register_after_restore
    register_before(before_snapshot)
    register_after(after_restore)
    return True
