"""DICOM Part 10 bytes → ``InstanceHeader`` (implements ``services.imaging.InstanceParser``).

Reads only the header (up to Pixel Data): indexing never decodes pixels."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from huren.domain.imaging import REQUIRED_TAGS, InstanceHeader
from huren.services.imaging import InvalidDicomBytes

# What ``header_of`` reads; parsing only these keeps indexing cheap.
INDEXED_KEYWORDS = (
    "SpecificCharacterSet",
    *(kw for kw, _ in REQUIRED_TAGS),
    "SOPClassUID",
    "PatientName",
    "PatientSex",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "SliceThickness",
    "ImageType",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _date(text: str) -> date | None:
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            return None
    return None


def header_of(ds: Dataset, transfer_syntax: str) -> tuple[InstanceHeader, Mapping[str, str]]:
    required = {kw: _text(ds, kw) for kw, _ in REQUIRED_TAGS}
    image_type: Any = ds.get("ImageType", ())
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    header = InstanceHeader(
        patient_id=required["PatientID"],
        study_uid=required["StudyInstanceUID"],
        series_uid=required["SeriesInstanceUID"],
        sop_uid=required["SOPInstanceUID"],
        sop_class_uid=_text(ds, "SOPClassUID"),
        transfer_syntax=transfer_syntax,
        patient_name=_text(ds, "PatientName").replace("^", " ").strip(),
        patient_sex=_text(ds, "PatientSex")[:1],
        patient_birth_date=_text(ds, "PatientBirthDate")[:8],
        accession_number=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID")[:16],
        study_date=_date(_text(ds, "StudyDate")),
        study_time=_text(ds, "StudyTime")[:16],
        study_description=_text(ds, "StudyDescription")[:200],
        modality=_text(ds, "Modality")[:16],
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription")[:200],
        body_part=_text(ds, "BodyPartExamined")[:64],
        slice_thickness=_float(ds, "SliceThickness"),
        image_type=tuple(str(v).upper() for v in image_type),
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
    )
    return header, required


class PydicomParser:
    def parse(self, data: bytes) -> tuple[InstanceHeader, Mapping[str, str]]:
        try:
            # PS3.10 7.1: preamble, "DICM", File Meta Information; force=False refuses
            # anything else.
            ds = pydicom.dcmread(
                BytesIO(data), stop_before_pixels=True, specific_tags=list(INDEXED_KEYWORDS)
            )
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
            raise InvalidDicomBytes(str(exc) or type(exc).__name__) from exc
        except Exception as exc:
            raise InvalidDicomBytes(type(exc).__name__) from exc
        ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if not ts:
            raise InvalidDicomBytes("缺少文件元信息中的传输语法 (0002,0010)")
        return header_of(ds, str(ts))
