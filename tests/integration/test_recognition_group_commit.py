"""The writes of concurrent checks share one commit (group commit), on both backends: each
check returns only once its own rows are committed, with its own reminder ids, and one
check whose rows cannot be written fails alone."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from huren.adapters.db import recognition as adapter
from huren.adapters.db.tables import audit_event, reminder
from huren.adapters.db.tables_recognition import cds_card
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.recognition import (
    AuditRecord,
    CardRecord,
    CheckRequest,
    CheckWrites,
    PatientRef,
    ReminderRecord,
)
from tests.fixtures.results import TEST_NOW, ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B

CLINICIAN_B = Principal(101, "dr.wang", "王医生", Role.CLINICIAN, institution=HOSP_B)


def _writes(n: int, result_id: int | None = None) -> CheckWrites:
    """A check's rows: two reminders, a card on the second, the audit row."""
    request = f"req-{n}"
    reminders = tuple(
        ReminderRecord(TEST_NOW, "cds-hooks", HOSP_B, "", "dr", None, None, f"L{k}", 0, 0, request)
        for k in range(2)
    )
    card = CardRecord(
        f"00000000-0000-4000-8000-{n:012d}",
        1,  # the position of its reminder
        TEST_NOW,
        "huren-recognition-order-select",
        request,
        HOSP_B,
        "",
        "dr",
        None,
        None,
        "ServiceRequest/x",
        result_id,
        None,
        None,
    )
    audit = AuditRecord(TEST_NOW, None, "dr", "clinician", HOSP_B, None, None, "check", request)
    return CheckWrites(reminders, (card,), audit)


@pytest.fixture
def held_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, list[int]]]:
    """The first group commit waits until released, so that the checks arriving
    meanwhile queue for the next one; records how many checks each commit wrote."""
    release = threading.Event()
    sizes: list[int] = []
    write = adapter.SqlRecognitionTx._write_checks

    def held(tx: adapter.SqlRecognitionTx, checks: Sequence[CheckWrites]) -> list[list[int]]:
        if not sizes:
            sizes.append(len(checks))
            release.wait(10)
        else:
            sizes.append(len(checks))
        return write(tx, checks)

    monkeypatch.setattr(adapter.SqlRecognitionTx, "_write_checks", held)
    yield release, sizes
    release.set()


