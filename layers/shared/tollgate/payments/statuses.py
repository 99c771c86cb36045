"""What each provider's subscription statuses mean for access: read by the event handlers, billing and the jobs."""

from __future__ import annotations

# Statuses that give the user the plan's tier. Stripe: past_due keeps access while Stripe retries the payment.
# Lemon Squeezy: `cancelled` runs to the end of the paid period (`ends_at`), then becomes `expired`.
ENTITLED = {
    "stripe": frozenset({"active", "trialing", "past_due"}),
    "lemonsqueezy": frozenset({"active", "on_trial", "past_due", "cancelled"}),
}
TRIALING = frozenset({"trialing", "on_trial"})
# Statuses a subscription never leaves, whatever arrives later.
TERMINAL = {
    "stripe": frozenset({"canceled", "incomplete_expired"}),
    "lemonsqueezy": frozenset({"expired"}),
}
