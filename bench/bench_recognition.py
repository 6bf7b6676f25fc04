"""Recognition check benchmark (issue 5, performance): in-process p50/p99 of a 5-item
check, and over HTTP the CDS Hooks ``order-select`` throughput against a trivial endpoint
on the same server stack, at 16 and 64 concurrent clients, with the ratios side by side.

The trivial endpoint (the fair baseline): ``POST /bench/trivial`` receiving the very same
JSON body and headers as ``order-select``, reading the body and answering a constant
``{"cards": []}`` — no authentication, no parsing, no database. It is added by this bench
to the app that ``huren serve`` builds (``create_app`` with all routers and the problem
handlers), first in its routing table (as order-select's router is), run by uvicorn
with the same settings as ``cli/server.run_server``, in one server process.
``GET /cds-services`` (discovery, a constant dict through FastAPI's
response serialisation) is measured too, as a second reference.

Small by default (a temporary SQLite database with 20 000 synthetic results):

    uv run python bench/bench_recognition.py
    uv run python bench/bench_recognition.py --results 200000 --checks 5000

At 10 million results (synthesise once, then point the bench at the database; the same
HUREN_IDENTIFIER_* keys must be set for both, since the bench reads patients' identifiers):

    export HUREN_DATABASE_URL=sqlite:///./var/bench10m.db   # or postgresql+psycopg://…
    export HUREN_IDENTIFIER_HASH_KEY=… HUREN_IDENTIFIER_ENCRYPTION_KEY=… HUREN_TOKEN_SIGNING_KEY=…
    uv run huren db upgrade
    uv run huren synth --seed 1 --results 2000000 --patients 1250000 --no-activity
    uv run python -m bench.grow --to 10000000      # synth runs at 1,000–3,300 results/s

(``--patients``: grow copies results for the same patients, so synthesize as many
patients as a 10M world has — one per 8 results — or each patient's history comes out
five times as long as in a real one, and each check reads five times as many priors.)
    uv run python bench/bench_recognition.py --use-existing

Patients are sampled from stored results (so they have priors); each order is five
unified item codes, the patient's own items first. ``--profile`` prints a cProfile of the
in-process checks; the statements each check sends to the database are counted, and on
PostgreSQL its round trips to the server (from libpq's protocol trace: the messages after
which the client waits for the server — a simple Query such as psycopg's BEGIN, a Sync
ending a statement or a pipeline's segment, a pipeline's Flush).
Each check writes its reminder rows and an audit row, as in production (over HTTP also
its cards' rows), committed before it answers.

Between the two, the service call is measured in-process as the server's worker thread
runs it (authentication, the hook request, the patient by identifier, the check, the cards
and their rows; no HTTP): the check alone, the call, and the request over HTTP side by
side show where an order-select's time goes.

Besides throughput, each HTTP round prints the server process's CPU time per answered
request (from /proc): on a shared, loaded machine throughput moves with whatever else
runs, the CPU a request costs much less. Both the in-process measurement and the server
freeze what lives as long as the process out of the collector's generations, as
``huren serve`` does (``gc.freeze`` in ``cli/server.run_server``). If requests fail, the
tail of the server's log is printed."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import random
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
from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import event, func, select

# Run as a script (``python bench/bench_recognition.py``), the repository root is not on
# the path; ``bench.world`` lives there.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.world import free_port, pct, prepare, process_tree_cpu, settings_for
from huren.adapters.db.recognition import SqlRecognitionTx
from huren.adapters.db.tables import result
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Actor, Principal, Role
from huren.domain.identity import IdentifierKind
from huren.domain.recognition import StudyCompleteness, StudyState
from huren.domain.results import StoredResult
from huren.services.accounts import NewAccount
from huren.services.recognition import CheckRequest, PatientRef, StudyStates

NATIONAL_ID_SYSTEM = "https://huren.example/fhir/sid/national-id"


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

    def states_without_study(self, results: Sequence[StoredResult]) -> Mapping[int, StudyState]:
        # Imaging priors whose study has not arrived (known from the priors query): no
        # lookup, counted among the answers only.
        out = self.inner.states_without_study(results)
        for r in results:
            self.answers[out.get(r.id, StudyState()).completeness] += 1
        return out


class StatementCounter:
    """Counts the statements sent to the database (an executemany counts once): those
    through SQLAlchemy, and those the recognition adapter sends to the DBAPI cursor."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.n = 0
        self._raw = getattr(SqlRecognitionTx, "_execute", None)  # None: older adapter

    def _count(self, *_: Any) -> None:
        self.n += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._count)
        raw, count = self._raw, self._count
        if raw is None:
            return self

        def counted(tx: SqlRecognitionTx, sql: str, params: Sequence[Any], **kw: Any) -> Any:
            count()
            return raw(tx, sql, params, **kw)

        SqlRecognitionTx._execute = counted  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)
        if self._raw is not None:
            SqlRecognitionTx._execute = self._raw  # type: ignore[method-assign]


