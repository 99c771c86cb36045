"""The CLI's actor: the operator, named by the login that runs the command so audit rows say who acted."""

from __future__ import annotations

import getpass

from tollgate.services.authz import Actor


def operator_actor() -> Actor:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no LOGNAME/USER
        login = ""
    return Actor.operator(f"cli:{login}" if login else "cli")
