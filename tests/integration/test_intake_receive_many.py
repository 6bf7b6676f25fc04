"""Group commit (issue 7, performance): ``IntakeService.receive_many`` stores a batch of
messages in one transaction, and each message keeps the outcome ``receive`` would give
it — its own validation, its own all-or-nothing, idempotent resends, versions in order —
on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import DataError

from huren.adapters.db.results import SqlIntakeStore
from huren.adapters.db.tables import (
    inbound_message,
    observation,
    outbox,
    patient_identifier,
    patient_link_event,
    result,
    result_version,
)
from huren.adapters.db.tables import patient as patient_table
from huren.bootstrap import Container
from huren.domain.errors import ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.results import ObservationValue, ResultStatus, ValueType
from huren.services.intake import (
    Disposition,
    InboundMessage,
    IntakeService,
    IntakeTx,
    ReceiveOutcome,
    ResultWrite,
    StoredRef,
    refs_from_json,
)
from tests.fixtures.results import (
    LI_SI_ID,
    TEST_NOW,
    WANG_FANG_ID,
    ZHANG_SAN_ID,
    imaging_report,
    lab_panel,
    message,
    patient,
)
from tests.fixtures.world import HOSP_A, HOSP_B

INVALID_ID = ZHANG_SAN_ID[:-1] + ("0" if ZHANG_SAN_ID[-1] != "0" else "1")  # wrong check digit


def _count(c: Container, table: Any, *where: Any) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def _outcome(received: ReceiveOutcome | Exception) -> ReceiveOutcome:
    assert isinstance(received, ReceiveOutcome), received
    return received


class _WatchedStore:
    """The real store, counting its transactions; writing a result with the ``poisoned``
    report number fails the way a database refuses a value (a DataError), in a batch
    and alone alike."""

    def __init__(self, inner: SqlIntakeStore, poisoned: str = "") -> None:
        self._inner = inner
        self._poisoned = poisoned
        self.transactions = 0

    @contextmanager
    def _transaction(self) -> Iterator[IntakeTx]:
        self.transactions += 1
        with self._inner.transaction() as tx:
            real = tx.write_results
            poisoned = self._poisoned

            def write_results(writes: Sequence[ResultWrite], at: Any) -> None:
                if any(w.submission.report_no == poisoned for w in writes):
                    raise DataError("INSERT INTO result …", {}, Exception("value too long"))
                real(writes, at)

            tx.write_results = write_results  # type: ignore[method-assign]
            yield tx

    def transaction(self) -> AbstractContextManager[IntakeTx]:
        return self._transaction()

    def unmapped_codes(self, institution: str) -> list[object]:
        return []


def _watched(world: Container, poisoned: str = "") -> tuple[IntakeService, _WatchedStore]:
    store = _WatchedStore(SqlIntakeStore(world.engine), poisoned)
    intake = IntakeService(store, world.catalog, world.vault, world.clock)  # type: ignore[arg-type]
    return intake, store


# ---------------------------------------------------------------- one message's own validation
def test_invalid_message_in_a_batch_is_refused_naming_its_field_and_the_others_stored(
    world: Container,
) -> None:
    bad = lab_panel(HOSP_A, report_no="JY-GC-BAD", patient_demographics=patient(INVALID_ID))
    batch = [
        message(lab_panel(HOSP_A, report_no="JY-GC-1")),
        message(lab_panel(HOSP_A, report_no="JY-GC-OK"), bad),
        message(lab_panel(HOSP_A, report_no="JY-GC-2")),
    ]
    intake, store = _watched(world)
    received = intake.receive_many(batch)

    assert store.transactions == 1
    assert len(received) == 3
    refused = received[1]
    assert isinstance(refused, ValidationFailed)
    assert [p.field for p in refused.problems] == ["submissions[1].patient.identifiers[0]"]
    assert [r.report_no for r in _outcome(received[0]).results] == ["JY-GC-1"]
    assert [r.report_no for r in _outcome(received[2]).results] == ["JY-GC-2"]
    # Nothing of the refused message, not even its valid first report.
    with world.engine.connect() as conn:
        stored = sorted(conn.execute(select(result.c.report_no)).scalars())
    assert stored == ["JY-GC-1", "JY-GC-2"]
    assert _count(world, inbound_message) == 2


def test_batch_of_only_invalid_messages_stores_nothing(world: Container) -> None:
    received = world.intake.receive_many(
        [message(lab_panel(HOSP_A, report_no="JY-GC-" + "9" * 70))]
    )
    assert isinstance(received[0], ValidationFailed)
    assert received[0].problems[0].field == "submissions[0].report_no"
    assert (_count(world, result), _count(world, inbound_message)) == (0, 0)


# ---------------------------------------------------------------- idempotency and order
def test_the_same_message_twice_in_one_batch_is_stored_once_and_answered_as_a_duplicate(
    world: Container,
) -> None:
    msg = message(lab_panel(HOSP_A, report_no="JY-GC-DUP"), control_id="LIS-0001")
    intake, store = _watched(world)
    first, second = intake.receive_many([msg, msg])
    assert store.transactions == 1

    first, second = _outcome(first), _outcome(second)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.message_id == first.message_id
    assert second.results == first.results
    assert (_count(world, result), _count(world, result_version)) == (1, 1)
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(inbound_message.c.status, inbound_message.c.response).order_by(
                inbound_message.c.id
            )
        ).all()
    assert [r.status for r in rows] == ["accepted", "duplicate"]
    assert refs_from_json(rows[1].response) == first.results


def test_a_message_stored_before_and_resent_in_a_batch_is_a_duplicate(world: Container) -> None:
    msg = message(lab_panel(HOSP_A, report_no="JY-GC-RE"), control_id="LIS-0002")
    earlier = world.intake.receive(msg)
    resent, new = world.intake.receive_many(
        [msg, message(lab_panel(HOSP_A, report_no="JY-GC-NEW"))]
    )
    assert _outcome(resent).duplicate
    assert _outcome(resent).message_id == earlier.message_id
    assert _outcome(resent).results == earlier.results
    assert not _outcome(new).duplicate
    assert _count(world, result) == 2


def test_a_correction_later_in_the_same_batch_becomes_the_second_version(
    world: Container,
) -> None:
    original = lab_panel(HOSP_A, report_no="JY-GC-COR")
    alt = original.observations[0]
    corrected = replace(
        original,
        status=ResultStatus.CORRECTED,
        observations=(replace(alt, value_num=61.0), *original.observations[1:]),
    )
    intake, store = _watched(world)
    first, other, second = intake.receive_many(
        [message(original), message(lab_panel(HOSP_A)), message(corrected)]
    )
    assert store.transactions == 1

    (v1,), (v2,) = _outcome(first).results, _outcome(second).results
    assert (v1.version, v1.disposition) == (1, Disposition.CREATED)
    assert (v2.result_id, v2.version, v2.disposition) == (v1.result_id, 2, Disposition.UPDATED)
    assert _outcome(other).results[0].result_id != v1.result_id
    stored = world.results.get_result(v1.result_id)
    assert (stored.version, stored.status) == (2, ResultStatus.CORRECTED)
    assert stored.observations[0].value_num == 61.0
    assert world.results.get_result(v1.result_id, 1).observations[0].value_num == alt.value_num
    assert _count(world, observation, observation.c.result_id == v1.result_id) == len(
        original.observations
    )


def test_new_patient_in_two_messages_of_a_batch_is_created_once(world: Container) -> None:
    wang = patient(WANG_FANG_ID, "王芳", "F", mrn="MRN-8812", mrn_institution=HOSP_A)
    intake, store = _watched(world)
    a, b = intake.receive_many(
        [
            message(lab_panel(HOSP_A, patient_demographics=patient(WANG_FANG_ID, "王芳", "F"))),
            message(imaging_report(HOSP_A, patient_demographics=wang)),
        ]
    )
    owners = {
        world.results.get_result(r.result_id).patient_id
        for o in (a, b)
        for r in _outcome(o).results
    }
    assert len(owners) == 1
    assert world.results.find_patients(
        PatientIdentifier(IdentifierKind.MRN, "MRN-8812", HOSP_A)
    ) == sorted(owners)
    assert _count(world, patient_table) == 1
    assert store.transactions == 1


# ---------------------------------------------------------------- failure of the batch transaction
def test_when_the_batch_transaction_fails_the_messages_are_stored_one_by_one(
    world: Container,
) -> None:
    intake, faulty = _watched(world, "JY-GC-POISON")
    batch = [
        message(lab_panel(HOSP_A, report_no="JY-GC-A")),
        message(lab_panel(HOSP_A, report_no="JY-GC-POISON")),
        message(lab_panel(HOSP_B, report_no="JY-GC-B")),
    ]
    received = intake.receive_many(batch)

    assert isinstance(received[1], DataError)
    assert not isinstance(received[1], ValidationFailed)  # not the message's fault: AR, resend
    assert [r.report_no for r in _outcome(received[0]).results] == ["JY-GC-A"]
    assert [r.report_no for r in _outcome(received[2]).results] == ["JY-GC-B"]
    assert faulty.transactions == 1 + len(batch)  # the batch, then each message alone
    with world.engine.connect() as conn:
        stored = sorted(conn.execute(select(result.c.report_no)).scalars())
        controls = sorted(conn.execute(select(inbound_message.c.control_id)).scalars())
    assert stored == ["JY-GC-A", "JY-GC-B"]
    assert controls == sorted([batch[0].control_id, batch[2].control_id])


def test_receive_of_one_message_still_raises_what_kept_it_from_being_stored(
    world: Container,
) -> None:
    intake, _ = _watched(world, "JY-GC-POISON")
    with pytest.raises(DataError):
        intake.receive(message(lab_panel(HOSP_A, report_no="JY-GC-POISON")))
    with pytest.raises(ValidationFailed):
        intake.receive(message(lab_panel(HOSP_A, patient_demographics=patient(INVALID_ID))))
    assert _count(world, result) == 0


# ---------------------------------------------------------------- same as one by one
def _traffic() -> list[InboundMessage]:
    """A morning of a lab interface: new reports of several patients, a resend, an
    amendment, a report resent unchanged under a new control id, an invalid message, an
    unmapped local code, and another hospital's report of the same patient."""
    zhang = patient(ZHANG_SAN_ID, "张三", mrn="A-1001")
    li = patient(LI_SI_ID, "李四", "F")
    issued = TEST_NOW - timedelta(days=1)
    lft = lab_panel(HOSP_A, report_no="JY-EQ-1", patient_demographics=zhang, issued_at=issued)
    ct = imaging_report(HOSP_A, report_no="CT-EQ-1", patient_demographics=li)
    hba1c = ObservationValue("HBA1C", "糖化血红蛋白", ValueType.NM, 6.1, "", "%", 4, 6, "4-6", "H")
    unmapped = lab_panel(
        HOSP_A,
        report_no="JY-EQ-2",
        local_code="LIS-NEW-777",
        local_name="新开展项目",
        patient_demographics=li,
        observations=(hba1c,),
    )
    amended = replace(lft, status=ResultStatus.AMENDED, signer="周主任")
    first = message(lft, ct, control_id="EQ-0001")
    return [
        first,
        message(unmapped, control_id="EQ-0002"),
        first,  # resend
        message(lab_panel(HOSP_A, patient_demographics=patient(INVALID_ID)), control_id="EQ-0003"),
        message(amended, control_id="EQ-0004"),
        message(ct, control_id="EQ-0005"),  # the CT report again, unchanged
        message(
            lab_panel(HOSP_B, report_no="JY-EQ-B1", patient_demographics=zhang),
            control_id="EQ-0006",
        ),
        message(amended, control_id="EQ-0004"),  # resend of the amendment
    ]