class RoundTripCounter:
    """Counts the round trips to a PostgreSQL server made on the engine's connections
    while it is active, from libpq's protocol trace (``PQtrace``) of each connection
    checked out: a round trip per message after which the client waits for the server's
    answer — a simple Query (psycopg's BEGIN), a Sync (the end of an extended-protocol
    statement, or of a pipeline's segment), a Flush (a pipeline's request for results so
    far). ``n`` is None on SQLite, where a statement is a library call."""

    WAITS = frozenset({"Query", "Sync", "Flush"})

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.n: int | None = None
        self._traces: dict[int, tuple[Any, int, str]] = {}

    def _checkout(self, dbapi: Any, _record: Any, _proxy: Any) -> None:
        if id(dbapi) not in self._traces:
            fd, path = tempfile.mkstemp(suffix=".pqtrace")
            dbapi.pgconn.trace(fd)
            dbapi.pgconn.set_trace_flags(1)  # psycopg.pq.Trace.SUPPRESS_TIMESTAMPS
            self._traces[id(dbapi)] = (dbapi, fd, path)

    def __enter__(self) -> RoundTripCounter:
        if self.engine.dialect.name == "postgresql":
            event.listen(self.engine, "checkout", self._checkout)
        return self

    def __exit__(self, *_: object) -> None:
        if self.engine.dialect.name != "postgresql":
            return
        event.remove(self.engine, "checkout", self._checkout)
        n = 0
        for dbapi, fd, path in self._traces.values():
            if not dbapi.closed:
                dbapi.pgconn.untrace()  # flushes the trace
            with open(path) as f:
                for line in f:
                    fields = line.split("\t")
                    n += fields[0] == "F" and fields[2].strip() in self.WAITS
            os.close(fd)
            os.unlink(path)
        self.n = n


def bench_in_process(
    c: Container, institution: str, orders: list[Any], checks: int, profile: bool = False
) -> dict[str, float]:
    principal = Principal(1, "bench", "压测医师", Role.CLINICIAN, institution=institution)
    svc = c.recognition
    studies = TimedStudies(svc.studies)
    svc.studies = studies

    cpu: list[float] = []

    def one(i: int) -> float:
        pid, codes = orders[i % len(orders)]
        c0 = time.thread_time_ns()
        t = time.perf_counter_ns()
        svc.check(CheckRequest(principal, PatientRef(patient_id=pid), codes, channel="rest"))
        wall = (time.perf_counter_ns() - t) / 1e6
        cpu.append((time.thread_time_ns() - c0) / 1e6)
        return wall

    for i in range(min(200, checks)):
        one(i)
    with StatementCounter(c.engine) as counted, RoundTripCounter(c.engine) as trips:
        for i in range(len(orders)):
            one(i)
    statements = counted.n / len(orders)
    studies.ms.clear()
    studies.with_imaging_ms.clear()
    studies.answers = dict.fromkeys(StudyCompleteness, 0)
    # As the server does at start-up (cli/server.run_server): what lives as long as the
    # process (modules, catalog, container) leaves the collector's generations, so that
    # collections during checks only walk what checks allocate.
    gc.collect()
    gc.freeze()
    cpu.clear()
    times = [one(i) for i in range(checks)]
    cpu_times = list(cpu)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for i in range(checks):
            one(i)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
    svc.studies = studies.inner
    a = studies.answers
    return {
        "statements": statements,
        "round_trips": -1.0 if trips.n is None else trips.n / len(orders),
        # CPU time of the checking thread (its own work, whatever else the machine runs):
        # on a shared machine the wall-clock tail is mostly time spent waiting for a core.
        "cpu_p50_ms": statistics.median(cpu_times),
        "cpu_p99_ms": pct(cpu_times, 99),
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


def bench_call_in_process(
    c: Container, token: str, posts: Sequence[bytes], calls: int
) -> dict[str, float]:
    """The ``order-select`` service call as the server's worker thread runs it
    (``cdshooks._call``: authentication, the hook request, the patient by identifier, the
    check, the cards and their rows), without the HTTP server: what the call itself costs,
    next to the check alone and to the whole request over HTTP."""
    from starlette.requests import Request

    from huren.api.app import create_app
    from huren.api.routes import cdshooks

    app = create_app(c)
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"host", b"127.0.0.1"),
    ]
    service = "huren-recognition-order-select"

    def one(i: int) -> float:
        scope = {
            "type": "http",
            "method": "POST",
            "path": f"/cds-services/{service}",
            "headers": headers,
            "app": app,
            "query_string": b"",
            "server": ("127.0.0.1", 80),
            "scheme": "http",
            "root_path": "",
        }
        c0 = time.thread_time_ns()
        cdshooks._call(c, Request(scope), service, posts[i % len(posts)], "http://bench", None)
        return (time.thread_time_ns() - c0) / 1e6

    for i in range(min(200, calls)):
        one(i)
    cpu = [one(i) for i in range(calls)]
    return {"cpu_p50_ms": statistics.median(cpu), "cpu_p99_ms": pct(cpu, 99)}


