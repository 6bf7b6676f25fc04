"""clinician columns wide enough for a CDS Hooks userId

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

CDS Hooks 2.0 ``context.userId`` is a FHIR reference to the user: "PractitionerRole/"
and an id of up to 64 characters (FHIR R4 id: ``[A-Za-z0-9\\-\\.]{1,64}``) is 81
characters. The columns that keep it held 64, so an EHR whose ids are long got a 400 on
every order-select. They are widened to 100.

PostgreSQL: ALTER COLUMN … TYPE varchar(100), which rewrites no row and rebuilds no
index (a longer varchar). SQLite does not enforce VARCHAR lengths: nothing to do there.
The downgrade refuses while a longer value is kept, rather than cut it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("reminder", "decision", "cds_card", "monitoring_month", "monitoring_decline")


def _alter(width: int, before: int) -> None:
    for table in TABLES:
        op.alter_column(
            table,
            "clinician",
            type_=sa.String(width),
            existing_type=sa.String(before),
            existing_nullable=False,
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _alter(100, 64)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        longer = bind.execute(
            sa.text(f"SELECT count(*) FROM {table} WHERE length(clinician) > 64")  # noqa: S608
        ).scalar_one()
        if longer:
            raise RuntimeError(
                f"{table} 中有 {longer} 行的 clinician 超过 64 个字符：降级会截断它们，已停止"
            )
    _alter(64, 100)
