"""Recognition check benchmark (issue 5, performance): in-process p50/p99 of a 5-item
check, and over HTTP the CDS Hooks ``order-select`` throughput against a trivial endpoint
(``GET /cds-services``, no database) on the same server stack, at 16 and 64 concurrent
clients, with the ratios side by side.

Small by default (a temporary SQLite database with 20 000 synthetic results):

    uv run python bench/bench_recognition.py
    uv run python bench/bench_recognition.py --results 200000 --checks 5000

At 10 million results (synthesise once, then point the bench at the database; the same
HUREN_IDENTIFIER_* keys must be set for both, since the bench reads patients' identifiers):

    export HUREN_DATABASE_URL=sqlite:///./var/bench10m.db   # or postgresql+psycopg://…
    export HUREN_IDENTIFIER_HASH_KEY=… HUREN_IDENTIFIER_ENCRYPTION_KEY=… HUREN_TOKEN_SIGNING_KEY=…
    uv run huren db upgrade && uv run huren synth --seed 1 --results 10000000
    uv run python bench/bench_recognition.py --use-existing

Each check writes its reminder rows and an audit row, as in production."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import func, select

from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import result
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Principal, Role
from huren.domain.identity import IdentifierKind
from huren.domain.recognition import StudyCompleteness, StudyState
from huren.domain.results import StoredResult
from huren.services.accounts import NewAccount
from huren.services.recognition import CheckRequest, PatientRef, StudyStates

NATIONAL_ID_SYSTEM = "https://huren.example/fhir/sid/national-id"


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def settings_for(args: argparse.Namespace, tmp: Path) -> Settings:
    if args.use_existing:
        return Settings(start_mllp=False, start_dicom=False)
    return Settings(
        database_url=f"sqlite:///{tmp / 'bench.db'}",
        data_dir=tmp / "data",
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
        start_mllp=False,
        start_dicom=False,
    )


def prepare(c: Container, args: argparse.Namespace) -> None:
    if args.use_existing:
        db_engine.require_migrated(c.engine)
        return
    from huren.cli.synth import fill_demo_database

    db_engine.upgrade(c.settings.database_url)
    t0 = time.perf_counter()
    fill_demo_database(c, seed=args.seed, institutions=60, results=args.results)
    print(f"合成 {args.results} 条结果用时 {time.perf_counter() - t0:.1f} s")


def sample_orders(
    c: Container, rng: random.Random, n: int
) -> tuple[str, list[tuple[int, tuple[str, ...]]]]:
    """An ordering institution and ``n`` (patient id, 5 unified codes) orders: the
    patient's own items first (so priors exist), padded with other items."""
    catalog = c.catalog.get()
    with c.engine.connect() as conn:
        max_id = conn.execute(select(func.max(result.c.id))).scalar_one() or 0
        picks: list[tuple[int, tuple[str, ...]]] = []
        while len(picks) < n and max_id:
            rid = rng.randint(1, max_id)
            pid = conn.execute(
                select(result.c.patient_id).where(result.c.id == rid)
            ).scalar_one_or_none()
            if pid is None:
                continue
            own = list(
                conn.execute(
                    select(result.c.item_code)
                    .where(result.c.patient_id == pid, result.c.item_code.is_not(None))
                    .distinct()
                    .limit(5)
                ).scalars()
            )
            pad = [code for code in rng.sample(sorted(catalog.items), 8) if code not in own]
            picks.append((int(pid), tuple((own + pad)[:5])))
    insts = sorted(catalog.institutions)
    return insts[rng.randrange(len(insts))], picks


