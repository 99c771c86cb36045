"""What each provider's subscription statuses mean for access: read by the event handlers, billing and the jobs."""

from __future__ import annotations

# Statuses that give the user the plan's tier. Stripe: past_due keeps access while Stripe retries the payment.
# Lemon Squeezy: `cancelled` runs to the end of the paid period (`ends_at`), then becomes `expired`.
ENTITLED = {
    "stripe": frozenset({"active", "trialing", "past_due"}),
    "lemonsqueezy": frozenset({"active", "on_trial", "past_due", "cancelled"}),
    # Clerk Billing items: `canceled` keeps the plan to the end of the paid period (Clerk then sends `ended`);
    # past_due keeps access while Clerk retries the charge; `trialing` is Tollgate's name for an active item
    # Clerk marks `is_free_trial`. `upcoming` (a deferred change) and `incomplete` (checkout unpaid) give nothing.
    "clerk": frozenset({"active", "trialing", "past_due", "canceled"}),
    # An admin's manual plan: active until ended by hand or at its `until`.
    "manual": frozenset({"active"}),
    # Asaas (ACTIVE/INACTIVE/EXPIRED, lower-cased): `pending` is Tollgate's name for an ACTIVE subscription whose
    # first charge is not paid yet; `past_due` (PAYMENT_OVERDUE) keeps access while the charge can still be paid.
    "asaas": frozenset({"active", "past_due"}),
}
TRIALING = frozenset({"trialing", "on_trial"})
# Statuses a subscription never leaves, whatever arrives later.
TERMINAL = {
    "stripe": frozenset({"canceled", "incomplete_expired"}),
    "lemonsqueezy": frozenset({"expired"}),
    # Clerk: an ended, expired or abandoned item never comes back (re-subscribing makes a new item).
    "clerk": frozenset({"ended", "expired", "abandoned"}),
    "manual": frozenset({"ended"}),
    # Asaas: a removed (SUBSCRIPTION_DELETED) or expired subscription is never charged again; INACTIVE may be
    # reactivated.
    "asaas": frozenset({"deleted", "expired"}),
}
