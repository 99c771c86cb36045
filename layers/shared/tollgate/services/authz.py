"""Role checks for services. The authorizer proves who calls; services decide what that caller may do.

require_role(principal.role, "ADMIN")             # admins only
require_role(principal.role, "ADMIN", "SUPPORT")  # staff
"""

from __future__ import annotations

from tollgate.errors import Forbidden

ROLES = frozenset({"USER", "SUPPORT", "ADMIN"})


def require_role(principal_role: str | None, *roles: str) -> None:
    """Raise `Forbidden` unless `principal_role` is one of `roles` (at least one role must be named)."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    if principal_role not in roles:
        raise Forbidden("this action needs the role " + " or ".join(roles), details={"required": list(roles)})
