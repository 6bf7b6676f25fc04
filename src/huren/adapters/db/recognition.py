"""Point of care in SQL: the reads the reminder needs (patient by identifier, the newest
prior results per ordered item, their observations, open correction requests) and the
writes it makes (``reminder``, ``decision``, ``cds_card``, ``audit_event``).

A check costs four statements: the patient's family (two index lookups), the priors
(below), the reminder rows (one multi-row INSERT … RETURNING id) and the audit row; a
CDS Hooks call adds its cards' rows. The priors statement reads at most ``limit`` rows
per item through the index ``ix_result_patient_item (patient_id, item_code,
performed_at)``, newest first (a UNION ALL of one short range scan per item), and brings
each row's observations, open corrections and whether its imaging study may have
arrived, so its cost does not grow with the number of results stored."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    insert,
    select,
    update,
)

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
    DecisionRecord,
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
    ]
)
_OBS_FIELDS = (
    "o.seq, o.code, o.name, o.value_type, o.value_num, o.value_text, o.unit, o.ref_low, "
    "o.ref_high, o.ref_text, o.flag, o.loinc"
)
# Per prior result: its open correction requests; whether an imaging study that could be
# its study has arrived (same institution, and the report's Study Instance UID or else
# its accession number: the keys ``domain.imaging.study_matches_report`` links on, so
# "none arrived" is exact and the imaging service need not be asked); its observations
# (one JSON array of arrays, ordered by seq in Python). All evaluated only for the rows
# each LIMIT keeps.
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
_EXTRA = {
    "sqlite": f"{_OPEN_CORRECTIONS}, {_STUDY_ARRIVED},"  # noqa: S608
    f" (SELECT json_group_array(json_array({_OBS_FIELDS})) FROM observation o"
    " WHERE o.result_id = r.id) AS observations",
    "postgresql": f"{_OPEN_CORRECTIONS}, {_STUDY_ARRIVED},"  # noqa: S608
    f" (SELECT json_agg(json_build_array({_OBS_FIELDS})) FROM observation o"
    " WHERE o.result_id = r.id) AS observations",
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

    def patient_keys(self, n: int) -> str:
        sql = self._keys.get(n)
        if sql is None:
            m = self.mark
            cond = f"(i.kind = {m} AND i.assigner = {m} AND i.value_hash = {m})"
            sql = (
                "SELECT i.kind, i.assigner, i.value_hash, p.id, p.merged_into "
                "FROM patient_identifier i JOIN patient p ON p.id = i.patient_id WHERE "
                + " OR ".join([cond] * n)
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

    def rows(self, records: Sequence[Any], columns: Sequence[str]) -> list[Any]:
        """The bound values of ``records`` (dataclasses named like the columns), flat."""
        out: list[Any] = []
        at: Any = None
        bound: Any = None
        for r in records:
            if r.at is not at:  # the rows of one check share their time
                at, bound = r.at, self.timestamp(r.at)
            out.extend(bound if c == "at" else getattr(r, c) for c in columns)
        return out

    def timestamp(self, value: datetime) -> Any:
        """A bound timestamp as SQLAlchemy's ``UtcDateTime`` would send it: on SQLite the
        text form SQLAlchemy writes (naive UTC with microseconds, so that comparisons
        with other rows' text stay right), on PostgreSQL the aware datetime."""
        value = utc(value)
        if self.dialect == "sqlite":
            return f"{value:%Y-%m-%d %H:%M:%S}.{value.microsecond:06d}"
        return value

    def read_timestamp(self, value: Any) -> datetime:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return utc(value)


_SQL: dict[str, _Sql] = {}


def _sql_for(conn: Connection) -> _Sql:
    name = conn.dialect.name
    sql = _SQL.get(name)
    if sql is None:
        sql = _SQL[name] = _Sql(name)
    return sql


_VALUE_TYPES = {v.value: v for v in ValueType}
_CATEGORIES = {c.value: c for c in Category}
_STATUSES = {s.value: s for s in ResultStatus}


def _observations_of(raw: Any) -> tuple[ObservationValue, ...]:
    if raw is None:
        return ()
    rows = json.loads(raw) if isinstance(raw, str) else raw
    rows.sort(key=lambda o: o[0])
    return tuple(
        ObservationValue(
            code=o[1],
            name=o[2],
            value_type=_VALUE_TYPES[o[3]],
            value_num=None if o[4] is None else float(o[4]),
            value_text=o[5],
            unit=o[6],
            ref_low=None if o[7] is None else float(o[7]),
            ref_high=None if o[8] is None else float(o[8]),
            ref_text=o[9],
            flag=o[10],
            loinc=o[11],
        )
        for o in rows
    )


# ---------------------------------------------------------------- Core statements
_PRIOR_COLUMNS = [c for c in result.c if c.name not in ("content_hash", "source_message_id")]
_REMINDER_FIELDS = [f.name for f in fields(ReminderRecord)]
_AUDIT_FIELDS = [f.name for f in fields(AuditRecord)]
_CARD_FIELDS = [f.name for f in fields(CardRecord)]
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


class SqlRecognitionTx:
    """One transaction of the recognition service (implements ``RecognitionTx``)."""

    def __init__(self, conn: Connection, write_lock: Any = None, *, writable: bool) -> None:
        self._c = conn
        self._sql = _sql_for(conn)
        self._cursor: Any = None
        self._write_lock = write_lock
        self._writable = writable  # already a write transaction (``transaction()``)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Writes on this (reading) connection, committed at the end of the block, under
        the store's SQLite write lock."""
        if self._writable:
            yield
            return
        with self._write_lock or nullcontext():
            if self._c.in_transaction():
                yield
                self._c.commit()
            else:
                with self._c.begin():
                    yield

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
    def patient_by_keys(self, keys: Sequence[tuple[str, str, str]]) -> int | None:
        """The patient (survivor of merges) holding the first known identifier key."""
        if not keys:
            return None
        rows = self._rows(self._sql.patient_keys(len(keys)), [v for k in keys for v in k])
        found = {(r[0], r[1], r[2]): (r[3], r[4]) for r in rows}
        for key in keys:  # the caller orders keys strongest first
            if key in found:
                pid, merged_into = found[key]
                return self._survivor(pid, merged_into)
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

    def family_priors(
        self, patient_id: int, item_codes: Sequence[str], limit: int
    ) -> tuple[list[int] | None, dict[str, list[PriorRow]]]:
        """``patient_family`` and that family's ``priors`` (two statements)."""
        family = self.patient_family(patient_id)
        if family is None:
            return None, {}
        return family, self.priors(family, item_codes, limit)

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
        read_ts = self._sql.read_timestamp
        for r in rows:
            stored = StoredResult(
                id=r[0],
                patient_id=r[1],
                institution=r[2],
                report_no=r[3],
                local_code=r[4],
                local_name=r[5],
                item_code=r[6],
                category=_CATEGORIES[r[7]],
                status=_STATUSES[r[8]],
                performed_at=read_ts(r[9]),
                issued_at=read_ts(r[10]),
                version=r[11],
                mark_scope=r[12],
                mark_symbol=r[13],
                department=r[14],
                performer=r[15],
                signer=r[16],
                findings=r[17],
                conclusion=r[18],
                accession_number=r[19],
                study_uid=r[20],
                observations=_observations_of(r[23]),
            )
            out[r[6]].append(PriorRow(stored, int(r[21]), bool(r[22])))
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
    def record_check(self, rows: Sequence[ReminderRecord], audit: AuditRecord) -> list[int]:
        """``record_reminders`` and ``record_audit`` of one check."""
        self.record_audit(audit)
        return self.record_reminders(rows)

    def record_reminders(self, rows: Sequence[ReminderRecord]) -> list[int]:
        """One multi-row INSERT … RETURNING id. Row ids are handed out in VALUES order
        (SQLite rowids, PostgreSQL's sequence default), and RETURNING may list them in
        any order, so sorting them gives the rows' ids in the order given."""
        if not rows:
            return []
        sql = self._sql
        ids = self._rows(
            sql.insert("reminder", _REMINDER_FIELDS, len(rows), returning=True),
            sql.rows(rows, _REMINDER_FIELDS),
        )
        return sorted(int(i[0]) for i in ids)

    def reminder_institution(self, reminder_id: int) -> str | None:
        return self._c.execute(
            select(reminder.c.institution_code).where(reminder.c.id == reminder_id)
        ).scalar_one_or_none()

    def record_decision(self, row: DecisionRecord) -> int:
        values = {**asdict(row), "at": utc(row.at)}
        return int(self._c.execute(insert(decision).returning(decision.c.id), values).scalar_one())

    def record_audit(self, row: AuditRecord) -> None:
        sql = self._sql
        self._execute(
            sql.insert("audit_event", _AUDIT_FIELDS, 1, returning=False),
            sql.rows([row], _AUDIT_FIELDS),
        )

    def record_cards(self, cards: Sequence[CardRecord]) -> None:
        if cards:
            sql = self._sql
            self._execute(
                sql.insert("cds_card", _CARD_FIELDS, len(cards), returning=False),
                sql.rows(cards, _CARD_FIELDS),
            )

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
        # SQLite admits one writer at a time, and a writer that finds the database locked
        # waits in SQLite's busy handler, which sleeps 1, 2, 5 … 100 ms between tries;
        # under concurrent checks that turns a sub-millisecond write into tens of
        # milliseconds. This process's recognition writes queue on a lock instead (and
        # take their pooled connection only once they hold it).
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None

    @contextmanager
    def transaction(self) -> Iterator[SqlRecognitionTx]:
        with self._write_lock or nullcontext(), self._engine.begin() as conn:
            tx = SqlRecognitionTx(conn, writable=True)
            try:
                yield tx
            finally:
                tx.close()

    @contextmanager
    def reading(self) -> Iterator[SqlRecognitionTx]:
        with self._engine.connect() as conn:
            tx = SqlRecognitionTx(conn, self._write_lock, writable=False)
            try:
                yield tx
            finally:
                tx.close()
