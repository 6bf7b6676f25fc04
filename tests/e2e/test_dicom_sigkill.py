"""Issue 4: an instance answered with C-STORE success (0x0000) is never lost, even if the
process is killed right after the response; resending after the crash stores nothing twice.

Runs the real ``huren serve`` as a subprocess on its own SQLite file and free ports (DICOM
listener on, fsync on), streams CT instances over three concurrent associations with
pynetdicom as the Storage SCU, recording which got 0x0000, kills the server with SIGKILL
mid-stream, restarts it, and checks the database and the stored files."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, func, select, update

from huren.adapters.clock import SystemClock
from huren.adapters.db import engine as db_engine
from huren.adapters.db.tables import institution
from huren.adapters.db.tables_imaging import imaging_instance, imaging_series, imaging_study
from tests.e2e.live import ServeProcess, free_port, serve_env
from tests.fixtures.dicom import Spec, instance, uid
from tests.fixtures.world import HOSP_A, seed_world

pytestmark = pytest.mark.slow

ASSOCIATIONS = 3
PER_ASSOCIATION = 120
KILL_AFTER_STORED = 90
CALLING = "PACS_KILL"


def spec(assoc: int, n: int) -> Spec:
    return Spec(study=f"kill-{assoc}", series="thin", instance=n + 1, thickness=1.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServeProcess, str, Path]]:
    url = f"sqlite:///{tmp_path / 'huren.db'}"
    db_engine.upgrade(url)
    eng = db_engine.make_engine(url)
    seed_world(eng, SystemClock().now())
    with eng.begin() as c:
        c.execute(update(institution).where(institution.c.code == HOSP_A).values(ae_titles=CALLING))
    eng.dispose()
    dicom_port = free_port()
    data_dir = tmp_path / "data"  # serve_env's
    env = serve_env(
        url,
        tmp_path,
        MLLP_PORT=str(free_port()),
        DICOM_PORT=str(dicom_port),
        START_DICOM="true",
        START_MLLP="false",
        DICOM_FSYNC="true",
    )
    s = ServeProcess(env, dicom_port, tmp_path / "server.log")
    try:
        yield s, url, data_dir / "dicom"
    finally:
        s.stop()


def stream(
    port: int, assoc_no: int, stored: list[str], refused: list[int], lock: threading.Lock
) -> None:
    """Send this association's instances until the server goes away; record every SOP
    Instance UID answered with 0x0000."""
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="HUREN")
    if not assoc.is_established:
        return
    # Nagle off on our side too (see adapters/dicom/scp.py).
    assert assoc.dul.socket is not None
    sock = assoc.dul.socket.socket
    assert sock is not None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for n in range(PER_ASSOCIATION):
            ds = instance(spec(assoc_no, n))
            try:
                status = assoc.send_c_store(ds)
            except RuntimeError:  # the association ended between two sends: server killed
                return
            if not assoc.is_established or "Status" not in status:
                return  # no response: the server died before answering
            with lock:
                if status.Status == 0x0000:
                    stored.append(str(ds.SOPInstanceUID))
                else:
                    refused.append(int(status.Status))
    finally:
        if assoc.is_established:
            assoc.release()


def indexed(url: str) -> dict[str, str]:
    eng = create_engine(url)
    with eng.connect() as c:
        rows = c.execute(select(imaging_instance.c.sop_uid, imaging_instance.c.content_hash)).all()
    eng.dispose()
    return {str(k): str(v) for k, v in rows}


def stored_file(root: Path, content_hash: str) -> bytes:
    return (root / content_hash[:2] / content_hash[2:4] / f"{content_hash}.dcm").read_bytes()


def test_every_instance_answered_success_survives_sigkill_and_resend_stores_nothing_twice(
    server: tuple[ServeProcess, str, Path],
) -> None:
    srv, url, store_root = server
    srv.start()
    stored: list[str] = []
    refused: list[int] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=stream, args=(srv.port, a, stored, refused, lock))
        for a in range(ASSOCIATIONS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 180
    while len(stored) < KILL_AFTER_STORED and time.monotonic() < deadline:
        time.sleep(0.002)
    srv.kill()  # mid-stream: the associations are still sending
    for t in threads:
        t.join(60)
    total = ASSOCIATIONS * PER_ASSOCIATION
    assert refused == []
    assert KILL_AFTER_STORED <= len(stored) < total, "the kill must land mid-stream"

    # Restart (replays the store's journal), then every acknowledged instance is indexed
    # and its file holds exactly the bytes the index names.
    srv.start()
    index = indexed(url)
    for sop in stored:
        assert sop in index, f"{sop} was answered 0x0000 but is lost"
        data = stored_file(store_root, index[sop])
        assert hashlib.sha256(data).hexdigest() == index[sop]
        assert pydicom.dcmread(BytesIO(data)).SOPInstanceUID == sop
    assert list((store_root / ".journal").glob("*.log")) == []

    # Resend everything to the restarted server: all accepted, nothing stored twice, and
    # the counters agree with the rows.
    for a in range(ASSOCIATIONS):
        again: list[str] = []
        stream(srv.port, a, again, refused, lock)
        assert len(again) == PER_ASSOCIATION
    assert refused == []
    assert len(indexed(url)) == total
    eng = create_engine(url)
    with eng.connect() as c:
        studies = c.execute(select(imaging_study.c.study_uid, imaging_study.c.instance_count)).all()
        series_total = c.execute(select(func.sum(imaging_series.c.instance_count))).scalar_one()
    eng.dispose()
    assert sorted(studies) == sorted((uid(f"kill-{a}"), PER_ASSOCIATION) for a in range(3))
    assert series_total == total
