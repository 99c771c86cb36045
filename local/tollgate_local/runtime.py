"""Run a template's functions in this process, as Lambda would: the real handler, a real-shaped context."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import Callable
from types import ModuleType
from typing import Any

from tollgate_local.template import FunctionDef

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"


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


class FunctionRunner:
    """Loads each function's handler module once (as a Lambda container would) and invokes it."""

    def __init__(self, functions: dict[str, FunctionDef]) -> None:
        self.functions = functions
        self._modules: dict[str, ModuleType] = {}
        self._lock = threading.Lock()

    def module(self, function_id: str) -> ModuleType:
        with self._lock:
            loaded = self._modules.get(function_id)
            if loaded is not None:
                return loaded
            function = self.functions[function_id]
            # Every function folder has its own `app.py`; give each a distinct module name in this process.
            name = f"tollgate_fn_{function_id}"
            spec = importlib.util.spec_from_file_location(name, function.module_path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {function.module_path} for {function_id}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            self._modules[function_id] = module
            return module

    def handler(self, function_id: str) -> Callable[[Any, Any], Any]:
        function = self.functions[function_id]
        handler: Callable[[Any, Any], Any] = getattr(self.module(function_id), function.handler_name)
        return handler

    def invoke(self, function_id: str, event: Any) -> Any:
        return self.handler(function_id)(event, LocalLambdaContext(self.functions[function_id]))
