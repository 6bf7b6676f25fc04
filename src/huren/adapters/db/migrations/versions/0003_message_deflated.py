"""inbound messages kept deflated: inbound_message.raw (text) becomes raw_deflated

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

Every message received is kept as it came, for the integration engineer's pages. Kept
as text, the messages were most of what a SQLite store wrote for FHIR intake (a Bundle
of ten lab panels is 90 KB of JSON); deflated (zlib, ``tables.deflate_message``) they
are a few KB. The messages already stored are deflated here, a thousand at a time, and
nothing else changes: the same text comes back.

Nothing to do on a database whose 0001 was regenerated from the table metadata after
this change (it already has ``raw_deflated``).
"""

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 1000


def _columns() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("inbound_message")}


def _convert(source: str, target: str, convert: Callable[[Any], Any]) -> None:
    """Copies ``source`` into ``target`` through ``convert``, in chunks of rows by id."""
    bind = op.get_bind()
    table = sa.table("inbound_message", sa.column("id"), sa.column(source), sa.column(target))
    last = 0
    while True:
        rows = bind.execute(
            sa.select(table.c.id, table.c[source])
            .where(table.c.id > last)
            .order_by(table.c.id)
            .limit(CHUNK)
        ).all()
        if not rows:
            return
        bind.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"))
            .values({target: sa.bindparam("b_value")}),
            [{"b_id": r[0], "b_value": convert(r[1])} for r in rows],
        )
        last = rows[-1][0]


def _deflate(raw: str | None) -> bytes:
    data = (raw or "").encode()
    return zlib.compress(data, 1) if data else b""


def _inflate(stored: bytes | None) -> str:
    return zlib.decompress(stored).decode() if stored else ""


def upgrade() -> None:
    if "raw" not in _columns():
        return
    op.add_column("inbound_message", sa.Column("raw_deflated", sa.LargeBinary(), nullable=True))
    _convert("raw", "raw_deflated", _deflate)
    with op.batch_alter_table("inbound_message") as batch:
        batch.alter_column("raw_deflated", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("raw")


def downgrade() -> None:
    op.add_column("inbound_message", sa.Column("raw", sa.Text(), nullable=True))
    _convert("raw_deflated", "raw", _inflate)
    with op.batch_alter_table("inbound_message") as batch:
        batch.alter_column("raw", existing_type=sa.Text(), nullable=False)
        batch.drop_column("raw_deflated")
