"""What a recognition check costs in trips to the database (issue 5: p99 ≤ 2 ms for a
5-item check at 10 million results). On PostgreSQL every statement is a round trip to the
server, and so is the BEGIN psycopg sends before the first statement of a transaction:
waiting for them was most of a check's time. A check there makes two — one statement
reads the patient with its priors, one writes its rows (reminders, audit row, CDS Hooks
cards) on a connection in autocommit mode, which commits them. On SQLite, where a
statement is a call into the library, the statements stay what they were."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.engine import make_url

from huren.adapters.db import engine as db_engine
from huren.adapters.db.recognition import SqlRecognitionStore
from huren.adapters.db.tables import audit_event, reminder
from huren.adapters.db.tables_recognition import cds_card
from huren.bootstrap import Container
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.recognition import (
    CardRecord,
    CheckOutcome,
    CheckRequest,
    CheckWrites,
    PatientRef,
)
from tests.fixtures.results import TEST_NOW, lab_panel, store
from tests.fixtures.world import HOSP_A
from tests.integration.test_recognition_group_commit import CLINICIAN_B, _writes
from tests.integration.test_recognition_service import merged_panels

BY_NATIONAL_ID = PatientRef(
    identifiers=(
        PatientIdentifier(IdentifierKind.MRN, "MRN-NOBODY"),  # unknown: the next key counts
        PatientIdentifier(IdentifierKind.NATIONAL_ID, lab_panel().patient.identifiers[0].value),
    )
)


class _Sent:
    def __init__(self) -> None:
        self.n = 0
        self.statements: list[str] = []  # SQLite's


@contextmanager
def _counted(engine: Engine) -> Iterator[_Sent]:
    """Counts what the engine's connections send the database inside the block (the
    count is set when it ends): on PostgreSQL the round trips — the messages after which
    the client waits for the server (a simple Query such as BEGIN, a Sync ending a
    statement or a pipeline segment, a Flush in a pipeline), read from libpq's protocol
    trace; on SQLite the statements run (``set_trace_callback``)."""
    traces: dict[int, tuple[Any, int, str]] = {}
    sqlite: dict[int, Any] = {}
    statements: list[str] = []
    sent = _Sent()

    def checkout(dbapi: Any, _record: Any, _proxy: Any) -> None:
        if isinstance(dbapi, psycopg.Connection):
            if id(dbapi) not in traces:
                fd, path = tempfile.mkstemp(suffix=".pqtrace")
                dbapi.pgconn.trace(fd)
                dbapi.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
                traces[id(dbapi)] = (dbapi, fd, path)
        else:
            dbapi.set_trace_callback(statements.append)
            sqlite[id(dbapi)] = dbapi

    event.listen(engine, "checkout", checkout)
    try:
        yield sent
    finally:
        event.remove(engine, "checkout", checkout)
        for conn in sqlite.values():
            conn.set_trace_callback(None)
        sent.n, sent.statements = len(statements), statements
        for dbapi, fd, path in traces.values():
            if not dbapi.closed:
                dbapi.pgconn.untrace()  # flushes the trace
            with open(path) as f:
                for line in f:
                    fields = line.split("\t")
                    sent.n += fields[0] == "F" and fields[2].strip() in ("Query", "Sync", "Flush")
            os.close(fd)
            os.unlink(path)


def _one_card_per_item(outcome: CheckOutcome) -> tuple[int, list[CardRecord]]:
    return len(outcome.items), [
        CardRecord(
            f"00000000-0000-4000-8000-{n:012d}",
            n,  # the position of its item's reminder row
            TEST_NOW,
            "huren-recognition-order-select",
            outcome.request_id,
            outcome.institution,
            "",
            "dr",
            outcome.patient_id,
            None,
            f"ServiceRequest/sr-{n}",
            None,
            None,
            None,
        )
        for n, _ in enumerate(outcome.items)
    ]


NOBODY = PatientRef(identifiers=(PatientIdentifier(IdentifierKind.MRN, "NOBODY"),))


@pytest.mark.parametrize(
    ("ref", "cards", "sqlite_statements"),
    [
        # SQLite, as before: family, priors, BEGIN, reminders, audit row, (cards,) COMMIT.
        (BY_NATIONAL_ID, False, 6),
        (BY_NATIONAL_ID, True, 7),
        (None, False, 6),  # by platform id
        (NOBODY, False, 5),  # no priors to read
    ],
    ids=["identifiers", "identifiers-cards", "platform-id", "unknown-patient"],
)
def test_what_a_check_sends_the_database(
    world: Container, ref: PatientRef | None, cards: bool, sqlite_statements: int
) -> None:
    stored = world.results.get_result(store(world, lab_panel(HOSP_A)).results[0].result_id)
    assert stored is not None
    ref = ref or PatientRef(patient_id=stored.patient_id)
    req = CheckRequest(CLINICIAN_B, ref, ("B-LFT", "B-CT", "NOT-MAPPED"), "rest")
    world.recognition.check(req)  # connections made
    with _counted(world.engine) as sent:
        if cards:
            outcome, _ = world.recognition.check_with_cards(req, _one_card_per_item)
        else:
            outcome = world.recognition.check(req)
    assert outcome.patient_known == (ref is not NOBODY)
    if ref is not NOBODY:
        assert outcome.items[0].recognition is not None
        assert outcome.items[0].recognition.best is not None
        assert outcome.items[0].recognition.best.result.id == stored.id
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(cds_card)).scalar_one() == (
            3 if cards else 0
        )
    if world.engine.dialect.name == "postgresql":
        assert sent.n == 2
    else:
        assert sent.n == sqlite_statements, [x[:40] for x in sent.statements]


def _big_check(request: str, card_result: int | None) -> CheckWrites:
    """A check with more reminder rows than one statement takes (201), its card on the
    last one."""
    one = _writes(0, card_result)
    reminders = tuple(replace(one.reminders[0], request_id=request) for _ in range(201))
    card = replace(one.cards[0], reminder_id=200, hook_instance=request)
    return CheckWrites(reminders, (card,), replace(one.audit, purpose=request))


def _rows(c: Container) -> tuple[int, int, int]:
    with c.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (reminder, audit_event, cds_card)
        )


def test_rows_too_many_for_one_statement_are_written_together_or_not_at_all(
    world: Container,
) -> None:
    """Past one statement's size the rows take several INSERTs: on PostgreSQL's
    autocommit connection they must still be one transaction."""
    recognition = world.recognition._store
    with recognition.reading() as tx, pytest.raises(Exception, match=r"cds_card|FOREIGN KEY"):
        tx.record_check(_big_check("bad", card_result=987_654_321))  # no such result
    assert _rows(world) == (0, 0, 0)  # the 201 reminders and the audit row rolled back
    with recognition.reading() as tx:
        ids = tx.record_check(_big_check("good", card_result=None))
    assert len(ids) == 201
    assert ids == sorted(ids)
    assert _rows(world) == (201, 1, 1)
    with world.engine.connect() as conn:
        assert conn.execute(select(cds_card.c.reminder_id)).scalar_one() == ids[200]


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    """An engine with a pool of one connection: what the store hands back is what the
    next user gets."""
    with db_engine.make_engine(pg_database).begin() as conn:
        conn.execute(text("TRUNCATE reminder, audit_event, cds_card RESTART IDENTITY CASCADE"))
    engine = db_engine.make_engine(pg_database, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _autocommit_when_pooled(engine: Engine) -> list[bool]:
    seen: list[bool] = []

    @event.listens_for(engine, "checkin")
    def checkin(dbapi: Any, _record: Any) -> None:
        if dbapi is not None:
            seen.append(dbapi.autocommit)

    return seen


def test_the_reading_connection_goes_back_to_the_pool_out_of_autocommit(
    pg_engine: Engine,
) -> None:
    store_ = SqlRecognitionStore(pg_engine)
    pooled = _autocommit_when_pooled(pg_engine)
    with store_.reading() as tx:
        assert tx.record_check(_writes(1))
    with store_.reading() as tx, pytest.raises(psycopg.errors.ForeignKeyViolation):
        tx.record_check(_writes(2, result_id=987_654_321))
    assert pooled == [False, False]
    # The next user of the pool gets transactions as usual: its BEGIN … ROLLBACK holds.
    with pg_engine.connect() as conn:
        conn.execute(update(reminder).values(request_id="changed"))
        conn.rollback()
        assert set(conn.execute(select(reminder.c.request_id)).scalars()) == {"req-1"}


def _drop(pg_database: str, tx: Any) -> None:
    """The server ends the connection (a restart, an administrator)."""
    pid = tx._rows("SELECT pg_backend_pid()", ())[0][0]
    admin = make_url(pg_database).set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False)) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        tx.record_check(_writes(1))


def _leave_a_transaction_open(_pg_database: str, tx: Any) -> None:
    """Interrupted between a BEGIN and its end (e.g. Ctrl-C during ``_write_tables``)."""
    tx._execute("BEGIN", ())


@pytest.mark.parametrize("leave", [_drop, _leave_a_transaction_open])
def test_a_reading_connection_that_cannot_leave_autocommit_is_not_pooled(
    pg_database: str, pg_engine: Engine, leave: Callable[[str, Any], None]
) -> None:
    store_ = SqlRecognitionStore(pg_engine)
    pooled = _autocommit_when_pooled(pg_engine)
    with store_.reading() as tx:
        leave(pg_database, tx)
    assert True not in pooled  # discarded, not pooled in autocommit mode
    with store_.reading() as tx:  # a new connection
        assert tx.record_check(_writes(2))
    assert pooled[-1] is False
    with pg_engine.connect() as conn:
        assert not conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]


def test_a_check_by_the_platform_id_of_a_merged_record_reads_the_whole_family(
    world: Container,
) -> None:
    # 李四's record was merged into 张三's: by either platform id the check reads both
    # records' results (on PostgreSQL the statement that reads the patient with its
    # priors leaves a merged family to the family's own statements).
    older, newer, ids = merged_panels(world)
    for pid in (ids[older.result_id], ids[newer.result_id]):
        out = world.recognition.check(
            CheckRequest(CLINICIAN_B, PatientRef(patient_id=pid), ("B-LFT",), "rest")
        )
        assert out.patient_id == ids[newer.result_id]
        (item,) = out.items
        assert item.recognition is not None
        assert [a.result.id for a in item.recognition.all()] == [
            newer.result_id,
            older.result_id,
        ]
