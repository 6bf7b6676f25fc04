"""Writers of different kinds at once: a DICOM instance stored while lab results pour in
is stored, not refused because another writer held the database (on SQLite the two meet
at its one write lock; on PostgreSQL at the rows they share)."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

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
