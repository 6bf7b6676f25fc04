"""Copy a benchmark database from SQLite to PostgreSQL — a setup step for the 10-million
benchmarks on PostgreSQL, where ``huren synth`` would take hours (it writes through the
intake service, ~1,000 results/s on PostgreSQL):

    export HUREN_IDENTIFIER_HASH_KEY=… HUREN_IDENTIFIER_ENCRYPTION_KEY=…   # as for the source
    HUREN_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/bench10m uv run huren db upgrade
    uv run python -m bench.copy_to_pg --source sqlite:///var/bench.db \\
        --target postgresql+psycopg://postgres@127.0.0.1:5432/bench10m
    HUREN_DATABASE_URL=postgresql+psycopg://…/bench10m uv run python -m bench.grow --to 10000000

The target must be migrated and hold no results. Every table of the schema is streamed
in foreign-key order with ``COPY … FROM STDIN`` (rows as SQLite stores them: timestamps
as ISO text, booleans as 0/1, JSON as text — PostgreSQL parses each on the way in);
foreign-key triggers are off for the copy (``session_replication_role = replica``: the
source already satisfied them), the identity sequences are moved past the copied ids and
the tables analysed at the end. The identifier keys are not needed (hashes and
ciphertexts are copied as they are) but the bench that reads the copy needs the same
keys as the source."""

from __future__ import annotations

import argparse
import sqlite3
import time
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from huren.adapters.db.schema import metadata

BATCH = 20_000


def _dsn(url: str) -> str:
    u = make_url(url)
    parts = [f"dbname={u.database}", f"host={u.host or '127.0.0.1'}", f"port={u.port or 5432}"]
    if u.username:
        parts.append(f"user={u.username}")
    if u.password:
        parts.append(f"password={u.password}")
    return " ".join(parts)


def copy_table(src: sqlite3.Connection, dst: psycopg.Connection[Any], name: str) -> int:
    columns = [c.name for c in metadata.tables[name].columns]
    cols = ", ".join(f'"{c}"' for c in columns)
    read = src.execute(f"SELECT {cols} FROM {name}")
    n = 0
    with dst.cursor() as cur, cur.copy(f"COPY {name} ({cols}) FROM STDIN") as copy:
        while rows := read.fetchmany(BATCH):
            for row in rows:
                copy.write_row(row)
            n += len(rows)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="SQLite 数据库 URL（sqlite:///…）")
    ap.add_argument("--target", required=True, help="PostgreSQL 数据库 URL（已迁移、无结果）")
    args = ap.parse_args()
    path = make_url(args.source).database
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with psycopg.connect(_dsn(args.target)) as dst:
        if dst.execute("SELECT count(*) FROM result").fetchone() != (0,):
            raise SystemExit("目标库已有结果: 请使用新建并迁移后的空库")
        t0 = time.perf_counter()
        dst.execute("SET session_replication_role = replica")
        tables = [t.name for t in metadata.sorted_tables]
        # Master data the migration seeded is replaced by the source's.
        dst.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        for name in tables:
            t = time.perf_counter()
            n = copy_table(src, dst, name)
            if n:
                print(f"  {name}: {n:,} 行，{time.perf_counter() - t:.0f} 秒", flush=True)
        for name in tables:
            id_col = metadata.tables[name].c.get("id")
            if id_col is not None and id_col.autoincrement is True:
                dst.execute(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'),"
                    f" GREATEST((SELECT max(id) FROM {name}), 1))"
                )
        dst.commit()
        dst.autocommit = True
        dst.execute("ANALYZE")
        print(f"完成，用时 {time.perf_counter() - t0:.0f} 秒")


if __name__ == "__main__":
    main()
