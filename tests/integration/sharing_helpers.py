"""Accounts and counts shared by the sharing-and-trust tests (retrieval, portal,
corrections, insurer)."""

from __future__ import annotations

from itertools import count

from sqlalchemy import func, select

from huren.adapters.db.tables import audit_event
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.services.accounts import NewAccount
from tests.fixtures.actors import SEED

_n = count(1)


def principal(
    container: Container,
    role: Role,
    *,
    institution: str | None = None,
    jurisdiction: str | None = None,
    patient_id: int | None = None,
    name: str = "",
) -> Principal:
    """A real account of ``role`` (so foreign keys and notifications work)."""
    created = container.accounts.create_account(
        NewAccount(
            f"{role.value}.{next(_n)}",
            name
            or {"clinician": "刘医生", "institution_admin": "周管理"}.get(role.value, "测试用户"),
            role,
            institution=institution,
            jurisdiction=jurisdiction,
            patient_id=patient_id,
        ),
        generate_password=False,
        actor=SEED,
    )
    return created.account.principal()


def audit_rows(container: Container, **where: object) -> int:
    stmt = select(func.count()).select_from(audit_event)
    for column, value in where.items():
        stmt = stmt.where(audit_event.c[column] == value)
    with container.engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())
