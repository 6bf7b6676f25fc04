"""Point of care in SQL: the reads the reminder needs (patient by identifier, the newest
prior results per ordered item, their observations, open correction requests) and the
writes it makes (``reminder``, ``decision``, ``cds_card``, ``audit_event``).

On SQLite a check costs four statements: the patient's family (two index lookups), the
priors (below), the reminder rows (one multi-row INSERT … RETURNING id) and the audit
row; a CDS Hooks call adds its cards' rows. The priors statement reads at most ``limit``
rows per item through the index ``ix_result_patient_item (patient_id, item_code,
performed_at)``, newest first (a UNION ALL of one short range scan per item), and brings
each row's observations, open corrections and whether its imaging study may have
arrived, so its cost does not grow with the number of results stored.

On PostgreSQL each statement is a round trip to the server, and waiting for them was
most of a check's time (issue 5: p50 1.78 ms for 1.0 ms of the checking thread's own
CPU). A check there makes two: one statement reads the patient with the priors (the
family's own lookups and a second priors statement only when the patient was merged or
holds merged patients), and one writes every row — reminders, audit row, cards — with
data-modifying WITH queries, on a connection in autocommit mode: one statement is one
transaction, committed (durably: ``synchronous_commit`` as the server has it) before its
answer comes back, so neither a BEGIN nor a COMMIT travels on its own."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import msgspec
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    insert,
    select,
    update,
)

from huren.adapters.db.engine import begin_write
from huren.adapters.db.results import _obs_from_row, _stored, utc
from huren.adapters.db.tables import (
    decision,
    institution,
    observation,
    reminder,
    result,
)
from huren.adapters.db.tables_recognition import cds_card
from huren.domain.masterdata import Category
from huren.domain.results import ObservationValue, ResultStatus, StoredResult, ValueType
from huren.services.recognition import (
    AuditRecord,
    CardRecord,
    CheckWrites,
    DecisionRecord,
    PriorDecision,
    PriorRow,
    ReminderRecord,
    StoredCard,
)

# ---------------------------------------------------------------- hot path, as driver SQL
# The reads of every check (patient family, prior results with their open corrections and
# observations) and its writes (reminders, CDS cards, audit row) go to the DBAPI cursor of
# the transaction's connection as plain SQL: no statement construction, compilation,
# cache-key computation or result-metadata building per call, and no per-row type
# processing — the check runs on every order and its budget is 2 ms (issue 5; profiled:
# SQLAlchemy's per-statement overhead was most of the check). The text is built once per
# shape (number of items, of patients in the family, of rows) and dialect; values are
# always bound, never interpolated (S608 below: only this module's table and column
# names go into the text). Everything else here uses SQLAlchemy Core.

_RESULT_COLS = ", ".join(
    f"r.{name}"
    for name in [
        "id",
        "patient_id",
        "institution_code",
        "report_no",
        "local_code",
        "local_name",
        "item_code",
        "category",
        "status",
        "performed_at",
        "issued_at",
        "version",
        "mark_scope",
        "mark_symbol",
        "department",
        "performer",
        "signer",
        "findings",
        "conclusion",
        "accession_number",
        "study_uid",
        "comment",
    ]
)
# An observation as a JSON object named like ``ObservationValue``'s fields, so that msgspec
# decodes it straight into one (no per-row Python: most of reading a prior was building
# its observations one by one from JSON arrays).
_OBS_KEYS = tuple(f.name for f in fields(ObservationValue))
_OBS_OBJECT = ", ".join(f"'{k}', o.{k}" for k in _OBS_KEYS)
# Per prior result: its open correction requests; whether an imaging study that could be
# its study has arrived (same institution, and the report's Study Instance UID or else
# its accession number: the keys ``domain.imaging.study_matches_report`` links on, so
# "none arrived" is exact and the imaging service need not be asked); its observations
# (one JSON array of [seq, observation] pairs, in seq order). All evaluated only for the
# rows each LIMIT keeps.
_STUDY_ARRIVED = (
    "CASE WHEN r.category <> 'imaging' THEN 0"
    " WHEN r.study_uid <> '' THEN CASE WHEN EXISTS (SELECT 1 FROM imaging_study s"
    " WHERE s.study_uid = r.study_uid AND s.institution_code = r.institution_code)"
    " THEN 1 ELSE 0 END"
    " WHEN r.accession_number <> '' THEN CASE WHEN EXISTS (SELECT 1 FROM imaging_study s"
    " WHERE s.institution_code = r.institution_code"
    " AND s.accession_number = r.accession_number) THEN 1 ELSE 0 END"
    " ELSE 0 END AS study_arrived"
)
_OPEN_CORRECTIONS = (
    "(SELECT count(*) FROM correction_request cr WHERE cr.result_id = r.id"
    " AND cr.status = 'open') AS open_corrections"
)
# SQLite aggregates a result's observations in the order of ``ix_observation_result_id``
# (rowid order: the order they were written in, which is seq order); the order is checked
# on reading and sorted there if ever not. An ORDER BY subquery under the aggregate would
# make it exact in SQL but cost a fifth of reading a prior (a sorter per result: 51 against
# 38 µs a row). PostgreSQL orders the aggregate itself.
_EXTRA = {
    "sqlite": f"{_OPEN_CORRECTIONS}, {_STUDY_ARRIVED},"  # noqa: S608
    f" CAST((SELECT json_group_array(json_array(o.seq, json_object({_OBS_OBJECT})))"
    " FROM observation o WHERE o.result_id = r.id) AS BLOB) AS observations",
    "postgresql": f"{_OPEN_CORRECTIONS}, {_STUDY_ARRIVED},"  # noqa: S608
    f" (SELECT json_agg(json_build_array(o.seq, json_build_object({_OBS_OBJECT}))"
    " ORDER BY o.seq)::text FROM observation o WHERE o.result_id = r.id) AS observations",
}


class _Sql:
    """The hot statements of one dialect (``?`` for sqlite3, ``%s`` for psycopg)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.mark = "?" if dialect == "sqlite" else "%s"
        self.extra = _EXTRA["sqlite" if dialect == "sqlite" else "postgresql"]
        self._priors: dict[tuple[int, int], str] = {}
        self._keys: dict[int, str] = {}
        self._inserts: dict[tuple[str, int, bool], str] = {}
        self._writes: dict[tuple[int, int, int], str] = {}
        m = self.mark
        # Two index lookups (primary key; ix_patient_merged_into), not an OR that a
        # planner may turn into a scan.
        self.family = (
            f"SELECT id, merged_into FROM patient WHERE id = {m} "  # noqa: S608
            f"UNION ALL SELECT id, merged_into FROM patient WHERE merged_into = {m}"
        )
        self.merged_into = f"SELECT merged_into FROM patient WHERE id = {m}"  # noqa: S608

    def _in(self, n: int) -> str:
        return f"= {self.mark}" if n == 1 else "IN (" + ", ".join([self.mark] * n) + ")"

    def priors(self, items: int, patients: int) -> str:
        """Newest ``lim`` results per item: UNION ALL of one index range scan per item
        (``ix_result_patient_item``), each limited before the correlated columns run."""
        key = (items, patients)
        sql = self._priors.get(key)
        if sql is None:
            m = self.mark
            part = (
                f"SELECT * FROM (SELECT {_RESULT_COLS}, "  # noqa: S608
                f"{self.extra} FROM result r WHERE r.patient_id {self._in(patients)} "
                f"AND r.item_code = {m} ORDER BY r.performed_at DESC LIMIT {m}) AS p{{n}}"
            )
            sql = " UNION ALL ".join(part.format(n=n) for n in range(items))
            self._priors[key] = sql
        return sql

    def family_priors(self, items: int, keys: int) -> str:
        """PostgreSQL: the patient — by platform id (``keys`` 0), or the holder of the
        first of ``keys`` identifier keys that is known (the caller orders them strongest
        first) — with the patient it was merged into (``merged_into``) and the patients
        merged into it, and ``priors`` of each of ``items`` items when it stands alone
        (neither merged nor holding merged patients; otherwise the caller reads its
        family's priors with ``priors``). The prior columns come first (as in
        ``priors``), the patient's three last; one row per prior, or one with NULL prior
        columns; none if no patient.

        Each item's scan is ``patient_id = (scalar)``: an index range scan read newest
        first and stopped at the limit, as in ``priors``. ``= ANY(family array)`` would
        read every result of the item and sort them (measured on 1M results: 101 rows
        read, and their correlated columns computed, for a limit of 5)."""
        key = (items, -1 - keys)
        sql = self._priors.get(key)
        if sql is None:
            m = self.mark
            members = "ARRAY(SELECT f.id FROM patient f WHERE f.merged_into = p.id) AS members"
            if keys == 0:
                own = f"SELECT p.id, p.merged_into, {members} FROM patient p WHERE p.id = {m}"  # noqa: S608
            else:
                wanted = ", ".join(f"({m}, {m}, {m}, {n})" for n in range(keys))
                own = (
                    f"SELECT p.id, p.merged_into, {members} "  # noqa: S608
                    f"FROM (VALUES {wanted}) AS k (kind, assigner, value_hash, n) "
                    "JOIN patient_identifier i ON i.kind = k.kind AND i.assigner = k.assigner"
                    " AND i.value_hash = k.value_hash "
                    "JOIN patient p ON p.id = i.patient_id ORDER BY k.n LIMIT 1"
                )
            alone = (
                "(SELECT o.id FROM own o WHERE o.merged_into IS NULL"
                " AND cardinality(o.members) = 0)"
            )
            part = (
                f"SELECT * FROM (SELECT {_RESULT_COLS}, "  # noqa: S608
                f"{self.extra} FROM result r WHERE r.patient_id = {alone} "
                f"AND r.item_code = {m} ORDER BY r.performed_at DESC LIMIT {m}) AS p{{n}}"
            )
            priors = " UNION ALL ".join(part.format(n=n) for n in range(items))
            sql = (
                f"WITH own AS ({own}) "  # noqa: S608
                "SELECT pr.*, own.id, own.merged_into, own.members "
                f"FROM own LEFT JOIN ({priors}) AS pr ON true"
            )
            self._priors[key] = sql
        return sql

    def check_writes(self, reminders: int, audits: int, cards: int) -> str:
        """PostgreSQL: the rows of checks in one statement (data-modifying WITH queries),
        answering with the reminders' ids in ascending order, which is the order of their
        rows (see ``record_reminders``). A card's ``reminder_id`` is bound as the 1-based
        position of its reminder row among them."""
        key = (reminders, audits, cards)
        sql = self._writes.get(key)
        if sql is None:
            parts = [
                "r AS ("
                + self.insert(_REMINDERS.name, _REMINDERS.columns, reminders, returning=True)
                + ")",
                "i AS (SELECT array_agg(id ORDER BY id) AS ids FROM r)",
            ]
            if audits:
                parts.append(f"a AS ({self.insert(_AUDITS.name, _AUDITS.columns, audits, False)})")
            if cards:
                row = ", ".join(
                    f"(SELECT i.ids[{self.mark}] FROM i)"  # noqa: S608
                    if c == "reminder_id"
                    else self.mark
                    for c in _CARDS.columns
                )
                values = ", ".join([f"({row})"] * cards)
                parts.append(
                    f"c AS (INSERT INTO {_CARDS.name} ({', '.join(_CARDS.columns)}) "  # noqa: S608
                    f"VALUES {values})"
                )
            sql = "WITH " + ", ".join(parts) + " SELECT ids FROM i"  # noqa: S608
            if len(self._writes) < _WRITE_SHAPES:
                self._writes[key] = sql
        return sql

    def family_keys(self, n: int) -> str:
        """The patients holding any of ``n`` identifier keys, each with the patients
        merged into it (one row per such patient, or one with NULL)."""
        sql = self._keys.get(n)
        if sql is None:
            m = self.mark
            cond = f"(i.kind = {m} AND i.assigner = {m} AND i.value_hash = {m})"
            sql = (
                "SELECT i.kind, i.assigner, i.value_hash, p.id, p.merged_into, f.id "
                "FROM patient_identifier i JOIN patient p ON p.id = i.patient_id "
                "LEFT JOIN patient f ON f.merged_into = p.id WHERE " + " OR ".join([cond] * n)
            )
            self._keys[n] = sql
        return sql

    def insert(self, table: str, columns: Sequence[str], n: int, returning: bool) -> str:
        """``INSERT INTO table (columns) VALUES (…), … n rows [RETURNING id]``."""
        key = (table, n, returning)
        sql = self._inserts.get(key)
        if sql is None:
            row = "(" + ", ".join([self.mark] * len(columns)) + ")"
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join(  # noqa: S608
                [row] * n
            )
            if returning:
                sql += " RETURNING id"
            self._inserts[key] = sql
        return sql

    def rows(
        self, table: _Table, records: Sequence[Any], reminder_ids: Sequence[int] | None = None
    ) -> list[Any]:
        """The bound values of ``records`` (dataclasses named like ``table``'s columns),
        flat; with ``reminder_ids``, each record's ``reminder_id`` (a position) is
        replaced by the id at that position."""
        out: list[Any] = []
        at: Any = None
        bound: Any = None
        at_index, rid_index = table.at, table.reminder_id
        for r in records:
            values = list(table.values(r))
            if r.at is not at:  # the rows of one check share their time
                at, bound = r.at, self.timestamp(r.at)
            values[at_index] = bound
            if reminder_ids is not None and values[rid_index] is not None:
                values[rid_index] = reminder_ids[values[rid_index]]
            out.extend(values)
        return out

    def timestamp(self, value: datetime) -> Any:
        """A bound timestamp as SQLAlchemy's ``UtcDateTime`` would send it: on SQLite the
        text form SQLAlchemy writes (naive UTC with microseconds, so that comparisons
        with other rows' text stay right), on PostgreSQL the aware datetime."""
        value = utc(value)
        if self.dialect == "sqlite":
            # isoformat, not strftime: the same text at a third of the cost.
            return value.replace(tzinfo=None).isoformat(" ", "microseconds")
        return value


