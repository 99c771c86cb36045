"""X-Ray stays off the import path: no handler module imports `aws_xray_sdk` when it loads, and the first traced
invocation builds the recorder, so a Lambda invocation's trace still holds the handler's subsegment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tollgate.observability import SERVICE_NAME, LazyTracer
from tollgate_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "shared"
FUNCTIONS = Template(ROOT / "template.yaml").functions.values()
# One module per code folder (the scheduled functions share one).
MODULES = sorted({(str(f.module_path), str(f.code_uri)) for f in FUNCTIONS})

IMPORT_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "aws_xray_sdk")))
"""

# The health handler invoked as Lambda would with active tracing: a trace header from the facade segment, and an
# X-Ray "daemon" that is a UDP socket of this probe. A route that does not exist answers without a database.
INVOKE_PROBE = """
import importlib.util, json, os, socket, sys
daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
daemon.bind(("127.0.0.1", 0))
daemon.settimeout(10)
os.environ["AWS_XRAY_DAEMON_ADDRESS"] = "127.0.0.1:%d" % daemon.getsockname()[1]
spec = importlib.util.spec_from_file_location("handler_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
imported_at_load = "aws_xray_sdk.core" in sys.modules

class Context:
    function_name = "HealthFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:HealthFunction"
    memory_limit_in_mb = 512
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    log_group_name = "/aws/lambda/HealthFunction"
    log_stream_name = "stream"
    def get_remaining_time_in_millis(self):
        return 10_000

http = {{"method": "GET", "path": "/no-such-route", "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1",
         "userAgent": "test"}}
event = {{"version": "2.0", "routeKey": "$default", "rawPath": "/no-such-route", "rawQueryString": "",
          "headers": {{}}, "isBase64Encoded": False,
          "requestContext": {{"http": http, "requestId": "r", "routeKey": "$default", "stage": "$default",
                              "accountId": "123456789012", "apiId": "api", "domainName": "d", "domainPrefix": "d",
                              "time": "", "timeEpoch": 0}}}}
response = module.lambda_handler(event, Context())
datagram, _ = daemon.recvfrom(65536)
header, body = datagram.decode().split("\\n", 1)
print(json.dumps({{"imported_at_load": imported_at_load, "built": module.tracer.is_built,
                   "status": response["statusCode"], "segment": json.loads(body)}}))
"""

TRACE_ID = "1-5759e988-bd862e3fe1be46a994272793"
PARENT_ID = "53995c3f42cd8ad8"


def _run(probe: str, code_uri: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "PYTHONPATH": f"{code_uri}{os.pathsep}{LAYER}"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(("path", "code_uri"), MODULES, ids=[Path(c).name for _, c in MODULES])
def test_importing_a_handler_does_not_import_xray(path: str, code_uri: str) -> None:
    # Given a fresh interpreter with tracing enabled, as in Lambda (the variable unset, a function name set)
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    env |= {"AWS_LAMBDA_FUNCTION_NAME": "probe", "LAMBDA_TASK_ROOT": code_uri, "AWS_DEFAULT_REGION": "us-east-1"}
    # When it imports the handler module
    loaded = json.loads(_run(IMPORT_PROBE.format(path=path), code_uri, env))
    # Then no part of the X-Ray SDK was imported
    assert loaded == []


def test_a_traced_invocation_builds_the_recorder_and_sends_the_handler_subsegment() -> None:
    # Given the health handler in a Lambda-like environment with active tracing and no X-Ray daemon to rely on
    health = next(f for f in FUNCTIONS if f.logical_id == "HealthFunction")
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    env |= {
        "AWS_LAMBDA_FUNCTION_NAME": "HealthFunction",
        "LAMBDA_TASK_ROOT": str(health.code_uri),
        "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
        "_X_AMZN_TRACE_ID": f"Root={TRACE_ID};Parent={PARENT_ID};Sampled=1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    # When it is imported and invoked once
    outcome = json.loads(_run(INVOKE_PROBE.format(path=str(health.module_path)), str(health.code_uri), env))
    # Then the import left X-Ray alone, the invocation built the Tracer, and the handler's subsegment reached
    # the daemon inside the invocation's trace, annotated as powertools does
    assert outcome["imported_at_load"] is False
    assert outcome["built"] is True
    assert outcome["status"] == 404
    segment = outcome["segment"]
    assert segment["name"] == "## lambda_handler"
    assert segment["trace_id"] == TRACE_ID and segment["parent_id"] == PARENT_ID
    assert segment["annotations"] == {"ColdStart": True, "Service": "tollgate"}


def test_the_decorators_wait_for_the_first_call() -> None:
    # Given a lazy tracer and functions decorated both ways
    tracer = LazyTracer(service=SERVICE_NAME)

    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict[str, int], context: object) -> int:
        return event["n"] + 1

    @tracer.capture_method
    def step(n: int) -> int:
        return n * 2

    # Then decorating built nothing
    built_at_decoration = tracer.is_built
    assert built_at_decoration is False
    # When they are called (tracing is disabled in tests: powertools' Tracer then records nothing)
    # Then they return what the functions return, and the real Tracer exists from then on
    assert handler({"n": 1}, None) == 2
    assert step(3) == 6
    assert tracer.is_built
    assert tracer.build() is tracer.build()
    assert tracer.service == SERVICE_NAME  # anything else is the built Tracer's
