"""Bulk loading for the synthetic world and benchmarks (``huren synth``, ``huren demo``).

SQLite: the DB-API ``executemany`` on one connection, large transactions, values
converted with the column types' own SQLAlchemy bind processors (so what is stored is
exactly what SQLAlchemy would store), and PRAGMAs for a bulk load (synchronous OFF, a
large page cache, temp tables in memory) for the duration of the load only.

PostgreSQL: ``COPY … FROM STDIN`` through psycopg's copy API, one COPY per table and
batch, then the id sequences are moved past the explicit ids that were loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, func, select
from sqlalchemy.engine import Dialect

from huren.adapters.db import masterdata as md
from huren.adapters.db import tables as t
from huren.adapters.db.engine import is_sqlite
from huren.domain.masterdata import Category
from huren.domain.results import ResultStatus
from huren.services.synth import Batch, HistoryResult, HistoryVersion, Row, SynthWorld

TABLES: dict[str, Table] = {
    "patient": t.patient,
    "patient_identifier": t.patient_identifier,
    "result": t.result,
    "result_version": t.result_version,
    "observation": t.observation,
    "reminder": t.reminder,
    "decision": t.decision,
}

# Tables whose explicit ids need the sequence moved on PostgreSQL.
SEQUENCED = ("patient", "result", "patient_identifier", "observation", "reminder", "decision")


def write_master_world(engine: Engine, world: SynthWorld, now: datetime) -> None:
    """The world's master data in one transaction, through the shared master-data writers."""
    rec = world.records
    with engine.begin() as c:
        existing = set(c.scalars(select(t.scope.c.code)))
        md.write_scopes(c, [s for s in rec.scopes if s.code not in existing])
        # memberships of scopes already present (e.g. NATIONAL written before) stay as they are
        md.write_institutions(c, rec.institutions)
        md.insert_rows(
            c,
            t.department,
            [
                {"institution_code": d.institution, "code": d.code, "name": d.name}
                for d in world.departments
            ],
        )
        existing_items = set(c.scalars(select(t.item.c.code)))
        md.write_items(c, [i for i in rec.items if i.code not in existing_items])
        for version in rec.item_lists:
            md.write_item_list(c, version, now)
        md.write_qualifications(c, rec.qualifications, now)
        md.write_negative_reasons(c, rec.negative_reasons)
        existing_symbols = set(
            c.execute(select(t.mark_symbol.c.scope_code, t.mark_symbol.c.category))
        )
        md.write_mark_symbols(
            c,
            [
                s
                for s in rec.symbols
                if (s.scope, s.category.value if s.category else "") not in existing_symbols
            ],
        )
        md.write_code_maps(c, rec.code_maps, now)


def _processors(
    table: Table, columns: Sequence[str], dialect: Dialect
) -> list[Callable[[Any], Any] | None]:
    return [table.c[name].type.bind_processor(dialect) for name in columns]


class SqliteBulkSink:
    """Implements ``huren.services.synth.SynthSink`` for SQLite."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._raw = engine.raw_connection()
        dbapi = self._raw.driver_connection
        assert dbapi is not None
        self._db: Any = dbapi
        cur = self._db.cursor()
        # For the load only: a crash mid-load may lose the load, never earlier data
        # (the file stays consistent; WAL is kept).
        cur.execute("PRAGMA synchronous=OFF")
        cur.execute("PRAGMA cache_size=-262144")  # 256 MiB
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._procs: dict[tuple[str, tuple[str, ...]], list[Callable[[Any], Any] | None]] = {}

    def write_master(self, world: SynthWorld, now: datetime) -> None:
        write_master_world(self.engine, world, now)

    def next_id(self, table: str) -> int:
        cur = self._db.cursor()
        cur.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {TABLES[table].name}")  # noqa: S608 - table name from a fixed map
        value = int(cur.fetchone()[0])
        cur.close()
        return value

    def write_rows(self, table: str, columns: tuple[str, ...], rows: Sequence[Row]) -> None:
        if not rows:
            return
        key = (table, columns)
        sql = self._sql.get(key)
        if sql is None:
            cols = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            sql = self._sql[key] = f"INSERT INTO {table} ({cols}) VALUES ({marks})"  # noqa: S608 - fixed names
            self._procs[key] = _processors(TABLES[table], columns, self.engine.dialect)
        procs = self._procs[key]
        active = [(n, p) for n, p in enumerate(procs) if p is not None]
        if active:
            converted = []
            for row in rows:
                values = list(row)
                for n, p in active:
                    if values[n] is not None:
                        values[n] = p(values[n])
                converted.append(values)
            self._db.executemany(sql, converted)
        else:
            self._db.executemany(sql, rows)

    def write(self, batch: Batch) -> None:
        for table, columns, rows in batch.tables():
            self.write_rows(table, columns, rows)
        self._db.commit()

    def finish(self) -> None:
        cur = self._db.cursor()
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("ANALYZE")
        cur.close()
        self._db.commit()
        self._raw.close()


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


class PostgresBulkSink:
    """Implements ``huren.services.synth.SynthSink`` for PostgreSQL with COPY."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._raw = engine.raw_connection()
        self._db: Any = self._raw.driver_connection

    def write_master(self, world: SynthWorld, now: datetime) -> None:
        write_master_world(self.engine, world, now)

    def next_id(self, table: str) -> int:
        with self.engine.connect() as c:
            return int(c.scalar(select(func.coalesce(func.max(TABLES[table].c.id), 0))) or 0) + 1

    def write_rows(self, table: str, columns: tuple[str, ...], rows: Sequence[Row]) -> None:
        if not rows:
            return
        cols = ", ".join(columns)
        with self._db.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            json_cols = [
                n
                for n, name in enumerate(columns)
                if name in ("snapshot", "quality", "payload", "external_report")
            ]
            if json_cols:
                for row in rows:
                    values = list(row)
                    for n in json_cols:
                        values[n] = _copy_value(values[n])
                    copy.write_row(values)
            else:
                for row in rows:
                    copy.write_row(row)

    def write(self, batch: Batch) -> None:
        for table, columns, rows in batch.tables():
            self.write_rows(table, columns, rows)
        self._db.commit()

    def finish(self) -> None:
        with self._db.cursor() as cur:
            for table in SEQUENCED:
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - fixed names
                    f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))"
                )
            cur.execute("ANALYZE")
        self._db.commit()
        self._raw.close()


