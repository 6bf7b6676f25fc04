"""QC lifecycle on both backends: evaluations renew or remove marks, proposals become
suspensions only when the authority confirms, history and notifications are kept."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from huren.adapters.db import tables as t
from huren.adapters.db.governance import SqlQcTx
from huren.bootstrap import Container
from huren.domain.errors import Conflict, Forbidden, ValidationFailed
from huren.domain.masterdata import QualificationStatus
from huren.domain.qc import (
    EvaluationKind,
    Inspector,
    Organiser,
    ProposalStatus,
    SuspensionReason,
    TargetKind,
)
from huren.services.qc import EvaluationInput
from tests.fixtures import governance as gv
from tests.fixtures import world as w


def _eqa(inst: str, on: date, passed: bool, group: str = "生化") -> EvaluationInput:
    return EvaluationInput(
        institution=inst,
        kind=EvaluationKind.EQA_ROUND,
        organiser=Organiser.NATIONAL_CENTRE,
        evaluated_on=on,
        passed=passed,
        group=group,
        round_id=f"NCCL-{on:%Y%m}",
    )


def _events(c: Container) -> list[tuple[str, str, str]]:
    with c.engine.connect() as conn:
        rows = conn.execute(
            select(
                t.qualification_event.c.actor,
                t.qualification_event.c.new_status,
                t.qualification_event.c.reason,
            )
        )
        return [(r.actor, r.new_status, r.reason) for r in rows]


def _store_result_with_mark(c: Container, issued_at: datetime) -> int:
    """A result stored the way intake stores it: with the mark computed at issue time."""
    mark = c.catalog.get().mark_for(w.HOSP_A, w.LFT, issued_at)
    assert mark is not None
    pid = gv.add_patient(c.engine, issued_at)
    rid = gv.add_result(
        c.engine, patient_id=pid, institution=w.HOSP_A, item=w.LFT, performed_at=issued_at
    )
    with c.engine.begin() as conn:
        conn.execute(
            t.result.update()
            .where(t.result.c.id == rid)
            .values(mark_scope=mark.scope, mark_symbol=mark.symbol)
        )
    return rid


def test_two_failed_eqa_rounds_raise_a_proposal_but_keep_the_mark(world: Container) -> None:
    # 沪卫医〔2024〕135号 五(二): 可暂停 — the platform proposes, the authority decides
    qc = world.qc
    qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 1, 20), False))
    second = qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 5, 20), False))
    assert second.proposal_id is not None
    proposal = qc.proposal(gv.REGULATOR_HE, second.proposal_id)
    assert proposal.status is ProposalStatus.PROPOSED
    assert proposal.evidence == (second.evaluation.id - 1, second.evaluation.id)
    assert world.catalog.get().mark_for(w.HOSP_A, w.LFT, world.clock.now()) is not None


def test_confirmed_suspension_drops_the_mark_of_new_results_and_old_ones_keep_it(
    world: Container,
) -> None:
    qc = world.qc
    old_issue = world.clock.now() - timedelta(days=10)
    old_result = _store_result_with_mark(world, old_issue)
    qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 1, 20), False))
    pid = qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 5, 20), False)).proposal_id
    assert pid is not None

    qc.confirm(gv.REGULATOR_HE, pid, "经核实，整改无效")

    catalog = world.catalog.get()
    assert catalog.mark_for(w.HOSP_A, w.LFT, world.clock.now()) is None  # new result: no mark
    assert (
        catalog.mark_for(w.HOSP_A, w.CT_CHEST, world.clock.now()) is not None
    )  # other items keep it
    with world.engine.connect() as conn:
        stored = conn.execute(
            select(t.result.c.mark_symbol).where(t.result.c.id == old_result)
        ).scalar()
    assert stored == "☆"  # the earlier result keeps the mark it was issued with


def test_suspension_records_actor_reason_and_notifies_the_institution(world: Container) -> None:
    qc = world.qc
    qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 1, 20), False))
    pid = qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 5, 20), False)).proposal_id
    assert pid is not None
    qc.confirm(gv.REGULATOR_HE, pid, "")
    events = _events(world)
    assert ("regulator:he-regulator", "suspended") in [(a, s) for a, s, _ in events]
    assert any("室间质评两次不合格且整改无效" in r for _, s, r in events if s == "suspended")
    with world.engine.connect() as conn:
        topics = [
            (r.topic, r.payload["institution"])
            for r in conn.execute(select(t.outbox.c.topic, t.outbox.c.payload))
        ]
    assert ("qc.qualification_suspended", w.HOSP_A) in topics


def test_reinstatement_restores_the_mark_and_is_recorded(world: Container) -> None:
    qc = world.qc
    proposal = qc.raise_manual(
        gv.REGULATOR_HE,
        w.HOSP_B,
        TargetKind.ITEM,
        w.CT_CHEST,
        SuspensionReason.SERIOUS_QUALITY_PROBLEM,
        "督查发现胸部CT图像质量严重不达标且整改不到位",
        confirm_now=True,
    )
    assert proposal.status is ProposalStatus.CONFIRMED
    assert world.catalog.get().mark_for(w.HOSP_B, w.CT_CHEST, world.clock.now()) is None
    back = qc.reinstate(gv.REGULATOR_HE, proposal.id, "复查合格")
    assert back.status is ProposalStatus.REINSTATED
    assert world.catalog.get().mark_for(w.HOSP_B, w.CT_CHEST, world.clock.now()) is not None
    assert [s for _, s, _ in _events(world)] == ["suspended", "active"]


def test_qc_centre_cannot_confirm_a_suspension(world: Container) -> None:
    qc = world.qc
    qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 1, 20), False))
    pid = qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 5, 20), False)).proposal_id
    assert pid is not None
    with pytest.raises(Forbidden):
        qc.confirm(gv.QC_HE, pid)


def test_rejected_proposal_cannot_be_confirmed_later(world: Container) -> None:
    qc = world.qc
    qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 1, 20), False))
    pid = qc.record_evaluation(gv.QC_HE, _eqa(w.HOSP_A, date(2026, 5, 20), False)).proposal_id
    assert pid is not None
    qc.reject(gv.REGULATOR_HE, pid, "第二轮为样本运输问题，已复测合格")
    with pytest.raises(ValidationFailed):
        qc.confirm(gv.REGULATOR_HE, pid)


def test_qc_centre_records_only_inside_its_jurisdiction(world: Container) -> None:
    with pytest.raises(Forbidden):
        world.qc.record_evaluation(gv.QC_SH, _eqa(w.HOSP_A, date(2026, 5, 20), True))


# ---------------------------------------------------------------- Gansu


def _gs_evaluation(kind: EvaluationKind, passed: bool, on: date) -> EvaluationInput:
    return EvaluationInput(
        institution=w.GS1,
        kind=kind,
        organiser=Organiser.PROVINCIAL_CENTRE,
        evaluated_on=on,
        passed=passed,
        item=w.CT_CHEST,
    )


def test_gansu_pass_creates_a_qualification_valid_for_a_year(world: Container) -> None:
    # 甘卫医政函〔2025〕16号 三(一)2: 定期（每年1次）复评
    out = world.qc.record_evaluation(
        gv.QC_GS, _gs_evaluation(EvaluationKind.EVALUATION, True, date(2026, 3, 2))
    )
    assert out.renewed_until == date(2027, 3, 1)
    assert world.catalog.get().mark_for(w.GS1, w.CT_CHEST, world.clock.now()) is not None


def test_gansu_failed_spot_check_removes_the_mark_until_the_province_accepts_rectification(
    world: Container,
) -> None:
    # 甘卫医政函〔2025〕16号 三(二)4: 抽查不合格的项目不得标注互认标志，整改后经省级质控中心验收合格方可标注
    qc = world.qc
    qc.record_evaluation(
        gv.QC_GS, _gs_evaluation(EvaluationKind.EVALUATION, True, date(2026, 3, 2))
    )
    failed = qc.record_evaluation(
        gv.QC_GS, _gs_evaluation(EvaluationKind.SPOT_CHECK, False, date(2026, 6, 1))
    )
    assert failed.marks_removed
    assert failed.proposal_id is None
    assert world.catalog.get().mark_for(w.GS1, w.CT_CHEST, world.clock.now()) is None

    with pytest.raises(Forbidden):  # a city centre may not accept it
        qc.accept_rectification(gv.QC_GS_CITY, failed.evaluation.id, "更换探测器并复训技师")
    assert world.catalog.get().mark_for(w.GS1, w.CT_CHEST, world.clock.now()) is None

    qc.accept_rectification(gv.QC_GS, failed.evaluation.id, "更换探测器并复训技师，复查合格")
    assert world.catalog.get().mark_for(w.GS1, w.CT_CHEST, world.clock.now()) is not None
    with pytest.raises(Conflict):
        qc.accept_rectification(gv.QC_GS, failed.evaluation.id, "再次验收")


def test_shanghai_pass_is_valid_for_six_months(world: Container) -> None:
    # 沪卫医〔2024〕135号 五(二): 不得少于半年一次
    out = world.qc.record_evaluation(
        gv.QC_SH,
        EvaluationInput(
            institution=w.SH2,
            kind=EvaluationKind.EQA_ROUND,
            organiser=Organiser.NATIONAL_CENTRE,
            evaluated_on=date(2026, 4, 15),
            passed=True,
            group="生化",
            scope="SH",
        ),
    )
    assert out.renewed_until == date(2026, 10, 14)
    assert out.qualification_id is not None


def test_expired_qualifications_are_closed_and_warned_before(world: Container) -> None:
    qc = world.qc
    day = date(2026, 12, 10)
    warnings = qc.expiring(today=day)
    assert {wq.qualification.institution for wq in warnings} >= {w.HOSP_A, w.SH1}
    assert all(wq.days_left == 21 for wq in warnings)
    assert qc.close_expired(today=date(2027, 1, 2)) == len(warnings)
    assert world.catalog.get().qualifications[w.HOSP_A][0].status is QualificationStatus.EXPIRED


def test_an_expiry_read_by_two_nodes_is_recorded_once(
    world: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes sharing a database run the hourly job at the same moment: both read the
    qualification as active, one closes it first; the other must not record it again."""
    day = date(2027, 1, 2)
    with world.qc._store.transaction() as tx:
        stale = tx.active_expiring(day)
    assert stale
    assert world.qc.close_expired(today=day) == len(stale)
    before = _events(world)
    monkeypatch.setattr(SqlQcTx, "active_expiring", lambda self, before: stale)
    assert world.qc.close_expired(today=day) == 0
    assert _events(world) == before


