"""monitoring aggregates counted anew

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

The monitoring rollup (migration 0001's ``monitoring_*`` tables) now counts an accepted
prior that the platform had not proposed (beyond its reference time limit, or a report
the patient brought) among the reminders with a recognizable prior as well, so that
互认比例 cannot pass 100 %. Months already rolled up were counted the old way: the
aggregates and their cursors are emptied here, and the server's monitoring refresh
counts every reminder, decision and result again from the start. They are derived data
(the source rows are untouched), so the downgrade has nothing to restore and empties
them the same way.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DERIVED = (
    "monitoring_month",
    "monitoring_month_inst",
    "monitoring_decline",
    "monitoring_decline_inst",
    "monitoring_cursor",
)


def _recount() -> None:
    for name in _DERIVED:
        op.execute(sa.table(name).delete())


def upgrade() -> None:
    _recount()


def downgrade() -> None:
    _recount()
