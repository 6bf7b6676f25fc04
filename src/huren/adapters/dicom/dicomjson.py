"""Index rows → DICOM attributes, for C-FIND responses and QIDO-RS results in the DICOM
JSON Model (PS3.18 Annex F.2). Values come from the index, not from the files, so a
search never opens a file."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from huren.services.imaging import ImagingService, InstanceRow, SeriesRow, StudyRow

# keyword → (tag, VR): the attributes the index can answer (PS3.18 Table 10.6.3-3/-4/-5).
ATTRIBUTES: Mapping[str, tuple[str, str]] = {
    "SpecificCharacterSet": ("00080005", "CS"),
    "StudyDate": ("00080020", "DA"),
    "StudyTime": ("00080030", "TM"),
    "AccessionNumber": ("00080050", "SH"),
    "ModalitiesInStudy": ("00080061", "CS"),
    "StudyDescription": ("00081030", "LO"),
    "PatientName": ("00100010", "PN"),
    "PatientID": ("00100020", "LO"),
    "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"),
    "StudyInstanceUID": ("0020000D", "UI"),
    "StudyID": ("00200010", "SH"),
    "NumberOfStudyRelatedSeries": ("00201206", "IS"),
    "NumberOfStudyRelatedInstances": ("00201208", "IS"),
    "Modality": ("00080060", "CS"),
    "SeriesDescription": ("0008103E", "LO"),
    "BodyPartExamined": ("00180015", "CS"),
    "SliceThickness": ("00180050", "DS"),
    "SeriesInstanceUID": ("0020000E", "UI"),
    "SeriesNumber": ("00200011", "IS"),
    "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "SOPClassUID": ("00080016", "UI"),
    "SOPInstanceUID": ("00080018", "UI"),
    "InstanceNumber": ("00200013", "IS"),
    "Rows": ("00280010", "US"),
    "Columns": ("00280011", "US"),
    "NumberOfFrames": ("00280008", "IS"),
    "AvailableTransferSyntaxUID": ("00083002", "UI"),
    "RetrieveURL": ("00081190", "UR"),
}
BY_TAG: Mapping[str, str] = {tag: kw for kw, (tag, _) in ATTRIBUTES.items()}

STUDY_KEYS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_KEYS = (
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "SliceThickness",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_KEYS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "AvailableTransferSyntaxUID",
)


def keyword_of(name: str) -> str | None:
    """An attribute named by keyword or by tag (PS3.18 8.3.4.1: attribute-id)."""
    if name in ATTRIBUTES:
        return name
    return BY_TAG.get(name.upper())


def study_attributes(imaging: ImagingService, s: StudyRow) -> dict[str, Any]:
    return {
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyDate": s.study_date.strftime("%Y%m%d") if s.study_date else "",
        "StudyTime": s.study_time,
        "AccessionNumber": s.accession_number,
        "ModalitiesInStudy": list(s.modalities),
        "StudyDescription": s.study_description,
        "PatientName": imaging.reveal(s.patient_name_enc),
        "PatientID": imaging.reveal(s.patient_id_enc),
        "PatientBirthDate": s.patient_birth_date,
        "PatientSex": s.patient_sex,
        "StudyInstanceUID": s.study_uid,
        "StudyID": s.study_id,
        "NumberOfStudyRelatedSeries": s.series_count,
        "NumberOfStudyRelatedInstances": s.instance_count,
    }


def series_attributes(s: SeriesRow) -> dict[str, Any]:
    return {
        "StudyInstanceUID": s.study_uid,
        "Modality": s.modality,
        "SeriesDescription": s.series_description,
        "BodyPartExamined": s.body_part,
        "SliceThickness": s.slice_thickness,
        "SeriesInstanceUID": s.series_uid,
        "SeriesNumber": s.series_number,
        "NumberOfSeriesRelatedInstances": s.instance_count,
    }


def instance_attributes(i: InstanceRow) -> dict[str, Any]:
    return {
        "StudyInstanceUID": i.study_uid,
        "SeriesInstanceUID": i.series_uid,
        "SOPClassUID": i.sop_class_uid,
        "SOPInstanceUID": i.sop_uid,
        "InstanceNumber": i.instance_number,
        "Rows": i.rows,
        "Columns": i.columns,
        "NumberOfFrames": i.number_of_frames,
        "AvailableTransferSyntaxUID": i.transfer_syntax,
    }


def _json_value(vr: str, value: Any) -> list[Any] | None:
    if value is None or value == "" or value == []:
        return None
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return [{"Alphabetic": str(v)} for v in values]
    if vr in ("US", "SL", "UL", "SS"):
        return [int(v) for v in values]
    if vr == "IS":
        return [int(v) for v in values]
    if vr == "DS":
        # PS3.18 F.2.3.1: a JSON number; NaN and infinities have none (a row written
        # before intake refused them shows the attribute empty).
        numbers = [float(v) for v in values]
        return numbers if all(math.isfinite(n) for n in numbers) else None
    return [str(v) for v in values]


def to_dicom_json(attrs: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """PS3.18 F.2: {"gggg eeee": {"vr": VR, "Value": [...]}}; empty attributes carry no
    Value (F.2.5)."""
    out: dict[str, Any] = {}
    for kw in keys:
        if kw not in attrs or kw not in ATTRIBUTES:
            continue
        tag, vr = ATTRIBUTES[kw]
        entry: dict[str, Any] = {"vr": vr}
        value = _json_value(vr, attrs[kw])
        if value is not None:
            entry["Value"] = value
        out[tag] = entry
    return dict(sorted(out.items()))
