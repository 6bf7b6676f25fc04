"""Is this prior result recognizable here and now? One rule per test, each citing its
source clause (R2, R5)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from huren.domain.masterdata import ItemExclusion, ScopeGraph
from huren.domain.recognition import (
    Effect,
    PriorResult,
    ReasonCode,
    RetestInterval,
    Standing,
    StudyCompleteness,
    StudyState,
    assess_prior,
    exclusions_in_force,
    recognizable_priors,
    retest_interval_for,
)
from huren.domain.results import ObservationValue, ResultStatus, StoredResult, ValueType
from tests.fixtures.world import (
    CT_CHEST,
    HBA1C,
    HOSP_A,
    HOSP_B,
    HOSP_C,
    INSTITUTIONS,
    ITEMS,
    LFT,
    SCOPES,
    SH1,
)

NOW = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)
GRAPH = ScopeGraph(SCOPES, INSTITUTIONS)
ITEM = {i.code: i for i in ITEMS}
SCOPE_NAMES = {s.code: s.name for s in SCOPES}


def ct(**kw: object) -> StoredResult:
    base = StoredResult(
        id=1,
        patient_id=7,
        institution=HOSP_A,
        report_no="CT20260610-0031",
        local_code="CT0101",
        local_name="胸部CT平扫",
        item_code=CT_CHEST,
        category=ITEM[CT_CHEST].category,
        status=ResultStatus.FINAL,
        performed_at=NOW - timedelta(days=5),
        issued_at=NOW - timedelta(days=5, hours=-2),
        version=1,
        mark_scope="JJJ",
        mark_symbol="—JJJHR",
        findings="双肺纹理清晰，右肺上叶见直径约 6 mm 磨玻璃结节，纵隔淋巴结不大。",
        conclusion="右肺上叶磨玻璃结节，建议随访。",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def lft(**kw: object) -> StoredResult:
    base = StoredResult(
        id=2,
        patient_id=7,
        institution=HOSP_A,
        report_no="JY20260613-1102",
        local_code="LIS-LFT",
        local_name="肝功能全套",
        item_code=LFT,
        category=ITEM[LFT].category,
        status=ResultStatus.FINAL,
        performed_at=NOW - timedelta(days=2),
        issued_at=NOW - timedelta(days=2, hours=-3),
        version=1,
        mark_scope="HE",
        mark_symbol="☆",
        observations=(
            ObservationValue("ALT", "丙氨酸氨基转移酶", ValueType.NM, 56.0, unit="U/L", flag="H"),
            ObservationValue("AST", "天门冬氨酸氨基转移酶", ValueType.NM, 32.0, unit="U/L"),
        ),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def assess(result: StoredResult, ordering: str = HOSP_B, **kw: object):  # type: ignore[no-untyped-def]
    item = ITEM[result.item_code or ""]
    return assess_prior(
        item,
        ordering,
        NOW,
        PriorResult(result, **kw),  # type: ignore[arg-type]
        GRAPH,
        scope_names=SCOPE_NAMES,
    )


def codes(a) -> set[ReasonCode]:  # type: ignore[no-untyped-def]
    return {r.code for r in a.reasons}


def test_final_marked_result_inside_scope_and_time_limit_is_recognizable() -> None:
    # R2: final, mark scope contains the ordering institution, inside the 参考时限.
    a = assess(lft())
    assert a.standing is Standing.RECOGNIZABLE
    assert {ReasonCode.RELEASED, ReasonCode.MARK_IN_SCOPE, ReasonCode.WITHIN_TIME_LIMIT} <= codes(a)


def test_qualifying_reasons_name_the_mark_scope_and_age_against_the_limit() -> None:
    a = assess(lft())
    text = " ".join(r.text for r in a.reasons if r.effect is Effect.SUPPORTS)
    assert "☆" in text
    assert "河北省" in text
    assert "距今 2 天" in text
    assert "参考时限 7 天" in text


def test_result_beyond_reference_time_limit_is_a_near_miss_with_the_overrun_in_days() -> None:
    # 甘卫医政函〔2025〕16号: 参考时限 is a reference — shown, with the overrun, not hidden.
    a = assess(lft(performed_at=NOW - timedelta(days=10)))
    assert a.standing is Standing.NEAR_MISS
    beyond = next(r for r in a.reasons if r.code is ReasonCode.BEYOND_TIME_LIMIT)
    assert beyond.text.startswith("超过参考时限 3 天")
    assert not a.within_time_limit


def test_the_overrun_adds_up_with_the_age_and_the_limit_shown_beside_it() -> None:
    """10 days and 2 hours old against 7 days: 3 days over, as 10 − 7. The overrun was
    rounded up (4) while the age was rounded down (10)."""
    a = assess(lft(performed_at=NOW - timedelta(days=10, hours=2)))
    beyond = next(r for r in a.reasons if r.code is ReasonCode.BEYOND_TIME_LIMIT)
    assert beyond.text == "超过参考时限 3 天（距今 10 天，参考时限 7 天）"


def test_mark_whose_scope_does_not_contain_the_ordering_institution_is_a_near_miss() -> None:
    # 沪卫医〔2024〕135号 四(四): the mark names the scope the result is recognized in.
    a = assess(lft(institution=SH1, mark_scope="SH", mark_symbol="上海HR"))
    assert a.standing is Standing.NEAR_MISS
    reason = next(r for r in a.reasons if r.code is ReasonCode.MARK_OUT_OF_SCOPE)
    assert reason.effect is Effect.BLOCKS
    assert reason.text.startswith("出具机构未获本范围互认资质")


def test_regional_mark_is_recognized_across_its_member_provinces() -> None:
    # 冀卫医政函〔2025〕7号 二(二): 京津冀 mark —JJJHR; a Hebei hospital lies inside 京津冀.
    a = assess(ct(), ordering=HOSP_B)
    assert ReasonCode.MARK_IN_SCOPE in codes(a)


def test_alliance_mark_is_recognized_only_inside_the_alliance() -> None:
    # 冀 二(二)3: 紧密型医联体内部互认.
    inside = assess(lft(institution=HOSP_C, mark_scope="BD-YLT", mark_symbol="医联体HR"))
    outside = assess(
        lft(institution=HOSP_C, mark_scope="BD-YLT", mark_symbol="医联体HR"), ordering=HOSP_A
    )
    assert inside.standing is Standing.RECOGNIZABLE
    assert outside.standing is Standing.NEAR_MISS


def test_entered_in_error_result_is_never_proposed_and_says_so() -> None:
    a = assess(lft(status=ResultStatus.ENTERED_IN_ERROR))
    assert a.standing is Standing.NEAR_MISS
    assert any(r.text == "结果已被标记为录入错误" for r in a.reasons)


@pytest.mark.parametrize(
    "status", [ResultStatus.AMENDED, ResultStatus.CORRECTED, ResultStatus.APPENDED]
)
def test_later_versions_of_a_final_report_are_released(status: ResultStatus) -> None:
    assert assess(lft(status=status)).standing is Standing.RECOGNIZABLE


def test_preliminary_report_is_not_proposed() -> None:
    a = assess(lft(status=ResultStatus.PRELIMINARY))
    assert a.standing is Standing.NEAR_MISS
    assert "初步报告" in next(r.text for r in a.reasons if r.code is ReasonCode.NOT_RELEASED)


def test_unmarked_result_is_listed_as_information_not_dropped() -> None:
    # 沪卫医〔2024〕135号 五(三): 鼓励…对其他检查检验结果予以互认 — shown as information.
    a = assess(lft(institution=HOSP_C, mark_scope=None, mark_symbol=None))
    assert a.standing is Standing.INFORMATION
    assert ReasonCode.UNMARKED in codes(a)


def test_incomplete_imaging_study_is_a_near_miss_naming_every_missing_part() -> None:
    # 沪卫医〔2024〕135号 四(二)2: CT 应上传厚层及薄层图像…以及后处理生成的影像.
    missing = ("缺少薄层序列（层厚 ≤ 1.5 mm）", "缺少后处理序列（后处理图像）")
    a = assess(ct(), study=StudyState(StudyCompleteness.INCOMPLETE, missing))
    assert a.standing is Standing.NEAR_MISS
    (reason,) = a.blocking()
    assert reason.code is ReasonCode.STUDY_INCOMPLETE
    assert reason.text == (
        "影像资料不完整：缺少薄层序列（层厚 ≤ 1.5 mm）；缺少后处理序列（后处理图像）"
    )


def test_imaging_report_whose_images_have_not_arrived_is_a_near_miss() -> None:
    # Issue 4 §3: a report without its study is incomplete until both arrive.
    missing = ("影像未上传：尚未收到该报告对应的 DICOM 影像",)
    a = assess(ct(), study=StudyState(StudyCompleteness.INCOMPLETE, missing))
    assert a.standing is Standing.NEAR_MISS
    assert [r.text for r in a.blocking()] == [
        "影像资料不完整：影像未上传：尚未收到该报告对应的 DICOM 影像"
    ]


def test_complete_imaging_study_supports_recognition() -> None:
    a = assess(ct(), study=StudyState(StudyCompleteness.COMPLETE))
    assert a.standing is Standing.RECOGNIZABLE
    assert ReasonCode.STUDY_COMPLETE in codes(a)


def test_unknown_completeness_cautions_but_does_not_block() -> None:
    # Only a node without any imaging source cannot know (see StudyCompleteness): the
    # clinician is told to open the original images and judge.
    a = assess(ct(), study=StudyState(StudyCompleteness.UNKNOWN))
    assert a.standing is Standing.RECOGNIZABLE
    assert [r.code for r in a.cautions()] == [ReasonCode.STUDY_UNKNOWN]
    assert "未接入影像数据" in a.cautions()[0].text


def test_lab_results_carry_no_imaging_completeness_reason() -> None:
    assert not {ReasonCode.STUDY_UNKNOWN, ReasonCode.STUDY_COMPLETE} & codes(assess(lft()))


def test_open_correction_request_is_a_caution_not_a_block() -> None:
    # R7: a correction request is pending review; the clinician judges (以接诊医师判断为标准).
    a = assess(lft(), open_corrections=2)
    assert a.standing is Standing.RECOGNIZABLE
    assert "2 条纠错申请" in a.cautions()[0].text


def test_item_exclusion_in_force_blocks_recognition() -> None:
    # 甘卫医政函〔2025〕16号: 负面清单 includes items never recognized.
    exclusion = ItemExclusion("HE", LFT, "该项目暂不纳入互认")
    applicable = exclusions_in_force(ITEM[LFT], ("HE", "NATIONAL"), [exclusion])
    a = assess_prior(ITEM[LFT], HOSP_B, NOW, PriorResult(lft()), GRAPH, applicable)
    assert a.standing is Standing.NEAR_MISS
    assert "该项目列入负面清单" in next(
        r.text for r in a.reasons if r.code is ReasonCode.ITEM_EXCLUDED
    )


def test_exclusion_of_another_jurisdiction_does_not_apply() -> None:
    exclusion = ItemExclusion("SH", LFT, "上海暂不互认")
    assert exclusions_in_force(ITEM[LFT], ("HE", "NATIONAL"), [exclusion]) == []


def test_item_recognized_only_within_a_scope_is_blocked_across_it() -> None:
    exclusion = ItemExclusion("HE", LFT, "仅限医联体内互认", only_within_scope="BD-YLT")
    from_a = assess_prior(ITEM[LFT], HOSP_B, NOW, PriorResult(lft()), GRAPH, [exclusion])
    from_c = assess_prior(
        ITEM[LFT], HOSP_B, NOW, PriorResult(lft(institution=HOSP_C)), GRAPH, [exclusion]
    )
    assert from_a.standing is Standing.NEAR_MISS
    assert from_c.standing is Standing.RECOGNIZABLE


def test_candidates_are_sorted_newest_first_and_near_misses_kept_apart() -> None:
    older = lft(id=3, performed_at=NOW - timedelta(days=6))
    newer = lft(id=4, performed_at=NOW - timedelta(days=1))
    expired = lft(id=5, performed_at=NOW - timedelta(days=30))
    unmarked = lft(id=6, institution=HOSP_C, mark_scope=None, mark_symbol=None)
    rec = recognizable_priors(
        ITEM[LFT],
        HOSP_B,
        NOW,
        [PriorResult(r) for r in (older, expired, newer, unmarked)],
        GRAPH,
    )
    assert [a.result.id for a in rec.candidates] == [4, 3]
    assert [a.result.id for a in rec.near_misses] == [5]
    assert [a.result.id for a in rec.information] == [6]
    assert rec.best is not None
    assert rec.best.result.id == 4


HBA1C_INTERVAL = RetestInterval(
    key="hba1c",
    label="糖化血红蛋白（HbA1c）",
    days=60,
    source="RCPath/ACB G147",
    loinc=frozenset({"4548-4"}),
)


def test_retest_interval_is_found_by_loinc_for_lab_items_only() -> None:
    assert retest_interval_for(ITEM[HBA1C], [HBA1C_INTERVAL]) is HBA1C_INTERVAL
    assert retest_interval_for(ITEM[CT_CHEST], [HBA1C_INTERVAL]) is None


def test_retest_interval_is_shown_beside_the_time_limit_and_never_overrides_it() -> None:
    prior = replace(
        lft(),
        item_code=HBA1C,
        performed_at=NOW - timedelta(days=20),
        observations=(ObservationValue("HBA1C", "糖化血红蛋白", ValueType.NM, 7.9, unit="%"),),
    )
    rec = recognizable_priors(
        ITEM[HBA1C], HOSP_B, NOW, [PriorResult(prior)], GRAPH, (), [HBA1C_INTERVAL]
    )
    assert rec.best is not None  # the policy decides; the interval only informs
    assert rec.retest_interval is HBA1C_INTERVAL
    (reason,) = rec.retest_reasons
    assert reason.effect is Effect.CAUTION
    assert "最短复检间隔 60 天" in reason.text
    assert "距上次糖化血红蛋白仅 20 天" in reason.text


def test_no_retest_caution_once_the_interval_has_passed() -> None:
    prior = replace(lft(), item_code=HBA1C, performed_at=NOW - timedelta(days=75))
    rec = recognizable_priors(
        ITEM[HBA1C], HOSP_B, NOW, [PriorResult(prior)], GRAPH, (), [HBA1C_INTERVAL]
    )
    assert rec.retest_reasons == ()


def test_short_time_limits_are_written_in_hours() -> None:
    # 血常规 has a 3-day limit; a result 30 hours old is written in hours.
    from tests.fixtures.world import CBC

    prior = replace(lft(), item_code=CBC, performed_at=NOW - timedelta(hours=30))
    a = assess_prior(ITEM[CBC], HOSP_B, NOW, PriorResult(prior), GRAPH)
    assert "距今 30 小时" in next(
        r.text for r in a.reasons if r.code is ReasonCode.WITHIN_TIME_LIMIT
    )
