"""Tollgate: the shared layer of every Lambda function (config, database, ledger, services, adapters)."""
