"""Imaging results (R3 imaging): what a received DICOM instance tells us, when a study is
complete for the item it was ordered as, and how a study finds its report.

沪卫医〔2024〕135号 四(二)2 sets what an imaging result consists of: 无损 DICOM 格式影像和后处理
影像以及影像科医生签发的报告; X 线平片、胃肠道钡餐及乳腺 X 线摄影的所有图像; CT 的厚层及薄层
图像以及后处理生成的影像; MR 的各序列影像（血管成像、功能成像另需后处理影像）. The item list
carries these as data (``QualityRequirements.required_series`` / ``min_images``); the rules
below only read them. Pure: no I/O, no DICOM library.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from huren.domain.masterdata import QualityRequirements, SeriesRequirement

# PS3.4 Annex B.2.3 (Table B.2-1) and PS3.18 Annex I.2.2: C-STORE / STOW-RS failure statuses.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources (A7xx)
STATUS_DATASET_MISMATCH = 0xA900  # Error: Data Set does not match SOP Class (A9xx)
STATUS_CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (Cxxx)
# Implementation-specific codes inside the standard's ranges (documented for clients).
STATUS_MISSING_REQUIRED = 0xA901  # a required identifying attribute is missing
STATUS_CONFLICTING_INSTANCE = 0xA902  # SOP Instance UID known with different content
STATUS_INVALID_ATTRIBUTE = 0xA903  # an indexed attribute's value cannot be kept as sent
STATUS_NOT_DICOM = 0xC001  # the bytes are not a DICOM Part 10 file / data set
STATUS_NOT_AUTHORISED = 0x0124  # PS3.7 C: Refused: Not authorised (unknown calling AE)

# The attributes HuRen indexes and names in its refusals: Chinese name and tag.
ATTRIBUTE_LABELS: Mapping[str, str] = {
    "PatientID": "患者ID (0010,0020)",
    "PatientName": "患者姓名 (0010,0010)",
    "PatientSex": "患者性别 (0010,0040)",
    "PatientBirthDate": "出生日期 (0010,0030)",
    "AccessionNumber": "检查号 (0008,0050)",
    "StudyID": "检查ID (0020,0010)",
    "StudyTime": "检查时间 (0008,0030)",
    "StudyDescription": "检查描述 (0008,1030)",
    "Modality": "检查设备类型 (0008,0060)",
    "SeriesDescription": "序列描述 (0008,103E)",
    "BodyPartExamined": "检查部位 (0018,0015)",
    "StudyInstanceUID": "检查实例UID (0020,000D)",
    "SeriesInstanceUID": "序列实例UID (0020,000E)",
    "SOPInstanceUID": "SOP实例UID (0008,0018)",
    "SOPClassUID": "SOP类UID (0008,0016)",
    "TransferSyntaxUID": "传输语法UID (0002,0010)",
    "ImageType": "图像类型 (0008,0008)",
}

# PS3.3 C.7.1.1 / C.7.2.1 / C.7.3.1 / C.12.1: the Type 1 identifiers without which an
# instance cannot be filed under a patient, study and series.
REQUIRED_TAGS: tuple[tuple[str, str], ...] = tuple(
    (kw, ATTRIBUTE_LABELS[kw])
    for kw in (
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
    )
)

# PS3.5 9.1: a UID is at most 64 characters, digits and full stops only.
UID_MAX_LENGTH = 64
_UID_CHARACTERS = frozenset("0123456789.")
# PS3.5 6.2: LO (Patient ID) holds at most 64 characters; the index keeps an accession
# number of up to 64 as well (SH allows 16, some RIS send longer).
PATIENT_ID_MAX_LENGTH = 64
ACCESSION_MAX_LENGTH = 64

# The indexed attributes (InstanceHeader field, keyword): text, and UIDs.
_TEXT_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("patient_id", "PatientID"),
    ("patient_name", "PatientName"),
    ("patient_sex", "PatientSex"),
    ("patient_birth_date", "PatientBirthDate"),
    ("accession_number", "AccessionNumber"),
    ("study_id", "StudyID"),
    ("study_time", "StudyTime"),
    ("study_description", "StudyDescription"),
    ("modality", "Modality"),
    ("series_description", "SeriesDescription"),
    ("body_part", "BodyPartExamined"),
)
_UID_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("study_uid", "StudyInstanceUID"),
    ("series_uid", "SeriesInstanceUID"),
    ("sop_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("transfer_syntax", "TransferSyntaxUID"),
)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes of one received instance that the platform indexes."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    patient_name: str = ""
    patient_sex: str = ""
    patient_birth_date: str = ""  # DICOM DA text, kept as sent
    accession_number: str = ""
    study_id: str = ""
    study_date: date | None = None
    study_time: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""
    slice_thickness: float | None = None
    image_type: tuple[str, ...] = ()
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int = 1

    @property
    def derived(self) -> bool:
        """Post-processed image (后处理影像): PS3.3 C.7.6.1.1.2 Image Type value 1 is
        ORIGINAL or DERIVED; secondary captures and reformats are DERIVED."""
        return bool(self.image_type) and self.image_type[0].upper() == "DERIVED"


def missing_required(values: Mapping[str, str]) -> list[tuple[str, str]]:
    """The required identifiers that are absent or empty, as (keyword, Chinese label)."""
    return [(kw, label) for kw, label in REQUIRED_TAGS if not values.get(kw, "").strip()]


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a UID (PS3.5 9.1), in Chinese; None when it is one."""
    if len(value) > UID_MAX_LENGTH:
        return f"超过 {UID_MAX_LENGTH} 个字符（{len(value)} 个）"
    if not _UID_CHARACTERS.issuperset(value):
        return "只能由数字和“.”组成"
    return None


