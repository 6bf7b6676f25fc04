"""Writers of different kinds at once: a DICOM instance stored while lab results pour in
is stored, not refused because another writer held the database. On SQLite every writer
queues on the database's one writer lock."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from huren.adapters.db.engine import writer_lock
from huren.adapters.db.tables_imaging import imaging_instance
from huren.bootstrap import Container
from huren.services.imaging import Source, StoredInstance
from tests.fixtures.dicom import Spec, instance_bytes
from tests.fixtures.results import lab_panel, store
from tests.fixtures.world import HOSP_A


def test_instances_stored_while_results_are_written_are_all_stored(world: Container) -> None:
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def results() -> None:
        n = 0
        try:
            while not stop.is_set():
                store(world, lab_panel(HOSP_A, report_no=f"W{n:05d}"))
                n += 1
        except BaseException as exc:
            errors.append(exc)
        written.append(n)

    writer = threading.Thread(target=results)
    writer.start()
    outcomes: list[object] = []
    try:
        for k in range(60):
            data = instance_bytes(Spec(study="busy", series="ct", instance=k + 1))
            try:
                outcomes.append(
                    world.imaging.store_instance(data, institution=HOSP_A, source=Source.DIMSE)
                )
            except Exception as exc:
                outcomes.append(exc)
    finally:
        stop.set()
        writer.join(60)
    assert not errors
    assert written
    assert written[0] > 0
    refused = [o for o in outcomes if not isinstance(o, StoredInstance)]
    assert not refused, refused[:3]
    with world.engine.connect() as c:
        assert c.scalar(select(func.count()).select_from(imaging_instance)) == 60


def test_a_dicom_instance_waits_for_the_sqlite_writer_lock(world: Container) -> None:
    """Imaging writes queue on the database's writer lock like intake's, instead of polling
    SQLite's busy handler (whose sleeps grow to 100 ms: under a stream of lab results an
    instance took up to 1.5 s to store)."""
    lock = writer_lock(world.engine)
    if lock is None:
        pytest.skip("PostgreSQL writers do not exclude each other")
    data = instance_bytes(Spec(study="queued", series="ct", instance=1))
    done = threading.Event()

    def store_instance() -> None:
        world.imaging.store_instance(data, institution=HOSP_A, source=Source.DIMSE)
        done.set()

    with lock:
        t = threading.Thread(target=store_instance)
        t.start()
        assert not done.wait(0.5), "stored while another writer held the lock"
    t.join(30)
    assert done.is_set()
