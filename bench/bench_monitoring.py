"""Monitoring queries over N recorded decisions (and as many reminders), on SQLite and —
when HUREN_TEST_DATABASE_URL is set — on PostgreSQL, each reported with the ratio to a
full-scan ``SELECT COUNT(*) FROM decision`` measured in the same run.

    uv run huren bench monitoring -- [--n 200000] [--backends sqlite,postgresql]

Rows are bulk-inserted (SQLite ``executemany`` in one transaction, PostgreSQL ``COPY``):
300 hospitals in 3 provinces / 10 cities, 8 departments × 20 clinicians each, 50 items,
12 months. The aggregates are then built once with the set-based full recompute (timed
and printed), and the dashboard's queries are timed: drill-down at every level, items,
monthly trend, outliers, declines by reason. The issue's target is ≤ 1 s per query at
N = 10 000 000 on both backends.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bench.harness import Suite
from huren.adapters.clock import FixedClock
from huren.adapters.db import engine as db_engine
from huren.adapters.db import masterdata as md
from huren.adapters.db import tables as t
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Principal, Role
from huren.domain.masterdata import (
    Category,
    Institution,
    InstitutionLevel,
    Item,
    Scope,
    ScopeKind,
)
from huren.domain.monitoring import Metric
from huren.services.monitoring import Level, Period

NOW = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)
START = datetime(2025, 6, 1, tzinfo=UTC)
PROVINCES = {"HE": "河北省", "SH": "上海市", "GS": "甘肃省"}
N_INST, N_DEPT, N_CLIN, N_ITEMS = 300, 8, 20, 50
REASONS = ["HB-1", "HB-2", "HB-3", "HB-4", "HB-5", "HB-6"]
OPERATOR = Principal(1, "bench", "基准测试", Role.OPERATOR)


def master_data() -> tuple[list[Scope], list[Institution], list[Item]]:
    scopes = [Scope("NATIONAL", "全国", ScopeKind.NATIONAL, member_scopes=frozenset(PROVINCES))]
    scopes += [Scope(c, n, ScopeKind.PROVINCE) for c, n in PROVINCES.items()]
    cities = [f"{p}-C{k}" for p in PROVINCES for k in range(3 if p != "SH" else 4)]
    scopes += [
        Scope(c, f"{PROVINCES[c[:2]]}第{c[-1]}市", ScopeKind.CITY, parent=c[:2]) for c in cities
    ]
    levels = [InstitutionLevel.TERTIARY, InstitutionLevel.SECONDARY]
    insts = [
        Institution(f"H{k:05d}", f"医院{k}", levels[k % 2], True, cities[k % len(cities)])
        for k in range(N_INST)
    ]
    items = [
        Item(f"IT{k:03d}", f"项目{k}", Category.LAB, timedelta(days=7), price_fen=1000 + k * 100)
        for k in range(N_ITEMS)
    ]
    return scopes, insts, items


def _rows(n: int, seed: int) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    rng = random.Random(seed)
    span = int((NOW - START).total_seconds())
    reminders, decisions = [], []
    for k in range(n):
        inst = rng.randrange(N_INST)
        at = START + timedelta(seconds=rng.randrange(span))
        dept = f"科室{rng.randrange(N_DEPT)}"
        clin = f"H{inst:05d}-D{rng.randrange(N_CLIN):02d}"
        item = f"IT{rng.randrange(N_ITEMS):03d}"
        code = f"H{inst:05d}"
        recognizable = 1 if rng.random() < 0.8 else 0
        reminders.append((at, "cds-hooks", code, dept, clin, item, recognizable))
        accepted = rng.random() < (0.2 if inst == 7 else 0.6)
        decisions.append(
            (
                k + 1,
                at + timedelta(minutes=1),
                code,
                dept,
                clin,
                item,
                "accepted" if accepted else "declined",
                "" if accepted else rng.choice(REASONS),
                1000 if accepted else 0,
            )
        )
    return reminders, decisions


def bulk_insert(c: Container, n: int, seed: int, chunk: int = 500_000) -> None:
    eng = c.engine
    pg = eng.dialect.name == "postgresql"
    done = 0
    while done < n:
        size = min(chunk, n - done)
        rems, decs = _rows(size, seed + done)
        raw = eng.raw_connection()
        try:
            cur = raw.cursor()
            if pg:
                with cur.copy(  # type: ignore[attr-defined]
                    "COPY reminder (at, channel, institution_code, department, clinician, item_code, recognizable, local_code, candidates, request_id) FROM STDIN"
                ) as cp:
                    for r in rems:
                        cp.write_row((*r, "", 1, ""))
                with cur.copy(  # type: ignore[attr-defined]
                    "COPY decision (reminder_id, at, institution_code, department, clinician, item_code, action, reason_code, saved_fen, reason_text, emr_text, patient_explanation) FROM STDIN"
                ) as cp:
                    for d in decs:
                        cp.write_row((d[0] + done, *d[1:], "", "", ""))
            else:
                fmt = "%Y-%m-%d %H:%M:%S.%f"
                cur.executemany(
                    "INSERT INTO reminder (at, channel, institution_code, department, clinician, item_code, recognizable, "
                    "local_code, candidates, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, '', 1, '')",
                    [(r[0].strftime(fmt), *r[1:]) for r in rems],  # type: ignore[attr-defined]
                )
                cur.executemany(
                    "INSERT INTO decision (reminder_id, at, institution_code, department, clinician, item_code, action, "
                    "reason_code, saved_fen, reason_text, emr_text, patient_explanation) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', '')",
                    [(d[0] + done, d[1].strftime(fmt), *d[2:]) for d in decs],  # type: ignore[attr-defined]
                )
            raw.commit()
        finally:
            raw.close()
        done += size
    if pg:
        with eng.begin() as conn:
            conn.execute(text("ANALYZE"))


def fresh(backend: str, workdir: Path) -> Container:
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        base = make_url(os.environ["HUREN_TEST_DATABASE_URL"])
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE IF EXISTS "huren_bench_monitoring" WITH (FORCE)'))
            conn.execute(text('CREATE DATABASE "huren_bench_monitoring"'))
        admin.dispose()
        url = base.set(database="huren_bench_monitoring").render_as_string(hide_password=False)
    db_engine.make_engine(url).dispose()
    db_engine.upgrade(url)
    from pydantic import SecretStr

    from huren.adapters.crypto import new_key

    settings = Settings(
        database_url=url,
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
    )
    c = build(settings, clock=FixedClock(NOW))
    scopes, insts, items = master_data()
    with c.engine.begin() as conn:
        md.write_scopes(conn, scopes)
        md.write_institutions(conn, insts)
        md.write_items(conn, items)
    c.catalog.invalidate()
    return c


def run(backend: str, n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c = fresh(backend, Path(tmp))
        t0 = time.perf_counter()
        bulk_insert(c, n, seed=20260615)
        t_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.monitoring.recompute()
        t_agg = time.perf_counter() - t0
        with c.engine.connect() as conn:
            agg_rows = conn.execute(text("SELECT COUNT(*) FROM monitoring_month")).scalar_one()
            coarse_rows = conn.execute(
                text("SELECT COUNT(*) FROM monitoring_month_inst")
            ).scalar_one()
        print(
            f"\n[{backend}] N = {n:,} decisions + {n:,} reminders: bulk insert {t_insert:.1f} s, "
            f"full aggregate build {t_agg:.1f} s → monitoring_month {agg_rows:,} rows, "
            f"monitoring_month_inst {coarse_rows:,} rows"
        )
        mon = c.monitoring
        year = Period(date(2025, 7, 1), date(2026, 6, 1))

        def count_all() -> int:
            with c.engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(t.decision)).scalar_one())

        inst = "H00012"
        dept = mon.drill(OPERATOR, Level.DEPARTMENT, year, institution=inst).rows[0].key
        suite = Suite(f"monitoring queries, {backend}, N = {n:,}", unit="queries")
        suite.run("COUNT(*) FROM decision (full scan)", count_all, repeat=repeat, baseline=True)
        suite.run(
            "drill: provinces, 12 months",
            lambda: mon.drill(OPERATOR, Level.PROVINCE, year),
            repeat=repeat,
        )
        suite.run(
            "drill: cities of 河北省",
            lambda: mon.drill(OPERATOR, Level.CITY, year, scope="HE"),
            repeat=repeat,
        )
        suite.run(
            "drill: institutions of a city",
            lambda: mon.drill(OPERATOR, Level.INSTITUTION, year, scope="HE-C0"),
            repeat=repeat,
        )
        suite.run(
            "drill: departments of one hospital",
            lambda: mon.drill(OPERATOR, Level.DEPARTMENT, year, institution=inst),
            repeat=repeat,
        )
        suite.run(
            "drill: clinicians of one department",
            lambda: mon.drill(OPERATOR, Level.CLINICIAN, year, institution=inst, department=dept),
            repeat=repeat,
        )
        suite.run("by item, all regions", lambda: mon.by_item(OPERATOR, year), repeat=repeat)
        suite.run("monthly trend, all regions", lambda: mon.trend(OPERATOR, year), repeat=repeat)
        suite.run("declines by reason", lambda: mon.declines(OPERATOR, year), repeat=repeat)
        suite.run(
            "outliers (institutions vs peers)",
            lambda: mon.outliers(OPERATOR, year, Metric.RECOGNITION_RATIO),
            repeat=repeat,
        )
        suite.run("incremental refresh, nothing new", mon.refresh, repeat=repeat)
        suite.print()
        slowest = max(m.p50 for m in suite.results if m is not suite.baseline)
        print(f"slowest monitoring query p50 = {slowest * 1e3:.1f} ms (target ≤ 1000 ms)")
        c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--n",
        type=int,
        default=200_000,
        help="decisions (and reminders) to generate; up to 10 000 000",
    )
    ap.add_argument("--repeat", type=int, default=5)
    default = "sqlite,postgresql" if os.environ.get("HUREN_TEST_DATABASE_URL") else "sqlite"
    ap.add_argument("--backends", default=default)
    args = ap.parse_args()
    for backend in args.backends.split(","):
        run(backend.strip(), args.n, args.repeat)


if __name__ == "__main__":
    main()
