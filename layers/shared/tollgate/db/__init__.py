"""Database access: the engine (one per container), the ORM base and the unit of work."""

from tollgate.db.base import Base, new_id
from tollgate.db.engine import get_engine, get_session_factory
from tollgate.db.uow import UnitOfWork

__all__ = ["Base", "UnitOfWork", "get_engine", "get_session_factory", "new_id"]
