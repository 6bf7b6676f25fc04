"""C-STORE throughput of HuRen's DICOM SCP side by side with Orthanc, and QIDO-RS latency.

    uv run python bench/bench_dicom.py [--count 500] [--rounds 3] [--qido-scale 10000]

Both receivers get the same folder of CT instances (copies of pydicom's CT_small.dcm with
fresh UIDs) from dcmtk's storescu, over 1 and over 4 concurrent associations, in the same
run. Nagle's algorithm is off on both ends: ``TCP_NODELAY=1`` in the environment of
storescu and Orthanc (dcmtk reads it) and TCP_NODELAY set on HuRen's SCP sockets (issue 4:
without it both fall to 10–20 instances/s). Orthanc runs from a temporary config on free
ports with its own storage directory and its defaults (``SyncStorageArea``: fsync of every
file); HuRen runs with ``dicom_fsync`` on (every acknowledged instance flushed to disk).

The machine this runs on is usually shared, so each setting runs ``--rounds`` rounds of
Orthanc and HuRen back to back (who goes first alternates, ``sync`` before each run), and
prints every round's rates, their ratio and the load average, then the median ratio.

QIDO-RS: ``--qido-scale`` instances are indexed directly in the database (studies of 100
instances), then study search by PatientID and instance listing of one study are timed
over HTTP. Default small; the issue's target is 1 000 000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import pydicom
import uvicorn
from pydantic import SecretStr
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import insert, update

from huren.adapters.crypto import new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db import masterdata as md
from huren.adapters.db.tables import institution
from huren.adapters.db.tables_imaging import imaging_instance, imaging_series, imaging_study
from huren.adapters.dicom.scp import DicomNetworkService
from huren.api.app import create_app
from huren.api.routes import dicomweb
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Principal, Role
from huren.domain.masterdata import Institution, InstitutionLevel, Scope, ScopeKind

INST = "H130100001"
CALLING = "BENCHSCU"
STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's app of the same name
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
def huren_container(root: Path, fsync: bool = True) -> Container:
    url = f"sqlite:///{root / 'huren.db'}"
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
def index_synthetic(c: Container, scale: int, per_study: int = 100) -> tuple[str, str]:
    """Index ``scale`` instances straight into the tables (no files): studies of
    ``per_study`` instances in one series, spread over patients. Returns a patient id and
    a study UID to query."""
    now = datetime.now(UTC)
    vault = c.imaging.vault
    studies = max(scale // per_study, 1)
    target_pid, target_study = "", ""
    with c.engine.begin() as conn:
        for s in range(studies):
            pid = f"P{s % max(studies // 3, 1):07d}"
            suid = f"1.2.826.0.1.3680043.10.1467.9.{s}"
            sid = conn.execute(
                insert(imaging_study).values(
                    study_uid=suid,
                    institution_code=INST,
                    patient_hash=vault.lookup_hash("mrn", INST, pid),
                    patient_global_hash=vault.lookup_hash("dicom", "", pid),
                    patient_id_enc=vault.encrypt(pid),
                    patient_name_enc=vault.encrypt("测试"),
                    accession_number=f"A{s:08d}",
                    study_date=date(2026, 1 + s % 12, 1 + s % 28),
                    modalities="/CT/",
                    series_count=1,
                    instance_count=per_study,
                    received_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            se = conn.execute(
                insert(imaging_series).values(
                    study_id=sid,
                    series_uid=f"{suid}.1",
                    modality="CT",
                    series_number=1,
                    slice_thickness=1.0,
                    instance_count=per_study,
                    received_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]
            conn.execute(
                insert(imaging_instance),
                [
                    {
                        "study_id": sid,
                        "series_id": se,
                        "sop_uid": f"{suid}.1.{n}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax": "1.2.840.10008.1.2.1",
                        "instance_number": n + 1,
                        "rows": 512,
                        "columns": 512,
                        "content_hash": "0" * 64,
                        "size_bytes": 0,
                        "source": "dimse",
                        "received_at": now,
                    }
                    for n in range(per_study)
                ],
            )
            if s == studies // 2:
                target_pid, target_study = pid, suid
    return target_pid, target_study


def qido_latency(root: Path, scale: int, repeats: int = 30) -> dict[str, float]:
    c = huren_container(root)
    t0 = time.perf_counter()
    pid, study = index_synthetic(c, scale)
    load = time.perf_counter() - t0
    app = create_app(c)
    who = Principal(1, "bench", "bench", Role.CLINICIAN, institution=INST)
    app.dependency_overrides[dicomweb.reader] = lambda: who
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/dicomweb"
    out: dict[str, float] = {"index_seconds": load}
    with httpx.Client() as http:
        for name, url, params in (
            ("studies_by_patient_ms", f"{base}/studies", {"PatientID": pid}),
            (
                "studies_by_date_ms",
                f"{base}/studies",
                {"StudyDate": "20260301-20260310", "limit": "50"},
            ),
            ("study_instances_ms", f"{base}/studies/{study}/instances", {"limit": "1000"}),
        ):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                r = http.get(url, params=params)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
            out[name] = statistics.median(times)
    server.should_exit = True
    thread.join(10)
    c.close()
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


ratios: dict[tuple[int, bool], list[float]] = {}


def store_round(root: Path, files: list[Path], n: int, fsync: bool, ours_first: bool) -> str:
    """One side-by-side round: Orthanc and HuRen receive the same files back to back (the
    order alternates between rounds so that neither always meets the other's page cache
    or load)."""
    rates: dict[str, float] = {}
    version, stored = "?", 0

    def orthanc() -> None:
        nonlocal version
        with Orthanc(root / f"orthanc-{n}-{len(rates)}") as o:
            version = o.version()
            rates["orthanc"] = len(files) / send(o.port, "ORTHANC", files, n)

    def huren() -> None:
        nonlocal stored
        with HurenSCP(root / f"huren-{n}-{fsync}-{len(rates)}", fsync) as ours:
            rates["huren"] = len(files) / send(ours.scp.port, "HUREN", files, n)
            stored = ours.container.imaging.index.count_instances()  # type: ignore[attr-defined]

    load = load_average()
    for step in (huren, orthanc) if ours_first else (orthanc, huren):
        # Each run starts with no dirty pages of the previous one left to write back, which
        # would otherwise slow the second run's flushes.
        os.sync()
        step()
    label = "fsync" if fsync else "no-fsync"
    ratios.setdefault((n, fsync), []).append(rates["huren"] / rates["orthanc"])
    return (
        f"  {n} assoc: Orthanc {version} {rates['orthanc']:6.1f}/s | HuRen[{label}] "
        f"{rates['huren']:6.1f}/s (stored {stored}) | ratio {rates['huren'] / rates['orthanc']:4.2f}"
        f" | load {load}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=500, help="CT instances per run")
    ap.add_argument("--associations", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side rounds per setting")
    ap.add_argument("--no-fsync-too", action="store_true", help="also run HuRen without fsync")
    ap.add_argument("--qido-scale", type=int, default=10_000, help="instances indexed for QIDO-RS")
    ap.add_argument("--skip-store", action="store_true")
    ap.add_argument("--skip-qido", action="store_true")
    args = ap.parse_args()
    for tool in (STORESCU, ORTHANC):
        if not Path(tool).exists():
            sys.exit(f"missing {tool}: install dcmtk and orthanc (scripts/setup)")
    with tempfile.TemporaryDirectory(prefix="bench-dicom-") as tmp:
        root = Path(tmp)
        if not args.skip_store:
            files = make_files(root / "files", args.count)
            print(
                f"C-STORE: {args.count} × CT_small.dcm ({files[0].stat().st_size} bytes) by "
                f"dcmtk storescu, TCP_NODELAY=1, {os.cpu_count()} CPUs"
            )
            for n in args.associations:
                for fsync in (True, False) if args.no_fsync_too else (True,):
                    for r in range(args.rounds):
                        print(store_round(root / f"r{r}", files, n, fsync, r % 2 == 1), flush=True)
            for (n, fsync), values in ratios.items():
                label = "fsync" if fsync else "no-fsync"
                print(
                    f"  median ratio, {n} assoc, {label}: {statistics.median(values):.2f} "
                    f"(of {len(values)}: {', '.join(f'{v:.2f}' for v in values)})"
                )
        if not args.skip_qido:
            q = qido_latency(root / "qido", args.qido_scale)
            print(
                f"QIDO-RS with {args.qido_scale} instances indexed "
                f"(load {q['index_seconds']:.1f}s), median of 30:"
            )
            for k in ("studies_by_patient_ms", "studies_by_date_ms", "study_instances_ms"):
                print(f"  {k}: {q[k]:.1f} ms")


if __name__ == "__main__":
    main()
