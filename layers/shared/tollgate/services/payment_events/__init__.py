"""Provider events turned into business steps: one module per provider reads its payloads, `handling` holds the
steps they share. They run inside the webhook's unit of work (services/webhooks.py) and never call a provider."""
