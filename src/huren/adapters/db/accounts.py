"""Accounts and API keys in the database; implements ``services.accounts.AccountStore``.

Every method that changes an account or a key writes its ``account_event`` in the same
transaction (``insert_recorded``, ``update_recorded``), after the change and only when
something changed: a change is never kept without its record, nor a record without its
change."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Engine, Table, insert, select, update

from huren.adapters.db import tables as t
from huren.domain.accounts import AccountAction, AccountEvent, Actor, Role
from huren.services.accounts import (
    AccountEventRecord,
    AccountRecord,
    ApiKeyRecord,
    NewAccount,
)


def _account(r: Any) -> AccountRecord:
    return AccountRecord(
        id=r.id,
        username=r.username,
        display_name=r.display_name,
        role=Role(r.role),
        institution=r.institution_code,
        jurisdiction=r.jurisdiction,
        department=r.department,
        patient_id=r.patient_id,
        password_hash=r.password_hash,
        active=r.active,
        created_at=as_utc(r.created_at),
    )


def _api_key(r: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=r.id,
        account_id=r.account_id,
        prefix=r.prefix,
        key_hash=r.key_hash,
        label=r.label,
        created_at=as_utc(r.created_at),
        revoked_at=as_utc(r.revoked_at) if r.revoked_at else None,
    )


def _event(r: Any) -> AccountEventRecord:
    return AccountEventRecord(
        id=r.id,
        at=as_utc(r.at),
        action=AccountAction(r.action),
        actor=Actor(r.actor_account_id, r.actor, r.actor_name, r.actor_role, r.actor_os_user or ""),
        account_id=r.account_id,
        account_username=r.username or "",
        institution=r.institution_code,
        subject=r.subject,
        detail=r.detail or "",
    )


def insert_event(c: Connection, event: AccountEvent, account_id: int) -> None:
    """Write ``event`` about the account ``account_id`` on ``c``, inside the transaction
    of the change it records; the account's institution is read there too."""
    institution = c.execute(
        select(t.account.c.institution_code).where(t.account.c.id == account_id)
    ).scalar_one()
    a = event.actor
    c.execute(
        insert(t.account_event).values(
            at=event.at,
            actor_account_id=a.account_id,
            actor=a.username,
            actor_name=a.display_name,
            actor_role=a.role,
            actor_os_user=a.os_user,
            account_id=account_id,
            institution_code=institution,
            action=event.action.value,
            subject=event.subject,
            detail=event.detail,
        )
    )


def as_utc(at: datetime) -> datetime:
    """SQLite hands back naive datetimes for ``DateTime(timezone=True)``; they were
    written as UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def insert_recorded(
    engine: Engine, table: Table, event: AccountEvent, owner: int | None, **values: Any
) -> int:
    """Insert a row of ``table`` with ``values`` and record ``event`` against the account
    ``owner`` — the new row itself when None (a new account) — in one transaction; the
    new row's id."""
    with engine.begin() as c:
        result = c.execute(insert(table).values(**values))
        row_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        insert_event(c, event, row_id if owner is None else owner)
        return row_id


def update_recorded(
    engine: Engine,
    event: AccountEvent,
    owner: Column[Any],
    where: Sequence[ColumnElement[bool]],
    **values: Any,
) -> bool:
    """Set ``values`` on the row of ``owner``'s table that ``where`` selects and record
    ``event`` against the account ``owner`` names in it (the column of the account's id),
    in one transaction; False, and nothing recorded, when no row was changed."""
    with engine.begin() as c:
        changed = c.execute(
            update(owner.table).where(*where).values(**values).returning(owner)
        ).scalar_one_or_none()
        if changed is None:
            return False
        insert_event(c, event, int(changed))
        return True


class SqlAccounts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_account(
        self, new: NewAccount, password_hash: str | None, now: datetime, event: AccountEvent
    ) -> int:
        return insert_recorded(
            self.engine,
            t.account,
            event,
            None,
            username=new.username,
            display_name=new.display_name,
            role=new.role.value,
            institution_code=new.institution,
            jurisdiction=new.jurisdiction,
            department=new.department,
            patient_id=new.patient_id,
            password_hash=password_hash,
            active=True,
            created_at=now,
        )

    def account_by_id(self, account_id: int) -> AccountRecord | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.account).where(t.account.c.id == account_id)).first()
        return _account(row) if row is not None else None

    def account_by_username(self, username: str) -> AccountRecord | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.account).where(t.account.c.username == username)).first()
        return _account(row) if row is not None else None

    def list_accounts(
        self, institution: str | None = None, role: Role | None = None
    ) -> list[AccountRecord]:
        a = t.account.c
        q = select(t.account).order_by(a.id)
        if institution is not None:
            q = q.where(a.institution_code == institution)
        if role is not None:
            q = q.where(a.role == role.value)
        with self.engine.connect() as c:
            return [_account(r) for r in c.execute(q)]

    def set_active(self, account_id: int, active: bool, event: AccountEvent) -> bool:
        """False, and nothing recorded, when the account is already so (or absent)."""
        a = t.account.c
        return update_recorded(
            self.engine, event, a.id, [a.id == account_id, a.active.isnot(active)], active=active
        )

    def set_password_hash(self, account_id: int, password_hash: str, event: AccountEvent) -> bool:
        a = t.account.c
        return update_recorded(
            self.engine, event, a.id, [a.id == account_id], password_hash=password_hash
        )

    def _exists(self, key: Column[Any], value: object) -> bool:
        with self.engine.connect() as c:
            return c.execute(select(key).where(key == value)).first() is not None

    def institution_exists(self, code: str) -> bool:
        return self._exists(t.institution.c.code, code)

    def scope_exists(self, code: str) -> bool:
        return self._exists(t.scope.c.code, code)

    def patient_exists(self, patient_id: int) -> bool:
        return self._exists(t.patient.c.id, patient_id)

    def add_api_key(
        self,
        account_id: int,
        prefix: str,
        key_hash: str,
        label: str,
        now: datetime,
        event: AccountEvent,
    ) -> int:
        return insert_recorded(
            self.engine,
            t.api_key,
            event,
            account_id,
            account_id=account_id,
            prefix=prefix,
            key_hash=key_hash,
            label=label,
            created_at=now,
        )

    def api_key_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.api_key).where(t.api_key.c.prefix == prefix)).first()
        return _api_key(row) if row is not None else None

    def list_api_keys(self, account_id: int | None = None) -> list[ApiKeyRecord]:
        q = select(t.api_key).order_by(t.api_key.c.id)
        if account_id is not None:
            q = q.where(t.api_key.c.account_id == account_id)
        with self.engine.connect() as c:
            return [_api_key(r) for r in c.execute(q)]

    def revoke_api_key(self, prefix: str, now: datetime, event: AccountEvent) -> bool:
        k = t.api_key.c
        return update_recorded(
            self.engine,
            event,
            k.account_id,
            [k.prefix == prefix, k.revoked_at.is_(None)],
            revoked_at=now,
        )

    def account_events(
        self, institution: str | None = None, limit: int = 50
    ) -> list[AccountEventRecord]:
        """The most recent events, newest first; of one institution's accounts if given."""
        e = t.account_event
        q = (
            select(e, t.account.c.username)
            .select_from(e.outerjoin(t.account, t.account.c.id == e.c.account_id))
            .order_by(e.c.id.desc())
            .limit(limit)
        )
        if institution is not None:
            q = q.where(e.c.institution_code == institution)
        with self.engine.connect() as c:
            return [_event(r) for r in c.execute(q)]
