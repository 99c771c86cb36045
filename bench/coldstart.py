"""Cold-start import cost of every function in template.yaml, against a floor measured beside it.

For each function, N rounds; each round starts two fresh interpreters, one importing the floor and one importing the
function's handler module (the layer's `tollgate` package on the path, as in Lambda), each timed inside the
interpreter, and the order flips every round. Floor and handler are thus measured under the same machine load, and
each verdict is the ratio of the two medians of that function's own rounds. The floor: the stack every handler
needs (powertools Logger, Metrics and Tracer, which builds the X-Ray recorder, APIGatewayHttpResolver with
validation, sqlalchemy.orm, pg8000, pydantic). Target: every function <= 1.0x the floor.

With --snapstart, also the restore path as far as it can be simulated here: a handler imported, the registered
before-snapshot hooks run (the recorder built, connections dropped), then the after-restore hooks timed.

    python bench/coldstart.py [--runs 7] [--snapstart]
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

TARGET_RATIO = 1.0

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

# Lambda's hooks module does not exist here: a stand-in with its two registration functions, whose registered
# hooks the snippet then runs in the runtime's order (before the snapshot at the end of init, after it on restore).
RESTORE_SNIPPET = """
import sys, time, types, json
registered = {{"before": [], "after": []}}
hooks = types.ModuleType("snapshot_restore_py")
hooks.register_before_snapshot = lambda f, *a, **k: registered["before"].append((f, a, k))
hooks.register_after_restore = lambda f, *a, **k: registered["after"].append((f, a, k))
sys.modules["snapshot_restore_py"] = hooks
{handler_import}
for f, a, k in registered["before"]:
    f(*a, **k)
_t0 = time.perf_counter()
for f, a, k in registered["after"]:
    f(*a, **k)
print(json.dumps({{"seconds": time.perf_counter() - _t0}}))
"""

TIMER = """
import time, json
_t0 = time.perf_counter()
{body}
print(json.dumps({{"seconds": time.perf_counter() - _t0}}))
"""


def run_timed(script: str, extra_path: list[Path], env_extra: dict[str, str] | None = None) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(p) for p in extra_path),
        "PYTHONDONTWRITEBYTECODE": "0",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
        **(env_extra or {}),
    }
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def alternate(runs: int, floor: tuple[str, list[Path]], handler: tuple[str, list[Path]]) -> tuple[float, float]:
    """Medians of `runs` floor and handler imports, taken in pairs whose order flips each round."""
    for body, path in (floor, handler):  # warm the bytecode cache and the OS page cache, as a deployed layer is
        run_timed(TIMER.format(body=body), path)
    floors: list[float] = []
    handlers: list[float] = []
    for round_ in range(runs):
        pair = [(floor, floors), (handler, handlers)]
        for (body, path), samples in pair if round_ % 2 == 0 else reversed(pair):
            samples.append(run_timed(TIMER.format(body=body), path))
    return statistics.median(floors), statistics.median(handlers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--snapstart", action="store_true", help="also time the simulated SnapStart restore hooks")
    args = parser.parse_args()

    layer = ROOT / "layers" / "shared"
    template = Template(ROOT / "template.yaml")
    print("floor: powertools Logger/Metrics/Tracer (X-Ray recorder) + resolver + sqlalchemy.orm + pg8000 + pydantic")
    print(f"{'function':28} {'floor ms':>9} {'import ms':>10} {'ratio':>7}  verdict (target <= {TARGET_RATIO}x)")
    worst = 0.0
    for function in sorted(template.functions.values(), key=lambda f: f.logical_id):
        body = HANDLER_SNIPPET.format(path=str(function.module_path), handler=function.handler_name)
        floor, seconds = alternate(args.runs, (FLOOR_SNIPPET, [layer]), (body, [layer, function.code_uri]))
        ratio = seconds / floor
        worst = max(worst, ratio)
        verdict = "ok" if ratio <= TARGET_RATIO else "OVER"
        print(f"{function.logical_id:28} {floor * 1000:9.1f} {seconds * 1000:10.1f} {ratio:7.2f}  {verdict}")
    print(f"worst ratio: {worst:.2f} (medians of {args.runs} alternating floor/handler pairs per function)")
    if args.snapstart:
        print("SnapStart restore (simulated: before-snapshot hooks run, then the after-restore hooks timed)")
        for function in sorted(template.functions.values(), key=lambda f: f.logical_id):
            body = HANDLER_SNIPPET.format(path=str(function.module_path), handler=function.handler_name)
            script = RESTORE_SNIPPET.format(handler_import=body)
            samples = [run_timed(script, [layer, function.code_uri]) for _ in range(args.runs)]
            print(f"{function.logical_id:28} after-restore hooks {statistics.median(samples) * 1000:8.2f} ms")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