def test_a_status_changed_since_it_was_read_is_a_conflict(world: Container) -> None:
    with world.qc._store.transaction() as tx:
        sq = tx.active_expiring(date(2027, 1, 2))[0]
    world.qc.close_expired(today=date(2027, 1, 2))
    with pytest.raises(Conflict, match="资质状态已被更改"), world.qc._store.transaction() as tx:
        world.qc._set_status(
            tx, sq, QualificationStatus.SUSPENDED, "测试", "暂停", datetime(2027, 1, 3, tzinfo=UTC)
        )


def test_organiser_other_than_the_suggestion_is_recorded_and_flagged(world: Container) -> None:
    out = world.qc.record_evaluation(
        gv.QC_HE,
        EvaluationInput(
            institution=w.HOSP_A,
            kind=EvaluationKind.EQA_ROUND,
            organiser=Organiser.PROVINCIAL_CENTRE,
            evaluated_on=date(2026, 5, 1),
            passed=True,
            item=w.CBC,
        ),
    )
    assert out.suggested_organiser is Organiser.NATIONAL_CENTRE
    assert out.organiser_differs


# ---------------------------------------------------------------- spot checks, published list


def test_spot_check_draw_is_recorded_with_its_seed_and_repeats(world: Container) -> None:
    roster = [
        Inspector("李专家", w.HOSP_A),
        Inspector("王专家", w.HOSP_B),
        Inspector("赵专家", w.HOSP_C),
    ]
    first = world.qc.draw(gv.REGULATOR_HE, "HE", "2026H1", 2, 1, roster, seed=42)
    again = world.qc.draw(gv.REGULATOR_HE, "HE", "2026H1", 2, 1, roster, seed=42)
    assert first.seed == 42
    assert first.drawn == again.drawn
    stored = world.qc.get_draw(first.id)
    assert stored.drawn == first.drawn
    for row in stored.drawn:
        assert all(i["institution"] != row["institution"] for i in row["inspectors"])


def test_half_yearly_list_shows_what_was_in_force_on_publication_day(world: Container) -> None:
    # 甘卫医政函〔2025〕16号 四(一): 每半年公布互认医疗机构清单
    qc = world.qc
    before = {(e.institution, e.target) for e in qc.published_institutions("HE", "2026H1")}
    qc.raise_manual(
        gv.REGULATOR_HE,
        w.HOSP_B,
        TargetKind.ITEM,
        w.CT_CHEST,
        SuspensionReason.DISHONEST_CONDUCT,
        "伪造质控记录",
        confirm_now=True,
    )
    after_h1 = {(e.institution, e.target) for e in qc.published_institutions("HE", "2026H1")}
    assert (w.HOSP_B, w.CT_CHEST) in before
    assert after_h1 == before  # the January list does not change afterwards
    after_h2 = {(e.institution, e.target) for e in qc.published_institutions("HE", "2026H2")}
    assert (w.HOSP_B, w.CT_CHEST) not in after_h2
    assert (w.HOSP_A, w.CT_CHEST) in after_h2
