"""Retrieval benchmark (issue 6): one patient's full history looked up by 居民身份证 —
keyed-hash lookup, the list of every shared result in reach, and the audit rows written in
the same transaction (one per result shown) — and one full report opened, each against a
bare primary-key read of one ``result`` row measured in the same run.

Small by default (a temporary SQLite database with 20 000 synthetic results; one patient
is given a history of ``--history`` results from institutions of one province):

    uv run huren bench retrieval
    uv run huren bench retrieval -- --results 200000 --history 500 --repeat 300

At 10 million results (synthesise once, then point the bench at the database; the same
HUREN_IDENTIFIER_* keys must be set for both, since the bench decrypts a patient's 身份证):

    export HUREN_DATABASE_URL=sqlite:///./var/bench10m.db   # or postgresql+psycopg://…
    export HUREN_IDENTIFIER_HASH_KEY=… HUREN_IDENTIFIER_ENCRYPTION_KEY=… HUREN_TOKEN_SIGNING_KEY=…
    uv run huren db upgrade && uv run huren synth --seed 1 --results 10000000
    uv run huren bench retrieval -- --use-existing --history 500

The history patient is made by re-pointing ``--history`` existing results to one patient
(a benchmark setup step, not something the platform does)."""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, text, update

from bench.world import pct, prepare, settings_for
from huren.adapters.db.tables import audit_event, patient_identifier, result
from huren.bootstrap import Container, build
from huren.domain.accounts import Principal, Role
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.sharing import RateLimit, sharing_partners
from huren.services.ratelimit import MemoryRateCounters
from huren.services.retrieval import RetrievalService


def history_patient(c: Container, rng: random.Random, size: int) -> tuple[str, str, int]:
    """(clinician's institution, the patient's 身份证, results listed): a patient with a
    national ID gets ``size`` results from institutions sharing with the clinician's."""
    catalog = c.catalog.get()
    with c.engine.begin() as conn:
        row = conn.execute(
            select(patient_identifier.c.patient_id, patient_identifier.c.value_enc)
            .where(patient_identifier.c.kind == str(IdentifierKind.NATIONAL_ID))
            .order_by(patient_identifier.c.id)
            .limit(1)
            .offset(rng.randrange(50))
        ).one()
        pid, enc = int(row.patient_id), str(row.value_enc)
        first = (
            conn.execute(
                select(result.c.institution_code).where(result.c.patient_id == pid).limit(1)
            ).scalar_one_or_none()
            or sorted(catalog.institutions)[0]
        )
        partners = sorted(sharing_partners(catalog.graph, first))
        ids = list(
            conn.execute(
                select(result.c.id)
                .where(result.c.institution_code.in_(partners))
                .order_by(result.c.id)
                .limit(size * 4)
            ).scalars()
        )
        chosen = rng.sample(ids, min(size, len(ids)))
        conn.execute(update(result).where(result.c.id.in_(chosen)).values(patient_id=pid))
    return first, c.vault.decrypt(enc), len(chosen)


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter_ns()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=int, default=20_000)
    ap.add_argument("--history", type=int, default=200, help="该患者的结果数")
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--use-existing", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        c = build(settings_for(args, Path(tmp)))
        prepare(c, args)
        institution, national_id, size = history_patient(c, rng, args.history)
        doctor = Principal(1, "bench", "压测医师", Role.CLINICIAN, institution=institution)
        ident = PatientIdentifier(IdentifierKind.NATIONAL_ID, national_id)
        svc = c.sharing.retrieval
        svc._limiter.rule = type(svc._limiter.rule)(limit=10**9, window=svc._limiter.rule.window)
        # The same lookups with the rate limit counted in this process instead of the
        # database (what it was before the limits were shared by every server process).
        in_process = RetrievalService(
            c.sharing.retrieval._store,
            c.catalog,
            c.vault,
            c.clock,
            svc.purposes,
            svc._limiter.rule,
            counters=MemoryRateCounters(),
        )
        limit = RateLimit(limit=30, window=timedelta(minutes=1))
        accounts = itertools.cycle(range(1000))

        with c.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(result)).scalar_one()
            max_id = conn.execute(select(func.max(result.c.id))).scalar_one()
        listed = len(svc.search(doctor, ident, "treatment").results)
        one_id = svc.search(doctor, ident, "treatment").results[0].id

        def pk_read() -> None:
            with c.engine.connect() as conn:
                conn.execute(
                    text("SELECT * FROM result WHERE id = :id"), {"id": rng.randint(1, max_id)}
                ).first()

        def history() -> None:
            svc.search(doctor, ident, "treatment")

        def history_in_process_limit() -> None:
            in_process.search(doctor, ident, "treatment")

        def report() -> None:
            svc.open_report(doctor, one_id, "treatment")

        def count_one_lookup() -> None:
            c.rate_counters.hit(f"bench:{next(accounts)}", c.clock.now(), limit)

        for fn in (pk_read, history, history_in_process_limit, report, count_one_lookup):
            timed(fn, 10)  # warm-up
        rows = {
            "主键读取一行 result（基线）": timed(pk_read, args.repeat * 5),
            f"调阅完整历史（{listed} 条，含审计写入）": timed(history, args.repeat),
            "  同上，限流计数在进程内": timed(history_in_process_limit, args.repeat),
            "打开一份完整报告（含审计写入）": timed(report, args.repeat),
            "限流计数一次（数据库，跨进程共享）": timed(count_one_lookup, args.repeat * 5),
        }
        with c.engine.connect() as conn:
            audits = conn.execute(select(func.count()).select_from(audit_event)).scalar_one()
        base = statistics.median(next(iter(rows.values())))
        print(
            f"\n{c.engine.dialect.name}: {total} 条结果；为该患者追加 {size} 条，医师可调阅其 {listed} 条；"
            f"审计行 {audits}"
        )
        print(f"{'操作':<36}{'p50 ms':>10}{'p99 ms':>10}{'÷ 基线 p50':>12}")
        for name, values in rows.items():
            p50 = statistics.median(values)
            print(f"{name:<30}{p50:>10.3f}{pct(values, 99):>10.3f}{p50 / base:>12.1f}")
        c.close()


if __name__ == "__main__":
    main()
