"""`credits.low` and `credits.depleted`: emitted in the transaction of the charge, hold or capture that crosses.

"Low" is BalanceNotices' rule (tollgate/jobs/notices.py): the last BURN_RATE_DAYS of usage would empty the available
balance (balance - held) within LOW_BALANCE_NOTICE_DAYS. "Depleted" is an available balance at or under 0.
One bound keeps the charge path's cost flat: the look-up reads at most BURN_SAMPLE usage rows. A user with more
in the window has their pace measured over those most recent rows (their sum over the time since the oldest of
them), not over the whole window - the current pace, which is what running out soon depends on.
Each is emitted once per crossing: an episode is the user's latest grant (a top-up starts a new one, so a user
can cross again), and the dedupe key is per user + kind + episode. The look-up reads indexed rows only and answers
"already emitted" too, so a charge while already low writes nothing; for a charge it rides in the charge's own
statement (`STATE_SQL` joined to tollgate_charge), so it costs no extra round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.outbox import EventType, emit

# The state of one account the decision needs (migrations/sql/outbox/tollgate_spend_state.v1.sql). Joined to
# tollgate_charge in one statement, it reads the statement's snapshot: the charge's own writes are not in it
# (`after_charge` adds them), nor those of charges that committed while this one waited for the account lock -
# the decision may then come one charge late, never twice: the dedupe key's unique index makes a second emit of
# a crossing a no-op. (A call, not the query's text: the driver parses every statement's text in Python.)
STATE_CALL = "tollgate_spend_state(:user_id, :since, :sample)"
STATE = text(f"SELECT * FROM {STATE_CALL}")
STATE_FIELDS = ("account_balance", "held", "episode", "used", "n", "oldest", "low_sent", "depleted_sent")

HOURS = Decimal("0.1")
BURN_SAMPLE = 100
MIN_SPAN_HOURS = Decimal(1) / 60  # a burst's pace is measured over at least a minute


@dataclass(frozen=True, slots=True)
class SpendState:
    balance: Decimal  # after the spend
    held: Decimal
    episode: uuid.UUID | None
    used: Decimal  # recent usage, this spend included
    n: int
    oldest: datetime | None
    low_sent: bool
    depleted_sent: bool


def state_params(now: datetime) -> dict[str, Any]:
    return {"since": now - timedelta(days=get_settings().burn_rate_days), "sample": BURN_SAMPLE}


def projected_hours_to_empty(available: Decimal, used: Decimal, span_hours: Decimal) -> Decimal | None:
    """Hours until `available` is gone at the pace of `used` credits per `span_hours` (None: no recent usage)."""
    if used <= 0:
        return None
    per_hour = used / max(span_hours, MIN_SPAN_HOURS)
    return max(available, Decimal(0)) / per_hour


def after_spend(session: Session, user_id: uuid.UUID, now: datetime) -> None:
    """Emit `credits.low` / `credits.depleted` if this hold or capture crossed into either (once per episode)."""
    row = session.execute(STATE, {"user_id": user_id, **state_params(now)}).first()
    if row is None:
        return
    state = SpendState(
        Decimal(row.account_balance), Decimal(row.held), row.episode, Decimal(row.used), row.n, row.oldest,
        row.low_sent, row.depleted_sent,
    )  # fmt: skip
    decide(session, user_id, now, state)


def after_charge(
    session: Session, user_id: uuid.UUID, now: datetime, columns: Sequence[Any], *, charged: Decimal, balance: Decimal
) -> None:
    """The same for a charge, from the STATE_FIELDS columns its statement returned (read before its writes)."""
    row = dict(zip(STATE_FIELDS, columns, strict=True))
    if row["held"] is None:  # no account row: nothing to announce
        return
    state = SpendState(
        balance, Decimal(row["held"]), row["episode"], Decimal(row["used"]) + charged, int(row["n"]) + 1,
        row["oldest"] or now, bool(row["low_sent"]), bool(row["depleted_sent"]),
    )  # fmt: skip
    decide(session, user_id, now, state)


def decide(session: Session, user_id: uuid.UUID, now: datetime, state: SpendState) -> None:
    settings = get_settings()
    burn_days = settings.burn_rate_days
    available = state.balance - state.held
    episode = str(state.episode) if state.episode is not None else "-"
    base = {"balance": state.balance, "held": state.held, "available": available, "episode_grant_id": state.episode}
    if available <= 0 and not state.depleted_sent:
        emit(
            session, EventType.CREDITS_DEPLETED, user_id=user_id, data=base,
            dedupe_key=f"credits.depleted:{user_id}:{episode}",
        )  # fmt: skip
    # The whole window when it holds fewer than the sample; else the time the sample covers.
    since = now - timedelta(days=burn_days)
    start = state.oldest if state.n >= BURN_SAMPLE and state.oldest is not None else since
    span_hours = Decimal((now - start).total_seconds()) / 3600
    hours = projected_hours_to_empty(available, state.used, span_hours)
    threshold_hours = settings.low_balance_notice_days * 24
    if hours is not None and hours <= threshold_hours and not state.low_sent:
        emit(
            session,
            EventType.CREDITS_LOW,
            user_id=user_id,
            data={
                **base,
                "used_recently": state.used,
                "burn_rate_days": burn_days,
                "threshold_hours": threshold_hours,
                "projected_hours_to_empty": hours.quantize(HOURS, rounding=ROUND_HALF_UP),
            },
            dedupe_key=f"credits.low:{user_id}:{episode}",
        )
