"""Every model module, imported together: the whole schema on `Base.metadata`."""

from __future__ import annotations

from sqlalchemy import MetaData


def load_all() -> MetaData:
    from tollgate.db.base import Base
    from tollgate.models import (  # noqa: F401
        auth,
        auto_topup,
        commerce,
        credits,
        features,
        jobs,
        mail_events,
        outbox,
        payments,
        rag,
        storage,
        support,
        users,
    )

    return Base.metadata
