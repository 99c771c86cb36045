"""`tollgate`: the local command line. Everything runs on this machine (embedded PostgreSQL, local gateway)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
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
    from tollgate_local.runtime import DEFAULT_MAX_INSTANCES, FunctionRunner
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
    http = make_server(
        Path(args.template), "127.0.0.1", port, max_instances=args.max_instances or DEFAULT_MAX_INSTANCES
    )
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
    _wait_for_stop()
    if runner:
        runner.stop()
    http.shutdown()
    del server_handle  # the embedded server stops at exit
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from tollgate_local.migrations import downgrade

    if args.aws:
        return _migrate_in_aws(args.aws)
    _prepare_database(migrate=args.downgrade is None)
    if args.downgrade is not None:
        downgrade(args.downgrade)
    print("database is at the requested revision")
    return 0


def _migrate_in_aws(stack: str) -> int:
    """Invoke the stack's migration function (the one every deploy runs) and print what it answers."""
    import boto3  # AWS credentials and region from the usual places (profile, environment)
    from botocore.config import Config

    resource = boto3.client("cloudformation").describe_stack_resource(
        StackName=stack, LogicalResourceId="MigrateFunction"
    )
    name = resource["StackResourceDetail"]["PhysicalResourceId"]
    # A migration may take the function's whole timeout (900 s); a retried invoke would run it twice at once.
    patient = Config(read_timeout=910, retries={"max_attempts": 1})
    answer = boto3.client("lambda", config=patient).invoke(
        FunctionName=name, Payload=json.dumps({"action": "upgrade"}).encode()
    )
    payload = answer["Payload"].read().decode("utf-8")
    if answer.get("FunctionError"):
        print(f"{name} failed: {payload}", file=sys.stderr)
        return 1
    print(payload)
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    from tollgate_local.runtime import FunctionRunner
    from tollgate_local.schedules import scheduled_event
    from tollgate_local.template import ScheduleDef, Template

    template = Template(Path(args.template))
    try:
        now = _parse_now(args.now)
    except ValueError:
        print(f"--now {args.now!r} is not an ISO 8601 time (e.g. 2026-02-28T23:59:00Z)", file=sys.stderr)
        return 2
    if args.name in template.schedules:
        schedule = template.schedules[args.name]
        function_id = schedule.function_id
        event: Any = scheduled_event(schedule, now)
    elif args.name in template.functions:
        function_id = args.name
        default = ScheduleDef(args.name, function_id, "rate(1 day)", None, True, "UTC")
        event = scheduled_event(default, now)
    else:
        known = ", ".join(sorted([*template.schedules, *template.functions]))
        print(f"no function or schedule named {args.name!r} in {args.template}; known: {known}", file=sys.stderr)
        return 2
    if args.event:
        loaded = _read_event(args.event)
        if loaded is None:
            return 2
        event = loaded
    _prepare_database()
    try:
        result = FunctionRunner(template.functions).invoke(function_id, event)
    except Exception as exc:
        # A handler given an event it does not expect fails inside; say so instead of a traceback (-v shows it).
        log.debug("the handler raised", exc_info=True)
        print(
            f"{function_id} failed on this event: {type(exc).__name__}: {exc}\n"
            "Is it the event this function expects? API routes take an API Gateway HTTP API (payload 2.0) event, "
            "scheduled jobs an EventBridge Scheduled Event; run with -v for the traceback.",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


def _read_event(name: str) -> Any:
    """The JSON event in file `name` (`-` for standard input), or None after saying what is wrong with it."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        print(f"cannot read the event file {name}: {exc.strerror or exc}", file=sys.stderr)
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"{name} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", file=sys.stderr)
        return None


def cmd_schedules(args: argparse.Namespace) -> int:
    from tollgate_local.schedules import next_fire
    from tollgate_local.template import Template

    now = datetime.now(UTC)
    schedules = Template(Path(args.template)).schedules
    if not schedules:
        print("no schedules in the template")
    rows = []
    for name, s in sorted(schedules.items()):
        upcoming = next_fire(s.expression, now, s.timezone) if s.enabled else None
        when = upcoming.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if upcoming else "-"
        state = "enabled" if s.enabled else "disabled"
        rows.append((name, s.function_id, s.expression, s.timezone, state, f"next: {when}"))
    print_table(rows)
    return 0


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Columns as wide as their widest cell, so every row lines up whatever the names."""
    if not rows:
        return
    widths = [max(len(str(cell)) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def cmd_seed(args: argparse.Namespace) -> int:
    from tollgate_local.seed import DEFAULT_SEED_FILE, seed

    _prepare_database()
    written = seed(Path(args.file) if args.file else DEFAULT_SEED_FILE)
    print(json.dumps(written))
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:
    from tollgate.config import get_settings

    server = _prepare_database(migrate=False)
    url = get_settings().database_url or ""
    print(url, flush=True)
    if not getattr(args, "keep", False):
        if server is not None:
            print("(the embedded database stops when this command exits: use --keep, or `tollgate psql`)",
                  file=sys.stderr)  # fmt: skip
        return 0
    if server is not None:
        print("the database stays up until Ctrl-C", file=sys.stderr, flush=True)
    _wait_for_stop()
    del server
    return 0


def _wait_for_stop() -> None:
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop["now"]:
        time.sleep(0.2)


def psql_command(server: Any, url: str) -> list[str]:
    """psql for `url`: the embedded server's own binary when it runs one, else the psql on PATH."""
    import re
    import shutil

    libpq_url = re.sub(r"^postgresql\+\w+://", "postgresql://", url)  # a SQLAlchemy driver suffix is not libpq's
    if server is not None:
        from pgserver._commands import POSTGRES_BIN_PATH  # pgserver ships psql beside postgres

        return [str(POSTGRES_BIN_PATH / "psql"), libpq_url]
    found = shutil.which("psql")
    if found is None:
        raise SystemExit("no psql on PATH for DATABASE_URL; install the PostgreSQL client")
    return [found, libpq_url]


def cmd_psql(args: argparse.Namespace) -> int:
    import subprocess

    from tollgate.config import get_settings

    server = _prepare_database(migrate=not args.no_migrate)
    extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    command = [*psql_command(server, get_settings().database_url or ""), *extra]
    # The database stays up while psql runs (this process owns the embedded server).
    completed = subprocess.run(command, check=False)
    del server
    return completed.returncode


def cmd_openapi(args: argparse.Namespace) -> int:
    from tollgate_local.gateway import Gateway
    from tollgate_local.openapi import COMMITTED_OPENAPI, merged_openapi, openapi_text
    from tollgate_local.template import Template

    text = openapi_text(merged_openapi(Gateway(Template(Path(args.template)))))
    if args.check:
        current = COMMITTED_OPENAPI.read_text(encoding="utf-8") if COMMITTED_OPENAPI.exists() else ""
        if current != text:
            print(f"{COMMITTED_OPENAPI} is out of date: run `tollgate openapi --write`", file=sys.stderr)
            return 1
        print(f"{COMMITTED_OPENAPI} is current")
        return 0
    if args.write:
        COMMITTED_OPENAPI.parent.mkdir(parents=True, exist_ok=True)
        COMMITTED_OPENAPI.write_text(text, encoding="utf-8")
        print(f"wrote {COMMITTED_OPENAPI}")
        return 0
    sys.stdout.write(text)
    return 0


EPILOG = """examples:
  tollgate serve --seed --with-schedules     what `make run` runs
  tollgate invoke MonthlyAllowance --now 2026-02-28T00:00:00Z
  tollgate psql                              a psql shell on the local database (it stays up meanwhile)
  tollgate webhooks send stripe checkout.session.completed --user you@example.com --pack "Starter pack"
  tollgate rag ingest docs/faq.yaml

`tollgate COMMAND --help` tells more about each command. Logs are quiet unless -v (INFO) or -vv (DEBUG)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--template", default=str(TEMPLATE_PATH), help="the SAM template (default: template.yaml)")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="show logs: -v INFO (database, migrations), -vv DEBUG"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    serve = sub.add_parser("serve", help="start the database and serve every route of the template")
    serve.add_argument("--port", type=int, default=None, help="default: $TOLLGATE_PORT or 3000")
    serve.add_argument("--with-schedules", action="store_true", help="also run the template's schedules")
    serve.add_argument("--seed", action="store_true", help="load the example catalogue first")
    serve.add_argument("--no-migrate", action="store_true")
    serve.add_argument("--max-instances", type=int, default=None, metavar="N",
                       help="instances per function at most, each serving one request at a time, as Lambda "
                            "containers do (like reserved concurrency; default 32)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database to the newest schema")
    migrate.add_argument("--downgrade", metavar="REVISION", help="downgrade to REVISION (e.g. base, -1)")
    migrate.add_argument("--aws", metavar="STACK", help="run the deployed stack's migration function instead")
    migrate.set_defaults(func=cmd_migrate)

    invoke = sub.add_parser("invoke", help="invoke a function (by logical id) or a schedule (by name)")
    invoke.add_argument("name")
    invoke.add_argument("--event", help="a JSON file with the event, - for stdin (default: a scheduled event)")
    invoke.add_argument("--now", help="the clock the scheduled event carries (ISO 8601)")
    invoke.set_defaults(func=cmd_invoke)

    schedules = sub.add_parser("schedules", help="list the template's schedules and when they fire next")
    schedules.set_defaults(func=cmd_schedules)

    seed = sub.add_parser("seed", help="load example data (default: the shipped catalogue)")
    seed.add_argument("file", nargs="?")
    seed.set_defaults(func=cmd_seed)

    db_url = sub.add_parser("db-url", help="start the embedded database and print its URL")
    db_url.add_argument("--keep", action="store_true", help="keep the database up until Ctrl-C")
    db_url.set_defaults(func=cmd_db_url)

    psql = sub.add_parser("psql", help="open psql on the local database (kept up while psql runs)")
    psql.add_argument("--no-migrate", action="store_true")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="passed to psql (e.g. -c 'SELECT 1')")
    psql.set_defaults(func=cmd_psql)

    openapi = sub.add_parser("openapi", help="print the merged OpenAPI document (--write: docs/openapi.json)")
    openapi.add_argument("--write", action="store_true", help="write the committed docs/openapi.json")
    openapi.add_argument("--check", action="store_true", help="fail if docs/openapi.json is out of date")
    openapi.set_defaults(func=cmd_openapi)

    from tollgate_local.webhooks_cli import add_parser as add_webhooks_parser

    add_webhooks_parser(sub)  # tollgate webhooks replay|send (issue 5)
    from tollgate_local.rag_cli import add_rag_commands  # the `rag` subcommand (knowledge base)

    add_rag_commands(sub)
    from tollgate_local.mail_cli import add_parser as add_mail_parser

    add_mail_parser(sub)  # tollgate mail simulate (SES delivery events, locally)
    return parser


# Commands whose two processes (the server, and the sender) must agree on the local webhook secrets.
WEBHOOK_SECRET_COMMANDS = {"serve", "webhooks"}


def configure_logging(verbosity: int, command: str) -> None:
    """Quiet by default: warnings only, plus the gateway's own lines while serving; -v INFO, -vv DEBUG."""
    import warnings

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if command == "serve" and verbosity == 0:
        logging.getLogger("tollgate_local").setLevel(logging.INFO)
    if verbosity == 0:
        # The handlers' structured logs (powertools) follow the same rule, unless set explicitly.
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Locally, metrics would only print EMF blobs between the log lines.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    configure_logging(args.verbose, args.command)
    from tollgate_local.local_secrets import ensure_jwt_signing_key, ensure_webhook_secrets

    ensure_jwt_signing_key()  # locally: $TOLLGATE_DATA_DIR/jwt.key unless JWT_SIGNING_KEY is set
    if args.command in WEBHOOK_SECRET_COMMANDS:
        ensure_webhook_secrets()  # locally: $TOLLGATE_DATA_DIR/*_webhook.secret unless set
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
