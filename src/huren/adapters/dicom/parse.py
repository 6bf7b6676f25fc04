"""DICOM Part 10 bytes → ``InstanceHeader`` (implements ``services.imaging.InstanceParser``).

Reads only the header (up to Pixel Data): indexing never decodes pixels.

Every C-STORE goes through here, so the common case is walked by hand: the File Meta
Information and then the top-level elements of a little-endian data set (PS3.5 7.1:
tag, VR, length), skipping values and sequences, keeping the few elements indexed as
pydicom ``RawDataElement``s, and stopping once the tags pass the largest one wanted
(PS3.5 7.1: elements are in ascending tag order). pydicom still converts the values
(character sets included). Anything else — big endian, deflated, a malformed or truncated
structure — goes to ``pydicom.dcmread``, which decides what is valid as before. Measured on
CT_small.dcm: ~0.1 ms instead of ~1.4 ms."""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Mapping
from datetime import date
from io import BytesIO

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from huren.domain.imaging import REQUIRED_TAGS, InstanceHeader
from huren.domain.text import is_digits
from huren.services.imaging import InvalidDicomBytes

log = logging.getLogger("huren.dicom")

# What ``header_of`` reads; parsing only these keeps indexing cheap.
INDEXED_KEYWORDS = (
    "SpecificCharacterSet",
    *(kw for kw, _ in REQUIRED_TAGS),  # SOPClassUID among them
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
    try:
        value = ds.get(keyword, "")
        if value is None:
            return ""
        if isinstance(value, pydicom.multival.MultiValue):
            return "\\".join(str(v) for v in value)
        return str(value).strip()
    except Exception:  # a value its VR cannot hold: IS "1e400", an FD of 6 bytes …
        return _raw_text(ds, keyword)


def _ascii_value(value: bytes) -> str:
    """An ASCII value as text: its values joined by backslashes, padding (space, NUL) off."""
    return "\\".join(v.strip(" \x00") for v in value.decode("ascii").split("\\")).strip()


def _raw_text(ds: Dataset, keyword: str) -> str:
    """The value as sent when pydicom cannot convert it: its ASCII text as the hand walk
    reads it, '' when it is not ASCII (nothing indexed can be made of it)."""
    raw = ds.get_item(keyword)
    value = getattr(raw, "value", None)
    if not isinstance(value, bytes) or not value.isascii():
        return ""
    return _ascii_value(value)


# PS3.5 6.2: IS holds -2^31 … 2^31 - 1; the index's integer columns hold the same.
_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1


def _int(text: str) -> int | None:
    """An IS value, None when it is not one (not a number, out of IS's range): these
    attributes (series and instance number, frames) are shown, not relied upon."""
    try:
        value = int(text) if text else None
    except ValueError:
        try:
            value = int(float(text))  # IS written as "5.0" by some modalities
        except (ValueError, OverflowError):  # "abc", "1e400", "inf"
            return None
    if value is not None and not _IS_MIN <= value <= _IS_MAX:
        return None
    return value


def _float(text: str) -> float | None:
    """A DS value, None when it is not a finite number ("nan", "1e400")."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is None or math.isfinite(value) else None


def _date(text: str) -> date | None:
    text = text.strip()
    if len(text) == 8 and is_digits(text):
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            return None
    return None


def header_of(
    text: Callable[[str], str], transfer_syntax: str
) -> tuple[InstanceHeader, Mapping[str, str]]:
    """The indexed header from ``text(keyword)``: the element's value as text, values of
    a multi-valued element joined by backslashes, '' when absent."""
    required = {kw: text(kw) for kw, _ in REQUIRED_TAGS}
    image_type = text("ImageType")
    header = InstanceHeader(
        patient_id=required["PatientID"],
        study_uid=required["StudyInstanceUID"],
        series_uid=required["SeriesInstanceUID"],
        sop_uid=required["SOPInstanceUID"],
        sop_class_uid=text("SOPClassUID"),
        transfer_syntax=transfer_syntax,
        patient_name=text("PatientName").replace("^", " ").strip(),
        patient_sex=text("PatientSex")[:1],
        patient_birth_date=text("PatientBirthDate")[:8],
        accession_number=text("AccessionNumber"),
        study_id=text("StudyID")[:16],
        study_date=_date(text("StudyDate")),
        study_time=text("StudyTime")[:16],
        study_description=text("StudyDescription")[:200],
        modality=text("Modality")[:16],
        series_number=_int(text("SeriesNumber")),
        series_description=text("SeriesDescription")[:200],
        body_part=text("BodyPartExamined")[:64],
        slice_thickness=_float(text("SliceThickness")),
        image_type=tuple(v.strip().upper() for v in image_type.split("\\")) if image_type else (),
        instance_number=_int(text("InstanceNumber")),
        rows=_int(text("Rows")),
        columns=_int(text("Columns")),
        number_of_frames=_int(text("NumberOfFrames")) or 1,
    )
    return header, required


# PS3.5 7.1.2: explicit VRs whose length is a 32-bit field after two reserved bytes.
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_WANTED = frozenset(int(t) for t in (tag_for_keyword(k) for k in INDEXED_KEYWORDS) if t)
_LAST_WANTED = max(_WANTED)
_TRANSFER_SYNTAX_TAG = 0x00020010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_WALKED = frozenset(("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"))  # BE, deflated
_U16 = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_TAG_LEN = struct.Struct("<HHI")


class _Unusual(Exception):
    """The hand walk met something it does not handle; pydicom reads the file instead."""


class _Walker:
    """Top-level elements of a little-endian data set, values not decoded."""

    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit

    def element(self, pos: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None when implicit, value length, value offset) at ``pos``."""
        data = self.data
        if pos + 8 > len(data):
            raise _Unusual
        if self.implicit:
            group, elem, length = _TAG_LEN.unpack_from(data, pos)
            return (group << 16) | elem, None, length, pos + 8
        group, elem = _U16.unpack_from(data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # item and delimiters carry no VR (PS3.5 7.5)
            return tag, None, _U32.unpack_from(data, pos + 4)[0], pos + 8
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise _Unusual
            return tag, vr, _U32.unpack_from(data, pos + 8)[0], pos + 12
        if not vr.isalpha() or not vr.isupper():
            raise _Unusual
        return tag, vr, _U16.unpack_from(data, pos + 6)[0], pos + 8

    def skip_undefined(self, pos: int) -> int:
        """Offset after a sequence of undefined length whose items start at ``pos``
        (PS3.5 7.5.1: items up to the Sequence Delimitation Item)."""
        while True:
            tag, _, length, pos = self.element(pos)
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM:
                raise _Unusual
            if length != _UNDEFINED:
                pos += length
                continue
            while True:  # an item of undefined length: elements up to Item Delimitation
                tag, vr, length, pos = self.element(pos)
                if tag == _ITEM_END:
                    break
                if length == _UNDEFINED:
                    if vr not in (b"SQ", None):
                        raise _Unusual  # e.g. UN of undefined length: implicit inside
                    pos = self.skip_undefined(pos)
                else:
                    pos += length

    def wanted(self, start: int) -> dict[int, tuple[bytes | None, int, int]]:
        """The wanted top-level elements: tag → (VR, length, value offset)."""
        found: dict[int, tuple[bytes | None, int, int]] = {}
        pos, end = start, len(self.data)
        while pos < end:
            tag, vr, length, value_at = self.element(pos)
            if tag > _LAST_WANTED:
                break
            if length == _UNDEFINED:
                if vr not in (b"SQ", None):
                    raise _Unusual
                pos = self.skip_undefined(value_at)
                continue
            pos = value_at + length
            if pos > end:
                raise _Unusual
            if tag in _WANTED:
                found[tag] = (vr, length, value_at)
        return found


_TAG_OF = {kw: int(t) for kw in INDEXED_KEYWORDS if (t := tag_for_keyword(kw)) is not None}
_BINARY_UNSIGNED = {"US": struct.Struct("<H"), "UL": struct.Struct("<I")}


class _RawHeader:
    """Text of the walked elements: ASCII values read directly, others (a patient name in
    GB18030 or UTF-8, PS3.5 6.1.2.5) converted by pydicom with the Specific Character
    Set of the data set."""

    def __init__(
        self, data: bytes, found: dict[int, tuple[bytes | None, int, int]], implicit: bool
    ) -> None:
        self.data = data
        self.found = found
        self.implicit = implicit
        self._ds: Dataset | None = None

    def _dataset(self) -> Dataset:
        if self._ds is None:
            self._ds = Dataset(
                {
                    Tag(tag): RawDataElement(
                        Tag(tag),
                        vr.decode("ascii") if vr is not None else None,
                        length,
                        self.data[at : at + length],
                        at,
                        self.implicit,
                        True,
                    )
                    for tag, (vr, length, at) in self.found.items()
                }
            )
        return self._ds

    def text(self, keyword: str) -> str:
        tag = _TAG_OF[keyword]
        item = self.found.get(tag)
        if item is None:
            return ""
        vr_bytes, length, at = item
        vr = vr_bytes.decode("ascii") if vr_bytes is not None else dictionary_VR(tag)
        value = self.data[at : at + length]
        unsigned = _BINARY_UNSIGNED.get(vr)
        if unsigned is not None:
            if len(value) < unsigned.size:
                return ""
            return str(unsigned.unpack_from(value)[0])
        if not value.isascii() or vr in ("OB", "OW", "UN", "SQ"):
            return _text(self._dataset(), keyword)
        return _ascii_value(value)


def _walk_part10(data: bytes) -> tuple[_RawHeader, str]:
    """The indexed elements of a Part 10 file, and its transfer syntax. Raises
    ``_Unusual`` for anything not walked by hand."""
    # PS3.10 7.1: 128-byte preamble, "DICM", File Meta Information (explicit VR LE).
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Unusual
    meta = _Walker(data, implicit=False)
    pos, transfer_syntax = 132, ""
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        tag, _, length, value_at = meta.element(pos)
        if length == _UNDEFINED or value_at + length > len(data):
            raise _Unusual
        if tag == _TRANSFER_SYNTAX_TAG:
            transfer_syntax = data[value_at : value_at + length].rstrip(b"\x00 ").decode("ascii")
        pos = value_at + length
    if not transfer_syntax or transfer_syntax in _NOT_WALKED:
        raise _Unusual
    implicit = transfer_syntax == _IMPLICIT_LE
    return _RawHeader(data, _Walker(data, implicit).wanted(pos), implicit), transfer_syntax


class PydicomParser:
    def parse(self, data: bytes) -> tuple[InstanceHeader, Mapping[str, str]]:
        try:
            raw, transfer_syntax = _walk_part10(data)
            return header_of(raw.text, transfer_syntax)
        except Exception:  # anything unusual: dcmread judges the file as before
            log.debug("header walked by pydicom", exc_info=True)
        return self._parse_with_pydicom(data)

    def _parse_with_pydicom(self, data: bytes) -> tuple[InstanceHeader, Mapping[str, str]]:
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
        try:
            return header_of(lambda kw: _text(ds, kw), str(ts))
        except Exception as exc:  # _text answers for each value; this is a last guard
            raise InvalidDicomBytes(f"无法读取索引属性（{type(exc).__name__}）") from exc