class _Table:
    """A table the check writes to, with the record fields named like its columns."""

    def __init__(self, name: str, record: type) -> None:
        self.name = name
        self.columns = tuple(f.name for f in fields(record))
        self.values = attrgetter(*self.columns)  # one record's values, as a tuple
        self.at = self.columns.index("at")
        self.reminder_id = (
            self.columns.index("reminder_id") if "reminder_id" in self.columns else -1
        )


_REMINDERS = _Table("reminder", ReminderRecord)
_AUDITS = _Table("audit_event", AuditRecord)
_CARDS = _Table("cds_card", CardRecord)
# Rows per INSERT statement (bound values stay far below SQLite's and PostgreSQL's limits).
_ROWS_PER_INSERT = 200
# Shapes (numbers of reminder, audit and card rows) of the PostgreSQL write statement whose
# text is kept; rarer ones are built each time.
_WRITE_SHAPES = 512

_SQL: dict[str, _Sql] = {}

log = logging.getLogger("huren.db")


def _sql_for(conn: Connection) -> _Sql:
    name = conn.dialect.name
    sql = _SQL.get(name)
    if sql is None:
        sql = _SQL[name] = _Sql(name)
    return sql


_VALUE_TYPES = {v.value: v for v in ValueType}
_CATEGORIES = {c.value: c for c in Category}
_STATUSES = {s.value: s for s in ResultStatus}