def _ref(r: StoredRef) -> tuple[object, ...]:
    return (r.version, r.disposition, r.report_no, r.local_code, r.item_code, r.mark_symbol)


def _normalized(world: Container, received: Sequence[ReceiveOutcome | Exception]) -> object:
    """What was answered and stored, without the ids the database happened to assign."""
    with world.engine.connect() as conn:
        messages = {
            r.id: r.control_id
            for r in conn.execute(select(inbound_message.c.id, inbound_message.c.control_id))
        }
        rows = conn.execute(
            select(
                inbound_message.c.control_id, inbound_message.c.status, inbound_message.c.response
            ).order_by(inbound_message.c.id)
        ).all()
        inbound = [
            (r.control_id, r.status, [_ref(ref) for ref in refs_from_json(r.response)])
            for r in rows
        ]
        hashes = {
            r.patient_id: r.value_hash
            for r in conn.execute(
                select(patient_identifier.c.patient_id, patient_identifier.c.value_hash).where(
                    patient_identifier.c.kind == "national_id"
                )
            )
        }
        results = sorted(
            (
                r.institution_code,
                r.report_no,
                r.local_code,
                r.version,
                r.status,
                r.item_code,
                r.mark_symbol,
                r.signer,
                hashes.get(r.patient_id),
                messages[r.source_message_id],
            )
            for r in conn.execute(select(result))
        )
        versions = sorted(
            (r.report_no, r.version, r.status)
            for r in conn.execute(
                select(result.c.report_no, result_version.c.version, result_version.c.status).join(
                    result, result.c.id == result_version.c.result_id
                )
            )
        )
        counts = [
            _count(world, t)
            for t in (observation, patient_table, patient_identifier, patient_link_event, outbox)
        ]
    answers: list[object] = []
    for r in received:
        if isinstance(r, ReceiveOutcome):
            answers.append((messages[r.message_id], r.duplicate, [_ref(ref) for ref in r.results]))
        else:
            answers.append((type(r).__name__, [(p.field, p.message) for p in r.problems]))  # type: ignore[attr-defined]
    return answers, inbound, results, versions, counts


def _clear_intake(world: Container) -> None:
    with world.engine.begin() as conn:
        for table in (
            outbox,
            observation,
            result_version,
            result,
            patient_link_event,
            patient_identifier,
            patient_table,
            inbound_message,
        ):
            conn.execute(delete(table))


def test_a_batch_stores_and_answers_exactly_as_one_message_after_another(
    world: Container,
) -> None:
    traffic = _traffic()
    one_by_one: list[ReceiveOutcome | Exception] = []
    for msg in traffic:
        try:
            one_by_one.append(world.intake.receive(msg))
        except ValidationFailed as exc:
            one_by_one.append(exc)
    expected = _normalized(world, one_by_one)
    _clear_intake(world)

    intake, store = _watched(world)
    batched = intake.receive_many(traffic)
    assert store.transactions == 1  # one group commit, no fallback

    assert _normalized(world, batched) == expected
    answers = expected[0]  # type: ignore[index]
    assert [a[1] for a in answers if len(a) == 3] == [False, False, True, False, False, False, True]
