"""Run-time settings (`system_config`, seed 004): typed values admins change without a deploy, read through one
accessor with a short per-container cache.

    from tollgate import system_config
    cap = system_config.get_number(session, system_config.SUPPORT_GOODWILL_CAP)   # cached a few seconds
    system_config.get(session, key, max_age=0)                                     # fresh: gates a write

A value is read from its row; a known key without a row has its typed default. Known keys have a fixed type and
bounds (`KNOWN`); other keys take any of the four types. A container reuses what it read for
SYSTEM_CONFIG_CACHE_SECONDS (default 5), so a change made elsewhere shows within that; a change made in this
container shows at once (the writer calls `forget`).

`allow_bonus_auto_use_toggle` is a known key whose value lives in `admin_settings.allow_bonus_auto_use_toggle`,
not in a row here: the ledger's charge rules (migrations/sql/ledger, tollgate_allow_packs) read that column inside
the charging transaction, and one stored value serves both PUT /admin/system-config/allow_bonus_auto_use_toggle
and PUT /admin/credits/settings.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.errors import InvalidConfigValue, ValidationFailed
from tollgate.models.credits import AdminSettings
from tollgate.models.support import (
    CONFIG_KEY_MAX_LENGTH,
    CONFIG_TYPES,
    CONFIG_VALUE_MAX_LENGTH,
    NUMBER_TEXT,
    SystemConfig,
)

ConfigType = Literal["string", "number", "boolean", "json"]
# A setting's value as Python holds it: str, Decimal (never float), bool, or parsed JSON.
ConfigValue = Any

ALLOW_BONUS_AUTO_USE_TOGGLE: Final = "allow_bonus_auto_use_toggle"
SUPPORT_GOODWILL_CAP: Final = "support_goodwill_cap"
SUPPORT_GOODWILL_DAILY_CAP: Final = "support_goodwill_daily_cap"
SUPPORT_INBOX_EMAIL: Final = "support_inbox_email"

KEY_PATTERN = re.compile(rf"^[a-z][a-z0-9_.]{{0,{CONFIG_KEY_MAX_LENGTH - 1}}}$")
_NUMBER = re.compile(NUMBER_TEXT)
_DECIMAL_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")  # what a decimal string may look like on the way in
MAX_NUMBER_DIGITS = 30
# Keys other than the known ones an admin may create: each is at most CONFIG_VALUE_MAX_LENGTH, and the store stays
# a settings table, not free storage.
MAX_STORED_KEYS = 200


@dataclass(frozen=True, slots=True)
class KnownKey:
    type: ConfigType
    default: ConfigValue
    description: str
    minimum: Decimal | None = None
    maximum: Decimal | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    in_admin_settings: bool = False  # stored in the admin_settings column of the same name (see module doc)


KNOWN: Final[dict[str, KnownKey]] = {
    ALLOW_BONUS_AUTO_USE_TOGGLE: KnownKey(
        type="boolean",
        default=False,
        description="Whether users may choose to auto-use purchased credits (PUT /admin/credits/settings too)",
        in_admin_settings=True,
    ),
    SUPPORT_GOODWILL_CAP: KnownKey(
        type="number",
        default=Decimal(100),
        description="The most credits one goodwill grant by support may give",
        minimum=Decimal(0),
        maximum=Decimal(1_000_000),
    ),
    SUPPORT_GOODWILL_DAILY_CAP: KnownKey(
        type="number",
        default=Decimal(1000),
        description="The most goodwill credits one staff member may grant in any 24 hours",
        minimum=Decimal(0),
        maximum=Decimal(10_000_000),
    ),
    SUPPORT_INBOX_EMAIL: KnownKey(
        type="string",
        default="",
        description="Where customer replies to unassigned tickets are mailed (empty: nobody)",
        max_length=320,
        # One bare address (no display name, list or header syntax): it becomes a To header as it is.
        pattern=re.compile(r"|[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+"),
    ),
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One setting as stored (or, `is_default`, as its known key's default)."""

    key: str
    type: ConfigType
    value: ConfigValue
    description: str | None
    is_default: bool
    updated_by: uuid.UUID | None
    updated_at: datetime | None


# --- types ----------------------------------------------------------------------------------------------------
def _invalid(message: str, **details: Any) -> InvalidConfigValue:
    return InvalidConfigValue(message, details=details)


def check_key(key: str) -> None:
    if not KEY_PATTERN.fullmatch(key):  # fullmatch: `$` would let a trailing newline through
        raise ValidationFailed(
            f"a key is 1-{CONFIG_KEY_MAX_LENGTH} of a-z, 0-9, _ and . starting with a letter", details={"key": key}
        )


def _number(value: Any) -> Decimal:
    # A JSON number or a decimal string; never a bool (a JSON true is not 1).
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _invalid("a number setting takes a number", field="value")
    if isinstance(value, str) and not _DECIMAL_TEXT.match(value.strip()):
        raise _invalid("a number setting takes a number or a plain decimal string", field="value")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _invalid("a number setting takes a number", field="value") from None
    if not number.is_finite():
        raise _invalid("a number setting takes a finite number", field="value")
    if len(number.as_tuple().digits) > MAX_NUMBER_DIGITS:
        raise _invalid(f"a number setting has at most {MAX_NUMBER_DIGITS} digits", field="value")
    return number


