"""Grow a synthesized database to a target number of results by copying its results
(with their versions and observations) under new report numbers, for the same patients —
a benchmark setup step for when ``huren synth`` to 10 million would take longer than
the machine has (it runs at ~1,000–3,300 results/s, depending on load):

    uv run huren synth --seed 1 --results 2000000 --patients 1250000   # part of the way
    uv run python -m bench.grow --to 10000000            # the rest, as SQL copies

Each copy keeps patient, institution, item and content, so a patient's history grows
with every copy: synthesize the patients of the target size (``--patients``, one per 8
results: 1.25 million for 10 million) so that it ends at the ~8 per patient of a full
synth; every index grows with the copies. Copies
are written with ``INSERT … SELECT`` in id ranges, one transaction per range; the
report number gets a suffix (``~c1``, ``~c2`` …) so ``(institution, report_no,
local_code)`` stays unique. ``synth`` writes results in time order, so when it is stopped
part of the way, ``--days`` moves the copies later (performed, issued, updated and
recorded times; the stored FHIR snapshot keeps the original's) to fill the period up to
today. The database is the one of HUREN_DATABASE_URL."""

from __future__ import annotations

import argparse
import time

from sqlalchemy import Connection, text

from huren.adapters.db import engine as db_engine
from huren.config import Settings

RESULT_COLS = (
    "patient_id, institution_code, department, local_code, local_name, item_code, category, "
    "status, performer, signer, findings, conclusion, "
    "accession_number, study_uid, mark_scope, mark_symbol, version, content_hash, comment"
)
RESULT_TIMES = ("performed_at", "issued_at", "updated_at")
OBS_COLS = (
    "seq, code, loinc, name, value_type, value_num, value_text, unit, ref_low, ref_high, "
    "ref_text, flag, comment"
)


def _max(conn: Connection, table: str, col: str = "id") -> int:
    return int(conn.execute(text(f"SELECT COALESCE(MAX({col}), 0) FROM {table}")).scalar_one())


def _later(conn: Connection, column: str, days: int) -> str:
    """SQL for ``column`` moved ``days`` later, in the stored form of each dialect (SQLite
    keeps UtcDateTime as 'YYYY-MM-DD HH:MM:SS+00:00' text)."""
    if conn.dialect.name == "postgresql":
        return f"{column} + interval '{days} days'"
    return f"strftime('%Y-%m-%d %H:%M:%S', {column}, '+{days} days') || '+00:00'"


def copy_range(
    conn: Connection, lo: int, hi: int, shift: int, obs_shift: int, tag: str, days: int
) -> None:
    """Copies results lo..hi (ids) to ids + shift, ``days`` later, with their versions and
    observations."""
    params = {"lo": lo, "hi": hi, "shift": shift, "oshift": obs_shift, "tag": tag}
    times = ", ".join(_later(conn, c, days) for c in RESULT_TIMES)
    conn.execute(
        text(
            f"INSERT INTO result (id, report_no, source_message_id, {RESULT_COLS}, "
            f"{', '.join(RESULT_TIMES)}) "
            f"SELECT id + :shift, report_no || :tag, NULL, {RESULT_COLS}, {times} FROM result "
            "WHERE id BETWEEN :lo AND :hi"
        ),
        params,
    )
    conn.execute(
        text(
            "INSERT INTO result_version (result_id, version, status, recorded_at, reason, snapshot) "
            f"SELECT result_id + :shift, version, status, {_later(conn, 'recorded_at', days)}, "
            "reason, snapshot FROM result_version WHERE result_id BETWEEN :lo AND :hi"
        ),
        params,
    )
    conn.execute(
        text(
            f"INSERT INTO observation (id, result_id, {OBS_COLS}) "
            f"SELECT id + :oshift, result_id + :shift, {OBS_COLS} FROM observation "
            "WHERE result_id BETWEEN :lo AND :hi"
        ),
        params,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", type=int, required=True, help="目标结果数")
    ap.add_argument("--chunk", type=int, default=200_000, help="每个事务复制的结果数")
    ap.add_argument(
        "--days",
        type=int,
        default=0,
        help="副本的时间后移天数（synth 中途停止时，用副本补上最近的时段）",
    )
    args = ap.parse_args()
    engine = db_engine.make_engine(Settings(start_mllp=False, start_dicom=False).database_url)
    db_engine.require_migrated(engine)
    with engine.connect() as conn:
        source = _max(conn, "result")
        count = int(conn.execute(text("SELECT COUNT(*) FROM result")).scalar_one())
    if count >= args.to:
        print(f"已有 {count:,} 条结果，不需复制")
        return
    t0 = time.perf_counter()
    copy_no = 0
    while count < args.to:
        copy_no += 1
        with engine.connect() as conn:
            shift = _max(conn, "result")
        lo = 1
        while lo <= source and count < args.to:
            hi = min(source, lo + min(args.chunk, args.to - count) - 1)
            with engine.begin() as conn:
                obs_shift = _max(conn, "observation")
                copy_range(conn, lo, hi, shift, obs_shift, f"~c{copy_no}", args.days * copy_no)
                count += int(
                    conn.execute(
                        text("SELECT COUNT(*) FROM result WHERE id BETWEEN :a AND :b"),
                        {"a": lo + shift, "b": hi + shift},
                    ).scalar_one()
                )
            if engine.dialect.name == "sqlite":
                # The background checkpointer (PASSIVE) never got the WAL reset while one
                # range followed another: it reached 23 GB beside a 23 GB database at 6.8M
                # results. Copy it back and empty it after every range instead.
                with engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            rate = (count - source) / (time.perf_counter() - t0)
            print(f"{count:,} 条结果（复制 {rate:,.0f} 条/秒）", flush=True)
            lo = hi + 1
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("result", "observation"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT MAX(id) FROM {table}))"
                    )
                )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    print(f"完成: {count:,} 条结果，用时 {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