class TimedStudies:
    """The node's study-completeness source (``ImagingService.study_states``), timed: each
    check looks its imaging priors up inside the timed path; this records how long that
    lookup took and what it answered."""

    def __init__(self, inner: StudyStates) -> None:
        self.inner = inner
        self.ms: list[float] = []  # every lookup, for the share of the check's time
        self.with_imaging_ms: list[float] = []  # lookups that had imaging priors to judge
        self.answers: dict[StudyCompleteness, int] = dict.fromkeys(StudyCompleteness, 0)

    def study_states(self, results: Sequence[StoredResult]) -> Mapping[int, StudyState]:
        t = time.perf_counter_ns()
        out = self.inner.study_states(results)
        ms = (time.perf_counter_ns() - t) / 1e6
        self.ms.append(ms)
        if results:
            self.with_imaging_ms.append(ms)
        for r in results:
            self.answers[out.get(r.id, StudyState()).completeness] += 1
        return out


def bench_in_process(
    c: Container, institution: str, orders: list[Any], checks: int
) -> dict[str, float]:
    principal = Principal(1, "bench", "压测医师", Role.CLINICIAN, institution=institution)
    svc = c.recognition
    studies = TimedStudies(svc.studies)
    svc.studies = studies

    def one(i: int) -> float:
        pid, codes = orders[i % len(orders)]
        t = time.perf_counter_ns()
        svc.check(CheckRequest(principal, PatientRef(patient_id=pid), codes, channel="rest"))
        return (time.perf_counter_ns() - t) / 1e6

    for i in range(min(200, checks)):
        one(i)
    studies.ms.clear()
    studies.with_imaging_ms.clear()
    studies.answers = dict.fromkeys(StudyCompleteness, 0)
    times = [one(i) for i in range(checks)]
    svc.studies = studies.inner
    a = studies.answers
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": pct(times, 99),
        "mean_ms": statistics.fmean(times),
        "studies_p50_ms": statistics.median(studies.with_imaging_ms or [0.0]),
        "studies_p99_ms": pct(studies.with_imaging_ms or [0.0], 99),
        "studies_lookups": float(len(studies.with_imaging_ms)),
        "studies_share": sum(studies.ms) / sum(times),
        "imaging_priors": float(sum(a.values())),
        "complete": float(a[StudyCompleteness.COMPLETE]),
        "incomplete": float(a[StudyCompleteness.INCOMPLETE]),
        "unknown": float(a[StudyCompleteness.UNKNOWN]),
    }


def hook_body(national_id: str, codes: tuple[str, ...]) -> dict[str, Any]:
    entries = [
        {
            "resource": {
                "resourceType": "ServiceRequest",
                "id": f"sr-{n}",
                "status": "draft",
                "intent": "order",
                "code": {
                    "coding": [
                        {"system": "https://huren.example/fhir/CodeSystem/item", "code": code}
                    ]
                },
                "subject": {"reference": "Patient/p1"},
            }
        }
        for n, code in enumerate(codes)
    ]
    return {
        "hook": "order-select",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/bench",
            "patientId": "p1",
            "selections": [f"ServiceRequest/sr-{n}" for n in range(len(codes))],
            "draftOrders": {"resourceType": "Bundle", "entry": entries},
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": national_id}],
            }
        },
    }


async def load(base: str, make: Any, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                method, url, kw = make()
                t = time.perf_counter()
                r = await client.request(method, url, **kw)
                latencies.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p99_ms": pct(latencies, 99),
        "errors": errors,
    }


