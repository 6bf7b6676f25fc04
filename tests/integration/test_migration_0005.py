"""Migration 0005 widens the clinician columns to 100 characters on PostgreSQL (SQLite
enforces no VARCHAR length), and its downgrade refuses while a longer value is kept."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text

from huren.adapters.db import engine as db_engine

TABLES = ("reminder", "decision", "cds_card", "monitoring_month", "monitoring_decline")
USER = "PractitionerRole/" + "x" * 64  # 81 characters


def _widths(url: str) -> dict[str, int | None]:
    eng = create_engine(url)
    try:
        inspector = inspect(eng)
        return {
            table: next(
                getattr(c["type"], "length", None)
                for c in inspector.get_columns(table)
                if c["name"] == "clinician"
            )
            for table in TABLES
        }
    finally:
        eng.dispose()


def _reminder(url: str, clinician: str) -> None:
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(
            text(
                "INSERT INTO reminder (at, channel, institution_code, department, clinician, "
                "local_code, candidates, recognizable, request_id) VALUES ("
                "'2026-06-14 00:00:00+00', 'rest', 'H1', '', :c, 'K', 0, 0, 'r1')"
            ),
            {"c": clinician},
        )
    eng.dispose()


def test_clinician_columns_take_an_81_character_user_id(empty_url: str) -> None:
    db_engine.upgrade(empty_url, "0004")
    pg = empty_url.startswith("postgresql")
    if pg:
        assert set(_widths(empty_url).values()) == {64}
    db_engine.upgrade(empty_url)
    if pg:
        assert set(_widths(empty_url).values()) == {100}
    _reminder(empty_url, USER)

    if pg:  # a value longer than 64 kept: the downgrade stops rather than cut it
        with pytest.raises(RuntimeError, match="超过 64 个字符"):
            command.downgrade(db_engine.alembic_config(empty_url), "0004")
        eng = create_engine(empty_url)
        with eng.begin() as c:
            c.execute(text("DELETE FROM reminder"))
        eng.dispose()
    command.downgrade(db_engine.alembic_config(empty_url), "0004")
    if pg:
        assert set(_widths(empty_url).values()) == {64}
