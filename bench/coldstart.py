"""Cold-start import cost of every function in template.yaml, beside the floor every handler must pay.

For each function: a fresh interpreter imports its handler module (the layer's `tollgate` package on the path,
as in Lambda), timed inside the interpreter; median of N runs. The floor: a fresh interpreter importing only the
stack every handler needs (powertools Logger, Metrics, Tracer, APIGatewayHttpResolver(enable_validation=True),
sqlalchemy.orm, pg8000, pydantic). Target: every function <= 1.25x the floor.

    python bench/coldstart.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "local"))

from tollgate_local.template import Template  # noqa: E402

TARGET_RATIO = 1.25

FLOOR_SNIPPET = """
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
import sqlalchemy.orm, pg8000, pydantic
Logger(service="floor"); Metrics(namespace="Floor"); Tracer(service="floor")
APIGatewayHttpResolver(enable_validation=True)
"""

HANDLER_SNIPPET = """
import importlib.util
spec = importlib.util.spec_from_file_location("handler_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
assert callable(getattr(module, {handler!r}))
"""

TIMER = """
import time, json
_t0 = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - _t0}}))
"""


def timed_import(body: str, extra_path: list[Path]) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in extra_path),
        "PYTHONDONTWRITEBYTECODE": "0",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    out = subprocess.run(
        [sys.executable, "-c", TIMER.format(body=body)], env=env, capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def median_of(runs: int, body: str, extra_path: list[Path]) -> float:
    timed_import(body, extra_path)  # warm the bytecode cache and the OS page cache, as a deployed layer is
    return statistics.median(timed_import(body, extra_path) for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    layer = ROOT / "layers" / "shared"
    template = Template(ROOT / "template.yaml")
    floor = median_of(args.runs, FLOOR_SNIPPET, [layer])
    print(f"floor (powertools + resolver + sqlalchemy.orm + pg8000 + pydantic): {floor * 1000:7.1f} ms")
    print(f"{'function':28} {'import ms':>10} {'ratio':>7}  verdict (target <= {TARGET_RATIO}x)")
    worst = 0.0
    for function in sorted(template.functions.values(), key=lambda f: f.logical_id):
        body = HANDLER_SNIPPET.format(path=str(function.module_path), handler=function.handler_name)
        seconds = median_of(args.runs, body, [layer, function.code_uri])
        ratio = seconds / floor
        worst = max(worst, ratio)
        verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
        print(f"{function.logical_id:28} {seconds * 1000:10.1f} {ratio:7.2f}  {verdict}")
    print(f"worst ratio: {worst:.2f} (median of {args.runs} fresh interpreters each)")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
