"""Migration 0004 adds the comment columns of observation and result, on both backends:
results stored before it read back with empty comments, results stored after it keep
theirs, and the downgrade takes the columns away again."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import create_engine, insert, inspect, text

from huren.adapters.db import engine as db_engine
from huren.adapters.db import tables as t

AT = datetime(2026, 6, 14, tzinfo=UTC)


def _columns(url: str, table: str) -> set[str]:
    eng = create_engine(url)
    try:
        return {c["name"] for c in inspect(eng).get_columns(table)}
    finally:
        eng.dispose()


def _result_before_0004(url: str) -> int:
    """A result with one observation, written as a 0003 database holds them."""
    eng = create_engine(url)
    with eng.begin() as c:
        # Tables 0004 leaves alone, through their metadata (its Python-side defaults).
        c.execute(insert(t.scope).values(code="HE", name="河北", kind="province"))
        c.execute(
            insert(t.institution).values(
                code="H1", name="医院", level="tertiary", jurisdiction="HE"
            )
        )
        patient_id = c.execute(
            insert(t.patient).values(created_at=AT).returning(t.patient.c.id)
        ).scalar_one()
        result_id = c.execute(
            text(
                "INSERT INTO result (patient_id, institution_code, department, report_no, "
                "local_code, local_name, category, status, performed_at, issued_at, performer, "
                "signer, findings, conclusion, accession_number, study_uid, version, "
                "content_hash, updated_at) VALUES (:p, 'H1', '', 'R1', 'K', '钾', 'lab', "
                "'final', :at, :at, '', '', '', '', '', '', 1, 'h', :at) RETURNING id"
            ),
            {"p": patient_id, "at": AT},
        ).scalar_one()
        c.execute(
            text(
                "INSERT INTO observation (result_id, seq, code, loinc, name, value_type, "
                "value_num, value_text, unit, ref_text, flag) "
                "VALUES (:r, 1, 'K', '', '钾', 'NM', 6.1, '6.1', 'mmol/L', '', 'H')"
            ),
            {"r": result_id},
        )
    eng.dispose()
    return int(result_id)


def test_comment_columns_are_added_empty_and_dropped_again(empty_url: str) -> None:
    db_engine.upgrade(empty_url, "0003")
    assert "comment" not in _columns(empty_url, "observation")
    result_id = _result_before_0004(empty_url)

    db_engine.upgrade(empty_url)
    assert "comment" in _columns(empty_url, "observation")
    assert "comment" in _columns(empty_url, "result")
    eng = create_engine(empty_url)
    with eng.begin() as c:
        before = c.execute(
            text(
                "SELECT r.comment, o.comment FROM result r JOIN observation o "
                "ON o.result_id = r.id WHERE r.id = :r"
            ),
            {"r": result_id},
        ).one()
        # a row written without the columns takes their default
        c.execute(
            text(
                "INSERT INTO observation (result_id, seq, code, loinc, name, value_type, "
                "value_text, unit, ref_text, flag) "
                "VALUES (:r, 2, 'NA', '', '钠', 'ST', '', '', '', '')"
            ),
            {"r": result_id},
        )
        c.execute(
            text("UPDATE observation SET comment = '标本溶血' WHERE result_id = :r AND seq = 1"),
            {"r": result_id},
        )
        after = (
            c.execute(
                text("SELECT comment FROM observation WHERE result_id = :r ORDER BY seq"),
                {"r": result_id},
            )
            .scalars()
            .all()
        )
    eng.dispose()
    assert tuple(before) == ("", "")
    assert after == ["标本溶血", ""]

    command.downgrade(db_engine.alembic_config(empty_url), "0003")
    assert "comment" not in _columns(empty_url, "observation")
    assert "comment" not in _columns(empty_url, "result")
    eng = create_engine(empty_url)
    with eng.connect() as c:
        kept = c.execute(
            text("SELECT count(*) FROM observation WHERE result_id = :r"), {"r": result_id}
        ).scalar_one()
    eng.dispose()
    assert kept == 2

    db_engine.upgrade(empty_url)  # and up again
    assert "comment" in _columns(empty_url, "observation")
