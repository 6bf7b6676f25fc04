"""The recognition service on both backends: results stored through intake, checked and
decided as a clinician of another hospital would (R5)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from huren.adapters.db.recognition import SqlRecognitionStore
from huren.adapters.db.tables import audit_event, decision, observation, reminder, result
from huren.adapters.db.tables import patient as patient_table
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.decisions import Action
from huren.domain.errors import Conflict, NotFound, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.recognition import ReasonCode, Standing
from huren.domain.results import ResultStatus
from huren.services.intake import StoredRef
from huren.services.recognition import (
    CheckRequest,
    DecisionRequest,
    ExternalReport,
    PatientRef,
    RecognitionService,
)
from tests.fixtures.imaging import ct_report, store_complete_ct_study, store_thick_only_ct_study
from tests.fixtures.results import (
    LI_SI_ID,
    TEST_NOW,
    ZHANG_SAN_ID,
    imaging_report,
    lab_panel,
    patient,
    store,
)
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B, LFT, SH1

CLINICIAN_B = Principal(
    account_id=101,
    username="dr.wang",
    display_name="王医生",
    role=Role.CLINICIAN,
    institution=HOSP_B,
    department="心内科",
)
BY_NATIONAL_ID = PatientRef(
    identifiers=(PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID),)
)


def check(c: Container, *codes: str, ref: PatientRef = BY_NATIONAL_ID):  # type: ignore[no-untyped-def]
    return c.recognition.check(CheckRequest(CLINICIAN_B, ref, tuple(codes), channel="rest"))


def test_lab_panel_from_another_hebei_hospital_is_recognizable(world: Container) -> None:
    ref = store(world, lab_panel(HOSP_A)).results[0]
    out = check(world, "B-LFT")  # hospital B's own local code, mapped by 对码
    (item,) = out.items
    assert item.item_code == LFT
    assert item.recognition is not None
    assert item.recognition.best is not None
    best = item.recognition.best
    assert best.result.id == ref.result_id
    assert best.result.mark_symbol == "☆"
    assert [o.name for o in best.result.observations][:1] == ["丙氨酸氨基转移酶"]


def test_each_ordered_item_is_recorded_as_a_reminder(world: Container) -> None:
    store(world, lab_panel(HOSP_A))
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_complete_ct_study(world, ct)
    out = check(world, "B-LFT", "B-CT-CHEST", "NO-SUCH-CODE")
    with world.engine.connect() as conn:
        rows = conn.execute(select(reminder).order_by(reminder.c.id)).all()
    assert [(r.local_code, r.item_code, r.recognizable) for r in rows] == [
        ("B-LFT", LFT, 1),
        ("B-CT-CHEST", CT_CHEST, 1),
        ("NO-SUCH-CODE", None, 0),
    ]
    assert {r.request_id for r in rows} == {out.request_id}
    assert all(r.institution_code == HOSP_B and r.clinician == "dr.wang" for r in rows)


def test_unmapped_code_is_reported_not_ignored(world: Container) -> None:
    out = check(world, "B-UNKNOWN-9")
    (item,) = out.items
    assert item.item is None
    assert item.recognition is None
    assert "未对码" in item.problem


def test_regional_ct_mark_with_its_complete_study_is_recognized(world: Container) -> None:
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_complete_ct_study(world, ct)
    (item,) = check(world, CT_CHEST).items
    assert item.recognition is not None
    assert item.recognition.best is not None
    best = item.recognition.best
    assert best.result.mark_symbol == "—JJJHR"
    assert ReasonCode.STUDY_COMPLETE in [r.code for r in best.reasons]
    assert best.cautions() == ()


def _incomplete(world: Container) -> list[str]:
    """The blocking reasons of the only CT prior, which must not be proposed."""
    (item,) = check(world, CT_CHEST).items
    assert item.recognition is not None
    assert item.recognition.candidates == ()
    (miss,) = item.recognition.near_misses
    return [r.text for r in miss.blocking()]


def test_ct_report_whose_images_have_not_arrived_is_not_recognizable(world: Container) -> None:
    # Issue 4 §3; 沪卫医〔2024〕135号 四(二)2: 影像 … 以及影像科医生签发的报告 — both parts.
    store(world, ct_report(HOSP_A))
    assert _incomplete(world) == ["影像资料不完整：影像未上传：尚未收到该报告对应的 DICOM 影像"]


def test_ct_study_without_thin_slices_is_not_recognizable_and_names_the_missing_series(
    world: Container,
) -> None:
    # 沪卫医〔2024〕135号 四(二)2: CT 应上传厚层及薄层图像. The world's 胸部CT平扫 requires
    # 厚层 (≥ 3 mm) and 薄层 (≤ 1.5 mm).
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_thick_only_ct_study(world, ct)
    assert _incomplete(world) == ["影像资料不完整：缺少薄层序列（层厚 ≤ 1.5 mm）"]


def test_images_arriving_after_the_report_make_the_ct_recognizable(world: Container) -> None:
    ct = ct_report(HOSP_A)
    ref = store(world, ct).results[0]
    (before,) = check(world, CT_CHEST).items
    store_complete_ct_study(world, ct)
    (after,) = check(world, CT_CHEST).items
    assert before.recognition is not None
    assert after.recognition is not None
    assert before.recognition.best is None
    assert after.recognition.best is not None
    assert after.recognition.best.result.id == ref.result_id
    with world.engine.connect() as conn:
        counts = conn.execute(select(reminder.c.recognizable).order_by(reminder.c.id)).scalars()
        assert list(counts) == [0, 1]


def test_study_of_another_patient_with_the_same_accession_does_not_complete_the_report(
    world: Container,
) -> None:
    # A study links to a report only for the same patient, whatever the numbers say.
    ct = ct_report(HOSP_A, mrn="A-CT-0042")
    store(world, ct)
    from dataclasses import replace

    other = replace(ct, patient=patient(LI_SI_ID, "李四", mrn="A-CT-7777"))
    store_complete_ct_study(world, other)
    assert _incomplete(world) == ["影像资料不完整：影像未上传：尚未收到该报告对应的 DICOM 影像"]


def test_node_without_an_imaging_source_cautions_that_completeness_is_unknown(
    world: Container,
) -> None:
    # The one case left UNKNOWN: recognition run without any study source (a lab-only
    # node). It cautions, it does not block: the clinician opens the images and judges.
    lab_only = RecognitionService(
        SqlRecognitionStore(world.engine), world.catalog, world.clock, world.vault
    )
    store(world, ct_report(HOSP_A))
    out = lab_only.check(CheckRequest(CLINICIAN_B, BY_NATIONAL_ID, (CT_CHEST,), channel="rest"))
    (item,) = out.items
    assert item.recognition is not None
    assert item.recognition.best is not None
    assert [r.code for r in item.recognition.best.cautions()] == [ReasonCode.STUDY_UNKNOWN]


def test_shanghai_mark_is_a_near_miss_in_hebei(world: Container) -> None:
    store(world, lab_panel(SH1, local_code=LFT))
    (item,) = check(world, "B-LFT").items
    assert item.recognition is not None
    assert item.recognition.candidates == ()
    (miss,) = item.recognition.near_misses
    assert miss.standing is Standing.NEAR_MISS
    assert any(r.text.startswith("出具机构未获本范围互认资质") for r in miss.reasons)


def test_old_result_is_shown_with_its_age_against_the_limit(world: Container) -> None:
    store(world, lab_panel(HOSP_A, issued_at=TEST_NOW - timedelta(days=20)))
    (item,) = check(world, "B-LFT").items
    assert item.recognition is not None
    (miss,) = item.recognition.near_misses
    assert any(r.text.startswith("超过参考时限") for r in miss.reasons)


def test_entered_in_error_version_is_a_near_miss(world: Container) -> None:
    panel = lab_panel(HOSP_A)
    store(world, panel)
    from dataclasses import replace

    store(world, replace(panel, status=ResultStatus.ENTERED_IN_ERROR))
    (item,) = check(world, "B-LFT").items
    assert item.recognition is not None
    (miss,) = item.recognition.near_misses
    assert "结果已被标记为录入错误" in [r.text for r in miss.reasons]


def test_patient_found_by_the_mrn_of_the_producing_hospital(world: Container) -> None:
    store(world, lab_panel(HOSP_A, patient_demographics=patient(mrn="A-0098765")))
    ref = PatientRef(identifiers=(PatientIdentifier(IdentifierKind.MRN, "A-0098765", HOSP_A),))
    (item,) = check(world, "B-LFT", ref=ref).items
    assert item.recognition is not None
    assert item.recognition.best is not None


def test_another_patients_results_are_never_proposed(world: Container) -> None:
    store(world, lab_panel(HOSP_A, patient_demographics=patient(LI_SI_ID, "李四")))
    store(world, lab_panel(HOSP_A))  # 张三 too, so both patients exist
    li_si = PatientRef(identifiers=(PatientIdentifier(IdentifierKind.NATIONAL_ID, LI_SI_ID),))
    out_zhang, out_li = check(world, "B-LFT"), check(world, "B-LFT", ref=li_si)
    assert out_zhang.patient_id != out_li.patient_id
    assert out_zhang.items[0].recognition is not None
    assert out_li.items[0].recognition is not None
    assert {a.result.patient_id for a in out_li.items[0].recognition.all()} == {out_li.patient_id}


def test_unknown_patient_is_answered_and_still_recorded(world: Container) -> None:
    out = check(world, "B-LFT")
    assert not out.patient_known
    assert "没有找到该患者" in out.notice
    assert out.items[0].recognition is not None
    assert out.items[0].recognition.all() == ()
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(reminder)).scalar_one() == 1


def test_unknown_platform_patient_id_is_not_found(world: Container) -> None:
    with pytest.raises(NotFound):
        check(world, "B-LFT", ref=PatientRef(patient_id=999_999))


def test_invalid_national_id_is_rejected_naming_the_field(world: Container) -> None:
    bad = PatientRef(
        identifiers=(PatientIdentifier(IdentifierKind.NATIONAL_ID, "130102198501011230"),)
    )
    with pytest.raises(ValidationFailed) as exc:
        check(world, "B-LFT", ref=bad)
    assert exc.value.problems[0].field == "patient.identifiers[0]"


def test_every_check_writes_an_audit_record(world: Container) -> None:
    store(world, lab_panel(HOSP_A))
    out = check(world, "B-LFT")
    with world.engine.connect() as conn:
        row = conn.execute(select(audit_event)).one()
    assert row.action == "recognition_check"
    assert row.patient_id == out.patient_id


def test_accept_records_the_decision_with_emr_text_and_money_saved(world: Container) -> None:
    ref = store(world, lab_panel(HOSP_A)).results[0]
    out = check(world, "B-LFT")
    decided = world.recognition.decide(
        DecisionRequest(
            CLINICIAN_B,
            "B-LFT",
            Action.ACCEPTED,
            patient=BY_NATIONAL_ID,
            result_id=ref.result_id,
            result_version=ref.version,
            inpatient=True,
            reminder_id=out.items[0].reminder_id,
        )
    )
    assert decided.saved_fen == 4500
    stored = world.results.get_result(ref.result_id)
    assert f"报告单编号：{stored.report_no}" in decided.emr_text
    assert "检查检验单位：河北医科大学第二医院" in decided.emr_text
    assert "复印收入病案" in decided.emr_text
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert (row.action, row.result_id, row.result_version, row.saved_fen) == (
        "accepted",
        ref.result_id,
        ref.version,
        4500,
    )
    assert (row.clinician, row.department, row.institution_code) == ("dr.wang", "心内科", HOSP_B)
    assert row.emr_text == decided.emr_text


def test_decline_with_a_hebei_reason_returns_the_patient_explanation(world: Container) -> None:
    ref = store(world, imaging_report(HOSP_A)).results[0]
    decided = world.recognition.decide(
        DecisionRequest(
            CLINICIAN_B, CT_CHEST, Action.DECLINED, result_id=ref.result_id, reason_code="HB-3"
        )
    )
    assert decided.saved_fen == 0
    assert "手术、输血等重要治疗" in decided.patient_explanation
    assert "河北医科大学第二医院" in decided.patient_explanation
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert (row.action, row.reason_code) == ("declined", "HB-3")
    assert row.patient_explanation == decided.patient_explanation


def test_shanghai_reason_is_refused_in_hebei(world: Container) -> None:
    ref = store(world, imaging_report(HOSP_A)).results[0]
    with pytest.raises(ValidationFailed) as exc:
        world.recognition.decide(
            DecisionRequest(
                CLINICIAN_B, CT_CHEST, Action.DECLINED, result_id=ref.result_id, reason_code="SH-6"
            )
        )
    assert exc.value.problems[0].field == "reason_code"


def test_other_circumstances_need_free_text_and_nothing_is_stored_without_it(
    world: Container,
) -> None:
    ref = store(world, lab_panel(HOSP_A)).results[0]
    with pytest.raises(ValidationFailed):
        world.recognition.decide(
            DecisionRequest(
                CLINICIAN_B, LFT, Action.DECLINED, result_id=ref.result_id, reason_code="HB-6"
            )
        )
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(decision)).scalar_one() == 0


def test_accepting_a_superseded_version_is_a_conflict(world: Container) -> None:
    panel = lab_panel(HOSP_A)
    first = store(world, panel).results[0]
    from dataclasses import replace

    store(world, replace(panel, status=ResultStatus.CORRECTED, signer="周主任"))
    with pytest.raises(Conflict):
        world.recognition.decide(
            DecisionRequest(
                CLINICIAN_B,
                LFT,
                Action.ACCEPTED,
                result_id=first.result_id,
                result_version=first.version,
            )
        )


def test_result_of_another_patient_cannot_be_accepted_for_this_one(world: Container) -> None:
    ref = store(world, lab_panel(HOSP_A, patient_demographics=patient(LI_SI_ID, "李四"))).results[0]
    store(world, lab_panel(HOSP_A))
    with pytest.raises(ValidationFailed, match="结果不属于该患者"):
        world.recognition.decide(
            DecisionRequest(
                CLINICIAN_B, LFT, Action.ACCEPTED, patient=BY_NATIONAL_ID, result_id=ref.result_id
            )
        )


def test_report_brought_by_the_patient_is_recorded_with_its_details(world: Container) -> None:
    # 冀卫医政函〔2025〕7号 二(三): 参考患者提供的…完整检验检查报告单.
    report = ExternalReport(
        institution_name="涞水县医院",
        report_no="LS-20260610-077",
        performed_at=TEST_NOW - timedelta(days=5),
        result="丙氨酸氨基转移酶 38 U/L；总胆红素 10.2 umol/L",
    )
    decided = world.recognition.decide(
        DecisionRequest(CLINICIAN_B, "B-LFT", Action.ACCEPTED, external=report)
    )
    assert "检查检验单位：涞水县医院" in decided.emr_text
    assert "报告单编号：LS-20260610-077" in decided.emr_text
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert row.result_id is None
    assert row.external_report["report_no"] == "LS-20260610-077"


def test_report_brought_by_the_patient_with_a_time_without_zone_is_read_as_china_time(
    world: Container,
) -> None:
    # The paper report and the form say 09:00, meaning Beijing time; read as UTC it was
    # written into the EMR text as 17:00.
    report = ExternalReport(
        institution_name="涞水县医院",
        report_no="LS-20260610-078",
        performed_at=datetime(2026, 6, 10, 9, 0),
        result="丙氨酸氨基转移酶 38 U/L",
    )
    decided = world.recognition.decide(
        DecisionRequest(CLINICIAN_B, "B-LFT", Action.ACCEPTED, external=report)
    )
    assert "检查检验时间：2026-06-10 09:00" in decided.emr_text
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert row.external_report["performed_at"] == "2026-06-10T09:00:00+08:00"


def test_accept_needs_a_result_or_an_external_report(world: Container) -> None:
    with pytest.raises(ValidationFailed) as exc:
        world.recognition.decide(DecisionRequest(CLINICIAN_B, LFT, Action.ACCEPTED))
    assert exc.value.problems[0].field == "result_id"


def test_answers_carry_the_reminder_row_of_their_own_ordered_item(world: Container) -> None:
    store(world, lab_panel(HOSP_A))
    out = check(world, "NO-SUCH-CODE", "B-LFT", "B-CT-CHEST", "B-LFT")
    with world.engine.connect() as conn:
        local_code_of = dict(conn.execute(select(reminder.c.id, reminder.c.local_code)).all())
    assert [local_code_of[a.reminder_id] for a in out.items] == [
        "NO-SUCH-CODE",
        "B-LFT",
        "B-CT-CHEST",
        "B-LFT",
    ]


def test_observations_keep_their_values_units_and_order(world: Container) -> None:
    sent = lab_panel(HOSP_A)
    store(world, sent)
    (item,) = check(world, "B-LFT").items
    assert item.recognition is not None
    assert item.recognition.best is not None
    assert item.recognition.best.result.observations == sent.observations


def test_observations_come_in_seq_order_whatever_order_they_were_written_in(
    world: Container,
) -> None:
    """The reading statement aggregates in storage order; the prior still lists them by
    seq (here the stored seq numbers are reversed, so storage order is the opposite)."""
    sent = lab_panel(HOSP_A)
    rid = store(world, sent).results[0].result_id
    n = len(sent.observations)
    with world.engine.begin() as c:
        c.execute(
            update(observation)
            .where(observation.c.result_id == rid)
            .values(seq=n + 100 - observation.c.seq)
        )
    (item,) = check(world, "B-LFT").items
    assert item.recognition is not None
    assert item.recognition.best is not None
    assert item.recognition.best.result.observations == tuple(reversed(sent.observations))


def merged_panels(world: Container) -> tuple[StoredRef, StoredRef, dict[int, int]]:
    """李四's record merged into 张三's (the same person registered twice), each with a
    liver panel: (李四's older panel, 张三's newer one, result id → patient id)."""
    older = store(
        world,
        lab_panel(
            HOSP_A,
            patient_demographics=patient(LI_SI_ID, "李四"),
            issued_at=TEST_NOW - timedelta(days=5),
        ),
    ).results[0]
    newer = store(world, lab_panel(HOSP_A)).results[0]
    with world.engine.begin() as conn:
        ids = dict(conn.execute(select(result.c.id, result.c.patient_id)).all())
        conn.execute(
            update(patient_table)
            .where(patient_table.c.id == ids[older.result_id])
            .values(merged_into=ids[newer.result_id])
        )
    return older, newer, ids


def test_results_of_a_patient_merged_into_another_are_found_under_the_survivor(
    world: Container,
) -> None:
    # A check under either identity finds the results of both records, newest first.
    older, newer, ids = merged_panels(world)
    by_li_si = PatientRef(identifiers=(PatientIdentifier(IdentifierKind.NATIONAL_ID, LI_SI_ID),))
    for ref in (BY_NATIONAL_ID, by_li_si):
        out = check(world, "B-LFT", ref=ref)
        assert out.patient_id == ids[newer.result_id]
        (item,) = out.items
        assert item.recognition is not None
        assert [a.result.id for a in item.recognition.all()] == [
            newer.result_id,
            older.result_id,
        ]


# ---------------------------------------------------------------- values that cannot be recorded
# Found by a mutation fuzzer of the recognition API: each reached the database and failed
# there — on PostgreSQL a 500 (a NUL in text, a value wider than its column), on both
# backends a 500 for a lone surrogate (UTF-8 cannot encode it) and an unnamed 422 for an
# id beyond 64 bits. Now refused naming the field, before anything is written.
def _counts(c: Container) -> tuple[int, int, int]:
    with c.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (reminder, decision, audit_event)
        )


@pytest.mark.parametrize(
    ("codes", "fields", "message"),
    [
        (("B-LFT", "B-CT\x00"), ["items[1]"], "NUL"),
        (("B-LFT\ud800",), ["items[0]"], "代理项"),
        (("B-" + "长" * 63,), ["items[0]"], "最多 64 个字符"),
    ],
)
def test_ordered_code_that_cannot_be_recorded_is_refused_naming_it(
    world: Container, codes: tuple[str, ...], fields: list[str], message: str
) -> None:
    with pytest.raises(ValidationFailed) as exc:
        check(world, *codes)
    assert [p.field for p in exc.value.problems] == fields
    assert message in exc.value.problems[0].message
    assert _counts(world) == (0, 0, 0)


def test_check_fields_that_cannot_be_recorded_are_refused_naming_each(world: Container) -> None:
    req = CheckRequest(
        CLINICIAN_B,
        PatientRef(patient_id=2**70),
        ("B-LFT",),
        channel="rest",
        department="心内科\x00",
        clinician="dr." + "w" * 100,
        request_id="r\udfff",
    )
    with pytest.raises(ValidationFailed) as exc:
        world.recognition.check(req)
    assert [p.field for p in exc.value.problems] == [
        "department",
        "clinician",
        "request_id",
        "patient.id",
    ]
    bad_ident = PatientRef(identifiers=(PatientIdentifier(IdentifierKind.INSURANCE, "13\ud800"),))
    with pytest.raises(ValidationFailed) as exc:
        check(world, "B-LFT", ref=bad_ident)
    assert [p.field for p in exc.value.problems] == ["patient.identifiers[0].value"]
    assert _counts(world) == (0, 0, 0)


def test_decision_ids_beyond_64_bits_and_nul_text_are_refused_naming_each(
    world: Container,
) -> None:
    ref = store(world, lab_panel(HOSP_A)).results[0]
    with pytest.raises(ValidationFailed) as exc:
        world.recognition.decide(
            DecisionRequest(
                CLINICIAN_B,
                "B-LFT",
                Action.DECLINED,
                result_id=2**70,
                result_version=-(2**70),
                reminder_id=2**63,
                reason_code="HB-6",
                free_text="病情\x00变化",
            )
        )
    assert [p.field for p in exc.value.problems] == [
        "free_text",
        "result_id",
        "result_version",
        "reminder_id",
    ]
    with pytest.raises(ValidationFailed) as exc:
        world.recognition.view_result(CLINICIAN_B, 2**70)
    assert exc.value.problems[0].field == "result_id"
    # The same decision with storable values is recorded.
    world.recognition.decide(
        DecisionRequest(
            CLINICIAN_B,
            "B-LFT",
            Action.DECLINED,
            result_id=ref.result_id,
            reason_code="HB-6",
            free_text="病情变化",
        )
    )
    assert _counts(world)[1] == 1


@pytest.mark.parametrize(
    "performed_at",
    [
        # 0001-01-01 in China time is year 0 in UTC, 9999-12-31 at -05:00 year 10000:
        # writing them in China time for the EMR text overflowed (an unnamed 422), and a
        # naive year 1 raised a ValueError (500).
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=8))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1, 1, 1),
    ],
)
def test_external_report_time_at_the_ends_of_the_calendar_is_refused_naming_it(
    world: Container, performed_at: datetime
) -> None:
    report = ExternalReport(
        institution_name="涞水县医院",
        report_no="LS-20260610-077",
        performed_at=performed_at,
        result="丙氨酸氨基转移酶 38 U/L",
    )
    with pytest.raises(ValidationFailed) as exc:
        world.recognition.decide(
            DecisionRequest(CLINICIAN_B, "B-LFT", Action.ACCEPTED, external=report)
        )
    assert [p.field for p in exc.value.problems] == ["external_report.performed_at"]
    assert "1900–2199" in exc.value.problems[0].message
    assert _counts(world)[1] == 0