def _in_threads(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread; what each returned or raised."""
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except Exception as exc:  # handed back to the test
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    threads[0].start()
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(20)
    return out


def _record(world: Container, writes: CheckWrites) -> Callable[[], list[int]]:
    def call() -> list[int]:
        with world.recognition._store.reading() as tx:
            ids = tx.record_check(writes)
        # Committed when it returns: another connection sees the rows.
        with world.engine.connect() as conn:
            seen = conn.execute(
                select(reminder.c.request_id).where(reminder.c.id.in_(ids))
            ).scalars()
            assert sorted(seen) == [writes.audit.purpose] * len(ids)
        return ids

    return call


def _waiting_for_leader(world: Container, n: int) -> None:
    """Until ``n`` checks wait behind the held commit."""
    group = world.recognition._store._group  # type: ignore[attr-defined]
    for _ in range(2000):
        with group._lock:
            if len(group._waiting) >= n:
                return
        threading.Event().wait(0.005)
    raise AssertionError("checks did not queue")


def _one_bad_among_three(world: Container, release: threading.Event, sizes: list[int]) -> list[Any]:
    """A first check held in its commit; meanwhile three checks queue, the middle one
    with a card the foreign key refuses; then the first is released. What each of the
    three returned or raised."""
    first = threading.Thread(target=_record(world, _writes(0)))
    first.start()
    while not sizes:
        threading.Event().wait(0.005)
    bad = _writes(2, result_id=987_654_321)  # no such result: the foreign key refuses it
    results: list[Any] = []
    later = threading.Thread(
        target=lambda: results.extend(
            _in_threads(
                [_record(world, _writes(1)), _record(world, bad), _record(world, _writes(3))]
            )
        )
    )
    later.start()
    _waiting_for_leader(world, 3)
    release.set()
    first.join(20)
    later.join(20)
    return results


def test_checks_arriving_during_a_commit_share_the_next_one(
    world: Container, held_leader: tuple[threading.Event, list[int]]
) -> None:
    release, sizes = held_leader
    first = threading.Thread(target=_record(world, _writes(0)))
    first.start()
    while not sizes:
        threading.Event().wait(0.005)
    results: list[Any] = []
    later = threading.Thread(
        target=lambda: results.extend(_in_threads([_record(world, _writes(n)) for n in (1, 2, 3)]))
    )
    later.start()
    _waiting_for_leader(world, 3)
    release.set()
    first.join(20)
    later.join(20)
    assert sizes == [1, 3]  # the three waiting checks: one transaction, one commit
    assert all(isinstance(ids, list) and len(ids) == 2 for ids in results)
    ids = [i for r in results for i in r]
    assert len(set(ids)) == 6
    with world.engine.connect() as conn:
        cards = dict(conn.execute(select(cds_card.c.hook_instance, cds_card.c.reminder_id)).all())
        audits = conn.execute(select(func.count()).select_from(audit_event)).scalar_one()
        by_request = dict(
            conn.execute(
                select(reminder.c.request_id, func.max(reminder.c.id)).group_by(
                    reminder.c.request_id
                )
            ).all()
        )
    # Each card points at its own check's second reminder row.
    assert cards == by_request
    assert audits == 4


def test_a_check_whose_rows_cannot_be_written_fails_alone(
    world: Container, held_leader: tuple[threading.Event, list[int]]
) -> None:
    release, sizes = held_leader
    ok, failed, also_ok = _one_bad_among_three(world, release, sizes)
    assert isinstance(ok, list)
    assert isinstance(also_ok, list)
    assert isinstance(failed, Exception)
    with world.engine.connect() as conn:
        requests = set(conn.execute(select(reminder.c.request_id)).scalars())
        audits = set(conn.execute(select(audit_event.c.purpose)).scalars())
    assert requests == audits == {"req-0", "req-1", "req-3"}  # nothing of req-2 stays


def test_concurrent_checks_each_answer_with_their_own_committed_reminders(
    world: Container,
) -> None:
    store(world, lab_panel(HOSP_A))
    by_id = PatientRef(identifiers=(PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID),))

    def check(n: int) -> Callable[[], Any]:
        def call() -> Any:
            out = world.recognition.check(
                CheckRequest(
                    CLINICIAN_B, by_id, ("B-LFT", "NOT-MAPPED"), "rest", request_id=f"c{n}"
                )
            )
            # Committed when the answer is given: another connection sees the rows.
            with world.engine.connect() as conn:
                rows = conn.execute(
                    select(reminder.c.id, reminder.c.request_id, reminder.c.local_code)
                    .where(reminder.c.id.in_([a.reminder_id for a in out.items]))
                    .order_by(reminder.c.id)
                ).all()
            return out, rows

        return call

    for n, (out, rows) in enumerate(_in_threads([check(n) for n in range(8)])):
        assert [a.reminder_id for a in out.items] == [r.id for r in rows]
        assert [(r.request_id, r.local_code) for r in rows] == [
            (f"c{n}", "B-LFT"),
            (f"c{n}", "NOT-MAPPED"),
        ]
        assert out.items[0].recognition is not None
        assert out.items[0].recognition.best is not None


def test_a_check_woken_before_the_commit_still_waits_for_it(
    world: Container,
    held_leader: tuple[threading.Event, list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waiting check may wake while the batch holding its rows is still being written
    (a wake-up meant for an earlier batch, late under load): it must not return before
    that batch commits. Here every write wakes the waiting checks and pauses before its
    commit; the failing row makes each check be written alone, one commit after another."""
    release, sizes = held_leader
    group = world.recognition._store._group  # type: ignore[attr-defined]
    writing = adapter.SqlRecognitionTx.writing

    @contextmanager
    def waking(tx: adapter.SqlRecognitionTx) -> Iterator[None]:
        with writing(tx):
            yield
            with group._lock:
                group._done.notify_all()
            threading.Event().wait(0.1)  # the woken checks look before this commit

    monkeypatch.setattr(adapter.SqlRecognitionTx, "writing", waking)
    ok, failed, also_ok = _one_bad_among_three(world, release, sizes)
    assert isinstance(ok, list), ok
    assert isinstance(also_ok, list), also_ok
    assert isinstance(failed, Exception)