def invalid_attributes(header: InstanceHeader) -> list[tuple[str, str]]:
    """The indexed attributes of ``header`` whose values cannot be kept as sent, as
    (keyword, Chinese reason naming the attribute and its tag): a UID that is not one
    (too long, letters, a backslash of several values), a Patient ID or accession number
    longer than the index holds, a NUL character (U+0000) in any text — DICOM text never
    holds one inside a value (PS3.5 6.2) and PostgreSQL cannot store it."""
    out: list[tuple[str, str]] = []
    labels = ATTRIBUTE_LABELS
    for attr, keyword in _UID_ATTRIBUTES:
        why = uid_problem(getattr(header, attr))
        if why is not None:
            out.append((keyword, f"{labels[keyword]} 不是有效的 UID：{why}"))
    nul = [kw for attr, kw in _TEXT_ATTRIBUTES if "\x00" in getattr(header, attr)]
    if any("\x00" in v for v in header.image_type):
        nul.append("ImageType")
    out.extend((kw, f"{labels[kw]} 含有 NUL 字符（\\u0000）") for kw in nul)
    limits = (
        ("PatientID", header.patient_id, PATIENT_ID_MAX_LENGTH),
        ("AccessionNumber", header.accession_number, ACCESSION_MAX_LENGTH),
    )
    for keyword, value, limit in limits:
        if len(value.strip()) > limit:
            out.append(
                (keyword, f"{labels[keyword]} 超过 {limit} 个字符（{len(value.strip())} 个）")
            )
    return out


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_uid: str
    modality: str
    description: str
    slice_thickness: float | None
    derived: bool
    instance_count: int
    series_number: int | None = None


@dataclass(frozen=True, slots=True)
class StudyStatus:
    """Where an imaging result stands: study received, report received, complete for its
    item. ``missing`` holds the reasons in Chinese, shown to clinicians as they are."""

    complete: bool
    missing: tuple[str, ...]
    series_count: int
    instance_count: int
    study_uid: str = ""
    has_report: bool = False

    @property
    def recognizable_imaging(self) -> bool:
        """Imaging side of recognizability: both parts arrived and nothing is missing."""
        return self.complete


def series_meets(series: SeriesSummary, req: SeriesRequirement) -> bool:
    """Does one series satisfy one required series of the item?"""
    if req.derived != series.derived:
        return False
    t = series.slice_thickness
    if req.slice_thickness_min_mm is not None and (t is None or t < req.slice_thickness_min_mm):
        return False
    if req.slice_thickness_max_mm is not None and (t is None or t > req.slice_thickness_max_mm):
        return False
    if req.description_keywords:
        text = series.description.casefold()
        if not any(k.casefold() in text for k in req.description_keywords):
            return False
    return True


def _describe(req: SeriesRequirement) -> str:
    parts: list[str] = []
    lo, hi = req.slice_thickness_min_mm, req.slice_thickness_max_mm
    if lo is not None and hi is not None:
        parts.append(f"层厚 {lo:g}–{hi:g} mm")
    elif lo is not None:
        parts.append(f"层厚 ≥ {lo:g} mm")
    elif hi is not None:
        parts.append(f"层厚 ≤ {hi:g} mm")
    if req.description_keywords:
        parts.append("序列描述含「" + "」或「".join(req.description_keywords) + "」")
    if req.derived:
        parts.append("后处理图像")
    return f"（{'，'.join(parts)}）" if parts else ""


