"""Every model module, imported together: the whole schema on `Base.metadata`."""

from __future__ import annotations

from sqlalchemy import MetaData


def load_all() -> MetaData:
    from tollgate.db.base import Base
    from tollgate.models import auth, auto_topup, credits, jobs, outbox, payments, rag, storage, users  # noqa: F401

    return Base.metadata
