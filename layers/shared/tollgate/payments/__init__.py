"""Payments below the services: provider adapters (Stripe, Lemon Squeezy), webhook signature checks, money
conversion and what providers' statuses mean. Nothing here touches the database or imports a service; the event
handlers live in `tollgate.services.payment_events`.
"""
