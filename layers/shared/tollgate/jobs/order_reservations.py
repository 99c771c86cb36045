"""OrderReservationExpiry: the safety net for cart checkouts no webhook closed.

Stripe sends `checkout.session.expired` for every session it opened, and that event releases the order's stock
and discount use. An order whose session was never created (a crash between the checkout's two transactions) or
whose event never came would hold them forever: this job cancels PENDING orders past their checkout expiry plus
a grace period, and releases what they held. No provider is asked (no call under a lock).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from tollgate.jobs.runner import Step
from tollgate.services import orders

# Time for Stripe's own `expired` event (and its retries) to arrive first.
GRACE = timedelta(minutes=15)


class OrderReservationExpiry:
    name = "OrderReservationExpiry"
    stat = "orders_released"

    def __init__(self, batch_size: int = 200) -> None:
        self.batch_size = batch_size

    def period_key(self, now: datetime) -> str:
        return now.strftime("%Y-%m-%dT%H:%M")  # it runs every few minutes

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        released = orders.release_stale(session, now, GRACE, self.batch_size)
        return Step(None, released, {self.stat: released} if released else {}, done=released < self.batch_size)
