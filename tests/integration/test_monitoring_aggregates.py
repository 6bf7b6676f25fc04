"""Monitoring on both backends: incremental aggregates equal a full recompute and the
counts taken straight from the source tables; drill-down, outliers, repeats, targets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select

from huren.adapters.db import tables as t
from huren.adapters.db import tables_governance as g
from huren.bootstrap import Container
from huren.domain.monitoring import Metric
from huren.services.monitoring import Dimension, Level, Period
from tests.fixtures import governance as gv
from tests.fixtures import world as w

WHOLE = Period(date(2025, 12, 1), date(2026, 12, 1))


@pytest.fixture
def active(world: Container) -> Container:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    return world


def _snapshot(c: Container) -> dict[str, list[tuple[object, ...]]]:
    out = {}
    with c.engine.connect() as conn:
        for table in (
            g.monitoring_month,
            g.monitoring_month_inst,
            g.monitoring_decline,
            g.monitoring_decline_inst,
        ):
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


def test_incremental_runs_in_small_batches_equal_a_full_recompute(active: Container) -> None:
    mon = active.monitoring
    mon.refresh(batch=37, max_batches=3)  # part of the way
    with active.engine.begin() as conn:  # more activity arrives between runs
        conn.execute(
            insert(t.decision).values(
                at=datetime(2026, 6, 1, 2, 0, tzinfo=UTC),
                institution_code=w.HOSP_A,
                department="急诊科",
                clinician="A-late",
                item_code=w.LFT,
                action="declined",
                reason_code="HB-4",
            )
        )
    mon.refresh(batch=37)
    incremental = _snapshot(active)
    mon.recompute()
    assert _snapshot(active) == incremental
    assert incremental["monitoring_month"]


def test_running_refresh_twice_counts_nothing_twice(active: Container) -> None:
    mon = active.monitoring
    mon.refresh()
    first = _snapshot(active)
    report = mon.refresh()
    assert (report.reminders, report.decisions) == (0, 0)
    assert _snapshot(active) == first


def test_institution_totals_match_the_source_tables(active: Container) -> None:
    active.monitoring.refresh()
    with active.engine.connect() as conn:
        d = t.decision.c
        accepted: dict[str, int] = dict(
            conn.execute(
                select(d.institution_code, func.count())
                .where(d.action == "accepted")
                .group_by(d.institution_code)
            ).all()
        )
        reminders: dict[str, int] = dict(
            conn.execute(
                select(t.reminder.c.institution_code, func.count()).group_by(
                    t.reminder.c.institution_code
                )
            ).all()
        )
    got = dict(active.monitoring._store.totals(Dimension.INSTITUTION, None, WHOLE.start, WHOLE.end))
    assert {k: v.accepted for k, v in got.items() if v.accepted} == accepted
    assert {k: v.reminders for k, v in got.items()} == reminders


def test_rows_not_yet_settled_wait_for_the_next_run(active: Container) -> None:
    now = active.clock.now()
    with active.engine.begin() as conn:
        conn.execute(
            insert(t.reminder).values(
                at=now - timedelta(seconds=5),
                channel="rest",
                institution_code=w.HOSP_A,
                item_code=w.LFT,
                recognizable=1,
            )
        )
    mon = active.monitoring
    mon.refresh()
    june = Period(date(2026, 6, 1), date(2026, 6, 1))
    before = dict(mon._store.totals(Dimension.INSTITUTION, [w.HOSP_A], june.start, june.end))
    active.clock.at = now + timedelta(minutes=1)  # type: ignore[attr-defined]
    mon.refresh()
    after = dict(mon._store.totals(Dimension.INSTITUTION, [w.HOSP_A], june.start, june.end))
    prior = before[w.HOSP_A].reminders if w.HOSP_A in before else 0
    assert after[w.HOSP_A].reminders == prior + 1


def test_drill_down_from_province_to_clinician_adds_up(active: Container) -> None:
    mon = active.monitoring
    mon.refresh()
    reg = gv.REGULATOR_HE
    provinces = mon.drill(reg, Level.PROVINCE, WHOLE)
    assert [r.key for r in provinces.rows] == ["HE"]
    cities = mon.drill(reg, Level.CITY, WHOLE, scope="HE")
    assert {r.key for r in cities.rows} == {"HE-SJZ", "HE-BD"}
    assert sum(r.counters.accepted for r in cities.rows) == provinces.rows[0].counters.accepted
    insts = mon.drill(reg, Level.INSTITUTION, WHOLE, scope="HE-BD")
    bd = next(r for r in cities.rows if r.key == "HE-BD")
    assert sum(r.counters.accepted for r in insts.rows) == bd.counters.accepted
    depts = mon.drill(reg, Level.DEPARTMENT, WHOLE, institution=w.HOSP_B)
    hosp_b = next(r for r in insts.rows if r.key == w.HOSP_B)
    assert sum(r.counters.reminders for r in depts.rows) == hosp_b.counters.reminders
    clinicians = mon.drill(
        reg, Level.CLINICIAN, WHOLE, institution=w.HOSP_B, department=depts.rows[0].key
    )
    assert sum(r.counters.reminders for r in clinicians.rows) == depts.rows[0].counters.reminders


def test_regulator_sees_only_their_jurisdiction(active: Container) -> None:
    active.monitoring.refresh()
    table = active.monitoring.drill(gv.QC_SH, Level.INSTITUTION, WHOLE)
    assert {r.key for r in table.rows} == {w.SH1, w.SH2}


def test_planted_low_ratio_hospital_is_the_only_outlier(active: Container) -> None:
    # 甘卫医政函〔2025〕16号 三(二)5: 互认比例明显偏离平均水平的，分析原因，提出改进措施
    active.monitoring.refresh()
    found = active.monitoring.outliers(gv.REGULATOR_HE, WHOLE, Metric.RECOGNITION_RATIO)
    assert [f.key for f in found] == [gv.LOW_RATIO_HOSPITAL]
    assert found[0].peer_count == 8
    assert "稳健Z值" in found[0].explanation


def test_declines_are_counted_by_reason(active: Container) -> None:
    active.monitoring.refresh()
    with active.engine.connect() as conn:
        d = t.decision.c
        expected: dict[str, int] = dict(
            conn.execute(
                select(d.reason_code, func.count())
                .where(d.action == "declined")
                .group_by(d.reason_code)
            ).all()
        )
    got = {code: n for code, _, n in active.monitoring.declines(gv.REGULATOR_HE, WHOLE)}
    assert got == expected
    assert _snapshot(active)["monitoring_decline_inst"]


def test_declines_of_one_department_read_the_fine_table(active: Container) -> None:
    active.monitoring.refresh()
    with active.engine.connect() as conn:
        d = t.decision.c
        inst, dept = conn.execute(
            select(d.institution_code, d.department).where(d.action == "declined").limit(1)
        ).one()
        expected: dict[str, int] = dict(
            conn.execute(
                select(d.reason_code, func.count())
                .where(d.action == "declined", d.institution_code == inst, d.department == dept)
                .group_by(d.reason_code)
            ).all()
        )
    got = active.monitoring._store.declines_by_reason([inst], WHOLE.start, WHOLE.end, dept)
    assert dict(got) == expected


# ---------------------------------------------------------------- repeats without a decision

T0 = datetime(2026, 5, 10, 1, 0, tzinfo=UTC)


def _repeats(c: Container) -> int:
    c.monitoring.refresh()
    return sum(
        v.repeats_unrecorded
        for _, v in c.monitoring._store.totals(
            Dimension.INSTITUTION, [w.HOSP_B], WHOLE.start, WHOLE.end
        )
    )


def test_repeat_inside_the_time_limit_without_a_decision_is_counted(world: Container) -> None:
    p = gv.add_patient(world.engine, T0)
    gv.add_result(world.engine, patient_id=p, institution=w.HOSP_A, item=w.LFT, performed_at=T0)
    gv.add_result(
        world.engine,
        patient_id=p,
        institution=w.HOSP_B,
        item=w.LFT,
        performed_at=T0 + timedelta(days=3),
    )
    assert _repeats(world) == 1


def test_repeat_with_a_recorded_decline_is_not_counted(world: Container) -> None:
    p = gv.add_patient(world.engine, T0)
    gv.add_result(world.engine, patient_id=p, institution=w.HOSP_A, item=w.LFT, performed_at=T0)
    gv.add_decision(
        world.engine,
        patient_id=p,
        institution=w.HOSP_B,
        item=w.LFT,
        at=T0 + timedelta(days=3),
        action="declined",
        reason="HB-1",
    )
    gv.add_result(
        world.engine,
        patient_id=p,
        institution=w.HOSP_B,
        item=w.LFT,
        performed_at=T0 + timedelta(days=3, hours=1),
    )
    assert _repeats(world) == 0


def test_repeat_after_the_time_limit_is_not_counted(world: Container) -> None:
    # 肝功能 参考时限 7 天 in the test world
    p = gv.add_patient(world.engine, T0)
    gv.add_result(world.engine, patient_id=p, institution=w.HOSP_A, item=w.LFT, performed_at=T0)
    gv.add_result(
        world.engine,
        patient_id=p,
        institution=w.HOSP_B,
        item=w.LFT,
        performed_at=T0 + timedelta(days=8),
    )
    assert _repeats(world) == 0


def test_repeat_at_the_same_institution_is_not_a_cross_institution_repeat(world: Container) -> None:
    p = gv.add_patient(world.engine, T0)
    gv.add_result(world.engine, patient_id=p, institution=w.HOSP_B, item=w.LFT, performed_at=T0)
    gv.add_result(
        world.engine,
        patient_id=p,
        institution=w.HOSP_B,
        item=w.LFT,
        performed_at=T0 + timedelta(days=2),
    )
    assert _repeats(world) == 0


# ---------------------------------------------------------------- targets


def test_hebei_connection_target_counts_hospitals_that_share_results(world: Container) -> None:
    # 冀卫医政函〔2025〕7号 三(三): 二级以上公立医疗机构全部与省级…系统完成对接
    p = gv.add_patient(world.engine, T0)
    gv.add_result(world.engine, patient_id=p, institution=w.HOSP_A, item=w.LFT, performed_at=T0)
    progress = {x.target.id: x for x in world.monitoring.targets("HE")}
    he = progress["HE-2025-06-connected"]
    assert he.value == pytest.approx(1 / 3)  # A of A, B, C
    assert he.met is False
    assert "CN-2027-province300" in progress  # national targets are listed too


def test_a_national_target_is_counted_within_the_regulators_province(world: Container) -> None:
    """ "所有二级以上公立医院均实现跨机构调阅" seen by Hebei's regulator counts Hebei's
    hospitals, noted as such; the whole country's count is the national view."""
    p = gv.add_patient(world.engine, T0)
    gv.add_result(world.engine, patient_id=p, institution=w.HOSP_A, item=w.LFT, performed_at=T0)
    national = {x.target.id: x for x in world.monitoring.targets(None)}["CN-2025-retrieval"]
    hebei = {x.target.id: x for x in world.monitoring.targets("HE")}["CN-2025-retrieval"]
    assert hebei.target.jurisdiction == "NATIONAL"  # still the national target
    assert "本辖区（河北省）" in hebei.note
    assert hebei.value == pytest.approx(1 / 3)  # A of Hebei's A, B, C
    assert len(hebei.details) == 3
    assert len(national.details) > len(hebei.details)
    assert national.note == ""


