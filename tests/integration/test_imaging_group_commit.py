"""Concurrent C-STOREs share one transaction (group commit): on SQLite and PostgreSQL the
instances, series and study counters come out as if stored one by one, duplicates and
conflicts inside one batch are judged as they would be alone, and a refused instance
leaves nothing behind."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from huren.adapters.db.tables_imaging import imaging_instance, imaging_series, imaging_study
from huren.bootstrap import Container
from huren.services.imaging import ConflictingInstance, Source, StagedBlob, StoredInstance
from tests.fixtures.dicom import Spec, instance, instance_bytes, to_bytes, uid
from tests.fixtures.world import HOSP_A, HOSP_B


def _concurrently(calls: list[Callable[[], StoredInstance]]) -> list[object]:
    """Run ``calls`` at the same moment on their own threads; results or exceptions."""
    start = threading.Barrier(len(calls))
    out: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _store(c: Container, data: bytes, institution: str = HOSP_A) -> Callable[[], StoredInstance]:
    return lambda: c.imaging.store_instance(data, institution=institution, source=Source.DIMSE)


def _count(c: Container, table: object) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_concurrent_instances_of_one_study_keep_exact_counters(world: Container) -> None:
    specs = [
        Spec(study="gc", series=series, instance=n, modality=modality)
        for series, modality in (("ct", "CT"), ("sr", "SR"), ("ct2", "CT"))
        for n in range(1, 7)
    ]
    results = _concurrently([_store(world, instance_bytes(s)) for s in specs])
    assert all(isinstance(r, StoredInstance) and not r.duplicate for r in results)
    with world.engine.connect() as c:
        study = c.execute(select(imaging_study)).one()
        per_series = dict(
            c.execute(select(imaging_series.c.series_uid, imaging_series.c.instance_count)).all()
        )
    assert (study.instance_count, study.series_count) == (18, 3)
    assert sorted(m for m in study.modalities.split("/") if m) == ["CT", "SR"]
    assert per_series == {uid(f"gc/{s}"): 6 for s in ("ct", "sr", "ct2")}
    assert _count(world, imaging_instance) == 18


def test_the_same_instance_sent_twice_at_once_is_stored_once(world: Container) -> None:
    data = instance_bytes(Spec(study="twice"))
    results = _concurrently([_store(world, data) for _ in range(4)])
    assert all(isinstance(r, StoredInstance) for r in results)
    assert sorted(r.duplicate for r in results if isinstance(r, StoredInstance)) == [
        False,
        True,
        True,
        True,
    ]
    with world.engine.connect() as c:
        assert c.execute(select(imaging_study.c.instance_count)).scalar_one() == 1
    assert _count(world, imaging_instance) == 1


def test_other_content_under_the_same_sop_uid_at_once_is_refused(world: Container) -> None:
    original = instance(Spec(study="race"))
    altered = instance(Spec(study="race"))
    altered.SeriesDescription = "reformatted"
    results = _concurrently([_store(world, to_bytes(original)), _store(world, to_bytes(altered))])
    assert sum(isinstance(r, StoredInstance) for r in results) == 1
    assert sum(isinstance(r, ConflictingInstance) for r in results) == 1
    assert _count(world, imaging_instance) == 1


def test_a_study_uid_of_another_institution_leaves_nothing_in_the_batch(
    world: Container,
) -> None:
    world.imaging.store_instance(
        instance_bytes(Spec(study="owned", instance=1)), institution=HOSP_A, source=Source.DIMSE
    )
    results = _concurrently(
        [
            _store(world, instance_bytes(Spec(study="owned", series="x", instance=2)), HOSP_B),
            _store(world, instance_bytes(Spec(study="mine", instance=1)), HOSP_A),
        ]
    )
    assert isinstance(results[0], ConflictingInstance)
    assert isinstance(results[1], StoredInstance)
    assert _count(world, imaging_series) == 2  # owned/series-1 and mine/series-1
    assert _count(world, imaging_instance) == 2


@pytest.mark.parametrize("failing", [0, 2])
def test_a_file_that_cannot_be_made_durable_refuses_only_its_instance(
    world: Container, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    blobs = world.imaging.blobs
    real_begin = blobs.begin
    datas = [instance_bytes(Spec(study="disk", instance=n)) for n in range(4)]
    bad = datas[failing]

    class FailingFlush:
        def __init__(self, staged: StagedBlob) -> None:
            self.staged = staged

        def commit(self) -> Callable[[], None]:
            self.staged.commit()

            def fail() -> None:
                raise OSError(28, "No space left on device")

            return fail

        def cancel(self) -> None:
            self.staged.cancel()

    def begin(data: bytes, content_hash: str) -> StagedBlob:
        staged = real_begin(data, content_hash)
        return FailingFlush(staged) if data == bad else staged

    monkeypatch.setattr(blobs, "begin", begin)
    results = _concurrently([_store(world, d) for d in datas])
    assert isinstance(results[failing], OSError)
    assert sum(isinstance(r, StoredInstance) for r in results) == 3
    assert _count(world, imaging_instance) == 3
    with world.engine.connect() as c:
        assert c.execute(select(imaging_study.c.instance_count)).scalar_one() == 3