def assess_study(
    quality: QualityRequirements,
    series: Sequence[SeriesSummary],
    *,
    has_study: bool,
    has_report: bool,
    study_uid: str = "",
) -> StudyStatus:
    """Is an imaging result complete for its item?

    A report without its study, or a study without its report, is incomplete (issue 4 §3;
    沪卫医〔2024〕135号 四(二)2: 影像 … 以及影像科医生签发的报告). Each required series must be
    present (CT 厚层及薄层 + 后处理; MR 各序列), and the study must hold at least
    ``min_images`` images (X 线平片、钡餐、乳腺 X 线摄影: 所有图像 → the number of views)."""
    missing: list[str] = []
    instance_count = sum(s.instance_count for s in series)
    if not has_study:
        missing.append("影像未上传：尚未收到该报告对应的 DICOM 影像")
    if quality.requires_report and not has_report:
        missing.append("报告未上传：尚未收到影像科医生签发的报告")
    if has_study:
        for req in quality.required_series:
            if not any(series_meets(s, req) for s in series):
                missing.append(f"缺少{req.name}序列{_describe(req)}")
        if quality.min_images and instance_count < quality.min_images:
            missing.append(
                f"图像数量不足：应至少 {quality.min_images} 幅，实收 {instance_count} 幅"
            )
    return StudyStatus(
        complete=not missing,
        missing=tuple(missing),
        series_count=len(series),
        instance_count=instance_count,
        study_uid=study_uid,
        has_report=has_report,
    )


# ---------------------------------------------------------------- linking study ↔ report
@dataclass(frozen=True, slots=True)
class StudyKey:
    """A received study as linking sees it: the producing institution, the accession
    number, the study UID and the keyed hash of its PatientID as that institution's MRN."""

    institution: str
    accession_number: str
    study_uid: str
    patient_hash: str


@dataclass(frozen=True, slots=True)
class ReportKey:
    """A report (imaging result) as linking sees it. ``patient_hashes`` are the MRN lookup
    hashes the report's patient holds at that institution."""

    result_id: int
    institution: str
    accession_number: str
    study_uid: str
    patient_hashes: frozenset[str]


def study_matches_report(study: StudyKey, report: ReportKey) -> bool:
    """A study belongs to a report when both come from the same institution and the same
    patient and either the report names the Study Instance UID or the accession numbers
    (检查号, DICOM (0008,0050)) agree. A different patient never links, whatever the
    numbers say."""
    if study.institution != report.institution:
        return False
    if study.patient_hash not in report.patient_hashes:
        return False
    if report.study_uid:
        return report.study_uid == study.study_uid
    return bool(report.accession_number) and report.accession_number == study.accession_number


def link(studies: Iterable[StudyKey], report: ReportKey) -> StudyKey | None:
    """The study of a report, if it has arrived."""
    for s in studies:
        if study_matches_report(s, report):
            return s
    return None


# ---------------------------------------------------------------- viewing
@dataclass(frozen=True, slots=True)
class WindowPreset:
    code: str
    label: str
    center: float
    width: float


# Common CT window presets (Hounsfield units), as radiologists name them.
WINDOW_PRESETS: tuple[WindowPreset, ...] = (
    WindowPreset("lung", "肺窗", -600, 1500),
    WindowPreset("mediastinum", "纵隔窗", 40, 400),
    WindowPreset("bone", "骨窗", 400, 1800),
    WindowPreset("brain", "脑窗", 40, 80),
)


# ---------------------------------------------------------------- insurer confirmation
@dataclass(frozen=True, slots=True)
class SeriesConfirmation:
    modality: str
    series_number: int | None
    instance_count: int
    first_received_at: datetime


@dataclass(frozen=True, slots=True)
class ImagingConfirmation:
    """What an insurer may learn of a billed imaging study (冀卫医政函〔2025〕7号 三(四):
    医保部门通过调阅云影像平台…核实参保人报销数据的准确性): that it exists, when, which modality,
    how many series and images — no pixels, no report text."""

    exists: bool
    study_uid: str = ""
    accession_number: str = ""
    institution: str = ""
    study_date: date | None = None
    modalities: tuple[str, ...] = ()
    series_count: int = 0
    instance_count: int = 0
    received_at: datetime | None = None
    series: tuple[SeriesConfirmation, ...] = ()