_OBSERVATIONS_JSON = msgspec.json.Decoder(list[tuple[int, ObservationValue]])


def _observations_of(raw: Any) -> tuple[ObservationValue, ...]:
    """The observations of a prior, from the statement's JSON array of [seq, object]."""
    if raw is None:
        return ()
    try:
        pairs = _OBSERVATIONS_JSON.decode(raw)
    except msgspec.ValidationError:  # e.g. a value PostgreSQL wrote as "NaN"
        pairs = [(o[0], _observation(o[1])) for o in json.loads(raw)]
    if any(pairs[i][0] > pairs[i + 1][0] for i in range(len(pairs) - 1)):
        pairs.sort(key=lambda p: p[0])
    return tuple(o for _, o in pairs)


def _observation(o: dict[str, Any]) -> ObservationValue:
    def num(v: Any) -> float | None:
        return None if v is None else float(v)

    return ObservationValue(
        code=o["code"],
        name=o["name"],
        value_type=_VALUE_TYPES[o["value_type"]],
        value_num=num(o["value_num"]),
        value_text=o["value_text"],
        unit=o["unit"],
        ref_low=num(o["ref_low"]),
        ref_high=num(o["ref_high"]),
        ref_text=o["ref_text"],
        flag=o["flag"],
        loinc=o["loinc"],
        comment=o.get("comment", ""),
    )


