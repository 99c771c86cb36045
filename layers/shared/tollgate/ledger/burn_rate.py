"""The burn-rate projection of a credit account, one definition for the BalanceNotices job (tollgate/jobs/notices.py)
and the admin low-balance report (tollgate/services/reports.py): SQL fragments over a credit account aliased `a`.

- RECENT_USAGE joins `used.credits`: the credits used (usage and captures) since `:since` (the last BURN_RATE_DAYS);
- BURN_PER_DAY is that pace per day (`:burn_days` = BURN_RATE_DAYS);
- NOTICE_DUE: at that pace the spendable balance (balance - held) runs out within `:notice_days`
  (LOW_BALANCE_NOTICE_DAYS).
"""

from __future__ import annotations

RECENT_USAGE = """
    JOIN LATERAL (
        SELECT coalesce(-sum(t.amount), 0) AS credits FROM credit_transactions t
        WHERE t.user_id = a.user_id AND t.type IN ('usage', 'capture') AND t.created_at >= :since
    ) used ON true"""
BURN_PER_DAY = "used.credits / :burn_days"
NOTICE_DUE = f"used.credits > 0 AND a.balance - a.held <= {BURN_PER_DAY} * :notice_days"
