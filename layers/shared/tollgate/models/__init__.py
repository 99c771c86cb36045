"""ORM models, one module per area (users, auth, credits, payments, rag, jobs).

Each area's code imports the model modules it uses, so a function's cold start pays only for its own tables.
`tollgate.models.registry.load_all()` imports every module, for whoever needs the whole schema (Alembic, tests).
"""

from tollgate.models.users import User, UserRole, UserStatus

__all__ = ["User", "UserRole", "UserStatus"]
