"""Migration 0008 adds ``account_event`` (who changed accounts and interface credentials)
with its reference to ``account`` and its index; the downgrade drops it, and upgrading
again brings it back."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from huren.adapters.db import engine as db_engine
from tests.conftest import table_names


def _check_account_event(url: str) -> None:
    eng = create_engine(url)
    try:
        inspector = inspect(eng)
        columns = {c["name"]: c for c in inspector.get_columns("account_event")}
        pk = inspector.get_pk_constraint("account_event")["constrained_columns"]
        (fk,) = inspector.get_foreign_keys("account_event")
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("account_event")}
    finally:
        eng.dispose()
    assert set(columns) == {
        "id",
        "at",
        "actor_account_id",
        "actor",
        "actor_name",
        "actor_role",
        "actor_os_user",
        "account_id",
        "institution_code",
        "action",
        "subject",
        "detail",
    }
    assert [n for n, c in columns.items() if c["nullable"]] == [
        "actor_account_id",
        "institution_code",
    ]
    assert pk == ["id"]
    assert (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]) == (
        ["account_id"],
        "account",
        ["id"],
    )
    assert indexes == {"ix_account_event_inst_id": ["institution_code", "id"]}


def test_0008_adds_account_event_and_its_downgrade_drops_it(empty_url: str) -> None:
    db_engine.upgrade(empty_url, "0007")
    assert "account_event" not in table_names(empty_url)
    db_engine.upgrade(empty_url)
    _check_account_event(empty_url)
    command.downgrade(db_engine.alembic_config(empty_url), "0007")
    assert "account_event" not in table_names(empty_url)
    assert "account" in table_names(empty_url)
    db_engine.upgrade(empty_url)
    _check_account_event(empty_url)
