"""comments kept with results: observation.comment and result.comment

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

The comments senders attach to results — HL7 v2 NTE after OBX or OBR (v2.5.1 §2.15.10,
§7.3.1), FHIR R4 Observation.note — were not kept. A value's comment ("标本溶血",
"已复查") and the report's are kept beside them from now on. Results stored before have
none: both columns are NOT NULL with the empty text as their server default, so the rows
already there read back with empty comments and nothing is copied.

Nothing to do on a database whose 0001 was regenerated from the table metadata after
this change (it already has both columns).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("observation", "result")


def _has_comment(table: str) -> bool:
    columns = sa.inspect(op.get_bind()).get_columns(table)
    return any(c["name"] == "comment" for c in columns)


def upgrade() -> None:
    for table in TABLES:
        if not _has_comment(table):
            # ADD COLUMN with a constant default: no table rewrite on PostgreSQL (11+),
            # and SQLite adds it in place.
            op.add_column(
                table,
                sa.Column("comment", sa.Text(), nullable=False, server_default=""),
            )


def downgrade() -> None:
    for table in TABLES:
        if _has_comment(table):
            # A plain DROP COLUMN on both backends (SQLite ≥ 3.35): a batch copy of
            # ``result`` would drop the table that observation, result_version … refer to.
            op.drop_column(table, "comment")
