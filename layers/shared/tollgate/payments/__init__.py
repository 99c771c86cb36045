"""Payments: provider adapters (Stripe, Lemon Squeezy), webhook signature checks, and the event handlers that
turn verified provider events into purchases, subscriptions, invoices and ledger grants.

Services (`tollgate.services.billing`, `tollgate.services.webhooks`) are the entry points; nothing here
commits a transaction.
"""
