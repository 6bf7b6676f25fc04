"""FHIR Observation ingest: transaction Bundles (in-process service and over HTTP) and
bulk NDJSON, side by side with a raw SQLite ``executemany`` of the same rows.

    uv run python bench/bench_fhir_ingest.py [--bundles 100] [--reports 10] [--obs 10]

Each Bundle holds ``--reports`` liver panels of ``--obs`` Observations for one of 200
patients of hospital A; every report is new (created, with patient matching, 对码, the
mark at issue time, a version snapshot and one committed transaction per Bundle). The
baseline inserts the same observation rows (13 columns, the resource JSON kept) with
``sqlite3.executemany``, one transaction per Bundle's worth of rows, into a file with the
same pragmas (WAL, synchronous=NORMAL). Target (issue 7): ≥ 20,000 Observations/s and a
ratio ≥ 0.5. With HUREN_TEST_DATABASE_URL set the service figures are repeated on
PostgreSQL (a temporary database, dropped afterwards)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.fhir.builders import contained_report, lab_bundle  # noqa: E402
from tests.fixtures.results import national_id  # noqa: E402
from tests.fixtures.world import HOSP_A, seed_world  # noqa: E402

from huren.adapters.crypto import new_key  # noqa: E402
from huren.adapters.db import engine as db_engine  # noqa: E402
from huren.adapters.fhir.ingest import parse_transaction  # noqa: E402
from huren.bootstrap import Container, build  # noqa: E402
from huren.cli.ingest import BulkLoader  # noqa: E402
from huren.config import Settings  # noqa: E402
from huren.domain.accounts import Role  # noqa: E402
from huren.services.accounts import NewAccount  # noqa: E402

PATIENTS = [
    national_id(f"1101011985{m:02d}{d:02d}{k:03d}")
    for m in range(1, 11)
    for d in range(1, 21)
    for k in (101,)
]


def keys() -> dict[str, str]:
    return {"hash": new_key(), "enc": new_key(), "tok": new_key()}


def make_container(url: str, k: dict[str, str]) -> Container:
    db_engine.upgrade(url)
    c = build(
        Settings(
            database_url=url,
            identifier_hash_key=k["hash"],  # type: ignore[arg-type]
            identifier_encryption_key=k["enc"],  # type: ignore[arg-type]
            token_signing_key=k["tok"],  # type: ignore[arg-type]
        )
    )
    seed_world(c.engine, datetime.now(UTC))
    c.catalog.invalidate()
    return c


def bundles(tag: str, n: int, reports: int, obs: int) -> list[bytes]:
    return [
        json.dumps(
            lab_bundle(
                f"{tag}{b:06d}",
                national_id=PATIENTS[b % len(PATIENTS)],
                n_reports=reports,
                n_obs=obs,
                bundle_id=f"urn:uuid:{tag}-{b}",
            ),
            ensure_ascii=False,
        ).encode()
        for b in range(n)
    ]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def raw_sqlite_baseline(path: Path, payloads: list[bytes]) -> float:
    """Observation rows of the same Bundles, 13 columns + resource JSON, executemany."""
    rows_per_bundle: list[list[tuple[Any, ...]]] = []
    for raw in payloads:
        rows = []
        for k, entry in enumerate(json.loads(raw)["entry"]):
            res = entry["resource"]
            if res["resourceType"] != "Observation":
                continue
            q = res["valueQuantity"]
            rr = res["referenceRange"][0]
            coding = res["code"]["coding"]
            rows.append(
                (
                    k,
                    k,
                    coding[0]["code"],
                    coding[1]["code"],
                    coding[0]["display"],
                    "NM",
                    q["value"],
                    "",
                    q["unit"],
                    rr["low"]["value"],
                    rr["high"]["value"],
                    "",
                    res["interpretation"][0]["coding"][0]["code"],
                    json.dumps(res, ensure_ascii=False),
                )
            )
        rows_per_bundle.append(rows)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE obs (id INTEGER PRIMARY KEY, result_id INT, seq INT, code TEXT, "
        "loinc TEXT, name TEXT, value_type TEXT, value_num REAL, value_text TEXT, unit TEXT, "
        "ref_low REAL, ref_high REAL, ref_text TEXT, flag TEXT, json TEXT)"
    )
    sql = (
        "INSERT INTO obs (result_id, seq, code, loinc, name, value_type, value_num, value_text,"
        " unit, ref_low, ref_high, ref_text, flag, json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )

    def run() -> None:
        for rows in rows_per_bundle:
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")

    seconds = timed(run)
    conn.close()
    return seconds


def in_process(c: Container, payloads: list[bytes]) -> float:
    def run() -> None:
        for raw in payloads:
            c.intake.receive(parse_transaction(raw, keep_raw=True).message)

    return timed(run)


def bulk(c: Container, path: Path, lines: int, obs: int, tag: str) -> float:
    with path.open("wb") as f:
        for k in range(lines):
            report = contained_report(
                f"{tag}{k:07d}", national_id=PATIENTS[k % len(PATIENTS)], n_obs=obs
            )
            f.write(json.dumps(report, ensure_ascii=False).encode() + b"\n")
    loader = BulkLoader(c, path, "ndjson", batch_size=50)
    return timed(loader.run)


def over_http(
    url: str, k: dict[str, str], c: Container, payloads: list[bytes], workdir: Path
) -> float:
    c.accounts.create_account(NewAccount("bench-lis", "LIS", Role.INTEGRATION, institution=HOSP_A))
    key = c.accounts.create_api_key("bench-lis").key
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "HUREN_DATABASE_URL": url,
        "HUREN_IDENTIFIER_HASH_KEY": k["hash"],
        "HUREN_IDENTIFIER_ENCRYPTION_KEY": k["enc"],
        "HUREN_TOKEN_SIGNING_KEY": k["tok"],
        "HUREN_START_MLLP": "false",
        "HUREN_START_DICOM": "false",
        "HUREN_DATA_DIR": str(workdir / "data"),
    }
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "huren.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not start")
    headers = {"Authorization": f"ApiKey {key}", "Content-Type": "application/fhir+json"}
    chunks = [payloads[i::2] for i in range(2)]  # two interface engines

    def send(part: list[bytes]) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
            for raw in part:
                r = http.post("/fhir", content=raw)
                r.raise_for_status()

    def run() -> None:
        threads = [threading.Thread(target=send, args=(p,)) for p in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    try:
        return timed(run)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()


def report(rows: list[tuple[str, int, float]], baseline: float) -> None:
    print(f"{'measurement':<46}{'Obs':>8}{'seconds':>10}{'Obs/s':>11}{'ratio':>8}")
    for name, n, seconds in rows:
        rate = n / seconds
        print(f"{name:<46}{n:>8}{seconds:>10.2f}{rate:>11,.0f}{rate / baseline:>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=int, default=100)
    ap.add_argument("--reports", type=int, default=10)
    ap.add_argument("--obs", type=int, default=10)
    ap.add_argument("--http-bundles", type=int, default=40)
    ap.add_argument("--lines", type=int, default=1000)
    args = ap.parse_args()
    per_bundle = args.reports * args.obs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        payloads = bundles("B", args.bundles, args.reports, args.obs)
        base_s = raw_sqlite_baseline(work / "raw.db", payloads)
        n = args.bundles * per_bundle
        baseline = n / base_s
        rows: list[tuple[str, int, float]] = [("raw SQLite executemany (baseline)", n, base_s)]

        k = keys()
        url = f"sqlite:///{work / 'huren.db'}"
        c = make_container(url, k)
        rows.append(("SQLite: transaction Bundles, in-process", n, in_process(c, payloads)))
        rows.append(
            (
                "SQLite: NDJSON bulk (huren ingest)",
                args.lines * args.obs,
                bulk(c, work / "bulk.ndjson", args.lines, args.obs, "N"),
            )
        )
        http_payloads = bundles("H", args.http_bundles, args.reports, args.obs)
        rows.append(
            (
                "SQLite: transaction Bundles over HTTP",
                args.http_bundles * per_bundle,
                over_http(url, k, c, http_payloads, work),
            )
        )
        c.close()

        pg = os.environ.get("HUREN_TEST_DATABASE_URL", "")
        if pg:
            base_url = make_url(pg)
            name = f"huren_bench_fhir_{os.getpid()}"
            admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            pg_url = base_url.set(database=name).render_as_string(hide_password=False)
            try:
                pc = make_container(pg_url, k)
                rows.append(
                    (
                        "PostgreSQL: transaction Bundles, in-process",
                        n,
                        in_process(pc, bundles("P", args.bundles, args.reports, args.obs)),
                    )
                )
                rows.append(
                    (
                        "PostgreSQL: NDJSON bulk (huren ingest)",
                        args.lines * args.obs,
                        bulk(pc, work / "bulk-pg.ndjson", args.lines, args.obs, "Q"),
                    )
                )
                rows.append(
                    (
                        "PostgreSQL: transaction Bundles over HTTP",
                        args.http_bundles * per_bundle,
                        over_http(
                            pg_url,
                            k,
                            pc,
                            bundles("R", args.http_bundles, args.reports, args.obs),
                            work,
                        ),
                    )
                )
                pc.close()
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        print(
            f"\nFHIR Observation ingest — {args.reports} reports × {args.obs} Observations per Bundle"
        )
        report(rows, baseline)
        print("target: ≥ 20,000 Observations/s and ratio ≥ 0.5 (issue 7)")


if __name__ == "__main__":
    main()
