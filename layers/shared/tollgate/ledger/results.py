"""What the ledger's operations answer (plain frozen values; amounts are Decimals at the ledger's scale)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class GrantResult:
    grant_id: uuid.UUID
    transaction_id: uuid.UUID
    amount: Decimal
    balance: Decimal
    created: bool  # False when the source key had already granted (the original grant is answered)


@dataclass(frozen=True, slots=True)
class ChargeResult:
    transaction_id: uuid.UUID
    charged: Decimal
    balance: Decimal
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class HoldResult:
    hold_id: uuid.UUID
    amount: Decimal
    expires_at: datetime
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class CaptureResult:
    transaction_id: uuid.UUID
    charged: Decimal
    released: Decimal
    balance: Decimal
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    released: Decimal
    balance: Decimal


@dataclass(frozen=True, slots=True)
class RefundResult:
    transaction_id: uuid.UUID
    refunded: Decimal
    expired: Decimal  # the part that went back to grants already expired, and expired again at once
    balance: Decimal
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class AdjustResult:
    transaction_id: uuid.UUID
    amount: Decimal
    balance: Decimal
    grant_id: uuid.UUID | None
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ExpireResult:
    expired: Decimal
    balance: Decimal


@dataclass(frozen=True, slots=True)
class ClawbackResult:
    transaction_id: uuid.UUID
    clawed_back: Decimal
    balance: Decimal
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class AccountMismatch:
    user_id: uuid.UUID
    balance: Decimal
    ledger_sum: Decimal
    grants_remaining: Decimal
    debt: Decimal
    held: Decimal
    active_holds: Decimal
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    users_checked: int
    mismatches: list[AccountMismatch] = field(default_factory=list)
