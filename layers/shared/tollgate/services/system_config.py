"""System config for admins (API.md "Back office"): every setting (known keys with their defaults, and every stored
key), and changing one; audited in the change's transaction. Reading a setting elsewhere is
`tollgate.system_config.get`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from tollgate import system_config
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import InvalidConfigValue
from tollgate.models.support import SystemConfig
from tollgate.pagination import Page, check_limit, decode_cursor, encode_cursor
from tollgate.services import credits_admin
from tollgate.services.authz import ADMIN, Actor, audit, require_role

CURSOR_SCOPE = "system_config.key:asc"


def _audited(entry: system_config.Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"value": _plain(entry.value), "type": entry.type, "default": entry.is_default}


def _plain(value: Any) -> Any:
    # Decimal to its string (the audit row's JSON keeps it exact); everything else is JSON already.
    return format(value, "f") if isinstance(value, Decimal) else value


def list_settings(uow: UnitOfWork, actor: Actor, *, cursor: str | None, limit: int | None) -> Page[system_config.Entry]:
    """Every known key (stored or default) and every stored key, by key."""
    require_role(actor, ADMIN)
    size = check_limit(limit)
    after = decode_cursor(cursor, CURSOR_SCOPE, "s")[0] if cursor else None
    with uow:
        statement = select(SystemConfig).order_by(SystemConfig.key).limit(size + 1)
        if after is not None:
            statement = statement.where(SystemConfig.key > after)
        stored = {row.key: row for row in uow.session.execute(statement).scalars()}
        keys = sorted({*stored, *(k for k in system_config.KNOWN if after is None or k > after)})[: size + 1]
        entries: list[system_config.Entry] = []
        for key in keys:
            known = system_config.KNOWN.get(key)
            if known is not None and known.in_admin_settings:
                entries.append(system_config.admin_settings_entry(uow.session, key))
            elif key in stored:
                entries.append(system_config.entry_of(stored[key]))
            else:
                entries.append(system_config.default_entry(key))
    more = len(entries) > size
    entries = entries[:size]
    next_cursor = encode_cursor(CURSOR_SCOPE, [entries[-1].key]) if more and entries else None
    return Page(items=entries, next_cursor=next_cursor)


def _check_room(session: Session, key: str) -> None:
    """Refuse a new unknown key once MAX_STORED_KEYS of them are stored (creators of new keys take turns)."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext('system_config:new_key'))"))
    stored = session.execute(
        select(func.count()).select_from(SystemConfig).where(SystemConfig.key.not_in(list(system_config.KNOWN)))
    ).scalar_one()
    if stored >= system_config.MAX_STORED_KEYS:
        raise InvalidConfigValue(
            f"at most {system_config.MAX_STORED_KEYS} settings other than the known ones are kept",
            details={"key": key, "limit": system_config.MAX_STORED_KEYS},
        )


def put_setting(
    uow: UnitOfWork, actor: Actor, key: str, *, type_: system_config.ConfigType, value: Any,
    description: str | None = None,
) -> system_config.Entry:  # fmt: skip
    """Set `key` to `value` of `type_` (a known key: its type, inside its bounds; else 422, nothing written)."""
    require_role(actor, ADMIN)
    stored_text, typed = system_config.check(key, type_, value)
    known = system_config.KNOWN.get(key)
    if known is not None and known.in_admin_settings:
        # One stored value, one writer: the credit policy's own (audited there, same transaction).
        credits_admin.set_bonus_auto_use_policy(uow, actor, allow_toggle=bool(typed))
        with uow:
            entry = system_config.admin_settings_entry(uow.session, key)
        return entry
    now = utcnow()
    with uow:
        session = uow.session
        # Writers of one key take turns, so the audit row's old value is the one replaced.
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"system_config:{key}"})
        before = system_config.read(session, key)
        row = session.execute(select(SystemConfig).where(SystemConfig.key == key)).scalar_one_or_none()
        if row is None and known is None:
            _check_room(session, key)
        if row is None:
            row = SystemConfig(key=key, created_at=now)
            session.add(row)
        row.value = stored_text
        row.type = type_
        if known is None and description is not None:
            row.description = description
        row.updated_by = actor.user_id
        row.updated_at = now
        session.flush()
        entry = system_config.entry_of(row)
        audit(
            session, actor, action="system_config.update", target_type="system_config", target_id=key,
            old_values=_audited(before), new_values=_audited(entry),
        )  # fmt: skip
        uow.commit()
    system_config.forget(key)  # this container sees its own change at once
    return entry