def encode(type_: ConfigType, value: Any) -> tuple[str, ConfigValue]:
    """The stored text of `value` as a `type_` setting, and the value as it will be read back."""
    typed: ConfigValue
    if type_ == "string":
        if not isinstance(value, str):
            raise _invalid("a string setting takes a string", field="value")
        text, typed = value, value
    elif type_ == "number":
        number = _number(value)
        text = format(number.normalize(), "f") if number else "0"
        typed = Decimal(text)
    elif type_ == "boolean":
        if not isinstance(value, bool):
            raise _invalid("a boolean setting takes true or false", field="value")
        text, typed = ("true" if value else "false"), value
    elif type_ == "json":
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        typed = decode("json", text)
    else:
        raise _invalid(f"type is one of {', '.join(CONFIG_TYPES)}", field="type")
    if len(text) > CONFIG_VALUE_MAX_LENGTH:
        raise _invalid(f"a setting's value is at most {CONFIG_VALUE_MAX_LENGTH} characters", field="value")
    return text, typed


def decode(type_: str, text: str) -> ConfigValue:
    if type_ == "number":
        if not _NUMBER.match(text):
            raise ValueError(f"not a stored number: {text[:40]!r}")
        return Decimal(text)
    if type_ == "boolean":
        return text == "true"
    if type_ == "json":
        return json.loads(text, parse_float=Decimal)
    return text


def check(key: str, type_: ConfigType, value: Any) -> tuple[str, ConfigValue]:
    """`value` as a `type_` setting of `key` (stored text, typed value): of its type, and for a known key of
    that key's type and inside its bounds; else InvalidConfigValue."""
    check_key(key)
    known = KNOWN.get(key)
    if known is not None and type_ != known.type:
        raise _invalid(f"{key} is a {known.type} setting", field="type", expected=known.type)
    text, typed = encode(type_, value)
    if known is not None:
        if known.minimum is not None and typed < known.minimum:
            raise _invalid(f"{key} is at least {known.minimum}", field="value", minimum=str(known.minimum))
        if known.maximum is not None and typed > known.maximum:
            raise _invalid(f"{key} is at most {known.maximum}", field="value", maximum=str(known.maximum))
        if known.max_length is not None and len(text) > known.max_length:
            raise _invalid(f"{key} is at most {known.max_length} characters", field="value")
        if known.pattern is not None and not known.pattern.fullmatch(text):  # "a@b\n" would pass a `$`
            raise _invalid(f"{key} does not have the expected form", field="value")
    return text, typed


# --- reading --------------------------------------------------------------------------------------------------
def default_entry(key: str) -> Entry:
    known = KNOWN[key]
    return Entry(key, known.type, copy.deepcopy(known.default), known.description, True, None, None)


def entry_of(row: SystemConfig) -> Entry:
    known = KNOWN.get(row.key)
    type_: ConfigType = row.type  # type: ignore[assignment]  # the database's CHECK keeps it one of four
    return Entry(
        key=row.key,
        type=type_,
        value=decode(row.type, row.value),
        description=known.description if known is not None else row.description,
        is_default=False,
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


def admin_settings_entry(session: Session, key: str) -> Entry:
    """A known key kept in admin_settings, as stored there (its default when the singleton row is missing)."""
    known = KNOWN[key]
    column = getattr(AdminSettings, key)
    stored = session.execute(select(column).where(AdminSettings.id == 1)).scalar_one_or_none()
    if stored is None:
        return default_entry(key)
    return Entry(key, known.type, stored, known.description, False, None, None)


def read(session: Session, key: str) -> Entry | None:
    """The setting as stored now (uncached), its default if it is a known key without a value, else None."""
    known = KNOWN.get(key)
    if known is not None and known.in_admin_settings:
        return admin_settings_entry(session, key)
    row = session.execute(select(SystemConfig).where(SystemConfig.key == key)).scalar_one_or_none()
    if row is not None:
        return entry_of(row)
    return default_entry(key) if known is not None else None


class _Cache:
    """What this container read, per key, until its time is up (monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, ConfigValue]] = {}

    def lookup(self, key: str, max_age: float) -> tuple[bool, ConfigValue]:
        with self._lock:
            hit = self._values.get(key)
        if hit is None or time.monotonic() - hit[0] >= max_age:
            return False, None
        return True, hit[1]

    def store(self, key: str, value: ConfigValue) -> None:
        with self._lock:
            self._values[key] = (time.monotonic(), value)

    def forget(self, key: str | None) -> None:
        with self._lock:
            if key is None:
                self._values.clear()
            else:
                self._values.pop(key, None)


_cache = _Cache()


def get(session: Session, key: str, *, max_age: float | None = None) -> ConfigValue:
    """The value of `key` (its typed default for a known key without one; None for an unknown key without one),
    reusing what this container read in the last `max_age` seconds (default SYSTEM_CONFIG_CACHE_SECONDS; 0 reads
    now)."""
    age = get_settings().system_config_cache_seconds if max_age is None else max_age
    hit, value = _cache.lookup(key, age)
    if not hit:
        entry = read(session, key)
        value = entry.value if entry is not None else None
        _cache.store(key, value)
    # JSON values are mutable: a caller must not change what the next caller reads.
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


def get_number(session: Session, key: str, *, max_age: float | None = None) -> Decimal:
    value = get(session, key, max_age=max_age)
    if not isinstance(value, Decimal):
        raise TypeError(f"{key} is not a number setting")
    return value


def get_bool(session: Session, key: str, *, max_age: float | None = None) -> bool:
    value = get(session, key, max_age=max_age)
    if not isinstance(value, bool):
        raise TypeError(f"{key} is not a boolean setting")
    return value


def get_string(session: Session, key: str, *, max_age: float | None = None) -> str:
    value = get(session, key, max_age=max_age)
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string setting")
    return value


def forget(key: str | None = None) -> None:
    """Drop this container's cached value of `key` (all keys with None): called by whoever changed it here."""
    _cache.forget(key)
