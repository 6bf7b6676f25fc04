"""Migration 0007 adds ``result_document`` (the original report documents of result
versions) with its key and its reference to ``result_version``; the downgrade drops it."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from huren.adapters.db import engine as db_engine
from tests.conftest import table_names


def test_0007_adds_result_document_and_its_downgrade_drops_it(empty_url: str) -> None:
    db_engine.upgrade(empty_url, "0006")
    assert "result_document" not in table_names(empty_url)
    db_engine.upgrade(empty_url)
    eng = create_engine(empty_url)
    try:
        inspector = inspect(eng)
        columns = {c["name"] for c in inspector.get_columns("result_document")}
        pk = inspector.get_pk_constraint("result_document")["constrained_columns"]
        (fk,) = inspector.get_foreign_keys("result_document")
    finally:
        eng.dispose()
    assert columns == {
        "result_id",
        "version",
        "seq",
        "content_type",
        "title",
        "sha256",
        "size",
        "data",
    }
    assert pk == ["result_id", "version", "seq"]
    assert (fk["referred_table"], fk["referred_columns"]) == (
        "result_version",
        ["result_id", "version"],
    )
    command.downgrade(db_engine.alembic_config(empty_url), "0006")
    assert "result_document" not in table_names(empty_url)
