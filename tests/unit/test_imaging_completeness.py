"""Completeness of an imaging result for its item (domain.imaging), as 沪卫医〔2024〕135号
四(二)2 sets it: lossless originals + post-processed images + the signed report; X 线平片、
钡餐、乳腺 X 线摄影 all images; CT thick and thin slices plus post-processing; MR every
sequence. The rules are data in the item's QualityRequirements."""

from __future__ import annotations

from huren.domain.imaging import (
    ReportKey,
    SeriesSummary,
    StudyKey,
    assess_study,
    missing_required,
    study_matches_report,
)
from huren.domain.masterdata import QualityRequirements, SeriesRequirement

# 沪卫医〔2024〕135号 四(二)2: CT 应上传厚层及薄层图像 … 以及后处理生成的影像
CT_RULES = QualityRequirements(
    required_series=(
        SeriesRequirement("厚层", slice_thickness_min_mm=3.0),
        SeriesRequirement("薄层", slice_thickness_max_mm=1.5),
        SeriesRequirement("后处理", derived=True),
    )
)
# 沪卫医〔2024〕135号 四(二)2: MR 应上传检查时生成的各序列影像
MR_BRAIN_RULES = QualityRequirements(
    required_series=(
        SeriesRequirement("T1WI", description_keywords=("T1",)),
        SeriesRequirement("T2WI", description_keywords=("T2",)),
        SeriesRequirement("FLAIR", description_keywords=("FLAIR",)),
        SeriesRequirement("DWI", description_keywords=("DWI", "弥散")),
    )
)
# 沪卫医〔2024〕135号 四(二)2: 乳腺 X 线摄影 所有图像 → 双侧 CC + MLO 四个体位
MAMMO_RULES = QualityRequirements(min_images=4)


def series(
    desc: str, thickness: float | None = None, *, derived: bool = False, n: int = 10
) -> SeriesSummary:
    return SeriesSummary(f"uid-{desc}-{thickness}-{derived}", "CT", desc, thickness, derived, n)


def test_ct_with_thick_thin_and_reformats_is_complete() -> None:
    status = assess_study(
        CT_RULES,
        [
            series("Chest 5mm", 5.0),
            series("Chest 1mm", 1.0, n=300),
            series("MPR cor", 3.0, derived=True),
        ],
        has_study=True,
        has_report=True,
    )
    assert status.complete
    assert status.missing == ()
    assert (status.series_count, status.instance_count) == (3, 320)


def test_ct_without_thin_slices_is_incomplete_naming_the_thin_series() -> None:
    status = assess_study(
        CT_RULES,
        [series("Chest 5mm", 5.0), series("MPR cor", 3.0, derived=True)],
        has_study=True,
        has_report=True,
    )
    assert not status.complete
    assert status.missing == ("缺少薄层序列（层厚 ≤ 1.5 mm）",)


def test_ct_post_processing_must_be_derived_images() -> None:
    status = assess_study(
        CT_RULES,
        [series("Chest 5mm", 5.0), series("Chest 1mm", 1.0)],
        has_study=True,
        has_report=True,
    )
    assert status.missing == ("缺少后处理序列（后处理图像）",)


def test_a_derived_thin_reformat_does_not_stand_in_for_original_thin_slices() -> None:
    status = assess_study(
        CT_RULES,
        [series("Chest 5mm", 5.0), series("MPR 1mm", 1.0, derived=True)],
        has_study=True,
        has_report=True,
    )
    assert "缺少薄层序列（层厚 ≤ 1.5 mm）" in status.missing


def test_mr_requires_every_named_sequence() -> None:
    status = assess_study(
        MR_BRAIN_RULES,
        [series("t1_se_tra"), series("t2_tse_tra"), series("t2_flair_tra")],
        has_study=True,
        has_report=True,
    )
    # "t2_flair" also satisfies T2 by keyword, but DWI is missing
    assert status.missing == ("缺少DWI序列（序列描述含「DWI」或「弥散」）",)


def test_mammography_with_fewer_views_than_required_is_incomplete() -> None:
    status = assess_study(
        MAMMO_RULES, [series("L CC", n=1), series("L MLO", n=1)], has_study=True, has_report=True
    )
    assert status.missing == ("图像数量不足：应至少 4 幅，实收 2 幅",)


def test_report_without_its_study_is_incomplete() -> None:
    status = assess_study(CT_RULES, [], has_study=False, has_report=True)
    assert status.missing == ("影像未上传：尚未收到该报告对应的 DICOM 影像",)


def test_study_without_its_report_is_incomplete() -> None:
    status = assess_study(
        QualityRequirements(),
        [series("Chest 5mm", 5.0)],
        has_study=True,
        has_report=False,
    )
    assert status.missing == ("报告未上传：尚未收到影像科医生签发的报告",)


def test_missing_required_identifiers_are_named_with_their_tags() -> None:
    found = missing_required(
        {"PatientID": "", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3"}
    )
    assert found == [
        ("PatientID", "患者ID (0010,0020)"),
        ("SOPInstanceUID", "SOP实例UID (0008,0018)"),
        ("SOPClassUID", "SOP类UID (0008,0016)"),
    ]


def _study(acc: str = "ACC1", uid: str = "1.2.3", patient: str = "h1") -> StudyKey:
    return StudyKey("H1", acc, uid, patient)


def _report(
    acc: str = "ACC1", uid: str = "", patients: frozenset[str] = frozenset({"h1"})
) -> ReportKey:
    return ReportKey(7, "H1", acc, uid, patients)


def test_study_links_to_report_by_accession_and_patient() -> None:
    assert study_matches_report(_study(), _report())


def test_same_accession_of_another_patient_does_not_link() -> None:
    assert not study_matches_report(_study(patient="h2"), _report())


def test_report_naming_a_study_uid_links_only_that_study() -> None:
    assert not study_matches_report(_study(uid="1.2.3"), _report(uid="9.9.9"))
    assert study_matches_report(_study(uid="9.9.9", acc="OTHER"), _report(uid="9.9.9"))


def test_empty_accession_numbers_never_link() -> None:
    assert not study_matches_report(_study(acc=""), _report(acc=""))
