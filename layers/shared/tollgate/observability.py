"""Logger, Tracer and Metrics, created once per process and shared by every handler and service.

The Tracer is built on first use, not at import: powertools' `Tracer()` imports `aws_xray_sdk.core` and builds
the X-Ray recorder (with its sampler's botocore clients) even when tracing is disabled, the costliest single
import of every handler. `tracer.capture_lambda_handler` therefore wraps the handler at import and builds the real
Tracer, with its patching of botocore/httplib, inside the first invocation, before the handler body runs: every
traced call still lands in the invocation's segment. With SnapStart the recorder is built before the snapshot
(`tollgate.snapstart`), so restored environments do not pay for it either.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer

from tollgate import snapstart

SERVICE_NAME = "tollgate"
METRICS_NAMESPACE = "Tollgate"

Handler = Callable[..., Any]


class LazyTracer:
    """Powertools' `Tracer(service=...)`, built the first time anything needs it; attributes other than the
    decorators below are those of the built Tracer."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._tracer: Tracer | None = None
        self._lock = threading.Lock()

    @property
    def is_built(self) -> bool:
        return self._tracer is not None

    def build(self) -> Tracer:
        """The real Tracer (imports X-Ray and patches the supported libraries the first time)."""
        if self._tracer is None:
            with self._lock:
                if self._tracer is None:
                    self._tracer = Tracer(service=self._service)
        return self._tracer

    def capture_lambda_handler(
        self,
        lambda_handler: Handler | None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Handler:
        """`Tracer.capture_lambda_handler`, applied to the handler on its first invocation."""
        if lambda_handler is None:  # used as @tracer.capture_lambda_handler(capture_response=False)
            return functools.partial(
                self.capture_lambda_handler, capture_response=capture_response, capture_error=capture_error
            )
        handler = lambda_handler
        traced: Handler | None = None

        @functools.wraps(handler)
        def invoke(event: Any, context: Any, **kwargs: Any) -> Any:
            nonlocal traced
            if traced is None:
                traced = self.build().capture_lambda_handler(
                    handler, capture_response=capture_response, capture_error=capture_error
                )
            return traced(event, context, **kwargs)

        return invoke

    def capture_method(
        self,
        method: Handler | None = None,
        capture_response: bool | None = None,
        capture_error: bool | None = None,
    ) -> Handler:
        """`Tracer.capture_method` (synchronous functions), applied on the first call."""
        if method is None:
            return functools.partial(
                self.capture_method, capture_response=capture_response, capture_error=capture_error
            )
        wrapped = method
        traced: Handler | None = None

        @functools.wraps(wrapped)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal traced
            if traced is None:
                decorate = self.build().capture_method(capture_response=capture_response, capture_error=capture_error)
                traced = decorate(wrapped)
            return traced(*args, **kwargs)

        return call

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks (put_annotation, put_metadata, provider, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.build(), name)


logger = Logger(service=SERVICE_NAME)
tracer = LazyTracer(service=SERVICE_NAME)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)

# Every function imports this module at init: with SnapStart on, its hooks are registered here (elsewhere: no-op).
snapstart.register()
