"""Accept → the EMR text in the Hebei form; decline → a negative-list reason valid for the
jurisdiction and a plain-language explanation for the patient (R5)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from huren.domain.decisions import (
    EMR_HEADING,
    Action,
    Explanation,
    ReportForRecord,
    choose_reason,
    emr_text,
    patient_explanation,
    result_text,
    saved_fen,
)
from huren.domain.errors import ValidationFailed
from huren.domain.masterdata import NegativeReason
from huren.domain.results import ObservationValue, ResultStatus, StoredResult, ValueType
from tests.fixtures.world import CT_CHEST, HOSP_A, ITEMS, LFT

ITEM = {i.code: i for i in ITEMS}
PERFORMED = datetime(2026, 6, 13, 1, 15, tzinfo=UTC)  # 09:15 in Beijing

HB = [
    NegativeReason(
        "HE", f"HB-{n}", n, text, "冀卫医政函〔2025〕7号 二(四)", requires_free_text=n == 6
    )
    for n, text in enumerate(
        [
            "因病情变化，检查检验结果与患者临床表现、疾病诊断不符，难以满足临床诊疗需求的",
            "检查检验结果在疾病发展演变过程中变化较快的",
            "检查检验项目对于疾病诊疗意义重大的（如手术、输血等重大医疗措施前）",
            "患者处于急诊、急救等紧急状态下的",
            "涉及司法、伤残及病退等鉴定的",
            "其他情形确需复查的",
        ],
        start=1,
    )
]
SH6 = NegativeReason(
    "SH", "SH-6", 6, "图像质量和方法不能满足诊断要求的医学影像学检查", "沪", imaging_only=True
)

LFT_RESULT = StoredResult(
    id=11,
    patient_id=7,
    institution=HOSP_A,
    report_no="JY20260613-1102",
    local_code="LIS-LFT",
    local_name="肝功能全套",
    item_code=LFT,
    category=ITEM[LFT].category,
    status=ResultStatus.FINAL,
    performed_at=PERFORMED,
    issued_at=PERFORMED,
    version=2,
    mark_scope="HE",
    mark_symbol="☆",
    observations=(
        ObservationValue("ALT", "丙氨酸氨基转移酶", ValueType.NM, 56.0, unit="U/L", flag="H"),
        ObservationValue("TBIL", "总胆红素", ValueType.NM, 12.3, unit="umol/L", flag="N"),
    ),
)


def lft_record() -> ReportForRecord:
    return ReportForRecord.of(LFT_RESULT, ITEM[LFT], "河北医科大学第二医院")


def test_emr_text_carries_every_element_hebei_requires() -> None:
    # 冀卫医政函〔2025〕7号 二(三): 注明“医学检查检验互认项目”，记载检查检验结果、
    # “检查检验单位”“检查检验时间”“报告单编号”.
    text = emr_text(lft_record(), inpatient=False)
    lines = text.splitlines()
    assert lines[0].startswith(f"【{EMR_HEADING}】肝功能")
    # The unit as reports print it: UCUM's "umol/L" is "μmol/L".
    assert "检查检验结果：丙氨酸氨基转移酶 56 U/L (H)；总胆红素 12.3 μmol/L" in lines
    assert "检查检验单位：河北医科大学第二医院" in lines
    assert "检查检验时间：2026-06-13 09:15" in lines
    assert "报告单编号：JY20260613-1102" in lines


def test_emr_text_for_an_inpatient_notes_the_report_copy_filed() -> None:
    # 冀 二(三): 住院患者完整互认检查检验报告单复印收入病案予以留存.
    assert "复印收入病案" in emr_text(lft_record(), inpatient=True)
    assert "复印收入病案" not in emr_text(lft_record(), inpatient=False)


def test_imaging_result_text_is_the_findings_not_the_conclusion() -> None:
    # 沪卫医〔2024〕135号 三: 检查检验结果不包括医师出具的诊断结论.
    from dataclasses import replace

    ct = replace(
        LFT_RESULT,
        item_code=CT_CHEST,
        category=ITEM[CT_CHEST].category,
        observations=(),
        findings="右肺上叶见直径约 6 mm 磨玻璃结节。",
        conclusion="右肺上叶磨玻璃结节，考虑炎性可能。",
    )
    assert result_text(ct) == "右肺上叶见直径约 6 mm 磨玻璃结节。"


def test_emr_text_of_a_report_brought_by_the_patient_says_so() -> None:
    # 冀 二(三): 参考患者提供的医疗机构出具的完整检验检查报告单.
    report = ReportForRecord(
        item_name="肝功能",
        result="ALT 40 U/L",
        institution_name="某县人民医院",
        performed_at=PERFORMED,
        report_no="X-001",
        brought_by_patient=True,
    )
    assert "患者提供的完整检查检验报告单" in emr_text(report, inpatient=False)


def test_decline_reason_must_be_on_the_jurisdictions_list() -> None:
    with pytest.raises(ValidationFailed) as exc:
        choose_reason(HB, "SH-5", ITEM[LFT], "")
    assert exc.value.problems[0].field == "reason_code"


def test_decline_reason_on_the_list_is_returned() -> None:
    assert choose_reason(HB, "HB-4", ITEM[LFT], "").number == 4


def test_imaging_only_reason_is_refused_for_a_lab_item() -> None:
    # 沪卫医〔2024〕135号 四(五)(6): 图像质量和方法不能满足诊断要求的医学影像学检查.
    with pytest.raises(ValidationFailed, match="仅适用于医学影像学检查"):
        choose_reason([SH6], "SH-6", ITEM[LFT], "")
    assert choose_reason([SH6], "SH-6", ITEM[CT_CHEST], "").code == "SH-6"


def test_other_circumstances_require_free_text() -> None:
    # 冀 二(四)6 / 沪 四(五)(9): 其他情形确需复查的 — the clinician says which.
    with pytest.raises(ValidationFailed) as exc:
        choose_reason(HB, "HB-6", ITEM[LFT], "  ")
    assert exc.value.problems[0].field == "free_text"
    assert choose_reason(HB, "HB-6", ITEM[LFT], "术前需复核凝血相关肝功能指标").code == "HB-6"


EXPLANATIONS = {
    "HB-4": Explanation(
        why="您目前处于急诊、急救等紧急状态，病情可能在短时间内变化。",
        purpose="尽快掌握您此刻的情况，争取抢救和治疗的时间。",
    )
}


def test_patient_explanation_gives_purpose_and_necessity_in_plain_words() -> None:
    # 冀 二(三): 充分告知复检的目的及必要性.
    text = patient_explanation(
        HB[3], ITEM[LFT], EXPLANATIONS, prior_institution="河北医科大学第二医院"
    )
    assert "在河北医科大学第二医院做过的“肝功能”" in text
    assert "原因是：您目前处于急诊" in text
    assert "重新检查的目的：尽快掌握您此刻的情况" in text


def test_patient_explanation_includes_the_clinicians_free_text() -> None:
    text = patient_explanation(HB[5], ITEM[LFT], {}, free_text="需与本院基线对照")
    assert "医生的具体说明：需与本院基线对照" in text


def test_money_saved_is_the_item_price_on_accept_only() -> None:
    assert saved_fen(ITEM[CT_CHEST], Action.ACCEPTED) == 24000
    assert saved_fen(ITEM[CT_CHEST], Action.DECLINED) == 0
