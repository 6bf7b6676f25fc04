"""C-STORE throughput of HuRen's DICOM SCP side by side with Orthanc, and QIDO-RS latency
at scale, on SQLite and PostgreSQL.

    uv run huren bench dicom -- [--count 500] [--rounds 5] [--chunk 100]
        [--qido-scale 1000000] [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/dicombench]

C-STORE. Both receivers get the same folder of CT instances (copies of pydicom's
CT_small.dcm with fresh UIDs) from dcmtk's storescu, over 1 and over 4 concurrent
associations, in the same run. Nagle's algorithm is off on both ends: ``TCP_NODELAY=1`` in
the environment of storescu and Orthanc (dcmtk reads it) and TCP_NODELAY set on HuRen's
SCP sockets (issue 4: without it both fall to 10–20 instances/s). Orthanc runs from a
temporary config on free ports with its own storage directory and its defaults
(``SyncStorageArea``: every file flushed); HuRen runs with ``dicom_fsync`` on (every
acknowledged instance flushed to disk). Orthanc's packaged service is not used.

The machine this runs on is usually shared and its load changes from second to second.
So in each round both receivers run side by side and get the files in chunks of
``--chunk`` instances (one storescu run per chunk and association), the chunks
alternating between them (who goes first alternates too, ``sync`` before each chunk);
a round's rate is its instances over the summed sending time. Every round prints both
rates, their ratio and the load average; then the median ratio and the spread.

QIDO-RS. ``--qido-scale`` instance rows are bulk-loaded into the index tables (bench
setup, ``bulk_load``: realistic studies/series/patients, no files), then typical QIDO-RS
searches are timed over HTTP and, the same searches, in the index alone; p50/p99 and
their ratio to a bare primary-key read of ``imaging_instance`` timed in the same run, the
searches interleaved so that load changes hit all alike. SQLite always (a new file);
PostgreSQL with ``--pg-url`` (its database is emptied and migrated: the name must contain
"bench", e.g. ``createdb -h 127.0.0.1 -U postgres dicombench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import uvicorn
from pydantic import SecretStr
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import make_url

from bench.world import free_port, pct
from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db import masterdata as md
from huren.adapters.db.tables import institution
from huren.adapters.db.tables_imaging import imaging_instance, imaging_series, imaging_study
from huren.adapters.dicom.scp import DicomNetworkService
from huren.api.app import create_app
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Actor, Role
from huren.domain.masterdata import Institution, InstitutionLevel, Scope, ScopeKind
from huren.services.accounts import NewAccount
from huren.services.imaging import StudyQuery

INST = "H130100001"
CALLING = "BENCHSCU"
STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's app of the same name
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def make_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study = generate_uid()
    series = generate_uid()
    paths = []
    for n in range(count):
        src.StudyInstanceUID = study
        src.SeriesInstanceUID = series
        sop = generate_uid()
        src.SOPInstanceUID = sop
        src.file_meta.MediaStorageSOPInstanceUID = sop
        src.InstanceNumber = n + 1
        p = folder / f"ct{n:05d}.dcm"
        src.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def send(port: int, called: str, files: list[Path], associations: int) -> float:
    """Wall-clock seconds for storescu to send ``files`` over ``associations`` parallel
    associations (one storescu process each)."""
    env = dict(os.environ, TCP_NODELAY="1")
    groups = [files[i::associations] for i in range(associations)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aet", CALLING, "-aec", called, "127.0.0.1", str(port), *map(str, g)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for g in groups
    ]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------- HuRen
def huren_container(root: Path, fsync: bool = True, url: str = "") -> Container:
    url = url or f"sqlite:///{root / 'huren.db'}"
    db_engine.make_engine(url).dispose()
    db_engine.upgrade(url)
    settings = Settings(
        database_url=url,
        data_dir=root / "data",
        identifier_hash_key=SecretStr(new_key()),
        identifier_encryption_key=SecretStr(new_key()),
        token_signing_key=SecretStr(new_key()),
        start_mllp=False,
        start_dicom=False,
        dicom_fsync=fsync,
    )
    c = build(settings)
    with c.engine.begin() as conn:
        md.write_scopes(conn, [Scope("HE", "河北省", ScopeKind.PROVINCE)])
        md.write_institutions(
            conn, [Institution(INST, "基准医院", InstitutionLevel.TERTIARY, True, "HE")]
        )
        conn.execute(update(institution).values(ae_titles=CALLING))
    return c


class HurenSCP:
    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.container = huren_container(root, fsync)
        self.scp = DicomNetworkService(
            self.container.imaging, ae_title="HUREN", host="127.0.0.1", port=free_port()
        )

    def __enter__(self) -> HurenSCP:
        self.scp.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.scp.stop()
        self.container.close()


# ---------------------------------------------------------------- Orthanc
class Orthanc:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.http = free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": self.port,
            "HttpPort": self.http,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "StorageCompression": False,
            "DicomCheckCalledAet": False,
        }
        self.config = root / "orthanc.json"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Orthanc:
        env = dict(os.environ, TCP_NODELAY="1")
        self.proc = subprocess.Popen(
            [ORTHANC, str(self.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.http}/system", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def version(self) -> str:
        return str(httpx.get(f"http://127.0.0.1:{self.http}/system").json().get("Version", "?"))


# ---------------------------------------------------------------- QIDO-RS
# Study mix (modality: share of studies, [(series modality, instances low, high, slice
# thickness, derived)]): X-ray 1–2 views, CT thick 5 mm + thin 1 mm + an MPR reformat,
# MR six sequences, ultrasound, mammography four views. About 100 instances a study, so
# 1 000 000 instances are ~9 500 studies, ~21 000 series; 5 000 patients.
STUDY_MIX: tuple[tuple[str, float, tuple[tuple[str, int, int, float | None, bool], ...]], ...] = (
    ("DX", 0.40, (("DX", 1, 2, None, False),)),
    (
        "CT",
        0.25,
        (("CT", 40, 70, 5.0, False), ("CT", 150, 350, 1.0, False), ("CT", 10, 30, 3.0, True)),
    ),
    ("MR", 0.15, tuple(("MR", 18, 30, 4.0, False) for _ in range(6))),
    ("US", 0.10, (("US", 5, 15, None, False),)),
    ("MG", 0.05, (("MG", 4, 4, None, False),)),
    ("CR", 0.05, (("CR", 1, 3, None, False),)),
)
OTHER_INSTITUTIONS = ("H130100002", "H130100003", "H130100004")
OWN_SHARE = 0.4  # of the studies belong to the bench user's institution
FIRST_DAY = date(2024, 1, 1)
DAYS = 730
_INSTANCE_COLUMNS = (
    "id",
    "study_id",
    "series_id",
    "sop_uid",
    "sop_class_uid",
    "transfer_syntax",
    "instance_number",
    "rows",
    "columns",
    "number_of_frames",
    "slice_thickness",
    "image_type",
    "content_hash",
    "size_bytes",
    "source",
    "calling_ae",
    "received_at",
)
_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
}


@dataclass
class Targets:
    """Values the timed queries use: several of each, so that no single row stays hot."""

    patients: list[str] = field(default_factory=list)
    accessions: list[str] = field(default_factory=list)
    ct_studies: list[str] = field(default_factory=list)
    studies: int = 0
    series: int = 0
    instances: int = 0
    own_studies: int = 0


def bulk_load(c: Container, scale: int, seed: int = 4) -> Targets:
    """Bench setup: ``scale`` instance rows written straight into the index tables (no
    files, no C-STORE) over studies, series and patients drawn from ``STUDY_MIX``, four
    institutions, two years of study dates; then ANALYZE, as the synthetic-world loader
    does. Studies and series through SQLAlchemy Core, instances through the driver in
    batches (executemany on SQLite, COPY on PostgreSQL)."""
    rng = random.Random(seed)
    vault = c.imaging.vault
    now = datetime.now(UTC)
    pg = c.engine.dialect.name == "postgresql"
    with c.engine.begin() as conn:
        md.write_institutions(
            conn,
            [
                Institution(code, f"基准医院{code[-1]}", InstitutionLevel.TERTIARY, True, "HE")
                for code in OTHER_INSTITUTIONS
            ],
        )
    patients = max(scale // 200, 10)
    pids = [f"P{n:07d}" for n in range(patients)]
    global_hash = {p: vault.lookup_hash("dicom", "", p) for p in pids}
    encrypted = {p: vault.encrypt(p) for p in pids}
    name = vault.encrypt("测试")
    t = Targets()
    raw = c.engine.raw_connection()
    db: Any = raw.driver_connection
    received = (
        now
        if pg
        else imaging_instance.c.received_at.type.dialect_impl(c.engine.dialect).bind_processor(
            c.engine.dialect
        )(now)
    )
    sql = (
        f"INSERT INTO imaging_instance ({', '.join(_INSTANCE_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _INSTANCE_COLUMNS)})"
    )
    instance_rows: list[tuple[Any, ...]] = []

    def flush_instances() -> None:
        if not instance_rows:
            return
        if pg:
            cols = ", ".join(_INSTANCE_COLUMNS)
            with db.cursor() as cur, cur.copy(f"COPY imaging_instance ({cols}) FROM STDIN") as cp:
                for row in instance_rows:
                    cp.write_row(row)
        else:
            db.executemany(sql, instance_rows)
        db.commit()
        instance_rows.clear()

    weights = [w for _, w, _ in STUDY_MIX]
    study_id = series_id = instance_id = 0
    try:
        while instance_id < scale:
            studies: list[dict[str, Any]] = []
            series: list[dict[str, Any]] = []
            while instance_id < scale and len(studies) < 500:
                modality, _, plan = rng.choices(STUDY_MIX, weights)[0]
                study_id += 1
                own = rng.random() < OWN_SHARE
                inst = INST if own else rng.choice(OTHER_INSTITUTIONS)
                pid = rng.choice(pids)
                suid = f"1.2.826.0.1.3680043.10.1467.9.{study_id}"
                acc = f"A{study_id:08d}"
                day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
                count = 0
                for number, (mod, lo, hi, thickness, derived) in enumerate(plan, start=1):
                    series_id += 1
                    n = rng.randint(lo, hi)
                    seuid = f"{suid}.{number}"
                    series.append(
                        {
                            "id": series_id,
                            "study_id": study_id,
                            "series_uid": seuid,
                            "modality": mod,
                            "series_number": number,
                            "series_description": f"{mod} {number}",
                            "slice_thickness": thickness,
                            "derived": derived,
                            "image_type": "DERIVED\\SECONDARY" if derived else "ORIGINAL\\PRIMARY",
                            "instance_count": n,
                            "received_at": now,
                            "updated_at": now,
                        }
                    )
                    for k in range(1, n + 1):
                        instance_id += 1
                        instance_rows.append(
                            (
                                instance_id,
                                study_id,
                                series_id,
                                f"{seuid}.{k}",
                                _SOP_CLASS[mod],
                                "1.2.840.10008.1.2.1",
                                k,
                                512,
                                512,
                                1,
                                thickness,
                                "ORIGINAL\\PRIMARY",
                                f"{instance_id:064x}",
                                525_000,
                                "dimse",
                                "BENCHSCU",
                                received,
                            )
                        )
                    count += n
                studies.append(
                    {
                        "id": study_id,
                        "study_uid": suid,
                        "institution_code": inst,
                        "patient_hash": vault.lookup_hash("mrn", inst, pid),
                        "patient_global_hash": global_hash[pid],
                        "patient_id_enc": encrypted[pid],
                        "patient_id_masked": pid[:2] + "****" + pid[-2:],
                        "patient_name_enc": name,
                        "patient_name_masked": "测*",
                        "patient_sex": rng.choice("MF"),
                        "patient_birth_date": f"{rng.randint(1940, 2015)}0101",
                        "accession_number": acc,
                        "study_id": str(study_id % 10**8),
                        "study_date": day,
                        "study_time": "093000",
                        "study_description": f"{modality} 检查",
                        "modalities": f"/{modality}/",
                        "series_count": len(plan),
                        "instance_count": count,
                        "received_at": now,
                        "updated_at": now,
                    }
                )
                if own:
                    t.own_studies += 1
                    if len(t.patients) < 50 and rng.random() < 0.05:
                        t.patients.append(pid)
                    if len(t.accessions) < 50 and rng.random() < 0.05:
                        t.accessions.append(acc)
                    if modality == "CT" and len(t.ct_studies) < 50 and rng.random() < 0.2:
                        t.ct_studies.append(suid)
            with c.engine.begin() as conn:
                conn.execute(insert(imaging_study), studies)
                conn.execute(insert(imaging_series), series)
            flush_instances()
        with db.cursor() if pg else contextlib.nullcontext(db.cursor()) as cur:
            if pg:
                for table in ("imaging_study", "imaging_series", "imaging_instance"):
                    cur.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT MAX(id) FROM {table}))"
                    )
            cur.execute("ANALYZE")
        db.commit()
    finally:
        raw.close()
    t.studies, t.series, t.instances = study_id, series_id, instance_id
    return t


@dataclass(frozen=True)
class Search:
    """One timed QIDO-RS search: its HTTP request for the i-th repetition, and the same
    search in the index alone."""

    name: str
    http: Callable[[int], tuple[str, dict[str, str]]]
    index: Callable[[int], object]


def searches(c: Container, t: Targets) -> list[Search]:
    index = c.imaging.index
    phash = {p: c.imaging.patient_global_hash(p) for p in t.patients}

    def day(i: int) -> date:
        return FIRST_DAY + timedelta(days=(i * 37) % (DAYS - 7))

    def q(**kw: Any) -> StudyQuery:
        return StudyQuery(institution=INST, **kw)

    def pick(values: list[str], i: int) -> str:
        return values[i % len(values)]

    deep = max(min(2000, t.own_studies - 550), 0)  # a page well inside the caller's studies

    return [
        Search(
            "studies?PatientID",
            lambda i: ("/studies", {"PatientID": pick(t.patients, i)}),
            lambda i: index.studies(q(patient_global_hash=phash[pick(t.patients, i)])),
        ),
        Search(
            "studies?StudyDate=7 days&limit=50",
            lambda i: (
                "/studies",
                {
                    "StudyDate": f"{day(i):%Y%m%d}-{day(i) + timedelta(days=6):%Y%m%d}",
                    "limit": "50",
                },
            ),
            lambda i: index.studies(
                q(study_date_from=day(i), study_date_to=day(i) + timedelta(days=6), limit=50)
            ),
        ),
        Search(
            "studies?ModalitiesInStudy=MR&limit=50",
            lambda i: ("/studies", {"ModalitiesInStudy": "MR", "limit": "50"}),
            lambda i: index.studies(q(modality="MR", limit=50)),
        ),
        Search(
            "studies?ModalitiesInStudy=MG&StudyDate=30 days",
            lambda i: (
                "/studies",
                {
                    "ModalitiesInStudy": "MG",
                    "StudyDate": f"{day(i):%Y%m%d}-{day(i) + timedelta(days=29):%Y%m%d}",
                },
            ),
            lambda i: index.studies(
                q(modality="MG", study_date_from=day(i), study_date_to=day(i) + timedelta(29))
            ),
        ),
        Search(
            "studies?AccessionNumber",
            lambda i: ("/studies", {"AccessionNumber": pick(t.accessions, i)}),
            lambda i: index.studies(q(accession_number=pick(t.accessions, i))),
        ),
        Search(
            "studies/{uid}/series",
            lambda i: (f"/studies/{pick(t.ct_studies, i)}/series", {}),
            lambda i: index.series(q(study_uids=(pick(t.ct_studies, i),))),
        ),
        Search(
            f"studies?limit=50&offset={deep}+",
            lambda i: ("/studies", {"limit": "50", "offset": str(deep + (i % 10) * 50)}),
            lambda i: index.studies(q(limit=50, offset=deep + (i % 10) * 50)),
        ),
        Search(
            "studies/{uid}/instances?limit=100",
            lambda i: (f"/studies/{pick(t.ct_studies, i)}/instances", {"limit": "100"}),
            lambda i: index.instances(q(study_uids=(pick(t.ct_studies, i),), limit=100)),
        ),
    ]


def qido_latency(c: Container, t: Targets, repeats: int) -> None:
    """Time every search over HTTP and in the index, interleaved with a bare primary-key
    read of ``imaging_instance`` (the baseline), and print p50/p99 and ratios."""
    account = c.accounts.create_account(
        NewAccount(f"bench-qido-{random.randrange(10**6)}", "基准", Role.CLINICIAN, INST),
        generate_password=False,
        actor=Actor.system("基准测试"),
    )
    # A real bearer token, checked on every request as in production.
    token = c.accounts.issue_token(account.account.principal()).access_token
    app = create_app(c)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/dicomweb"
    rng = random.Random(7)
    pk = select(imaging_instance).where(imaging_instance.c.id == text(":id"))

    def bare_read(_i: int) -> object:
        with c.engine.connect() as conn:
            return conn.execute(pk, {"id": rng.randint(1, t.instances)}).one()

    found: dict[str, int] = {}
    http_ms: dict[str, list[float]] = {}
    index_ms: dict[str, list[float]] = {}
    base_ms: list[float] = []
    all_searches = searches(c, t)
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
        for i in range(-3, repeats):  # three warm-up rounds
            t0 = time.perf_counter()
            bare_read(i)
            if i >= 0:
                base_ms.append((time.perf_counter() - t0) * 1000)
            for s in all_searches:
                path, params = s.http(i)
                t0 = time.perf_counter()
                r = client.get(base + path, params=params)
                elapsed = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{s.name}: HTTP {r.status_code} {r.text[:300]}")
                t0 = time.perf_counter()
                s.index(i)
                in_index = (time.perf_counter() - t0) * 1000
                if i >= 0:
                    http_ms.setdefault(s.name, []).append(elapsed)
                    index_ms.setdefault(s.name, []).append(in_index)
                    found[s.name] = max(found.get(s.name, 0), len(r.json()))
    server.should_exit = True
    thread.join(10)
    b50 = statistics.median(base_ms)
    print(
        f"  bare primary-key read of imaging_instance: p50 {b50:.3f} ms "
        f"p99 {pct(base_ms, 99):.3f} ms (the baseline, =1)"
    )
    print(
        f"  {'search':48s} {'rows':>5s} {'HTTP p50':>9s} {'p99':>8s} {'×PK':>6s}"
        f" {'index p50':>10s} {'p99':>8s} {'×PK':>6s}"
    )
    for s in all_searches:
        h, x = http_ms[s.name], index_ms[s.name]
        h50, x50 = statistics.median(h), statistics.median(x)
        print(
            f"  {s.name:48s} {found[s.name]:5d} {h50:7.2f}ms {pct(h, 99):6.2f}ms {h50 / b50:6.0f}"
            f" {x50:8.2f}ms {pct(x, 99):6.2f}ms {x50 / b50:6.1f}"
        )


def pg_bench_url(url: str) -> str:
    """Create the bench database if needed and empty it (its name must say "bench")."""
    u = make_url(url)
    name = u.database or ""
    if "bench" not in name:
        sys.exit(f"--pg-url: the database name must contain 'bench' (it is emptied): {name!r}")
    admin = db_engine.make_engine(u.set(database="postgres").render_as_string(False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    eng = db_engine.make_engine(url)
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()
    return url


def qido(root: Path, scale: int, repeats: int, pg_url: str) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    backends = [("SQLite", "")] + ([("PostgreSQL", pg_bench_url(pg_url))] if pg_url else [])
    for label, url in backends:
        c = huren_container(root / f"qido-{label}", url=url)
        try:
            t0 = time.perf_counter()
            t = bulk_load(c, scale)
            load = time.perf_counter() - t0
            print(
                f"QIDO-RS on {label}: {t.instances} instances, {t.series} series, "
                f"{t.studies} studies ({t.own_studies} of the caller's institution) bulk-loaded "
                f"in {load:.0f} s; {repeats} repetitions, load {load_average()}"
            )
            qido_latency(c, t, repeats)
        finally:
            c.close()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- C-STORE rounds
ratios: dict[tuple[int, bool], list[float]] = {}


def store_round(
    root: Path, files: list[Path], n: int, fsync: bool, ours_first: bool, chunk: int
) -> str:
    """One side-by-side round: both receivers running, the files sent to them chunk by
    chunk, alternately, so that both meet the same changes of load."""
    spent = {"orthanc": 0.0, "huren": 0.0}
    load = load_average()
    with Orthanc(root / "orthanc") as o, HurenSCP(root / "huren", fsync) as ours:
        version = o.version()
        targets = {"orthanc": (o.port, "ORTHANC"), "huren": (ours.scp.port, "HUREN")}
        for k, start in enumerate(range(0, len(files), chunk)):
            part = files[start : start + chunk]
            order = ("huren", "orthanc") if (k % 2 == 0) == ours_first else ("orthanc", "huren")
            for who in order:
                # No dirty pages of the previous chunk left to write back meanwhile.
                os.sync()
                spent[who] += send(*targets[who], part, n)
        stored = ours.container.imaging.index.count_instances()  # type: ignore[attr-defined]
    rate = {who: len(files) / s for who, s in spent.items()}
    ratio = rate["huren"] / rate["orthanc"]
    ratios.setdefault((n, fsync), []).append(ratio)
    label = "fsync" if fsync else "no-fsync"
    return (
        f"  {n} assoc: Orthanc {version} {rate['orthanc']:6.1f}/s | HuRen[{label}] "
        f"{rate['huren']:6.1f}/s (stored {stored}) | ratio {ratio:4.2f} | load {load}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=500, help="CT instances per round")
    ap.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=5, help="side-by-side rounds per setting")
    ap.add_argument("--chunk", type=int, default=100, help="instances per alternating chunk")
    ap.add_argument("--no-fsync-too", action="store_true", help="also run HuRen without fsync")
    ap.add_argument("--qido-scale", type=int, default=10_000, help="instances indexed for QIDO-RS")
    ap.add_argument("--qido-repeats", type=int, default=200)
    ap.add_argument("--pg-url", default="", help="PostgreSQL bench database for QIDO-RS")
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--skip-qido", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        root = Path(tmp)
        if not args.skip_store:
            for tool in (STORESCU, ORTHANC):
                if not Path(tool).exists():
                    sys.exit(f"missing {tool}: apt-get install dcmtk orthanc")
            files = make_files(root / "files", args.count)
            print(
                f"C-STORE: {args.count} × CT_small.dcm ({files[0].stat().st_size} bytes) by "
                f"dcmtk storescu, TCP_NODELAY=1, chunks of {args.chunk}, {os.cpu_count()} CPUs"
            )
            for n in args.associations:
                for fsync in (True, False) if args.no_fsync_too else (True,):
                    for r in range(args.rounds):
                        line = store_round(
                            root / f"r{n}-{fsync}-{r}", files, n, fsync, r % 2 == 1, args.chunk
                        )
                        print(line, flush=True)
            for (n, fsync), values in ratios.items():
                label = "fsync" if fsync else "no-fsync"
                print(
                    f"  median ratio, {n} assoc, {label}: {statistics.median(values):.2f} "
                    f"(min {min(values):.2f}, max {max(values):.2f}; "
                    f"{', '.join(f'{v:.2f}' for v in values)})"
                )
        if not args.skip_qido:
            qido(root, args.qido_scale, args.qido_repeats, args.pg_url)


if __name__ == "__main__":
    main()
