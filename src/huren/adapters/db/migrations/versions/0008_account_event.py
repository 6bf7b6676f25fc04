"""who changed accounts and interface credentials: account_event

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27

Accounts, API keys and CDS clients are created, deactivated, rotated and revoked from the
command line and from the page /integration/credentials. Until now nothing durable said
who did it: the page wrote a log line, the command line nothing. ``account_event`` records
each change — when, who (an account, or the command line with the OS user), which account
and its institution, what, and its subject (a key prefix, an issuer, a username) — written
in the transaction of the change. A new table only.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "account_event",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_account_id", _ID, nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("actor_name", sa.String(length=100), nullable=False),
        sa.Column("actor_role", sa.String(length=32), nullable=False),
        sa.Column("actor_os_user", sa.String(length=64), nullable=False),
        sa.Column("account_id", _ID, nullable=False),
        sa.Column("institution_code", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_account_event_account_id_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_event")),
    )
    op.create_index(
        "ix_account_event_inst_id", "account_event", ["institution_code", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_account_event_inst_id", table_name="account_event")
    op.drop_table("account_event")
