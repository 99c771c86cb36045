"""ORM models. Every table of the schema is imported here so Alembic and the tests see the whole metadata."""

from tollgate.models.users import User, UserRole, UserStatus

__all__ = ["User", "UserRole", "UserStatus"]