def http_request(
    method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One request on a kept-alive connection; the response's status (body read whole)."""
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def measured(port: int, pid: int, make: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """``load``, and the server's CPU time per answered request: on a shared machine the
    throughput depends on what else runs, the CPU a request costs much less."""
    before = process_tree_cpu(pid)
    out = asyncio.run(load(port, make, concurrency, seconds))
    answered = out["rps"] * out["seconds"]
    out["cpu_ms"] = (process_tree_cpu(pid) - before) * 1000 / answered if answered else 0.0
    return out


async def load(port: int, make: Any, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` clients, each on its own kept-alive connection sending the next
    request as soon as the answer is in, for ``seconds``. The client is a minimal
    HTTP/1.1 one on asyncio streams, not httpx: httpx's connection pool costs more CPU
    per request than the trivial endpoint itself past ~16 connections, and on a shared
    2-core machine the client's cost would otherwise decide the baseline."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                request = make()
                t = time.perf_counter()
                try:
                    status = await _exchange(reader, writer, request)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies or [0.0]),
        "p99_ms": pct(latencies or [0.0], 99),
        "errors": errors,
    }


TRIVIAL_PATH = "/bench/trivial"
TRIVIAL_ANSWER: dict[str, list[Any]] = {"cards": []}


def serve(port: int) -> None:
    """The server process: ``huren serve``'s app and uvicorn settings
    (``cli/server.run_server``) plus the trivial endpoint."""
    import uvicorn

    from huren.api.app import create_app

    app = create_app(build(Settings()))

    @app.post(TRIVIAL_PATH)
    async def trivial(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(TRIVIAL_ANSWER)

    # First in the routing table, as order-select's router is (api/routes ROUTERS): FastAPI
    # tries routes in turn, and appended last the trivial endpoint paid ~250 µs of route
    # matching that order-select does not, which flattered the ratio.
    app.router.routes.insert(0, app.router.routes.pop())

    # As run_server does: what lives as long as the process leaves the GC's generations.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info", access_log=False)


def start_server(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HUREN_DATABASE_URL": settings.database_url,
        "HUREN_IDENTIFIER_HASH_KEY": settings.identifier_hash_key.get_secret_value(),
        "HUREN_IDENTIFIER_ENCRYPTION_KEY": settings.identifier_encryption_key.get_secret_value(),
        "HUREN_TOKEN_SIGNING_KEY": settings.token_signing_key.get_secret_value(),
        "HUREN_START_MLLP": "false",
        "HUREN_START_DICOM": "false",
        # The background jobs are off: on a database made by synth/grow the monitoring
        # job would spend the measurement catching up on millions of results (20+ min at
        # 10M), while a running node is caught up and its minute's refresh costs a few
        # milliseconds (bench_monitoring: "incremental refresh, nothing new").
        "HUREN_BACKGROUND_JOBS": "false",
    }
    with log.open("wb") as out:  # the server's log, shown if requests fail
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
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


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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
    ap.add_argument("--profile", action="store_true", help="进程内检查的 cProfile")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
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
        print(f"负载（1/5/15 分钟平均）: {loadavg()}；CPU {os.cpu_count()} 核")
        ip = bench_in_process(c, institution, orders, args.checks, args.profile)
        print(
            f"进程内 check（5 项）: p50 {ip['p50_ms']:.2f} ms  p99 {ip['p99_ms']:.2f} ms  "
            f"均值 {ip['mean_ms']:.2f} ms  （{args.checks} 次；每次 {ip['statements']:.1f} 条 SQL"
            + (f"，与服务器往返 {ip['round_trips']:.1f} 次）" if ip["round_trips"] >= 0 else "）")
        )
        print(
            f"  其中本线程 CPU 时间: p50 {ip['cpu_p50_ms']:.2f} ms  p99 {ip['cpu_p99_ms']:.2f} ms"
            "（不含等待 CPU 的时间；数据库为 PostgreSQL 时不含服务器端时间）"
        )
        print(
            "  其中影像完整性查询（ImagingService.study_states，"
            f"需查影像索引的 {ip['studies_lookups']:.0f} 次）: p50 {ip['studies_p50_ms']:.2f} ms"
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
            actor=Actor.system("基准测试"),
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
        posts = [json.dumps(hook_body(nid, codes)).encode() for nid, codes in ids]
        call = bench_call_in_process(c, token, posts, min(args.checks, 1000))
        print(
            "进程内 order-select 服务调用（认证、解析、按身份证号找患者、check、卡片及其记录，"
            f"无 HTTP）: 本线程 CPU p50 {call['cpu_p50_ms']:.2f} ms  p99 {call['cpu_p99_ms']:.2f} ms"
        )
        c.close()
        port = free_port()
        server_log = Path(tmpdir) / "server.log"
        server = start_server(settings, port, server_log)
        auth = {"Authorization": f"Bearer {token}"}

        auth_headers = {**auth, "Content-Type": "application/json"}
        select_path = "/cds-services/huren-recognition-order-select"
        selects = [http_request("POST", select_path, b, auth_headers) for b in posts]
        trivials = [http_request("POST", TRIVIAL_PATH, b, auth_headers) for b in posts]
        get_discovery = http_request("GET", "/cds-services")

        def discovery() -> bytes:
            return get_discovery

        def trivial() -> bytes:
            return trivials[rng.randrange(len(trivials))]

        def order_select() -> bytes:
            return selects[rng.randrange(len(selects))]

        try:
            asyncio.run(load(port, order_select, 4, 1.0))  # warm up
            asyncio.run(load(port, trivial, 4, 1.0))
            print(
                f"HTTP（uvicorn 单进程，与 huren serve 相同设置），每轮 {args.seconds:g} 秒；"
                f"简单端点 = POST {TRIVIAL_PATH}（同一请求体与请求头，返回常量）:"
            )
            errors = 0.0
            for conc in args.concurrency:
                g = measured(port, server.pid, discovery, conc, args.seconds)
                t = measured(port, server.pid, trivial, conc, args.seconds)
                o = measured(port, server.pid, order_select, conc, args.seconds)
                errors += t["errors"] + o["errors"]
                print(
                    f"  并发 {conc:>3}: 简单端点 {t['rps']:6.0f} req/s (p99 {t['p99_ms']:.1f} ms)"
                    f" | order-select {o['rps']:6.0f} req/s (p50 {o['p50_ms']:.1f} ms,"
                    f" p99 {o['p99_ms']:.1f} ms, 错误 {o['errors']:.0f})"
                    f" | 比值 {o['rps'] / t['rps']:.0%}"
                    f" | 对照 GET /cds-services {g['rps']:6.0f} req/s，比值 {o['rps'] / g['rps']:.0%}"
                )
                print(
                    f"          服务器进程每请求 CPU: 简单端点 {t['cpu_ms']:.2f} ms"
                    f" | order-select {o['cpu_ms']:.2f} ms | 比值 {t['cpu_ms'] / o['cpu_ms']:.0%}"
                )
            print(f"负载（1/5/15 分钟平均）: {loadavg()}")
            if errors:
                print("服务器日志（末尾）:")
                print(server_log.read_text(errors="replace")[-4000:])
        finally:
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