def test_correction_backlog_reads_open_requests_or_says_none(world: Container) -> None:
    got = world.monitoring.correction_backlog(gv.REGULATOR_HE)
    assert got is None or got == 0


def test_accepting_a_prior_the_platform_did_not_propose_keeps_the_ratio_at_most_one(
    world: Container,
) -> None:
    """The blood count beyond its 参考时限 is shown, not proposed; the clinician may still
    accept it (the limit is a reference). That acceptance counted in 互认项次 but not in
    the reminders with a recognizable prior: the demo's report showed 133 %."""
    for item, recognizable in ((w.LFT, 1), (w.CBC, 0)):
        gv.add_accepted_reminder(
            world.engine,
            at=datetime(2026, 6, 10, 2, 0, tzinfo=UTC),
            institution=w.HOSP_B,
            department="消化内科",
            clinician="B-1",
            item=item,
            recognizable=recognizable,
            channel="workbench",
        )
    mon = world.monitoring
    mon.refresh()
    incremental = _snapshot(world)
    june = Period(date(2026, 6, 1), date(2026, 7, 1))
    rows = mon.drill(gv.REGULATOR_HE, Level.INSTITUTION, june, scope="HE-BD").rows
    row = next(r for r in rows if r.key == w.HOSP_B)
    assert (row.counters.accepted, row.counters.reminders_recognizable) == (2, 2)
    assert row.counters.recognition_ratio == 1.0
    mon.recompute()
    assert _snapshot(world) == incremental  # the full recompute counts it the same way