def _read_timestamp(value: Any) -> datetime:
    """A stored timestamp as aware UTC (SQLite hands back its text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    stamp: datetime = value
    tz = stamp.tzinfo
    if tz is UTC:
        return stamp
    return stamp.replace(tzinfo=UTC) if tz is None else stamp.astimezone(UTC)


# ---------------------------------------------------------------- Core statements
_PRIOR_COLUMNS = [c for c in result.c if c.name not in ("content_hash", "source_message_id")]
_OBSERVATIONS = (
    select(observation)
    .where(observation.c.result_id.in_(bindparam("ids", expanding=True)))
    .order_by(observation.c.result_id, observation.c.seq)
)


def _priors_params(patient_ids: Sequence[int], item_codes: Sequence[str], limit: int) -> list[Any]:
    params: list[Any] = []
    for code in item_codes:
        params.extend(patient_ids)
        params.append(code)
        params.append(limit)
    return params


@dataclass(slots=True)
class _Waiting:
    """A check's rows waiting for a group commit, and what came of them."""

    writes: CheckWrites
    ids: list[int] | None = None
    error: BaseException | None = None


class _GroupCommit:
    """The writes of concurrent checks, committed together. Each check's thread hands its
    rows in and waits; the first to find no commit in progress becomes the leader and
    writes every check waiting at that moment on its own (reading) connection, in one
    transaction with one commit, then wakes the others; each call returns only once the
    transaction holding its rows has committed, so a card handed out is always found by
    its feedback and no reminder or audit row is lost. Waiting threads hold no lock and
    need no further connection, so the leader never waits for them. One commit per batch
    instead of one per check: on SQLite one writer at a time in any case, on PostgreSQL
    one WAL flush per batch. If the batch fails, each check is written alone, so that a
    failure is only its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._waiting: list[_Waiting] = []
        self._leader = False

    def commit(self, tx: SqlRecognitionTx, writes: CheckWrites) -> list[int]:
        me = _Waiting(writes)
        with self._lock:
            self._waiting.append(me)
            while me.ids is None and me.error is None:
                if self._leader:
                    self._done.wait()
                    continue
                self._leader = True
                batch, self._waiting = self._waiting, []
                self._lock.release()
                outcomes: list[list[int] | Exception] = []
                interrupted: BaseException | None = None
                try:
                    outcomes = self._write(tx, batch)
                except BaseException as exc:  # e.g. interrupted: nobody waits forever
                    interrupted = exc
                    raise
                finally:
                    self._lock.acquire()
                    # Published only now, under the lock and after every commit of the
                    # batch: a waiting check woken early must not find its ids before
                    # the transaction holding its rows has committed.
                    for w, outcome in zip(batch, outcomes, strict=False):
                        if isinstance(outcome, Exception):
                            w.error = outcome
                        else:
                            w.ids = outcome
                    for w in batch[len(outcomes) :]:
                        w.error = interrupted or RuntimeError("提醒记录未写入")
                    self._leader = False
                    self._done.notify_all()
        if me.error is not None:
            raise me.error
        assert me.ids is not None
        return me.ids

    @staticmethod
    def _write(tx: SqlRecognitionTx, batch: list[_Waiting]) -> list[list[int] | Exception]:
        """Each check's reminder ids, or the error that kept its rows from being written;
        every transaction of the batch committed or rolled back when this returns."""
        try:
            with tx.writing():
                ids = tx._write_checks([w.writes for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            outcomes: list[list[int] | Exception] = []
            for w in batch:
                try:
                    with tx.writing():
                        own = tx._write_checks([w.writes])[0]
                except Exception as alone:  # handed to the waiting caller
                    outcomes.append(alone)
                else:
                    outcomes.append(own)
            return outcomes
        return list(ids)


class SqlRecognitionTx:
    """One transaction of the recognition service (implements ``RecognitionTx``): a
    ``transaction`` (writes commit with it), or a ``reading`` connection whose check
    writes go through the store's group commit."""

    def __init__(self, conn: Connection, group: _GroupCommit | None = None) -> None:
        self._c = conn
        self._sql = _sql_for(conn)
        self._cursor: Any = None
        self._group = group

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Writes on this reading connection, committed at the end of the block (rolled
        back if it raises); on SQLite its first write queues on the writer lock
        (``engine.SqliteWriterLock``), and the commit gives it back. On PostgreSQL the
        reading connection is in autocommit mode (``SqlRecognitionStore.reading``) and
        ``_write_checks`` is one transaction on its own, committed when it returns: one
        statement, or, past its size, a transaction of its own."""
        if self._c.in_transaction():  # begun through SQLAlchemy: let it commit
            try:
                yield
            except BaseException:
                self._c.rollback()
                raise
            self._c.commit()
            return
        dbapi: Any = self._c.connection.dbapi_connection
        if self._autocommit():
            yield
            return
        try:
            yield
            dbapi.commit()
        except BaseException:
            dbapi.rollback()
            raise

    def _autocommit(self) -> bool:
        """Whether this is a PostgreSQL connection in autocommit mode (each statement
        its own transaction; psycopg sends no BEGIN)."""
        dbapi: Any = self._c.connection.dbapi_connection
        return self._sql.dialect == "postgresql" and bool(dbapi.autocommit)

    def _execute(self, sql: str, params: Sequence[Any]) -> Any:
        """Run one statement on the DBAPI cursor, inside this connection's transaction
        (SQLAlchemy commits or rolls back the DBAPI connection as usual)."""
        cur = self._cursor
        if cur is None:
            cur = self._cursor = self._c.connection.cursor()
        cur.execute(sql, tuple(params))
        return cur

    def _rows(self, sql: str, params: Sequence[Any]) -> Sequence[Any]:
        rows: Sequence[Any] = self._execute(sql, params).fetchall()
        return rows

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    # -- patients
    def family_by_keys(self, keys: Sequence[tuple[str, str, str]]) -> list[int] | None:
        """``patient_family`` of the patient holding the first known key (the caller
        orders keys strongest first): one statement, unless that patient was merged."""
        if not keys:
            return None
        rows = self._rows(self._sql.family_keys(len(keys)), [v for k in keys for v in k])
        found: dict[tuple[str, str, str], tuple[int, int | None, list[int]]] = {}
        for r in rows:
            pid, merged_into, members = found.setdefault((r[0], r[1], r[2]), (r[3], r[4], []))
            if r[5] is not None:
                members.append(r[5])
        for key in keys:
            if key in found:
                pid, merged_into, members = found[key]
                if merged_into is None:
                    return [pid, *dict.fromkeys(m for m in members if m != pid)]
                return self.patient_family(self._survivor(pid, merged_into))
        return None

    def _survivor(self, patient_id: int, merged_into: int | None) -> int:
        seen = {patient_id}
        while merged_into is not None and merged_into not in seen:
            seen.add(merged_into)
            patient_id = merged_into
            row = self._execute(self._sql.merged_into, (patient_id,)).fetchone()
            merged_into = row[0] if row is not None else None
        return patient_id

    def patient_family(self, patient_id: int) -> list[int] | None:
        """The patient (after merges) and the patients merged into it; None if unknown."""
        return self._family(patient_id, self._rows(self._sql.family, (patient_id, patient_id)))

    def _family(self, patient_id: int, rows: Sequence[Any]) -> list[int] | None:
        own = next((r for r in rows if r[0] == patient_id), None)
        if own is None:
            return None
        if own[1] is None:
            return [patient_id, *dict.fromkeys(int(r[0]) for r in rows if r[0] != patient_id)]
        return self.patient_family(self._survivor(own[0], own[1]))

    def family_and_priors(
        self,
        patient: int | Sequence[tuple[str, str, str]],
        item_codes: Sequence[str],
        limit: int,
    ) -> tuple[list[int] | None, dict[str, list[PriorRow]]]:
        """``patient_family`` (``patient`` an id) or ``family_by_keys`` (keys), and the
        family's ``priors``. On PostgreSQL one statement (``_Sql.family_priors``) unless
        the patient was merged or holds merged patients; on SQLite, where a statement
        is a call, not a round trip, the two statements of those methods."""
        by_id = isinstance(patient, int)
        if self._sql.dialect != "postgresql" or not item_codes or not (by_id or patient):
            if isinstance(patient, int):
                family = self.patient_family(patient)
            else:
                family = self.family_by_keys(patient)
            return family, self.priors(family, item_codes, limit) if family else {}
        keys = 0 if isinstance(patient, int) else len(patient)
        params: list[Any] = (
            [patient] if isinstance(patient, int) else [v for k in patient for v in k]
        )
        for code in item_codes:
            params.append(code)
            params.append(limit)
        rows = self._rows(self._sql.family_priors(len(item_codes), keys), params)
        if not rows:
            return None, {}
        pid, merged_into, members = rows[0][-3:]
        if merged_into is not None:
            family = self.patient_family(self._survivor(pid, merged_into))
        elif members:
            family = [pid, *dict.fromkeys(m for m in members if m != pid)]
        else:  # alone: the statement read its priors
            return [pid], self._prior_rows([r for r in rows if r[0] is not None], item_codes)
        return family, self.priors(family, item_codes, limit) if family else {}

    # -- results
    def priors(
        self, patient_ids: Sequence[int], item_codes: Sequence[str], limit: int
    ) -> dict[str, list[PriorRow]]:
        """The newest ``limit`` results per item of these patients, with their
        observations, the number of their open correction requests and whether an
        imaging study for them may have arrived: one statement."""
        if not item_codes or not patient_ids:
            return {code: [] for code in item_codes}
        rows = self._rows(
            self._sql.priors(len(item_codes), len(patient_ids)),
            _priors_params(patient_ids, item_codes, limit),
        )
        return self._prior_rows(rows, item_codes)

    def _prior_rows(
        self, rows: Sequence[Any], item_codes: Sequence[str]
    ) -> dict[str, list[PriorRow]]:
        out: dict[str, list[PriorRow]] = {code: [] for code in item_codes}
        ts = _read_timestamp
        for r in rows:
            # The columns are StoredResult's fields, in order (see _RESULT_COLS), the
            # report's comment last (after the observations in StoredResult).
            stored = StoredResult(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                _CATEGORIES[r[7]],
                _STATUSES[r[8]],
                ts(r[9]),
                ts(r[10]),
                r[11],
                r[12],
                r[13],
                r[14],
                r[15],
                r[16],
                r[17],
                r[18],
                r[19],
                r[20],
                _observations_of(r[24]),
                r[21],
            )
            out[r[6]].append(PriorRow(stored, r[22], bool(r[23])))
        return out

    def _observations(self, result_ids: Sequence[int]) -> dict[int, list[ObservationValue]]:
        by_result: dict[int, list[ObservationValue]] = {}
        for o in self._c.execute(_OBSERVATIONS, {"ids": list(result_ids)}):
            by_result.setdefault(o.result_id, []).append(_obs_from_row(o))
        return by_result

    def result(self, result_id: int) -> StoredResult | None:
        row = self._c.execute(select(*_PRIOR_COLUMNS).where(result.c.id == result_id)).first()
        if row is None:
            return None
        obs = self._observations([result_id])
        return _stored(row, obs.get(result_id, ()))

    def institution_names(self, codes: Sequence[str]) -> dict[str, str]:
        rows = self._c.execute(
            select(institution.c.code, institution.c.name).where(
                institution.c.code.in_(list(codes))
            )
        )
        return {r.code: r.name for r in rows}

    # -- writes
    def record_check(self, writes: CheckWrites) -> list[int]:
        """On a reading connection: the check's rows in a group commit, committed when
        this returns; in a ``transaction``: written in it."""
        if self._group is None:
            return self._write_checks([writes])[0]
        return self._group.commit(self, writes)

    def _write_checks(self, checks: Sequence[CheckWrites]) -> list[list[int]]:
        """The rows of ``checks``; each check's reminder ids, in the order of its rows. On
        PostgreSQL one statement (``_Sql.check_writes``: one round trip, and in autocommit
        mode its own transaction); past ``_ROWS_PER_INSERT`` rows of a table, or on
        SQLite, one INSERT per table and chunk (in autocommit mode inside a transaction,
        so that the rows are written together or not at all)."""
        reminders = sum(len(c.reminders) for c in checks)
        cards = sum(len(c.cards) for c in checks)
        if self._sql.dialect == "postgresql":
            if 0 < reminders <= _ROWS_PER_INSERT and max(len(checks), cards) <= _ROWS_PER_INSERT:
                return self._write_in_one(checks, reminders, cards)
            if self._autocommit():
                dbapi: Any = self._c.connection.dbapi_connection
                with dbapi.transaction():
                    return self._write_tables(checks)
        return self._write_tables(checks)

    def _write_in_one(
        self, checks: Sequence[CheckWrites], reminders: int, cards: int
    ) -> list[list[int]]:
        sql = self._sql
        params = sql.rows(_REMINDERS, [r for c in checks for r in c.reminders])
        params += sql.rows(_AUDITS, [c.audit for c in checks])
        k = 1  # a card's reminder: its row's position among all, from 1 (SQL arrays)
        for c in checks:
            params += sql.rows(_CARDS, c.cards, range(k, k + len(c.reminders)))
            k += len(c.reminders)
        row = self._execute(sql.check_writes(reminders, len(checks), cards), params).fetchone()
        ids: list[int] = row[0]
        out: list[list[int]] = []
        k = 0
        for c in checks:
            out.append(ids[k : k + len(c.reminders)])
            k += len(c.reminders)
        return out

    def _write_tables(self, checks: Sequence[CheckWrites]) -> list[list[int]]:
        """One INSERT per table (``_ROWS_PER_INSERT`` rows at most)."""
        ids = self.record_reminders([r for c in checks for r in c.reminders])
        out: list[list[int]] = []
        k = 0
        for c in checks:
            out.append(ids[k : k + len(c.reminders)])
            k += len(c.reminders)
        self._insert(_AUDITS, [(c.audit, None) for c in checks])
        self._insert(
            _CARDS, [(card, own) for c, own in zip(checks, out, strict=True) for card in c.cards]
        )
        return out

    def _insert(self, table: _Table, records: Sequence[tuple[Any, Sequence[int] | None]]) -> None:
        sql = self._sql
        for n in range(0, len(records), _ROWS_PER_INSERT):
            chunk = records[n : n + _ROWS_PER_INSERT]
            values: list[Any] = []
            for record, reminder_ids in chunk:
                values.extend(sql.rows(table, [record], reminder_ids))
            self._execute(
                sql.insert(table.name, table.columns, len(chunk), returning=False), values
            )

    def record_reminders(self, rows: Sequence[ReminderRecord]) -> list[int]:
        """Multi-row INSERTs … RETURNING id. Row ids are handed out in VALUES order
        (SQLite rowids, PostgreSQL's sequence default), and RETURNING may list them in
        any order, so sorting them gives the rows' ids in the order given."""
        sql = self._sql
        ids: list[int] = []
        for n in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[n : n + _ROWS_PER_INSERT]
            returned = self._rows(
                sql.insert(_REMINDERS.name, _REMINDERS.columns, len(chunk), returning=True),
                sql.rows(_REMINDERS, chunk),
            )
            ids.extend(sorted(int(i[0]) for i in returned))
        return ids

    def reminder_institution(self, reminder_id: int) -> str | None:
        return self._c.execute(
            select(reminder.c.institution_code).where(reminder.c.id == reminder_id)
        ).scalar_one_or_none()

    def decisions_since(
        self,
        institution: str,
        patient_ids: Sequence[int],
        item_codes: Sequence[str],
        since: datetime,
    ) -> list[PriorDecision]:
        d = decision.c
        rows = self._c.execute(
            select(
                d.id, d.at, d.clinician, d.item_code, d.result_id, d.action, d.reason_code,
                d.saved_fen, d.emr_text, d.patient_explanation,
            )
            .where(
                d.institution_code == institution,
                d.patient_id.in_(patient_ids),
                d.item_code.in_(item_codes),
                d.at >= since,
                d.action.in_(("accepted", "declined")),
            )
            .order_by(d.at, d.id)
        )  # fmt: skip
        return [
            PriorDecision(
                r.id, utc(r.at), r.clinician, r.item_code, r.result_id, r.action,
                r.reason_code, r.saved_fen, r.emr_text, r.patient_explanation,
            )
            for r in rows
        ]  # fmt: skip

    def record_decision(self, row: DecisionRecord) -> int:
        values = {**asdict(row), "at": utc(row.at)}
        return int(self._c.execute(insert(decision).returning(decision.c.id), values).scalar_one())

    def record_audit(self, row: AuditRecord) -> None:
        self._insert(_AUDITS, [(row, None)])

    def record_cards(self, cards: Sequence[CardRecord]) -> None:
        self._insert(_CARDS, [(card, None) for card in cards])

    def card(self, uuid: str) -> StoredCard | None:
        row = self._c.execute(select(cds_card).where(cds_card.c.uuid == uuid)).first()
        if row is None:
            return None
        values: dict[str, Any] = dict(row._mapping)
        values["at"] = utc(values["at"])
        return StoredCard(**values)

    def link_card_decision(self, uuid: str, decision_id: int) -> None:
        self._c.execute(
            update(cds_card).where(cds_card.c.uuid == uuid).values(decision_id=decision_id)
        )


class SqlRecognitionStore:
    """Implements ``huren.services.recognition.RecognitionStore``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._group = _GroupCommit()

    @contextmanager
    def transaction(self) -> Iterator[SqlRecognitionTx]:
        # Its users read (the result, the card) before they write: on SQLite the writer
        # lock is held from the start.
        with begin_write(self._engine) as conn:
            tx = SqlRecognitionTx(conn)
            try:
                yield tx
            finally:
                tx.close()

    @contextmanager
    def reading(self) -> Iterator[SqlRecognitionTx]:
        """A connection for a check's reads and (through the group commit) its writes.
        On PostgreSQL in autocommit mode: psycopg sends no BEGIN before the first read
        (a round trip of its own), and the reads lose nothing by it — at READ COMMITTED,
        PostgreSQL's default, every statement of a transaction takes its own snapshot
        anyway, and the patient and its priors are read by one statement; the writes are
        one transaction each (``SqlRecognitionTx._write_checks``). The mode is set back
        before the connection returns to the pool, or the connection is discarded."""
        with self._engine.connect() as conn:
            autocommit = conn.dialect.name == "postgresql"
            if autocommit:
                dbapi: Any = conn.connection.dbapi_connection
                dbapi.autocommit = True
            tx = SqlRecognitionTx(conn, self._group)
            try:
                yield tx
            finally:
                tx.close()
                if autocommit:
                    _end_autocommit(conn)


def _end_autocommit(conn: Connection) -> None:
    """Back to transactions, as every other user of the pool expects; a connection that
    cannot be (broken, or left inside a transaction) is closed instead of pooled.

    By hand rather than SQLAlchemy's ``isolation_level="AUTOCOMMIT"``, which does the same:
    its setting and resetting of the connection's characteristics cost 10–40 µs of a
    check's 0.5 ms of CPU (three alternating pairs on 200,000 results: thread CPU p50
    0.49–0.52 against 0.48–0.49 ms, p99 0.69–0.73 against 0.67–0.69 ms)."""
    try:
        dbapi: Any = conn.connection.dbapi_connection
        dbapi.autocommit = False
    except Exception:
        log.warning("连接无法退出自动提交模式，已丢弃", exc_info=True)
        conn.invalidate()
