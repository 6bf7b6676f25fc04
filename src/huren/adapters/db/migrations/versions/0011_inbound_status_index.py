"""inbound messages: index by institution, receipt time and status

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27

The integration pages show the connection status of every institution a regulator or the
operator sees: messages and refusals in the last 24 hours and 7 days, and the last
message. With the index on ``institution_code`` alone each count read every message the
institution ever sent (measured with a million messages: 17.5 s for 300 institutions in
one statement, 2.6-3.9 s as 300 statements); this index answers it from the index alone
(0.07 s). The index on ``institution_code`` stays: the message list is read by
institution in id order.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_inbound_message_inst_received",
        "inbound_message",
        ["institution_code", "received_at", "status"],
    )


def downgrade() -> None:
    op.drop_index("ix_inbound_message_inst_received", table_name="inbound_message")
