"""catalog version: a counter raised in every transaction that writes the catalog's tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Every process caches the catalog (``huren.services.catalog.CatalogCache``) and compares
this counter about once a second: a change made anywhere — another worker of
``huren serve --workers``, ``huren catalog import``, SQL typed by an administrator — is
seen within a second, and the catalog is rebuilt only when it changed. The counter moves
in the writing transaction, so a process that reads it and then the tables never keeps
a catalog older than the counter it recorded.

On PostgreSQL the trigger runs once per statement, before it: a transaction writing the
catalog takes the counter's row lock before any catalog row, so two such transactions
queue on it instead of deadlocking over each other's rows. SQLite (one writer at a time)
has row triggers only. The row is made by the first change (an upsert), so emptied
tables (the test suite's TRUNCATE) need nothing more.

The table is created here with IF NOT EXISTS rather than in 0001, which is regenerated
from the table metadata until the first release and will then contain it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The tables huren.adapters.db.masterdata.SqlMasterData.load_master_data reads.
CATALOG_TABLES = (
    "scope",
    "scope_member",
    "institution",
    "item",
    "item_list_version",
    "item_list_entry",
    "qualification",
    "mark_symbol",
    "negative_reason",
    "item_exclusion",
    "code_map",
)
BUMP = (
    "INSERT INTO catalog_version (id, n) VALUES (1, 1) "
    "ON CONFLICT (id) DO UPDATE SET n = catalog_version.n + 1"
)


def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS catalog_version "
        "(id INTEGER NOT NULL, n BIGINT NOT NULL, CONSTRAINT pk_catalog_version PRIMARY KEY (id))"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION huren_catalog_changed() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP}; RETURN NULL; END $$"
        )
        for table in CATALOG_TABLES:
            op.execute(
                f"CREATE TRIGGER catalog_changed BEFORE INSERT OR UPDATE OR DELETE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION huren_catalog_changed()"
            )
        return
    for table in CATALOG_TABLES:
        for event in ("INSERT", "UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER catalog_changed_{table}_{event.lower()} AFTER {event} "
                f"ON {table} BEGIN {BUMP}; END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in CATALOG_TABLES:
            op.execute(f"DROP TRIGGER catalog_changed ON {table}")
        op.execute("DROP FUNCTION huren_catalog_changed()")
    else:
        for table in CATALOG_TABLES:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER catalog_changed_{table}_{event}")
    op.execute("DROP TABLE catalog_version")
