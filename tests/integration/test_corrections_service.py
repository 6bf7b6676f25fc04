"""纠错反馈 lifecycle on both backends: file → producing institution's queue → corrected
(a new version through intake, the old one kept) or rejected (reason to the requester);
readers and accepters of the old version are notified; overdue requests reach the
regulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from huren.adapters.db.tables import decision, outbox, result_version
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.corrections import CorrectionStatus, due_at
from huren.domain.errors import Conflict, Forbidden, NotFound, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.corrections import CorrectionEdit, ObservationEdit
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B, LFT, SH1
from tests.integration.sharing_helpers import principal

ZHANG = PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID)


@pytest.fixture
def lft(world: Container) -> int:
    return store(world, lab_panel(HOSP_A, report_no="JY20260613-0001")).results[0].result_id


@pytest.fixture
def people(world: Container) -> dict[str, Principal]:
    return {
        "doctor": principal(world, Role.CLINICIAN, institution=HOSP_B, name="刘医生"),
        "admin_a": principal(world, Role.INSTITUTION_ADMIN, institution=HOSP_A, name="周主任"),
        "admin_b": principal(world, Role.INSTITUTION_ADMIN, institution=HOSP_B),
        "regulator": principal(world, Role.REGULATOR, jurisdiction="HE"),
    }


def _kinds(world: Container, who: Principal) -> list[str]:
    return [n["kind"] for n in world.sharing.corrections.inbox(who)]


def test_a_request_goes_to_the_producing_institutions_queue_with_a_due_date(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    rec = world.sharing.corrections.file(
        people["doctor"], lft, "ALT 数值与纸质报告不符（纸质为 36）"
    )
    assert rec.status is CorrectionStatus.OPEN
    assert rec.producing_institution == HOSP_A
    # filed Monday 2026-06-15: five working days later is Monday 2026-06-22
    assert rec.due_at == due_at(world.clock.now(), 5) == datetime(2026, 6, 22, 9, 30, tzinfo=UTC)
    assert [r.id for r in world.sharing.corrections.queue(people["admin_a"])] == [rec.id]
    assert world.sharing.corrections.queue(people["admin_b"]) == []
    assert _kinds(world, people["admin_a"]) == ["correction_filed"]


def test_results_under_an_open_request_are_flagged_for_recognition(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    other = store(world, lab_panel(HOSP_A)).results[0].result_id
    world.sharing.corrections.file(people["doctor"], lft, "姓名有误")
    assert world.sharing.corrections.open_corrections([lft, other]) == {lft}


def test_correcting_creates_a_new_version_and_keeps_the_old_one_readable(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    rec = world.sharing.corrections.file(people["doctor"], lft, "ALT 应为 36")
    done = world.sharing.corrections.accept(
        people["admin_a"],
        rec.id,
        CorrectionEdit(observations=(ObservationEdit("ALT", value_num=36.0, flag="N"),)),
        "仪器传输错误，已按原始记录更正",
    )
    assert done.status is CorrectionStatus.ACCEPTED
    assert done.new_version == 2
    r = world.sharing.retrieval
    now = r.open_report(people["doctor"], lft, "correction")
    alt = next(o for o in now.result.observations if o.code == "ALT")
    assert (alt.value_num, alt.flag, str(now.result.status)) == (36.0, "N", "corrected")
    old = r.open_report(people["doctor"], lft, "correction", version=1)
    assert next(o for o in old.result.observations if o.code == "ALT").value_num == 56.0
    assert "纠错申请" in now.versions[-1].reason
    assert world.sharing.corrections.open_corrections([lft]) == set()


def test_everyone_who_viewed_or_accepted_the_old_version_is_notified(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    reader = principal(world, Role.CLINICIAN, institution=HOSP_B, name="陈医生")
    world.sharing.retrieval.search(reader, ZHANG, "treatment")
    accepter = principal(world, Role.CLINICIAN, institution=HOSP_B, name="王医生")
    with world.engine.begin() as c:
        c.execute(
            insert(decision).values(
                at=world.clock.now(),
                institution_code=HOSP_B,
                clinician=accepter.username,
                item_code=LFT,
                result_id=lft,
                result_version=1,
                action="accepted",
            )
        )
    bystander = principal(world, Role.CLINICIAN, institution=HOSP_B)
    rec = world.sharing.corrections.file(people["doctor"], lft, "ALT 应为 36")
    world.sharing.corrections.accept(
        people["admin_a"],
        rec.id,
        CorrectionEdit(observations=(ObservationEdit("ALT", value_num=36.0),)),
        "更正",
    )
    assert _kinds(world, reader) == ["result_corrected"]
    assert _kinds(world, accepter) == ["result_corrected"]
    assert _kinds(world, people["doctor"]) == ["correction_accepted"]
    assert _kinds(world, bystander) == []
    with world.engine.connect() as c:
        events = c.execute(
            select(func.count()).where(outbox.c.topic == "notification.created")
        ).scalar_one()
    # admin_a (filed) + requester + reader + accepter
    assert events == 4


def test_a_rejection_reaches_the_requester_with_its_reason_and_changes_nothing(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    rec = world.sharing.corrections.file(people["doctor"], lft, "ALT 似乎偏高")
    done = world.sharing.corrections.reject(people["admin_a"], rec.id, "已复核原始记录，结果无误")
    assert done.status is CorrectionStatus.REJECTED
    note = world.sharing.corrections.inbox(people["doctor"])[0]
    assert note["kind"] == "correction_rejected"
    assert "结果无误" in note["body"]
    with world.engine.connect() as c:
        versions = c.execute(
            select(func.count()).where(result_version.c.result_id == lft)
        ).scalar_one()
    assert versions == 1


def test_only_the_producing_institution_reviews(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    rec = world.sharing.corrections.file(people["doctor"], lft, "有误")
    with pytest.raises(Forbidden):
        world.sharing.corrections.reject(people["admin_b"], rec.id, "不是我们的")


def test_a_closed_request_cannot_be_reviewed_again(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    rec = world.sharing.corrections.file(people["doctor"], lft, "有误")
    world.sharing.corrections.reject(people["admin_a"], rec.id, "无误")
    with pytest.raises(Conflict):
        world.sharing.corrections.reject(people["admin_a"], rec.id, "再次")


def test_a_correction_that_changes_nothing_is_refused(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    rec = world.sharing.corrections.file(people["doctor"], lft, "有误")
    with pytest.raises(ValidationFailed):
        world.sharing.corrections.accept(people["admin_a"], rec.id, CorrectionEdit(), "无改动")
    assert world.sharing.corrections.open_corrections([lft]) == {lft}


def test_an_empty_request_is_refused(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    with pytest.raises(ValidationFailed) as err:
        world.sharing.corrections.file(people["doctor"], lft, "   ")
    assert err.value.problems[0].field == "text"


def test_nobody_files_on_a_result_they_cannot_read(
    world: Container, people: dict[str, Principal]
) -> None:
    sh = store(world, lab_panel(SH1, local_code=LFT)).results[0].result_id
    with pytest.raises(NotFound):
        world.sharing.corrections.file(people["doctor"], sh, "有误")


def test_overdue_requests_are_visible_to_the_regulator(
    world: Container, lft: int, people: dict[str, Principal]
) -> None:
    world.sharing.corrections.file(people["doctor"], lft, "有误")
    assert world.sharing.corrections.overdue(people["regulator"]) == []
    world.clock.at += timedelta(days=8)  # type: ignore[attr-defined]
    late = world.sharing.corrections.overdue(people["regulator"])
    assert [r.result_id for r in late] == [lft]
    b = world.sharing.corrections.correction_backlog("HE")
    assert (b.open, b.overdue, b.accepted, b.rejected) == (1, 1, 0, 0)
    sh_regulator = principal(world, Role.REGULATOR, jurisdiction="SH")
    assert world.sharing.corrections.overdue(sh_regulator) == []
    with pytest.raises(Forbidden):
        world.sharing.corrections.overdue(sh_regulator, "HE")
