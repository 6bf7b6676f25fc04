"""Results in SQL (SQLAlchemy Core): the intake write path (``SqlIntakeStore``, one
transaction per message, executemany for observations) and the read repository
(``SqlResultReader``) the other areas use.

Times are written as UTC. SQLite keeps them without a zone, so reads attach UTC again."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import msgspec
from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from huren.adapters.db.engine import is_sqlite
from huren.adapters.db.tables import (
    audit_event,
    deflate_message,
    inbound_message,
    observation,
    outbox,
    patient,
    patient_identifier,
    patient_link_event,
    result,
    result_document,
    result_version,
)
from huren.domain.accounts import Principal
from huren.domain.errors import NotFound
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.marks import Mark
from huren.domain.masterdata import Category
from huren.domain.results import ObservationValue, ResultStatus, StoredResult, ValueType
from huren.services.intake import (
    CurrentResult,
    MessageRecord,
    OpenedBatch,
    OpenedMessage,
    ResultWrite,
    TransientConflict,
    UnmappedCode,
    UnmappedResult,
)
from huren.services.patients import IdentifierKey, IdentifierRecord, LinkEvent, NewPatient
from huren.services.ports import Clock, IdentifierVault


def utc(value: datetime) -> datetime:
    """Aware UTC for writing and after reading (SQLite returns naive UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ---------------------------------------------------------------- write path
# Statements of the intake transaction are built once: executing a prebuilt statement
# skips constructing it and finds its compiled form in the engine's cache at once
# (building ``select(...)`` per call cost more than running it on SQLite).
_ACCEPTED = (
    select(inbound_message.c.id, inbound_message.c.response)
    .where(
        inbound_message.c.content_hash == bindparam("b_hash"),
        inbound_message.c.status == "accepted",
    )
    .order_by(inbound_message.c.id)
    .limit(1)
)
_MESSAGE_INSERT = insert(inbound_message).returning(inbound_message.c.id)
_HEADS = select(
    result.c.id,
    result.c.report_no,
    result.c.local_code,
    result.c.version,
    result.c.content_hash,
    result.c.status,
    result.c.patient_id,
).where(
    result.c.institution_code == bindparam("b_institution"),
    result.c.report_no.in_(bindparam("b_report_nos", expanding=True)),
)
_IDENTIFIED = (
    select(
        patient_identifier.c.kind,
        patient_identifier.c.assigner,
        patient_identifier.c.value_hash,
        patient.c.id,
        patient.c.merged_into,
    )
    .join(patient, patient.c.id == patient_identifier.c.patient_id)
    # All three columns of the unique key, so that the lookup is a search of its index
    # (value_hash alone, not its leading column, made it a scan of every identifier).
    .where(
        patient_identifier.c.kind.in_(bindparam("b_kinds", expanding=True)),
        patient_identifier.c.assigner.in_(bindparam("b_assigners", expanding=True)),
        patient_identifier.c.value_hash.in_(bindparam("b_hashes", expanding=True)),
    )
)
_MERGED_INTO = select(patient.c.merged_into).where(patient.c.id == bindparam("b_id"))
_PATIENT_INSERT = insert(patient).returning(patient.c.id)
_RESULT_COLUMNS = (
    "patient_id",
    "institution_code",
    "department",
    "report_no",
    "local_code",
    "local_name",
    "item_code",
    "category",
    "status",
    "performed_at",
    "issued_at",
    "performer",
    "signer",
    "findings",
    "conclusion",
    "accession_number",
    "study_uid",
    "mark_scope",
    "mark_symbol",
    "version",
    "content_hash",
    "source_message_id",
    "updated_at",
    "comment",
)
# The business key (institution, report number, local code) never changes on update.
_RESULT_KEY = frozenset({"institution_code", "report_no", "local_code"})

# Rows that nothing reads back within the transaction (versions, observations, new
# identifiers, link events, the message's response, the outbox event) are written below
# SQLAlchemy, on the DBAPI cursor, and only when the transaction is about to read or to
# commit: per-row parameter processing in ``Connection.execute`` cost more than the
# insert itself, and on PostgreSQL the queued statements go in one round trip (psycopg 3
# pipeline mode) instead of one each. Their values need no type processing except times
# (bound with the column type's own processor) and JSON (encoded here, as text).
#
# PostgreSQL: a multi-row write binds all its rows as one JSON document (an array of
# rows, each an array of values, encoded by msgspec in C) and the statement takes them
# apart with jsonb_array_elements, casting each value to its column's type. Bound as
# one array per column instead (INSERT … SELECT FROM unnest(arrays)), psycopg's
# array dumper, written in Python, cost ~80 µs a column: 55 arrays and 4.5 ms of CPU in
# a group commit of 4 ORU messages, more than parsing them (bench_mllp under cProfile).
_OBS_COLUMNS = (
    "result_id",
    "seq",
    "code",
    "loinc",
    "name",
    "value_type",
    "value_num",
    "value_text",
    "unit",
    "ref_low",
    "ref_high",
    "ref_text",
    "flag",
    "comment",
)
_SQ_DOCUMENT_INSERT = (
    "INSERT INTO result_document (result_id, version, seq, content_type, title, sha256, "
    "size, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_PG_DOCUMENT_INSERT = _SQ_DOCUMENT_INSERT.replace("?", "%s")
_VERSION_COLUMNS = ("result_id", "version", "status", "recorded_at", "reason", "snapshot")
assert _VERSION_COLUMNS[-1] == "snapshot"  # bound as bytes on SQLite (_DriverSql.version)
_IDENTIFIER_COLUMNS = ("patient_id", "kind", "assigner", "value_hash", "value_enc", "value_masked")
_LINK_COLUMNS = ("at", "actor", "action", "from_patient", "to_patient", "reason")
_OUTBOX_COLUMNS = ("at", "topic", "payload")
_JSON = msgspec.json.Encoder()
_JSON_DECODE = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class _Bulk:
    """A queued multi-row write (SQLite: executemany; PostgreSQL: one statement taking
    all rows from one JSON parameter, ``_pg_json_rows``)."""

    sql: str
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class _DriverSql:
    """The driver-level statements of one dialect (qmark: sqlite3, format: psycopg)."""

    sqlite: bool
    observation: str
    version: str
    identifier: str
    link: str
    outbox: str
    response: str
    duplicate: str
    result_returning: str  # PostgreSQL: all rows as one JSON document
    result_with_ids: str  # PostgreSQL: all rows as one JSON document, ids drawn ahead
    open_batch: str  # PostgreSQL: ``SqlIntakeTx._pg_open``

    @classmethod
    def build(cls, dialect: Dialect) -> _DriverSql:
        sqlite = dialect.name == "sqlite"

        # Table and column names are this module's constants; values are bound.
        def ins(table: Table, columns: Sequence[str]) -> str:
            names = ", ".join(columns)
            rows = (
                f"VALUES ({', '.join(['?'] * len(columns))})"
                if sqlite
                else _pg_json_rows(table, columns, dialect)
            )
            return f"INSERT INTO {table.name} ({names}) {rows}"

        return cls(
            sqlite=sqlite,
            observation=ins(observation, _OBS_COLUMNS),
            # SQLite: the snapshot is bound as its UTF-8 JSON bytes, cast to the TEXT they are
            # (decoding it to a str for the driver to encode again cost more than the row).
            version=(
                # The snapshot is the last column: its placeholder is the one before ")".
                ins(result_version, _VERSION_COLUMNS).replace("?)", "CAST(? AS TEXT))")
                if sqlite
                else ins(result_version, _VERSION_COLUMNS)
            ),
            identifier=ins(patient_identifier, _IDENTIFIER_COLUMNS),
            link=ins(patient_link_event, _LINK_COLUMNS),
            outbox=ins(outbox, _OUTBOX_COLUMNS),
            response=(
                "UPDATE inbound_message SET response = ? WHERE id = ?"
                if sqlite
                else "UPDATE inbound_message AS m SET response = e.r->>0 "
                "FROM jsonb_array_elements(%s::jsonb) AS e(r) WHERE m.id = (e.r->>1)::bigint"
            ),
            duplicate=(
                "UPDATE inbound_message SET status = 'duplicate', response = ? WHERE id = ?"
                if sqlite
                else "UPDATE inbound_message AS m SET status = 'duplicate', response = e.r->>0 "
                "FROM jsonb_array_elements(%s::jsonb) AS e(r) WHERE m.id = (e.r->>1)::bigint"
            ),
            open_batch="" if sqlite else _pg_open_batch(dialect),
            result_returning=(
                ins(result, _RESULT_COLUMNS)
                + " RETURNING id, institution_code, report_no, local_code"
            ),
            result_with_ids=ins(result, ("id", *_RESULT_COLUMNS)),
        )


def _pg_json_rows(table: Table, columns: Sequence[str], dialect: Dialect) -> str:
    """PostgreSQL: SELECT of the rows of one JSON parameter (``_pg_json``), each value
    cast to its column's type; ``e.n`` numbers the rows in order."""
    values = ", ".join(
        f"(e.r->>{i})::{table.c[c].type.compile(dialect)}" for i, c in enumerate(columns)
    )
    return (
        f"SELECT {values} "  # noqa: S608 - column names and types are this module's constants
        "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(r, n)"
    )


def _pg_open_batch(dialect: Dialect) -> str:
    """PostgreSQL: ``SqlIntakeTx._pg_open`` in one statement. The INSERT is a WITH query:
    the SELECTs beside it see the database as it was before it (one snapshot), and each
    answer comes back as one JSON array (one row, decoded by msgspec)."""
    return (
        f"WITH m AS (INSERT INTO inbound_message ({', '.join(_MESSAGE_COLUMNS)}) "  # noqa: S608
        f"{_pg_json_rows(inbound_message, _MESSAGE_COLUMNS, dialect)} ORDER BY e.n RETURNING id) "
        "SELECT (SELECT json_agg(id) FROM m)::text, "
        "(SELECT json_agg(json_build_array(a.id, a.response, a.content_hash) ORDER BY a.id) "
        f"FROM ({_PG_ACCEPTED_MANY}) AS a)::text, "
        "(SELECT json_agg(json_build_array(h.institution_code, h.id, h.report_no, "
        "h.local_code, h.version, h.content_hash, h.status, h.patient_id)) "
        f"FROM ({_PG_HEADS}) AS h)::text, "
        "(SELECT json_agg(nextval(pg_get_serial_sequence('result', 'id'))) "
        "FROM generate_series(1, %s))::text, "
        "(SELECT json_agg(json_build_array(i.kind, i.assigner, i.value_hash, i.id, "
        f"i.merged_into)) FROM ({_PG_IDENTIFIED}) AS i)::text"
    )


def _pg_json(rows: Sequence[Sequence[Any]]) -> str:
    """Rows bound as one JSON document (``_pg_json_rows``): times as RFC 3339, floats
    exactly (shortest round-trip form)."""
    return _JSON.encode(rows).decode()


_MESSAGE_COLUMNS = (
    "received_at",
    "channel",
    "institution_code",
    "content_hash",
    "control_id",
    "status",
    "error",
    "response",
    "raw_deflated",
)
# The lookups of the intake transaction search an index once per key, whatever the
# statistics say: written as ``col = ANY(%s)``, the planner — on statistics taken while
# the tables were small (a new node's first hours, until autovacuum analyzes again) —
# searched the unique index of result by institution alone and filtered every result
# of the institution (4.3 ms at 2,400 results and growing with each; 0.05 ms so;
# EXPLAIN ANALYZE in a bench_mllp database). ``OFFSET 0`` keeps each lateral subquery
# a per-key index search (the planner may not flatten it into a join it would plan
# on the same statistics).
_PG_HEADS = (
    "SELECT r.* FROM unnest(%s::varchar[], %s::varchar[]) AS k(institution_code, report_no) "
    "CROSS JOIN LATERAL (SELECT * FROM result WHERE institution_code = k.institution_code "
    "AND report_no = k.report_no OFFSET 0) AS r"
)
_PG_IDENTIFIED = (  # see _IDENTIFIED
    "SELECT i.kind, i.assigner, i.value_hash, p.id, p.merged_into "
    "FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[]) AS k(kind, assigner, value_hash) "
    "CROSS JOIN LATERAL (SELECT * FROM patient_identifier WHERE kind = k.kind "
    "AND assigner = k.assigner AND value_hash = k.value_hash OFFSET 0) AS i "
    "JOIN patient p ON p.id = i.patient_id"
)
_PG_ACCEPTED_MANY = (  # see _PG_HEADS
    "SELECT m.id, m.response, m.content_hash FROM unnest(%s::varchar[]) AS k(content_hash) "
    "CROSS JOIN LATERAL (SELECT id, response, content_hash FROM inbound_message "
    "WHERE content_hash = k.content_hash AND status = 'accepted' OFFSET 0) AS m ORDER BY m.id"
)


def _message_values(record: MessageRecord, received_at: Any, raw: Any) -> tuple[Any, ...]:
    """An inbound_message row in ``_MESSAGE_COLUMNS`` order, with the time and the
    deflated message bound as the statement needs them (``_pg_message_values``)."""
    return (
        received_at,
        record.channel[:16],
        (record.institution or None) and record.institution[:32],
        record.content_hash,
        record.control_id[:64],
        record.status,
        record.error,
        record.response,
        raw,
    )


def _pg_message_values(record: MessageRecord, *, json: bool) -> tuple[Any, ...]:
    """PostgreSQL: the time aware UTC; in a JSON document (``_pg_json_rows``) the deflated
    message as the hex text that ``::bytea`` reads, else as bytes."""
    raw = deflate_message(record.raw)
    return _message_values(record, utc(record.received_at), "\\x" + raw.hex() if json else raw)


# SQLite: the statements of the intake transaction on the DBAPI cursor (sqlite3), as the
# queued writes already were: through ``Connection.execute`` each cost several times
# what SQLite took to run it.
_SQ_ACCEPTED = (
    "SELECT id, response FROM inbound_message WHERE content_hash = ? "
    "AND status = 'accepted' ORDER BY id LIMIT 1"
)
_SQLITE_MESSAGE_VALUES = "(" + ", ".join(["?"] * len(_MESSAGE_COLUMNS)) + ")"
_SQ_MESSAGE_INSERT = (
    f"INSERT INTO inbound_message ({', '.join(_MESSAGE_COLUMNS)}) "  # noqa: S608 - constants
    f"VALUES {_SQLITE_MESSAGE_VALUES}"
)
_SQ_PATIENT_INSERT = (
    "INSERT INTO patient (name_enc, name_masked, sex, birth_date, created_at) "
    "VALUES (?, ?, ?, ?, ?)"
)


@functools.lru_cache(maxsize=256)
def _sqlite_in(sql: str, n: int) -> str:
    """``sql`` with its ``(?*)`` replaced by ``n`` placeholders: one statement per list
    length, prepared once by sqlite3's statement cache."""
    return sql.replace("(?*)", f"({', '.join('?' * n)})")


_SQ_ACCEPTED_MANY = (
    "SELECT id, response, content_hash FROM inbound_message WHERE content_hash IN (?*) "
    "AND status = 'accepted' ORDER BY id"
)
_SQ_HEADS = (
    "SELECT id, report_no, local_code, version, content_hash, status, patient_id FROM result "
    "WHERE institution_code = ? AND report_no IN (?*)"
)
_SQ_IDENTIFIED = (  # see _IDENTIFIED
    "SELECT patient_identifier.kind, patient_identifier.assigner, "
    "patient_identifier.value_hash, patient.id, patient.merged_into "
    "FROM patient_identifier JOIN patient ON patient.id = patient_identifier.patient_id "
    "WHERE patient_identifier.kind = ? AND patient_identifier.assigner = ? "
    "AND patient_identifier.value_hash IN (?*)"
)
_SQ_MERGED_INTO = "SELECT merged_into FROM patient WHERE id = ?"
_SQ_OBS_DELETE = "DELETE FROM observation WHERE result_id IN (?*)"
_SQ_UNMAPPED = (
    "SELECT id, issued_at, category FROM result "
    "WHERE institution_code = ? AND local_code = ? AND item_code IS NULL"
)
_SQ_SET_MAPPING = (
    "UPDATE result SET item_code = ?, category = ?, mark_scope = ?, mark_symbol = ?, "
    "updated_at = ? WHERE id = ?"
)
# A new version updates every column but the business key, in ``_RESULT_COLUMNS`` order.
_UPDATED = tuple(n for n, c in enumerate(_RESULT_COLUMNS) if c not in _RESULT_KEY)
_SQ_RESULT_UPDATE = (
    "UPDATE result SET "  # noqa: S608 - column names are this module's constants
    + ", ".join(f"{_RESULT_COLUMNS[n]} = ?" for n in _UPDATED)
    + " WHERE id = ?"
)
_PG_RESULT_UPDATE = _SQ_RESULT_UPDATE.replace("?", "%s")
_PG_OBS_DELETE = "DELETE FROM observation WHERE result_id = ANY(%s)"


def _updated_values(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """``_result_values`` without the business key (``_SQ_RESULT_UPDATE``'s order)."""
    return tuple(values[n] for n in _UPDATED)


def _sqlite_utc(text: str) -> datetime:
    """A time as SQLite keeps it (``sqlite_time``), aware UTC again."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Lists longer than this are looked up in chunks (SQLite's default limit of bound
# parameters is 32,766; chunks keep the number of distinct statements small).
_SQLITE_IN_CHUNK = 500

_DRIVER_SQL: dict[str, _DriverSql] = {}
_SQLITE_DIALECT: Dialect = sqlite_dialect.dialect()
# 24 parameters a row: well below SQLite's 32,766 bound parameters per statement.
_SQLITE_ROWS_PER_INSERT = 500


@functools.lru_cache(maxsize=64)
def _sqlite_result_rows(n: int) -> str:
    """SQLite: INSERT of ``n`` result rows (multi-row VALUES) … RETURNING their keys."""
    row = f"({', '.join('?' * len(_RESULT_COLUMNS))})"
    return (
        f"INSERT INTO result ({', '.join(_RESULT_COLUMNS)}) "  # noqa: S608 - constants
        f"VALUES {', '.join([row] * n)} RETURNING id, institution_code, report_no, local_code"
    )


# 9 parameters a message row.
_SQLITE_MESSAGES_PER_INSERT = 500


@functools.lru_cache(maxsize=64)
def _sqlite_message_rows(n: int) -> str:
    """SQLite: INSERT of ``n`` inbound messages … RETURNING their ids."""
    return (
        f"INSERT INTO inbound_message ({', '.join(_MESSAGE_COLUMNS)}) "  # noqa: S608 - constants
        f"VALUES {', '.join([_SQLITE_MESSAGE_VALUES] * n)} RETURNING id"
    )


def _driver_sql(dialect: Dialect) -> _DriverSql:
    found = _DRIVER_SQL.get(dialect.name)
    if found is None:
        found = _DRIVER_SQL[dialect.name] = _DriverSql.build(dialect)
    return found


def sqlite_time(value: datetime) -> str:
    """A UTC time in the text form SQLAlchemy's SQLite DATETIME binds it in
    (``YYYY-MM-DD HH:MM:SS.ffffff``, no zone), by ``isoformat`` in C rather than its
    ``%``-formatting of a dict (several times the cost of the insert of the value)."""
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _float(value: float | None) -> float | str | None:
    """A value of a float column in a JSON row (``_pg_json``): JSON has no NaN or
    infinity (msgspec would write null), so those go as the text float8 reads."""
    if value is None or math.isfinite(value):
        return value
    return str(value)  # nan, inf, -inf


def _result_values(
    w: ResultWrite, message_id: int, updated_at: Any, time: Callable[[datetime], Any]
) -> tuple[Any, ...]:
    """A new result's values in ``_RESULT_COLUMNS`` order, times bound by ``time``."""
    s = w.submission
    mark = w.mark
    return (
        w.patient_id,
        s.institution,
        s.department,
        s.report_no,
        s.local_code,
        s.local_name,
        w.item_code,
        str(w.category),
        str(s.status),
        time(s.performed_at),
        time(s.issued_at),
        s.performer,
        s.signer,
        s.findings,
        s.conclusion,
        s.accession_number,
        s.study_uid,
        mark.scope if mark else None,
        mark.symbol if mark else None,
        w.version,
        w.content_hash,
        message_id,
        updated_at,
        s.comment,
    )


class SqlIntakeTx:
    """Implements ``huren.services.intake.IntakeTx`` on one connection: a SQLAlchemy
    ``Connection``, or (``on_sqlite``) a bare sqlite3 connection — SQLite runs every
    statement of the transaction on the DBAPI cursor."""

    def __init__(self, conn: Connection | None, *, sqlite_db: Any = None) -> None:
        self.conn = conn
        self._sqlite = conn is None or conn.dialect.name == "sqlite"
        self._dbapi: Any = (
            sqlite_db if conn is None else cast(Any, conn.connection.dbapi_connection)
        )
        self._sql = _driver_sql(_SQLITE_DIALECT if conn is None else conn.dialect)
        # One queued write per statement: rows of the same statement (the responses,
        # versions, observations, events of all messages of a group commit) go together.
        # Nothing queued is read back in the transaction and every row it references is
        # written at once, so statements may run in any order; each keeps its rows' order.
        self._pending: dict[str, _Bulk] = {}
        self._times: dict[datetime, str] = {}  # instant → SQLite text (``_time``)
        self._result_ids: list[int] = []  # PostgreSQL: ids drawn ahead for new results
        # SQLite: the DBAPI cursor the intake statements run on.
        self._cur: Any = self._dbapi.cursor() if self._sqlite else None

    @classmethod
    def on_sqlite(cls, db: Any) -> SqlIntakeTx:
        """On a sqlite3 connection (no SQLAlchemy ``Connection``: its per-transaction
        cost was a third of a small group commit's)."""
        return cls(None, sqlite_db=db)

    @property
    def _sa(self) -> Connection:
        """The SQLAlchemy connection (PostgreSQL)."""
        assert self.conn is not None, "SQLite statements run on the DBAPI cursor"
        return self.conn

    def _select_in(
        self, sql: str, head: tuple[Any, ...], values: Sequence[Any]
    ) -> list[tuple[Any, ...]]:
        """SQLite: rows of ``sql`` (``IN (?*)``) for ``values``, in chunks."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(values), _SQLITE_IN_CHUNK):
            chunk = values[start : start + _SQLITE_IN_CHUNK]
            rows += self._cur.execute(_sqlite_in(sql, len(chunk)), (*head, *chunk)).fetchall()
        return rows

    # -- queued writes
    def _queue(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            queued = self._pending.get(sql)
            if queued is None:
                self._pending[sql] = _Bulk(sql, rows)
            else:
                queued.rows.extend(rows)

    def flush(
        self, *, then: Sequence[tuple[str, Sequence[Any]]] = (), commit: bool = False
    ) -> None:
        """Write the queued rows (before a read and before the commit). PostgreSQL:
        ``then`` (statements, each with its rows, executed after them) and the commit go
        in the same round trip."""
        pending, self._pending = list(self._pending.values()), {}
        if self._sqlite:
            for bulk in pending:
                self._cur.executemany(bulk.sql, bulk.rows)
            for sql, rows in then:
                self._cur.executemany(sql, rows)
            return
        if not pending and not then and not commit:
            return
        dbapi = self._dbapi
        with dbapi.pipeline(), dbapi.cursor() as cur:
            if pending:
                # All queued writes as one statement, each a data-modifying WITH query:
                # psycopg's own work per statement (~0.1 ms of Python each) was most of a
                # small group commit's. Foreign keys are checked at the end of the
                # statement, so the versions and observations may come before the results
                # they refer to; no two queued writes touch the same row. Sorted, so that
                # the same writes make the same statement (prepared once).
                pending.sort(key=lambda bulk: bulk.sql)
                cur.execute(
                    "WITH "
                    + ", ".join(f"w{n} AS ({bulk.sql})" for n, bulk in enumerate(pending))
                    + " SELECT 1",
                    [_pg_json(bulk.rows) for bulk in pending],
                )
            for sql, rows in then:
                cur.executemany(sql, rows)
            if commit:
                # Queued like the rows, answered by the pipeline's one Sync (psycopg's
                # own ``commit`` would sync once more). An error above skips it, and the
                # caller rolls back.
                cur.execute("COMMIT")

    def _time(self, value: datetime) -> Any:
        """A time as UtcDateTime binds it (SQLite keeps a text form; psycopg adapts it).
        SQLite: each instant formatted once per transaction (the transaction's time is
        bound in several rows of every message)."""
        if not self._sqlite:
            return utc(value)
        text = self._times.get(value)
        if text is None:
            text = self._times[value] = sqlite_time(utc(value))
        return text

    def _date(self, value: date | None) -> Any:
        """A date as the Date column binds it (SQLite: ISO text, as SQLAlchemy writes it)."""
        if value is None or not self._sqlite:
            return value
        return value.isoformat()

    # -- messages
    def open_message(
        self,
        record: MessageRecord,
        institution: str,
        keys: Sequence[tuple[str, str]],
        patient_keys: Sequence[IdentifierKey] = (),
    ) -> OpenedMessage:
        if self._sqlite:
            self.flush()
            cur = self._cur
            found = cur.execute(_SQ_ACCEPTED, (record.content_hash,)).fetchone()
            cur.execute(_SQ_MESSAGE_INSERT, self._message_row(record))
            message_id = int(cur.lastrowid)
            return OpenedMessage(
                message_id,
                None if found is None else (int(found[0]), str(found[1])),
                self.current_results(institution, keys),
                self.patients_by_identifier(patient_keys),
            )
        self.flush()
        ids, found, head_rows, patients = self._pg_open(
            [record], [(institution, no, code) for no, code in keys], patient_keys
        )
        wanted = set(keys)
        heads = {
            (no, code): CurrentResult(rid, version, content_hash, status, pid)
            for _, rid, no, code, version, content_hash, status, pid in head_rows
            if (no, code) in wanted
        }
        earlier = None if not found else (int(found[0][0]), str(found[0][1]))
        return OpenedMessage(ids[0], earlier, heads, self._survivors(patients))

    def open_messages(
        self,
        records: Sequence[MessageRecord],
        keys: Sequence[tuple[str, str, str]],
        patient_keys: Sequence[IdentifierKey] = (),
    ) -> OpenedBatch:
        """One SELECT of earlier messages, one INSERT of all records, one SELECT of heads
        per institution, the patients' identifiers (PostgreSQL: all in one statement,
        ``_pg_open``, with ids for the new results). Message ids are given in row order
        (SQLite under BEGIN IMMEDIATE and PostgreSQL's ordered INSERT … SELECT both
        number the rows in order), so the ids are matched to the records sorted."""
        self.flush()
        head_rows: list[tuple[str, Any]] = []
        if self._sqlite:
            by_institution: dict[str, set[str]] = {}
            for institution, report_no, _ in keys:
                by_institution.setdefault(institution, set()).add(report_no)
            hashes = sorted({r.content_hash for r in records})
            found = self._select_in(_SQ_ACCEPTED_MANY, (), hashes)
            ids: list[int] = []
            for start in range(0, len(records), _SQLITE_MESSAGES_PER_INSERT):
                chunk = records[start : start + _SQLITE_MESSAGES_PER_INSERT]
                params = tuple(v for r in chunk for v in self._message_row(r))
                returned = self._cur.execute(_sqlite_message_rows(len(chunk)), params).fetchall()
                ids.extend(sorted(int(rid) for (rid,) in returned))
            for institution, report_nos in by_institution.items():
                rows = self._select_in(_SQ_HEADS, (institution,), sorted(report_nos))
                head_rows.extend((institution, r) for r in rows)
            patients = self.patients_by_identifier(patient_keys)
        else:
            ids, found, rows, patient_rows = self._pg_open(records, keys, patient_keys)
            head_rows = [(institution, tuple(r)) for institution, *r in rows]
            patients = self._survivors(patient_rows)
        earlier: dict[str, tuple[int, str]] = {}
        for rid, response, content_hash in found:
            earlier.setdefault(content_hash, (int(rid), str(response)))
        wanted = set(keys)
        heads: dict[tuple[str, str, str], CurrentResult] = {}
        for institution, (rid, no, code, version, content_hash, status, pid) in head_rows:
            if (institution, no, code) in wanted:
                heads[(institution, no, code)] = CurrentResult(
                    rid, version, content_hash, status, pid
                )
        assert len(ids) == len(records)
        return OpenedBatch(ids, earlier, heads, patients)

    # -- PostgreSQL: the opening statement
    def _pg_open(
        self,
        records: Sequence[MessageRecord],
        keys: Sequence[tuple[str, str, str]],
        patient_keys: Sequence[IdentifierKey],
    ) -> tuple[list[int], list[Any], list[Any], list[tuple[IdentifierKey, int, int | None]]]:
        """Insert ``records`` and read what the transaction needs, in one statement (and
        one round trip, with the transaction's BEGIN): (message ids in row order, earlier
        accepted messages (id, response, hash) by id, heads (institution, id, report
        number, local code, version, hash, status, patient), the known identifiers (key,
        patient, merged into)). Ids for up to ``len(keys)`` new results are drawn ahead
        for ``write_results``. The reads see the database as it was before the insert,
        so an earlier message is never one of ``records``."""
        pairs = sorted({(institution, no) for institution, no, _ in keys})
        unique_keys = list(dict.fromkeys(patient_keys))
        with self._dbapi.cursor() as cur:
            # In a pipeline, so that the transaction's BEGIN goes in the same round trip;
            # read once it is through.
            with self._dbapi.pipeline():
                cur.execute(
                    self._sql.open_batch,
                    (
                        _pg_json([_pg_message_values(r, json=True) for r in records]),
                        sorted({r.content_hash for r in records}),
                        [i for i, _ in pairs],
                        [no for _, no in pairs],
                        len(keys),
                        [k[0] for k in unique_keys],
                        [k[1] for k in unique_keys],
                        [k[2] for k in unique_keys],
                    ),
                )
            row = cur.fetchone()
        ids, found, heads, drawn, identified = (
            [] if text is None else _JSON_DECODE(text) for text in row
        )
        # Drawn from the sequence like the column default would; one not used (a result
        # that turned out unchanged) is a gap, as a rolled-back insert leaves.
        self._result_ids.extend(drawn)
        patients = [
            ((kind, assigner, value_hash), int(pid), merged_into)
            for kind, assigner, value_hash, pid, merged_into in identified
        ]
        return sorted(ids), found, heads, patients

    def _survivors(
        self, rows: Iterable[tuple[IdentifierKey, int, int | None]]
    ) -> dict[IdentifierKey, int]:
        """{key: patient}, following merges to the surviving patient."""
        return {
            key: pid if merged_into is None else self._survivor(pid, merged_into)
            for key, pid, merged_into in rows
        }

    def _message_row(self, record: MessageRecord) -> tuple[Any, ...]:
        """SQLite: an inbound_message row with the time bound as the column type binds
        it and the message deflated."""
        return _message_values(record, self._time(record.received_at), deflate_message(record.raw))

    def mark_duplicate(self, message_id: int, response: str) -> None:
        self._queue(self._sql.duplicate, [(response, message_id)])

    def accepted_message(self, content_hash: str) -> tuple[int, str] | None:
        self.flush()
        row: Any = (
            self._cur.execute(_SQ_ACCEPTED, (content_hash,)).fetchone()
            if self._sqlite
            else self._sa.execute(_ACCEPTED, {"b_hash": content_hash}).first()
        )
        return None if row is None else (int(row[0]), str(row[1]))

    def insert_message(self, record: MessageRecord) -> int:
        if self._sqlite:
            self._cur.execute(_SQ_MESSAGE_INSERT, self._message_row(record))
            return int(self._cur.lastrowid)
        values = dict(zip(_MESSAGE_COLUMNS, _pg_message_values(record, json=False), strict=True))
        return int(self._sa.execute(_MESSAGE_INSERT, values).scalar_one())

    def set_response(self, message_id: int, response: str) -> None:
        self._queue(self._sql.response, [(response, message_id)])

    def emit(self, topic: str, payload: dict[str, object], at: datetime) -> None:
        self._queue(self._sql.outbox, [(self._time(at), topic, _JSON.encode(payload).decode())])

    # -- results
    def current_results(
        self, institution: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], CurrentResult]:
        """One SELECT for the whole message (all its report numbers)."""
        if not keys:
            return {}
        self.flush()
        wanted = set(keys)
        report_nos = sorted({k[0] for k in keys})
        rows: Iterable[Any] = (
            self._select_in(_SQ_HEADS, (institution,), report_nos)
            if self._sqlite
            else self._sa.execute(
                _HEADS, {"b_institution": institution, "b_report_nos": report_nos}
            )
        )
        return {
            (no, code): CurrentResult(rid, version, content_hash, status, pid)
            for rid, no, code, version, content_hash, status, pid in rows
            if (no, code) in wanted
        }

    def write_results(self, writes: Sequence[ResultWrite], at: datetime) -> None:
        if not writes:
            return
        at = utc(at)
        new = [w for w in writes if w.result_id is None]
        changed = [w for w in writes if w.result_id is not None]
        if new:
            self._insert_results(new, at)
        if changed:
            self.flush()
            if self._sqlite:
                updated_at = self._time(at)
                self._cur.executemany(
                    _SQ_RESULT_UPDATE,
                    [
                        (
                            *_updated_values(
                                _result_values(w, w.message_id, updated_at, self._time)
                            ),
                            w.result_id,
                        )
                        for w in changed
                    ],
                )
                ids = [w.result_id for w in changed]
                for start in range(0, len(ids), _SQLITE_IN_CHUNK):
                    chunk = ids[start : start + _SQLITE_IN_CHUNK]
                    self._cur.execute(_sqlite_in(_SQ_OBS_DELETE, len(chunk)), chunk)
            else:
                # PostgreSQL: with the queued rows, in one round trip.
                self.flush(
                    then=[
                        (
                            _PG_RESULT_UPDATE,
                            [
                                (
                                    *_updated_values(_result_values(w, w.message_id, at, utc)),
                                    w.result_id,
                                )
                                for w in changed
                            ],
                        ),
                        (_PG_OBS_DELETE, [([w.result_id for w in changed],)]),
                    ]
                )
        recorded_at = self._time(at)
        self._queue(
            self._sql.version,
            [
                (
                    w.result_id,
                    w.version,
                    str(w.submission.status),
                    recorded_at,
                    "" if w.version == 1 else f"{w.submission.status}",
                    w.snapshot_json() if self._sqlite else w.snapshot_json().decode(),
                )
                for w in writes
            ],
        )
        self._queue(
            self._sql.observation,
            [
                (
                    w.result_id,
                    seq,
                    o.code,
                    o.loinc,
                    o.name,
                    str(o.value_type),
                    o.value_num,  # SQLite: REAL affinity stores an integer as REAL
                    o.value_text,
                    o.unit,
                    o.ref_low,
                    o.ref_high,
                    o.ref_text,
                    o.flag,
                    o.comment,
                )
                for w in writes
                for seq, o in enumerate(w.submission.observations, start=1)
            ]
            if self._sqlite
            else [
                (
                    w.result_id,
                    seq,
                    o.code,
                    o.loinc,
                    o.name,
                    str(o.value_type),
                    _float(o.value_num),
                    o.value_text,
                    o.unit,
                    _float(o.ref_low),
                    _float(o.ref_high),
                    o.ref_text,
                    o.flag,
                    o.comment,
                )
                for w in writes
                for seq, o in enumerate(w.submission.observations, start=1)
            ],
        )
        if any(w.submission.documents for w in writes):
            self._write_documents(writes)

    def _write_documents(self, writes: Sequence[ResultWrite]) -> None:
        """The original report documents of the versions written (``result_document``;
        called when there are any), after the queued rows they refer to. Rarely any: one
        statement, bytes bound as they are (not through the JSON of the queued writes)."""
        rows = [
            (w.result_id, w.version, seq, d.content_type, d.title, d.sha256, len(d.data), d.data)
            for w in writes
            for seq, d in enumerate(w.submission.documents, start=1)
        ]
        self.flush()
        if self._sqlite:
            self._cur.executemany(_SQ_DOCUMENT_INSERT, rows)
        else:
            with self._dbapi.cursor() as cur:
                cur.executemany(_PG_DOCUMENT_INSERT, rows)

    def _insert_results(self, new: Sequence[ResultWrite], at: datetime) -> None:
        """New results with their ids: one INSERT … RETURNING for all of them (PostgreSQL:
        SELECT FROM unnest(arrays); SQLite: multi-row VALUES), ids matched by the result's
        key, so that nothing depends on the order RETURNING gives them in."""
        updated_at = self._time(at)
        rows = [_result_values(w, w.message_id, updated_at, self._time) for w in new]
        if not self._sqlite and len(self._result_ids) >= len(new):
            # PostgreSQL with ids drawn in the opening round trip: the rows are queued
            # with the versions and observations (``flush`` writes them first).
            drawn, self._result_ids = self._result_ids[: len(new)], self._result_ids[len(new) :]
            for w, rid in zip(new, drawn, strict=True):
                w.result_id = rid
            self._queue(
                self._sql.result_with_ids,
                [(rid, *row) for rid, row in zip(drawn, rows, strict=True)],
            )
            return
        by_key: dict[tuple[str, str, str], int] = {}
        self.flush()
        if self._sqlite:
            for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
                chunk = rows[start : start + _SQLITE_ROWS_PER_INSERT]
                params = tuple(v for r in chunk for v in r)
                returned = self._cur.execute(_sqlite_result_rows(len(chunk)), params).fetchall()
                by_key.update({(inst, no, code): rid for rid, inst, no, code in returned})
        else:
            with self._dbapi.cursor() as cur:
                cur.execute(self._sql.result_returning, (_pg_json(rows),))
                by_key = {(inst, no, code): rid for rid, inst, no, code in cur.fetchall()}
        ids = [
            by_key[(w.submission.institution, w.submission.report_no, w.submission.local_code)]
            for w in new
        ]
        for w, rid in zip(new, ids, strict=True):
            w.result_id = int(rid)

    def unmapped_results(self, institution: str, local_code: str) -> list[UnmappedResult]:
        self.flush()
        if self._sqlite:
            return [
                UnmappedResult(rid, _sqlite_utc(issued_at), category)
                for rid, issued_at, category in self._cur.execute(
                    _SQ_UNMAPPED, (institution, local_code)
                )
            ]
        rows = self._sa.execute(
            select(result.c.id, result.c.issued_at, result.c.category).where(
                result.c.institution_code == institution,
                result.c.local_code == local_code,
                result.c.item_code.is_(None),
            )
        )
        return [UnmappedResult(r.id, utc(r.issued_at), r.category) for r in rows]

    def set_mapping(
        self, result_id: int, item_code: str, category: str, mark: Mark | None, at: datetime
    ) -> None:
        if self._sqlite:
            self._cur.execute(
                _SQ_SET_MAPPING,
                (
                    item_code,
                    category,
                    mark.scope if mark else None,
                    mark.symbol if mark else None,
                    self._time(at),
                    result_id,
                ),
            )
            return
        self._sa.execute(
            update(result)
            .where(result.c.id == result_id)
            .values(
                item_code=item_code,
                category=category,
                mark_scope=mark.scope if mark else None,
                mark_symbol=mark.symbol if mark else None,
                updated_at=utc(at),
            )
        )

    # -- patients (huren.services.patients.PatientStore)
    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]:
        if not keys:
            return {}
        self.flush()
        wanted = set(keys)
        rows: Iterable[Any]
        if self._sqlite:
            # One search of the key's index per (kind, assigner) of the lookup.
            by_kind: dict[tuple[str, str], set[str]] = {}
            for kind, assigner, value_hash in keys:
                by_kind.setdefault((kind, assigner), set()).add(value_hash)
            rows = [
                row
                for head, hashes in by_kind.items()
                for row in self._select_in(_SQ_IDENTIFIED, head, sorted(hashes))
            ]
        else:
            rows = self._sa.execute(
                _IDENTIFIED,
                {
                    "b_kinds": sorted({k[0] for k in keys}),
                    "b_assigners": sorted({k[1] for k in keys}),
                    "b_hashes": sorted({k[2] for k in keys}),
                },
            ).all()
        found: dict[IdentifierKey, int] = {}
        for kind, assigner, value_hash, patient_id, merged_into in rows:
            key = (kind, assigner, value_hash)
            if key in wanted:
                found[key] = (
                    patient_id if merged_into is None else self._survivor(patient_id, merged_into)
                )
        return found

    def _survivor(self, patient_id: int, merged_into: int | None) -> int:
        seen = {patient_id}
        while merged_into is not None and merged_into not in seen:
            seen.add(merged_into)
            patient_id = merged_into
            found = (
                self._cur.execute(_SQ_MERGED_INTO, (patient_id,)).fetchone()
                if self._sqlite
                else self._sa.execute(_MERGED_INTO, {"b_id": patient_id}).first()
            )
            merged_into = None if found is None else found[0]
        return patient_id

    def create_patient(self, new: NewPatient) -> int:
        if self._sqlite:
            self._cur.execute(
                _SQ_PATIENT_INSERT,
                (
                    new.name_enc,
                    new.name_masked,
                    new.sex,
                    self._date(new.birth_date),
                    self._time(new.created_at),
                ),
            )
            return int(self._cur.lastrowid)
        return int(
            self._sa.execute(
                _PATIENT_INSERT,
                {
                    "name_enc": new.name_enc,
                    "name_masked": new.name_masked,
                    "sex": new.sex,
                    "birth_date": new.birth_date,
                    "created_at": utc(new.created_at),
                },
            ).scalar_one()
        )

    def add_identifiers(self, patient_id: int, records: Sequence[IdentifierRecord]) -> None:
        self._queue(
            self._sql.identifier,
            [
                (patient_id, r.kind, r.assigner, r.value_hash, r.value_enc, r.value_masked)
                for r in records
            ],
        )

    def record_link(self, event: LinkEvent) -> None:
        self._queue(
            self._sql.link,
            [
                (
                    self._time(event.at),
                    event.actor[:64],
                    event.action,
                    event.from_patient,
                    event.to_patient,
                    event.reason,
                )
            ],
        )


class SqlIntakeStore:
    """Implements ``huren.services.intake.IntakeStore``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = is_sqlite(str(engine.url))
        # Rows written on the DBAPI cursor raise the driver's own IntegrityError.
        self._conflicts: tuple[type[BaseException], ...] = (
            IntegrityError,
            engine.dialect.loaded_dbapi.IntegrityError,
        )

    @contextmanager
    def transaction(self) -> Iterator[SqlIntakeTx]:
        if self._sqlite:
            with self._sqlite_transaction() as tx:
                yield tx
            return
        with self._engine.connect() as conn:
            # Begun explicitly: the first statements may go on the DBAPI connection, and
            # ``commit`` must commit them.
            conn.begin()
            try:
                tx = SqlIntakeTx(conn)
                yield tx
                # The last rows and the commit in one round trip; SQLAlchemy's commit
                # then finds the transaction ended (psycopg: a no-op) and closes its own.
                tx.flush(commit=True)
                conn.commit()
            except self._conflicts as exc:
                conn.rollback()
                raise TransientConflict(str(getattr(exc, "orig", exc))) from exc
            except BaseException:
                conn.rollback()
                raise

    @contextmanager
    def _sqlite_transaction(self) -> Iterator[SqlIntakeTx]:
        """A pooled sqlite3 connection, without a SQLAlchemy ``Connection`` around it."""
        pooled = self._engine.raw_connection()
        try:
            db: Any = pooled.driver_connection
            # Take the write lock at once so that the duplicate check and the writes see
            # the same state (no lost update between two writers). On SQLite one writer
            # at a time: BEGIN IMMEDIATE first queues on the engine's writer lock (see
            # engine.SqliteWriterLock), not in SQLite's busy handler.
            db.execute("BEGIN IMMEDIATE")
            try:
                tx = SqlIntakeTx.on_sqlite(db)
                yield tx
                tx.flush()
                db.commit()
            except self._conflicts as exc:
                db.rollback()
                raise TransientConflict(str(exc)) from exc
            except BaseException:
                db.rollback()
                raise
        finally:
            pooled.close()

    def unmapped_codes(self, institution: str) -> list[UnmappedCode]:
        """The institution's local codes without a unified code, most results first, each
        with the first and last message that brought its results and their receipt times."""
        stmt = (
            select(
                result.c.local_code,
                func.max(result.c.local_name).label("local_name"),
                func.count().label("n"),
                func.min(result.c.issued_at).label("first"),
                func.max(result.c.issued_at).label("last"),
                func.min(result.c.source_message_id).label("first_message"),
                func.max(result.c.source_message_id).label("last_message"),
            )
            .where(result.c.institution_code == institution, result.c.item_code.is_(None))
            .group_by(result.c.local_code)
            .order_by(func.count().desc(), result.c.local_code)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
            ids = {int(m) for r in rows for m in (r.first_message, r.last_message) if m is not None}
            received = (
                {
                    int(m.id): utc(m.received_at)
                    for m in conn.execute(
                        select(inbound_message.c.id, inbound_message.c.received_at).where(
                            inbound_message.c.id.in_(sorted(ids))
                        )
                    )
                }
                if ids
                else {}
            )

        def unmapped(r: Any) -> UnmappedCode:
            first = int(r.first_message) if r.first_message is not None else None
            last = int(r.last_message) if r.last_message is not None else None
            return UnmappedCode(
                r.local_code,
                r.local_name or "",
                r.n,
                utc(r.first),
                utc(r.last),
                first,
                last,
                received.get(first) if first is not None else None,
                received.get(last) if last is not None else None,
            )

        return [unmapped(r) for r in rows]


# ---------------------------------------------------------------- read repository
@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    status: ResultStatus
    recorded_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class PatientView:
    """A patient for display: masked name and identifiers (R4)."""

    id: int
    name_masked: str
    sex: str
    birth_date: date | None
    identifiers: tuple[tuple[IdentifierKind, str, str], ...]  # (kind, assigner, masked)
    merged_into: int | None = None


@dataclass(frozen=True, slots=True)
class ResultQuery:
    """Search criteria (FHIR search and lists). All given criteria must hold."""

    patient_ids: Sequence[int] | None = None
    institution: str | None = None
    item_codes: Sequence[str] | None = None
    local_codes: Sequence[str] | None = None
    loinc: Sequence[str] | None = None  # observations with one of these LOINC codes
    performed_from: datetime | None = None
    performed_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    report_no: str | None = None
    include_entered_in_error: bool = False
    limit: int = 100
    offset: int = 0


def _obs_from_row(r: Any) -> ObservationValue:
    return ObservationValue(
        code=r.code,
        name=r.name,
        value_type=ValueType(r.value_type),
        value_num=r.value_num,
        value_text=r.value_text,
        unit=r.unit,
        ref_low=r.ref_low,
        ref_high=r.ref_high,
        ref_text=r.ref_text,
        flag=r.flag,
        loinc=r.loinc,
        comment=r.comment,
    )


def _obs_from_json(d: dict[str, Any]) -> ObservationValue:
    return ObservationValue(
        code=d["code"],
        name=d["name"],
        value_type=ValueType(d["value_type"]),
        value_num=d["value_num"],
        value_text=d["value_text"],
        unit=d["unit"],
        ref_low=d["ref_low"],
        ref_high=d["ref_high"],
        ref_text=d["ref_text"],
        flag=d["flag"],
        loinc=d["loinc"],
        comment=d.get("comment", ""),  # snapshots written before 0004 have none
    )


def _stored(r: Any, observations: Iterable[ObservationValue]) -> StoredResult:
    return StoredResult(
        id=r.id,
        patient_id=r.patient_id,
        institution=r.institution_code,
        report_no=r.report_no,
        local_code=r.local_code,
        local_name=r.local_name,
        item_code=r.item_code,
        category=Category(r.category),
        status=ResultStatus(r.status),
        performed_at=utc(r.performed_at),
        issued_at=utc(r.issued_at),
        version=r.version,
        mark_scope=r.mark_scope,
        mark_symbol=r.mark_symbol,
        department=r.department,
        performer=r.performer,
        signer=r.signer,
        findings=r.findings,
        conclusion=r.conclusion,
        accession_number=r.accession_number,
        study_uid=r.study_uid,
        observations=tuple(observations),
        comment=r.comment,
    )


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """An original report document of a result version (``result_document``); ``data``
    is empty when only the list was read."""

    result_id: int
    version: int
    seq: int
    content_type: str
    title: str
    sha256: str
    size: int
    data: bytes = b""


class SqlResultReader:
    """Read access to stored results and patients (``container.results``).

    Reads here do not write audit records: a route that shows a patient's results to a
    person records the read itself (sharing area)."""

    def __init__(self, engine: Engine, vault: IdentifierVault, clock: Clock) -> None:
        self._engine = engine
        self._vault = vault
        self._clock = clock

    def documents(self, result_id: int, version: int) -> list[StoredDocument]:
        """The original report documents of one version, in the order sent (no bytes)."""
        return self.documents_of([(result_id, version)]).get((result_id, version), [])

    def documents_of(
        self, versions: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, int], list[StoredDocument]]:
        """``documents`` of several (result id, version) at once: one statement (a FHIR
        search page renders each report's documents)."""
        if not versions:
            return {}
        d = result_document.c
        wanted = set(versions)
        out: dict[tuple[int, int], list[StoredDocument]] = {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(d.result_id, d.version, d.seq, d.content_type, d.title, d.sha256, d.size)
                .where(d.result_id.in_({rid for rid, _ in versions}))
                .order_by(d.result_id, d.version, d.seq)
            ).all()
        for row in rows:
            if (row[0], row[1]) in wanted:
                out.setdefault((row[0], row[1]), []).append(StoredDocument(*row))
        return out

    def document(self, result_id: int, version: int, seq: int) -> StoredDocument | None:
        """One document with its bytes, or None."""
        d = result_document.c
        with self._engine.connect() as conn:
            row = conn.execute(
                select(d.content_type, d.title, d.sha256, d.size, d.data).where(
                    d.result_id == result_id, d.version == version, d.seq == seq
                )
            ).first()
        if row is None:
            return None
        return StoredDocument(result_id, version, seq, *row[:4], bytes(row[4]))

    def record_access(
        self,
        principal: Principal,
        action: str,
        results: Sequence[StoredResult],
        *,
        patient_id: int | None = None,
        purpose: str = "",
    ) -> None:
        """Audit rows for a read (who, when, which result) — design.md: every read of a
        patient's results is recorded."""
        at = utc(self._clock.now())
        base = {
            "at": at,
            "account_id": principal.account_id,
            "actor": principal.username[:64],
            "role": str(principal.role),
            "institution_code": principal.institution,
            "action": action[:32],
            "purpose": purpose[:200],
            "outcome": "ok",
        }
        rows = [base | {"patient_id": r.patient_id, "result_id": r.id} for r in results]
        if not rows and patient_id is not None:
            rows = [base | {"patient_id": patient_id, "result_id": None}]
        if rows:
            with self._engine.begin() as conn:
                conn.execute(insert(audit_event), rows)

    def patient_ids(self, result_ids: Sequence[int]) -> dict[int, int]:
        """{result id: patient id}."""
        if not result_ids:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(result.c.id, result.c.patient_id).where(result.c.id.in_(list(result_ids)))
            )
            return {int(r.id): int(r.patient_id) for r in rows}

    def version_recorded_at(self, result_id: int, version: int) -> datetime:
        with self._engine.connect() as conn:
            at = conn.execute(
                select(result_version.c.recorded_at).where(
                    result_version.c.result_id == result_id, result_version.c.version == version
                )
            ).scalar_one_or_none()
        if at is None:
            raise NotFound(f"结果 {result_id} 没有第 {version} 版")
        return utc(at)

    def search_with_updated(self, query: ResultQuery) -> list[tuple[StoredResult, datetime]]:
        """``search`` with each result's last update time (FHIR meta.lastUpdated)."""
        with self._engine.connect() as conn:
            found = self._search(conn, query)
            if not found:
                return []
            rows = conn.execute(
                select(result.c.id, result.c.updated_at).where(
                    result.c.id.in_([r.id for r in found])
                )
            )
            updated = {int(r.id): utc(r.updated_at) for r in rows}
        return [(r, updated[r.id]) for r in found]

    # -- results
    def results_for_patient(
        self,
        patient_id: int,
        item_codes: Sequence[str] | None = None,
        *,
        include_entered_in_error: bool = False,
    ) -> list[StoredResult]:
        """The patient's current results (and those of patients merged into it), newest
        performed first. ``entered-in-error`` results are kept but left out unless asked."""
        with self._engine.connect() as conn:
            ids = self._patient_family(conn, patient_id)
            return self._search(
                conn,
                ResultQuery(
                    patient_ids=ids,
                    item_codes=item_codes,
                    include_entered_in_error=include_entered_in_error,
                    limit=10_000,
                ),
            )

    def get_result(self, result_id: int, version: int | None = None) -> StoredResult:
        """The current result, or one of its earlier versions. NotFound otherwise."""
        with self._engine.connect() as conn:
            row = conn.execute(select(result).where(result.c.id == result_id)).first()
            if row is None:
                raise NotFound(f"结果 {result_id} 不存在")
            if version is None or version == row.version:
                obs = conn.execute(
                    select(observation)
                    .where(observation.c.result_id == result_id)
                    .order_by(observation.c.seq)
                )
                return _stored(row, (_obs_from_row(o) for o in obs))
            snap = conn.execute(
                select(result_version.c.snapshot).where(
                    result_version.c.result_id == result_id, result_version.c.version == version
                )
            ).scalar_one_or_none()
        if snap is None:
            raise NotFound(f"结果 {result_id} 没有第 {version} 版")
        return self._from_snapshot(result_id, version, row, snap)

    @staticmethod
    def _from_snapshot(result_id: int, version: int, row: Any, snap: Any) -> StoredResult:
        d: dict[str, Any] = snap if isinstance(snap, dict) else json.loads(snap)
        return StoredResult(
            id=result_id,
            patient_id=d["patient_id"],
            institution=d["institution"],
            report_no=d["report_no"],
            local_code=d["local_code"],
            local_name=d["local_name"],
            item_code=d["item_code"] if d["item_code"] is not None else row.item_code,
            category=Category(d["category"]),
            status=ResultStatus(d["status"]),
            performed_at=utc(datetime.fromisoformat(d["performed_at"])),
            issued_at=utc(datetime.fromisoformat(d["issued_at"])),
            version=version,
            mark_scope=d["mark_scope"],
            mark_symbol=d["mark_symbol"],
            department=d["department"],
            performer=d["performer"],
            signer=d["signer"],
            findings=d["findings"],
            conclusion=d["conclusion"],
            accession_number=d["accession_number"],
            study_uid=d["study_uid"],
            observations=tuple(_obs_from_json(o) for o in d["observations"]),
            comment=d.get("comment", ""),  # snapshots written before 0004 have none
        )

    def versions(self, result_id: int) -> list[VersionInfo]:
        """Every version of a result, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    result_version.c.version,
                    result_version.c.status,
                    result_version.c.recorded_at,
                    result_version.c.reason,
                )
                .where(result_version.c.result_id == result_id)
                .order_by(result_version.c.version)
            ).all()
        if not rows:
            raise NotFound(f"结果 {result_id} 不存在")
        return [
            VersionInfo(r.version, ResultStatus(r.status), utc(r.recorded_at), r.reason)
            for r in rows
        ]

    def history(
        self, since: datetime | None = None, limit: int = 100
    ) -> list[tuple[int, int, datetime]]:
        """(result_id, version, recorded_at) of recent versions, newest first."""
        stmt = select(
            result_version.c.result_id, result_version.c.version, result_version.c.recorded_at
        )
        if since is not None:
            stmt = stmt.where(result_version.c.recorded_at >= utc(since))
        stmt = stmt.order_by(
            result_version.c.recorded_at.desc(), result_version.c.result_id.desc()
        ).limit(limit)
        with self._engine.connect() as conn:
            return [(r.result_id, r.version, utc(r.recorded_at)) for r in conn.execute(stmt)]

    def search(self, query: ResultQuery) -> list[StoredResult]:
        with self._engine.connect() as conn:
            return self._search(conn, query)

    def updated_at(self, result_id: int) -> datetime:
        with self._engine.connect() as conn:
            at = conn.execute(
                select(result.c.updated_at).where(result.c.id == result_id)
            ).scalar_one_or_none()
        if at is None:
            raise NotFound(f"结果 {result_id} 不存在")
        return utc(at)

    def _search(self, conn: Connection, q: ResultQuery) -> list[StoredResult]:
        stmt = select(result)
        if q.patient_ids is not None:
            stmt = stmt.where(result.c.patient_id.in_(list(q.patient_ids)))
        if q.institution is not None:
            stmt = stmt.where(result.c.institution_code == q.institution)
        codes = []
        if q.item_codes is not None:
            codes.append(result.c.item_code.in_(list(q.item_codes)))
        if q.local_codes is not None:
            codes.append(result.c.local_code.in_(list(q.local_codes)))
        if q.loinc is not None:
            codes.append(
                result.c.id.in_(
                    select(observation.c.result_id).where(observation.c.loinc.in_(list(q.loinc)))
                )
            )
        if codes:
            stmt = stmt.where(or_(*codes))
        if q.performed_from is not None:
            stmt = stmt.where(result.c.performed_at >= utc(q.performed_from))
        if q.performed_to is not None:
            stmt = stmt.where(result.c.performed_at < utc(q.performed_to))
        if q.updated_from is not None:
            stmt = stmt.where(result.c.updated_at >= utc(q.updated_from))
        if q.updated_to is not None:
            stmt = stmt.where(result.c.updated_at < utc(q.updated_to))
        if q.report_no is not None:
            stmt = stmt.where(result.c.report_no == q.report_no)
        if not q.include_entered_in_error:
            stmt = stmt.where(result.c.status != str(ResultStatus.ENTERED_IN_ERROR))
        stmt = (
            stmt.order_by(result.c.performed_at.desc(), result.c.id.desc())
            .limit(q.limit)
            .offset(q.offset)
        )
        rows = conn.execute(stmt).all()
        if not rows:
            return []
        by_result: dict[int, list[ObservationValue]] = {r.id: [] for r in rows}
        obs_rows = conn.execute(
            select(observation)
            .where(observation.c.result_id.in_(list(by_result)))
            .order_by(observation.c.result_id, observation.c.seq)
        )
        for o in obs_rows:
            by_result[o.result_id].append(_obs_from_row(o))
        return [_stored(r, by_result[r.id]) for r in rows]

    # -- patients
    def _patient_family(self, conn: Connection, patient_id: int) -> list[int]:
        merged = conn.execute(select(patient.c.id).where(patient.c.merged_into == patient_id))
        return [patient_id, *(int(i) for i in merged.scalars())]

    def find_patients(self, identifier: PatientIdentifier) -> list[int]:
        """Patients holding ``identifier`` (normalized by the caller); at most one unless
        the data has an unresolved conflict."""
        h = self._vault.lookup_hash(str(identifier.kind), identifier.assigner, identifier.value)
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(patient.c.id, patient.c.merged_into)
                .join(patient_identifier, patient.c.id == patient_identifier.c.patient_id)
                .where(
                    and_(
                        patient_identifier.c.kind == str(identifier.kind),
                        patient_identifier.c.assigner == identifier.assigner,
                        patient_identifier.c.value_hash == h,
                    )
                )
            ).all()
            out = [SqlIntakeTx(conn)._survivor(r.id, r.merged_into) for r in rows]
        return sorted(set(out))

    def patient(self, patient_id: int) -> PatientView:
        with self._engine.connect() as conn:
            row = conn.execute(select(patient).where(patient.c.id == patient_id)).first()
            if row is None:
                raise NotFound(f"患者 {patient_id} 不存在")
            idents = conn.execute(
                select(
                    patient_identifier.c.kind,
                    patient_identifier.c.assigner,
                    patient_identifier.c.value_masked,
                )
                .where(patient_identifier.c.patient_id == patient_id)
                .order_by(patient_identifier.c.id)
            ).all()
        return PatientView(
            id=row.id,
            name_masked=row.name_masked,
            sex=row.sex,
            birth_date=row.birth_date,
            identifiers=tuple((IdentifierKind(i.kind), i.assigner, i.value_masked) for i in idents),
            merged_into=row.merged_into,
        )

    def patient_name(self, patient_id: int) -> str:
        """The full name, decrypted: only for views that may show it (own record, EMR)."""
        with self._engine.connect() as conn:
            enc = conn.execute(
                select(patient.c.name_enc).where(patient.c.id == patient_id)
            ).scalar_one_or_none()
        if enc is None:
            raise NotFound(f"患者 {patient_id} 不存在")
        return self._vault.decrypt(enc) if enc else ""

    def patient_identifiers(self, patient_id: int) -> list[PatientIdentifier]:
        """Decrypted identifiers (for FHIR Patient output to authorised callers)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    patient_identifier.c.kind,
                    patient_identifier.c.assigner,
                    patient_identifier.c.value_enc,
                )
                .where(patient_identifier.c.patient_id == patient_id)
                .order_by(patient_identifier.c.id)
            ).all()
        return [
            PatientIdentifier(IdentifierKind(r.kind), self._vault.decrypt(r.value_enc), r.assigner)
            for r in rows
        ]
