"""`tollgate`: the local command line (serve, migrate, invoke, schedules, seed, db-url)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollgate_local import TEMPLATE_PATH

log = logging.getLogger("tollgate_local")


def _prepare_database(migrate: bool = True) -> Any:
    """Start or reach the database, point every part of this process at it, and migrate it."""
    from tollgate.config import get_settings
    from tollgate.db.engine import reset_engine
    from tollgate_local.database import ensure_database
    from tollgate_local.migrations import upgrade

    server, _ = ensure_database(get_settings())
    get_settings.cache_clear()
    reset_engine()
    if migrate:
        upgrade()
    return server


def _parse_now(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_serve(args: argparse.Namespace) -> int:
    from tollgate.config import get_settings
    from tollgate_local.gateway import make_server, serve_in_thread
    from tollgate_local.runtime import FunctionRunner
    from tollgate_local.schedules import ScheduleRunner, scheduled_event
    from tollgate_local.seed import seed
    from tollgate_local.template import ScheduleDef, Template

    started = time.monotonic()
    server_handle = _prepare_database(migrate=not args.no_migrate)
    if args.seed:
        written = seed()
        log.info("seeded: %s", written or "nothing to load yet")
    settings = get_settings()
    port = args.port or settings.port
    http = make_server(Path(args.template), "127.0.0.1", port)
    serve_in_thread(http)
    runner: ScheduleRunner | None = None
    if args.with_schedules:
        template = Template(Path(args.template))
        functions = http.RequestHandlerClass.gateway.runner  # type: ignore[attr-defined]
        assert isinstance(functions, FunctionRunner)

        def fire(schedule: ScheduleDef, at: datetime) -> Any:
            return functions.invoke(schedule.function_id, scheduled_event(schedule, at))

        runner = ScheduleRunner(template.schedules, fire)
        runner.start()
        log.info("schedules running: %s", ", ".join(sorted(runner.schedules)) or "none")
    print(f"Tollgate is serving on http://127.0.0.1:{port}  (GET /health, /docs, /openapi.json)", flush=True)
    print(f"ready in {time.monotonic() - started:.1f}s; Ctrl-C stops it", flush=True)

    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop["now"]:
        time.sleep(0.2)
    if runner:
        runner.stop()
    http.shutdown()
    del server_handle  # the embedded server stops at exit
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from tollgate_local.migrations import downgrade

    _prepare_database(migrate=args.downgrade is None)
    if args.downgrade is not None:
        downgrade(args.downgrade)
    print("database is at the requested revision")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    from tollgate_local.runtime import FunctionRunner
    from tollgate_local.schedules import scheduled_event
    from tollgate_local.template import ScheduleDef, Template

    template = Template(Path(args.template))
    now = _parse_now(args.now)
    if args.name in template.schedules:
        schedule = template.schedules[args.name]
        function_id = schedule.function_id
        event = scheduled_event(schedule, now)
    elif args.name in template.functions:
        function_id = args.name
        default = ScheduleDef(args.name, function_id, "rate(1 day)", None, True, "UTC")
        event = json.loads(Path(args.event).read_text()) if args.event else scheduled_event(default, now)
    else:
        print(f"no function or schedule named {args.name!r} in {args.template}", file=sys.stderr)
        return 2
    if args.event and args.name in template.schedules:
        event = json.loads(Path(args.event).read_text())
    _prepare_database()
    result = FunctionRunner(template.functions).invoke(function_id, event)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    from tollgate_local.schedules import next_fire
    from tollgate_local.template import Template

    now = datetime.now(UTC)
    schedules = Template(Path(args.template)).schedules
    if not schedules:
        print("no schedules in the template")
    for name, s in sorted(schedules.items()):
        upcoming = next_fire(s.expression, now, s.timezone) if s.enabled else None
        state = "enabled" if s.enabled else "disabled"
        print(f"{name:28} {s.function_id:24} {s.expression:28} {state:9} next: {upcoming or '-'}")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from tollgate_local.seed import DEFAULT_SEED_FILE, seed

    _prepare_database()
    written = seed(Path(args.file) if args.file else DEFAULT_SEED_FILE)
    print(json.dumps(written))
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    from tollgate.config import get_settings

    print(get_settings().database_url or "")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate", description=__doc__)
    parser.add_argument("--template", default=str(TEMPLATE_PATH), help="the SAM template (default: template.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the database and serve every route of the template")
    serve.add_argument("--port", type=int, default=None, help="default: $TOLLGATE_PORT or 3000")
    serve.add_argument("--with-schedules", action="store_true", help="also run the template's schedules")
    serve.add_argument("--seed", action="store_true", help="load the example catalogue first")
    serve.add_argument("--no-migrate", action="store_true")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database to the newest schema")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION (e.g. base, -1)")
    migrate.set_defaults(func=cmd_migrate)

    invoke = sub.add_parser("invoke", help="invoke a function (by logical id) or a schedule (by name)")
    invoke.add_argument("name")
    invoke.add_argument("--event", help="a JSON file with the event (default: a scheduled event)")
    invoke.add_argument("--now", help="the clock the scheduled event carries (ISO 8601)")
    invoke.set_defaults(func=cmd_invoke)

    schedules = sub.add_parser("schedules", help="list the template's schedules and when they fire next")
    schedules.set_defaults(func=cmd_schedules)

    seed = sub.add_parser("seed", help="load example data (default: the shipped catalogue)")
    seed.add_argument("file", nargs="?")
    seed.set_defaults(func=cmd_seed)

    db_url = sub.add_parser("db-url", help="start the embedded database and print its URL")
    db_url.set_defaults(func=lambda a: (_prepare_database(migrate=False), cmd_db_url(a))[1])

    from tollgate_local.webhooks_cli import add_parser as add_webhooks_parser

    add_webhooks_parser(sub)  # tollgate webhooks replay|send (issue 5)
    from tollgate_local.rag_cli import add_rag_commands  # the `rag` subcommand (knowledge base)

    add_rag_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Locally, metrics would only print EMF blobs between the log lines.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from tollgate_local.local_secrets import ensure_jwt_signing_key

    ensure_jwt_signing_key()  # locally: $TOLLGATE_DATA_DIR/jwt.key unless JWT_SIGNING_KEY is set
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