class SqlSynthHistory:
    """Implements ``huren.services.synth.SynthHistory``: the stored results read back a
    range of patients at a time, through ``ix_result_patient_item``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def patient_span(self) -> tuple[int, int]:
        p = t.patient.c
        with self.engine.connect() as c:
            lo, hi = c.execute(select(func.min(p.id), func.max(p.id))).one()
        return (int(lo), int(hi)) if lo is not None else (1, 0)

    def results_of_patients(self, first: int, last: int) -> list[HistoryResult]:
        r, v = t.result.c, t.result_version.c
        q = (
            select(
                r.id, r.patient_id, r.institution_code, r.item_code, r.category, r.report_no,
                r.local_code, r.local_name, r.department, r.performed_at, r.issued_at,
                r.mark_scope, r.mark_symbol, r.status, r.version,
            )
            .where(r.patient_id.between(first, last), r.item_code.is_not(None))
            .order_by(r.patient_id, r.item_code, r.performed_at, r.id)
        )  # fmt: skip
        with self.engine.connect() as c:
            rows = c.execute(q).all()
            revised = [x.id for x in rows if x.version > 1]
            versions: dict[int, list[HistoryVersion]] = {}
            for n in range(0, len(revised), 500):
                for x in c.execute(
                    select(v.result_id, v.version, v.status, v.recorded_at)
                    .where(v.result_id.in_(revised[n : n + 500]))
                    .order_by(v.result_id, v.version)
                ):
                    versions.setdefault(x.result_id, []).append(
                        HistoryVersion(x.version, ResultStatus(x.status), x.recorded_at)
                    )
        return [
            HistoryResult(
                id=x.id,
                patient_id=x.patient_id,
                institution=x.institution_code,
                item_code=x.item_code,
                category=Category(x.category),
                report_no=x.report_no,
                local_code=x.local_code,
                local_name=x.local_name,
                department=x.department,
                performed_at=x.performed_at,
                issued_at=x.issued_at,
                mark_scope=x.mark_scope,
                mark_symbol=x.mark_symbol,
                versions=tuple(versions[x.id])
                if x.id in versions
                else (HistoryVersion(x.version, ResultStatus(x.status), x.issued_at),),
            )
            for x in rows
        ]

    def snapshots(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        v = t.result_version.c
        out: dict[tuple[int, int], Any] = {}
        with self.engine.connect() as c:
            for n in range(0, len(keys), 500):
                chunk = list(keys[n : n + 500])
                q = select(v.result_id, v.version, v.snapshot).where(
                    v.result_id.in_([k[0] for k in chunk])
                )
                wanted = set(chunk)
                for x in c.execute(q):
                    if (x.result_id, x.version) in wanted:
                        out[(x.result_id, x.version)] = x.snapshot
        return out


def bulk_sink(engine: Engine) -> SqliteBulkSink | PostgresBulkSink:
    """The bulk writer for the engine's backend."""
    if is_sqlite(str(engine.url)):
        return SqliteBulkSink(engine)
    return PostgresBulkSink(engine)


def raw_insert_rate_probe(engine: Engine, rows: int) -> None:
    """The baseline for ``bench/bench_synth.py``: ``rows`` plain rows into a scratch table
    with the backend's fastest path (executemany / COPY), no generation."""
    payload = [(n, f"row {n}", float(n)) for n in range(rows)]
    raw = engine.raw_connection()
    db: Any = raw.driver_connection
    try:
        if is_sqlite(str(engine.url)):
            db.execute("CREATE TEMP TABLE IF NOT EXISTS bench_probe (a INTEGER, b TEXT, c REAL)")
            db.execute("PRAGMA synchronous=OFF")
            db.executemany("INSERT INTO bench_probe VALUES (?, ?, ?)", payload)
            db.commit()
            db.execute("DROP TABLE bench_probe")
        else:
            with db.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS bench_probe (a bigint, b text, c float8)"
                )
                with cur.copy("COPY bench_probe (a, b, c) FROM STDIN") as copy:
                    for row in payload:
                        copy.write_row(row)
                cur.execute("DROP TABLE bench_probe")
            db.commit()
    finally:
        raw.close()
