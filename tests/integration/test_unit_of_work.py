"""The unit of work keeps nothing unless told to commit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from tests.support import make_user
from tollgate.db import UnitOfWork
from tollgate.models import User


def count_users(uow_factory: Callable[[], UnitOfWork]) -> int:
    with uow_factory() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(User)) or 0)


def test_committed_work_is_kept(db: Callable[[], UnitOfWork]) -> None:
    with db() as uow:
        make_user(uow.session)
        uow.commit()
    assert count_users(db) == 1


def test_work_without_commit_is_rolled_back(db: Callable[[], UnitOfWork]) -> None:
    with db() as uow:
        make_user(uow.session)
    assert count_users(db) == 0


def test_an_error_rolls_everything_back(db: Callable[[], UnitOfWork]) -> None:
    with pytest.raises(RuntimeError), db() as uow:
        make_user(uow.session)
        uow.session.flush()
        raise RuntimeError("boom")
    assert count_users(db) == 0


def test_emails_are_unique_whatever_their_case(db: Callable[[], UnitOfWork]) -> None:
    from sqlalchemy.exc import IntegrityError

    with db() as uow:
        make_user(uow.session, email="Ada@Example.com")
        uow.commit()
    with pytest.raises(IntegrityError), db() as uow:
        make_user(uow.session, email="ada@example.com")
