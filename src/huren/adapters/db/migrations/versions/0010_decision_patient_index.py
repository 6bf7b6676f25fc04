"""decision: index by patient and time

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27

An order opened again shows the decisions already recorded on its items that day (and a
second decision on the same prior is refused): the institution's decisions of one patient
in the last 24 hours. ``ix_decision_inst_at`` would scan the whole day of a hospital's
decisions for each; this index reads the patient's own.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_decision_patient_at", "decision", ["patient_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_decision_patient_at", table_name="decision")
