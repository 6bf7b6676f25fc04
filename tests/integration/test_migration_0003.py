"""Migration 0003 deflates the messages already stored, and gives them back on downgrade,
on both backends: the integration engineer sees the same text before and after."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import command
from sqlalchemy import create_engine, inspect, text

from huren.adapters.db import engine as db_engine
from huren.adapters.db.inbound import SqlInboundMessages

MESSAGES = [
    "MSH|^~\\&|LIS|H130100001|HUREN|HUREN|20260614093000||ORU^R01|C1|P|2.5.1\rPID|1||张三",
    "",
    '{"resourceType": "Bundle", "type": "transaction", "entry": []}' * 300,
]


def _texts(url: str, ids: list[int]) -> list[str]:
    eng = db_engine.make_engine(url)
    try:
        messages = SqlInboundMessages(eng)
        return [d.raw for d in (messages.get(i) for i in ids) if d is not None]
    finally:
        eng.dispose()


def test_messages_stored_as_text_are_deflated_and_read_the_same(empty_url: str) -> None:
    db_engine.upgrade(empty_url, "0002")
    eng = create_engine(empty_url)
    with eng.begin() as c:
        ids = [
            c.execute(
                text(
                    "INSERT INTO inbound_message (received_at, channel, content_hash, "
                    "control_id, status, error, response, raw) "
                    "VALUES (:at, 'fhir', :h, '', 'accepted', '', '', :raw) RETURNING id"
                ),
                {"at": datetime(2026, 6, 14, tzinfo=UTC), "h": f"h{n}", "raw": raw},
            ).scalar_one()
            for n, raw in enumerate(MESSAGES)
        ]
    eng.dispose()

    db_engine.upgrade(empty_url)
    assert _texts(empty_url, ids) == MESSAGES
    eng = create_engine(empty_url)
    columns = {c["name"] for c in inspect(eng).get_columns("inbound_message")}
    with eng.connect() as c:
        stored = c.execute(
            text("SELECT length(raw_deflated) FROM inbound_message WHERE id = :i"),
            {"i": ids[2]},
        ).scalar_one()
    eng.dispose()
    assert "raw" not in columns
    assert stored < len(MESSAGES[2]) // 10

    command.downgrade(db_engine.alembic_config(empty_url), "0002")
    eng = create_engine(empty_url)
    with eng.connect() as c:
        back = c.execute(text("SELECT raw FROM inbound_message ORDER BY id")).scalars().all()
    eng.dispose()
    assert back == MESSAGES
