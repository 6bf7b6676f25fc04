"""What the batched intake write path must keep (issue 7, performance): patients of one
message matched together as if one after another, concurrent senders of the same report
storing it once, and bulk files stored in large transactions with the same per-record
all-or-nothing outcome — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import func, select

from huren.adapters.db.engine import is_sqlite
from huren.adapters.db.results import SqlIntakeStore
from huren.adapters.db.tables import (
    observation,
    patient,
    patient_identifier,
    result,
    result_version,
)
from huren.bootstrap import Container
from huren.cli.ingest import BulkLoader
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.intake import IntakeService, IntakeTx, MessageRecord, OpenedMessage
from huren.services.patients import IdentifierKey
from tests.fixtures.fhir.builders import contained_report, dumps
from tests.fixtures.results import (
    LI_SI_ID,
    ZHANG_SAN_ID,
    imaging_report,
    lab_panel,
    message,
    store,
)
from tests.fixtures.results import (
    patient as demographics,
)
from tests.fixtures.world import HOSP_A


def _count(c: Container, table: object) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


# ---------------------------------------------------------------- patients of one message
def test_two_new_patients_in_one_message_become_two_patients(world: Container) -> None:
    outcome = store(
        world,
        lab_panel(HOSP_A, patient_demographics=demographics(ZHANG_SAN_ID, "张三")),
        lab_panel(HOSP_A, patient_demographics=demographics(LI_SI_ID, "李四")),
    )
    owners = {world.results.get_result(r.result_id).patient_id for r in outcome.results}
    assert len(owners) == 2
    assert _count(world, patient) == 2


def test_reports_of_one_message_sharing_an_identifier_go_to_one_patient(
    world: Container,
) -> None:
    """The second report names the same 身份证 plus an MRN: as if matched after the
    first was stored, it finds that patient and adds the MRN to it."""
    with_mrn = demographics(ZHANG_SAN_ID, mrn="A-4711", mrn_institution=HOSP_A)
    outcome = store(
        world,
        lab_panel(HOSP_A, patient_demographics=demographics(ZHANG_SAN_ID)),
        imaging_report(HOSP_A, patient_demographics=with_mrn),
    )
    owners = {world.results.get_result(r.result_id).patient_id for r in outcome.results}
    assert len(owners) == 1
    assert world.results.find_patients(
        PatientIdentifier(IdentifierKind.MRN, "A-4711", HOSP_A)
    ) == sorted(owners)
    assert _count(world, patient_identifier) == 2


# ---------------------------------------------------------------- concurrent senders
class _RendezvousStore:
    """An IntakeStore whose transactions wait for each other once the message is opened
    (duplicate check and head lookup done), so that both writers race for the same new
    report."""

    def __init__(self, inner: SqlIntakeStore, parties: int) -> None:
        self._inner = inner
        self._barrier = threading.Barrier(parties, timeout=20)

    @contextmanager
    def _transaction(self) -> Iterator[IntakeTx]:
        with self._inner.transaction() as tx:
            barrier = self._barrier
            real = tx.open_message

            def open_message(
                record: MessageRecord,
                institution: str,
                keys: Sequence[tuple[str, str]],
                patient_keys: Sequence[IdentifierKey] = (),
            ) -> OpenedMessage:
                opened = real(record, institution, keys, patient_keys)
                if not barrier.broken:
                    with suppress(threading.BrokenBarrierError):
                        barrier.wait()
                return opened

            tx.open_message = open_message  # type: ignore[method-assign]
            yield tx

    def transaction(self) -> AbstractContextManager[IntakeTx]:
        return self._transaction()

    def unmapped_codes(self, institution: str) -> list[object]:
        return []


def test_two_senders_racing_with_the_same_new_report_store_it_once(world: Container) -> None:
    if is_sqlite(str(world.engine.url)):
        pytest.skip("SQLite serializes writers at BEGIN IMMEDIATE: there is no race")
    intake = IntakeService(
        _RendezvousStore(SqlIntakeStore(world.engine), 2),  # type: ignore[arg-type]
        world.catalog,
        world.vault,
        world.clock,
    )
    msg = message(lab_panel(HOSP_A, report_no="JY-RACE-1"), control_id="RACE-1")
    outcomes: list[object] = []
    failures: list[BaseException] = []

    def send() -> None:
        try:
            outcomes.append(intake.receive(msg))
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert failures == []
    ids = {o.results[0].result_id for o in outcomes}  # type: ignore[attr-defined]
    assert len(ids) == 1
    assert sorted(o.duplicate for o in outcomes) == [False, True]  # type: ignore[attr-defined]
    assert (_count(world, result), _count(world, result_version)) == (1, 1)
    assert _count(world, observation) == len(lab_panel().observations)


# ---------------------------------------------------------------- bulk transactions
def _write(path: Path, reports: list[dict[str, object]]) -> Path:
    path.write_bytes(b"\n".join(dumps(r) for r in reports) + b"\n")
    return path


def test_bad_record_in_a_large_batch_is_reported_alone_and_the_others_stored(
    world: Container, tmp_path: Path
) -> None:
    """Record 27 parses but is refused by intake (a report number longer than the
    column): the batch's transaction is refused, and its halves are stored on their own
    down to that record."""
    reports = [contained_report(f"JY-L-{k:04d}", n_obs=2) for k in range(1, 41)]
    reports[26] = contained_report("JY-L-" + "7" * 80, n_obs=2)
    path = _write(tmp_path / "large.ndjson", reports)
    report = BulkLoader(world, path, "ndjson", batch_size=40).run()
    assert (report.records, report.stored, report.errors) == (40, 39, 1)
    errors = [json.loads(x) for x in loader_errors(path).read_text().splitlines()]
    assert [e["record"] for e in errors] == [27]
    assert "长度超过 64" in errors[0]["problems"][0]["message"]
    assert _count(world, result) == 39


def test_report_amended_later_in_the_same_batch_becomes_its_second_version(
    world: Container, tmp_path: Path
) -> None:
    first = contained_report("JY-AM-1", n_obs=3)
    amended = json.loads(json.dumps(first))
    amended["status"] = "amended"
    path = _write(
        tmp_path / "amend.ndjson",
        [first, contained_report("JY-AM-2", n_obs=3), amended],
    )
    report = BulkLoader(world, path, "ndjson", batch_size=10).run()
    assert (report.stored, report.errors) == (3, 0)
    with world.engine.connect() as conn:
        row = conn.execute(
            select(result.c.id, result.c.version, result.c.status).where(
                result.c.report_no == "JY-AM-1"
            )
        ).one()
    assert (row.version, row.status) == (2, "amended")
    versions = world.results.versions(row.id)
    assert [v.version for v in versions] == [1, 2]
    assert world.results.get_result(row.id, 1).status.value == "final"


def loader_errors(path: Path) -> Path:
    return path.with_name(path.name + ".errors.ndjson")
