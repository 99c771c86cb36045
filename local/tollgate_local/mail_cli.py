"""`tollgate mail simulate MESSAGE_ID delivered|bounce|complaint`: locally, what SES would report for a message
the local backend sent (its log's `message_id`, `local-<log id>`), applied exactly as an SES event arriving
through SNS would be (tollgate.services.mail_events). A bounce or complaint suppresses the address."""

from __future__ import annotations

import argparse
import json
from typing import Any


def cmd_simulate(args: argparse.Namespace) -> int:
    from tollgate.db import UnitOfWork
    from tollgate.errors import TollgateError
    from tollgate.services import mail_events
    from tollgate_local.cli import _prepare_database

    _prepare_database()
    try:
        result = mail_events.simulate(UnitOfWork(), args.message_id, args.outcome)
    except TollgateError as exc:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message, "details": exc.details}}, default=str))
        return 1
    print(json.dumps({
        "notification_id": result.notification_id, "type": result.type, "outcome": result.outcome,
        "email_log_id": result.email_log_id, "status": result.status, "suppressed": list(result.suppressed),
    }, default=str, indent=2))  # fmt: skip
    return 0


def add_parser(sub: Any) -> None:
    mail = sub.add_parser("mail", help="simulate what SES reports of a sent message (delivery, bounce, complaint)")
    actions = mail.add_subparsers(dest="mail_command", required=True)
    simulate = actions.add_parser("simulate", help="apply an SES delivery, permanent bounce or complaint locally")
    simulate.add_argument("message_id", help="the email log's message_id (local-<log id> for the local backend)")
    simulate.add_argument("outcome", choices=("delivered", "bounce", "complaint"))
    simulate.set_defaults(func=cmd_simulate)