def start_server(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HUREN_DATABASE_URL": settings.database_url,
        "HUREN_IDENTIFIER_HASH_KEY": settings.identifier_hash_key.get_secret_value(),
        "HUREN_IDENTIFIER_ENCRYPTION_KEY": settings.identifier_encryption_key.get_secret_value(),
        "HUREN_TOKEN_SIGNING_KEY": settings.token_signing_key.get_secret_value(),
        "HUREN_START_MLLP": "false",
        "HUREN_START_DICOM": "false",
    }
    exe = shutil.which("huren") or str(Path(sys.executable).parent / "huren")
    proc = subprocess.Popen(
        [exe, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/cds-services", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("服务器未能启动")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--results", type=int, default=20_000, help="合成结果数（临时库）")
    ap.add_argument(
        "--use-existing", action="store_true", help="使用 HUREN_DATABASE_URL 的现有数据库"
    )
    ap.add_argument("--checks", type=int, default=2000, help="进程内检查次数")
    ap.add_argument("--seconds", type=float, default=5.0, help="每轮 HTTP 压测时长（秒）")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seed", type=int, default=20260615)
    ap.add_argument("--no-http", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmpdir:
        settings = settings_for(args, Path(tmpdir))
        c = build(settings)
        prepare(c, args)
        with c.engine.connect() as conn:
            n_results = conn.execute(select(func.count()).select_from(result)).scalar_one()
        institution, orders = sample_orders(c, rng, 500)
        print(
            f"数据库 {c.engine.dialect.name}，结果 {n_results} 条；开单机构 {institution}；5 项医嘱"
        )
        ip = bench_in_process(c, institution, orders, args.checks)
        print(
            f"进程内 check（5 项）: p50 {ip['p50_ms']:.2f} ms  p99 {ip['p99_ms']:.2f} ms  "
            f"均值 {ip['mean_ms']:.2f} ms  （{args.checks} 次）"
        )
        print(
            "  其中影像完整性查询（ImagingService.study_states，"
            f"有影像既往结果的 {ip['studies_lookups']:.0f} 次）: p50 {ip['studies_p50_ms']:.2f} ms"
            f"  p99 {ip['studies_p99_ms']:.2f} ms；全部查询占 check 用时 {ip['studies_share']:.0%}；"
            f"影像既往结果 {ip['imaging_priors']:.0f} 份：完整 {ip['complete']:.0f}"
            f" / 不完整 {ip['incomplete']:.0f} / 未知 {ip['unknown']:.0f}"
        )
        if args.no_http:
            return
        account = c.accounts.create_account(
            NewAccount(
                f"bench-his-{uuid.uuid4().hex[:6]}",
                "压测接口",
                Role.INTEGRATION,
                institution=institution,
            ),
            generate_password=False,
        )
        token = c.accounts.issue_token(account.account.principal()).access_token
        ids: list[tuple[str, tuple[str, ...]]] = []
        for pid, codes in orders[:200]:
            nid = next(
                (
                    i.value
                    for i in c.results.patient_identifiers(pid)
                    if i.kind is IdentifierKind.NATIONAL_ID
                ),
                None,
            )
            if nid:
                ids.append((nid, codes))
        if not ids:
            print("样本患者没有居民身份证号，跳过 HTTP 压测")
            return
        c.close()
        port = free_port()
        server = start_server(settings, port)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {token}"}

        def trivial() -> tuple[str, str, dict[str, Any]]:
            return "GET", "/cds-services", {}

        def order_select() -> tuple[str, str, dict[str, Any]]:
            nid, codes = ids[rng.randrange(len(ids))]
            return (
                "POST",
                "/cds-services/huren-recognition-order-select",
                {"json": hook_body(nid, codes), "headers": auth},
            )

        try:
            asyncio.run(load(base, order_select, 4, 1.0))  # warm up
            print(f"HTTP（uvicorn 单进程），每轮 {args.seconds:g} 秒:")
            for conc in args.concurrency:
                t = asyncio.run(load(base, trivial, conc, args.seconds))
                o = asyncio.run(load(base, order_select, conc, args.seconds))
                print(
                    f"  并发 {conc:>3}: 简单端点 {t['rps']:7.0f} req/s (p99 {t['p99_ms']:.1f} ms) | "
                    f"order-select {o['rps']:7.0f} req/s (p50 {o['p50_ms']:.1f} ms, "
                    f"p99 {o['p99_ms']:.1f} ms, 错误 {o['errors']:.0f}) | "
                    f"比值 {o['rps'] / t['rps']:.0%}"
                )
        finally:
            server.terminate()
            server.wait(timeout=20)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
