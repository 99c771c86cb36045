"""Run a template's functions in this process, as Lambda would: the real handler, a real-shaped context.

Lambda gives each invocation a container of its own: a container runs one request at a time, and concurrent
requests go to other containers, each with its own copy of the handler module (its resolver, its caches). The
runner does the same with a pool of instances per function, each a fresh import of the handler module under
its own name, so module state is never shared by two requests at once; what powertools keeps per process (the
request being resolved) is kept per thread. A lone caller is always served by the function's first instance,
as a warm container would be.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from tollgate_local.template import FunctionDef

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
# Instances per function at most: past it a request waits for one to come free (Lambda throttles instead; a
# local server would rather queue). Enough for the concurrency a laptop, a test or a benchmark produces.
DEFAULT_MAX_INSTANCES = 32


class LocalLambdaContext:
    """The attributes and method of the Lambda context object handlers and powertools read."""

    def __init__(self, function: FunctionDef) -> None:
        self.function_name = function.logical_id
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{function.logical_id}"
        self.memory_limit_in_mb = function.memory_size
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function.logical_id}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + function.timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


_request_state = threading.local()


def _per_thread_request_state() -> None:
    """Make the request powertools is resolving a per-thread value.

    powertools keeps the current event and Lambda context on the `BaseRouter` class, one per process: right on
    Lambda, where a process serves one request at a time, but here threads serve requests at once, and a
    handler would read another request's event (its route, body or caller) whatever instance it runs in. A
    metaclass property takes the class-level assignments and reads, a plain one the instances' reads.
    """
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    meta = type(BaseRouter)
    if getattr(meta, "_per_thread", False):
        return

    def field(name: str) -> property:
        def get(_: object) -> Any:
            return getattr(_request_state, name, None)

        def put(_: object, value: Any) -> None:
            setattr(_request_state, name, value)

        return property(get, put)

    names = ("current_event", "lambda_context")
    per_thread_meta = type(f"PerThread{meta.__name__}", (meta,), {"_per_thread": True, **{n: field(n) for n in names}})
    for name in names:
        setattr(BaseRouter, name, field(name))  # before the metaclass swap: this one lands in the class dict
    setattr(BaseRouter, "__class__", per_thread_meta)  # noqa: B010  (a metaclass swap, not a plain attribute)


@dataclass(frozen=True)
class Instance:
    """One "container" of a function: its own copy of the handler module."""

    index: int
    module: ModuleType
    handler: Callable[[Any, Any], Any]


class _InstancePool:
    """The instances of one function: a request takes an idle one, or loads a new one, or waits for one."""

    def __init__(self, function: FunctionDef, max_instances: int, load_lock: threading.Lock) -> None:
        self.function = function
        self.max_instances = max_instances
        self.instances: dict[int, Instance] = {}
        self._idle: set[int] = set()
        self._reserved: set[int] = set()  # being loaded
        self._changed = threading.Condition()
        self._load_lock = load_lock

    def _load(self, index: int) -> Instance:
        # Instance 0 keeps the plain name; the others are numbered, so each is a module object of its own.
        name = f"tollgate_fn_{self.function.logical_id}" + (f"_{index}" if index else "")
        spec = importlib.util.spec_from_file_location(name, self.function.module_path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {self.function.module_path} for {self.function.logical_id}")
        module = importlib.util.module_from_spec(spec)
        # One import at a time in the process: a handler's first import also imports the shared layer.
        with self._load_lock:
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
        return Instance(index, module, getattr(module, self.function.handler_name))

    def _load_reserved(self, index: int) -> Instance:
        try:
            instance = self._load(index)
        except BaseException:
            with self._changed:
                self._reserved.discard(index)
                self._changed.notify_all()
            raise
        with self._changed:
            self._reserved.discard(index)
            self.instances[index] = instance
            self._changed.notify_all()
        return instance

    def first(self) -> Instance:
        """Instance 0, the one a lone caller is served by (loaded on first use)."""
        with self._changed:
            while 0 in self._reserved:
                self._changed.wait()
            if 0 in self.instances:
                return self.instances[0]
            self._reserved.add(0)
        instance = self._load_reserved(0)
        self._release(instance)
        return instance

    def _take(self) -> Instance:
        with self._changed:
            while True:
                if self._idle:
                    # The lowest-numbered idle instance: warm state stays where a lone caller will find it.
                    index = min(self._idle)
                    self._idle.discard(index)
                    return self.instances[index]
                unused = [i for i in range(self.max_instances) if i not in self.instances and i not in self._reserved]
                if unused:
                    index = unused[0]
                    self._reserved.add(index)
                    break
                self._changed.wait()
        return self._load_reserved(index)

    def _release(self, instance: Instance) -> None:
        with self._changed:
            self._idle.add(instance.index)
            self._changed.notify_all()

    @contextmanager
    def acquire(self) -> Iterator[Instance]:
        """An instance for this caller alone until the block ends."""
        instance = self._take()
        try:
            yield instance
        finally:
            self._release(instance)


class FunctionRunner:
    """Runs each function in a pool of instances ("containers"), one request per instance at a time."""

    def __init__(self, functions: dict[str, FunctionDef], max_instances: int = DEFAULT_MAX_INSTANCES) -> None:
        if max_instances < 1:
            raise ValueError("max_instances must be at least 1")
        _per_thread_request_state()
        self.functions = functions
        self.max_instances = max_instances
        self._pools: dict[str, _InstancePool] = {}
        self._pools_lock = threading.Lock()
        self._load_lock = threading.Lock()

    def _pool(self, function_id: str) -> _InstancePool:
        with self._pools_lock:
            pool = self._pools.get(function_id)
            if pool is None:
                pool = _InstancePool(self.functions[function_id], self.max_instances, self._load_lock)
                self._pools[function_id] = pool
            return pool

    def module(self, function_id: str) -> ModuleType:
        """The handler module of the function's first instance (the one sequential calls reach)."""
        return self._pool(function_id).first().module

    def modules(self, function_id: str) -> list[ModuleType]:
        """Every instance's module loaded so far, first instance first."""
        pool = self._pool(function_id)
        with pool._changed:
            return [pool.instances[i].module for i in sorted(pool.instances)]

    def handler(self, function_id: str) -> Callable[[Any, Any], Any]:
        """The first instance's handler (calling it directly skips the one-request-at-a-time rule)."""
        return self._pool(function_id).first().handler

    def invoke(self, function_id: str, event: Any) -> Any:
        with self._pool(function_id).acquire() as instance:
            return instance.handler(event, LocalLambdaContext(self.functions[function_id]))
