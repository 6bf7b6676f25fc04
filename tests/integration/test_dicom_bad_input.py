"""Mutated DICOM instances found by a mutation fuzzer: each is stored, or refused with a
named attribute and nothing left behind (no index row, no file), on SQLite and on
PostgreSQL alike — never an exception other than the refusal."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian
from sqlalchemy import func, select

from huren.adapters.db.tables_imaging import (
    dicom_event,
    imaging_instance,
    imaging_series,
    imaging_study,
)
from huren.adapters.dicom import dicomjson
from huren.bootstrap import Container
from huren.services.imaging import InvalidAttributes, MissingRequiredTags, Source
from tests.fixtures.dicom import Spec, instance, to_bytes, uid
from tests.fixtures.world import HOSP_A


def _raw(ds: Dataset, keyword: str, value: bytes, vr: str | None = None) -> None:
    """Set ``keyword`` to bytes as a sender wrote them, past pydicom's checks."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(Tag(tag), vr or dictionary_VR(tag), len(value), value, 0, False, True)


def _rows(c: Container) -> tuple[int, int, int]:
    with c.engine.connect() as conn:
        return (
            int(conn.execute(select(func.count()).select_from(imaging_study)).scalar_one()),
            int(conn.execute(select(func.count()).select_from(imaging_series)).scalar_one()),
            int(conn.execute(select(func.count()).select_from(imaging_instance)).scalar_one()),
        )


def _files(c: Container) -> list[Path]:
    root = c.settings.data_dir / "dicom"
    return sorted(root.rglob("*.dcm")) if root.exists() else []


def _store(c: Container, ds: Dataset) -> object:
    return c.imaging.store_instance(to_bytes(ds), institution=HOSP_A, source=Source.DIMSE)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("StudyInstanceUID", b"1.2." + b"3" * 80),  # 84 characters: PostgreSQL refused it
        ("SeriesInstanceUID", b"1.2." + b"3" * 80),
        ("SOPInstanceUID", b"1.2." + b"3" * 80),
        ("SOPClassUID", b"1.2." + b"3" * 80),
        ("StudyInstanceUID", b"1.2.abc.4"),  # letters: stored as a UID before
        ("SeriesInstanceUID", b"1.2.3\\4.5.6"),  # two values
    ],
)
def test_a_value_that_is_not_a_uid_is_refused_naming_the_attribute(
    world: Container, keyword: str, value: bytes
) -> None:
    ds = instance(Spec(study="baduid"))
    _raw(ds, keyword, value)
    with pytest.raises(InvalidAttributes) as err:
        _store(world, ds)
    assert [p.field for p in err.value.problems] == [keyword]
    assert "不是有效的 UID" in err.value.message
    assert err.value.dicom_status == 0xA903
    assert _rows(world) == (0, 0, 0)
    assert _files(world) == []


@pytest.mark.parametrize(
    ("keyword", "value", "label"),
    [
        ("StudyDescription", b"Chest\x00CT", "(0008,1030)"),  # PostgreSQL refused the NUL
        ("ImageType", b"ORIGINAL\\PRI\x00MARY", "(0008,0008)"),
        ("PatientName", b"Zhang\x00San", "(0010,0010)"),
        ("AccessionNumber", b"A" * 70, "(0008,0050)"),  # longer than the column
        ("PatientID", b"P" * 70, "(0010,0020)"),
    ],
)
def test_a_nul_or_an_overlong_identifier_is_refused_naming_the_attribute(
    world: Container, keyword: str, value: bytes, label: str
) -> None:
    ds = instance(Spec(study="badtext"))
    _raw(ds, keyword, value)
    with pytest.raises(InvalidAttributes) as err:
        _store(world, ds)
    assert [p.field for p in err.value.problems] == [keyword]
    assert label in err.value.message
    assert _rows(world) == (0, 0, 0)
    assert _files(world) == []
    with world.engine.connect() as conn:
        event = conn.execute(select(dicom_event)).one()
    assert (event.kind, event.status, event.sop_uid) == (
        "instance_rejected",
        0xA903,
        uid("badtext/series-1/1"),
    )


def test_a_missing_sop_class_uid_is_refused_naming_the_tag(world: Container) -> None:
    ds = instance(Spec(study="noclass"))
    del ds.SOPClassUID
    with pytest.raises(MissingRequiredTags) as err:
        _store(world, ds)
    assert "(0008,0016)" in err.value.message
    assert _rows(world) == (0, 0, 0)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_refusal_quoting_a_sop_uid_with_a_nul_is_still_logged(world: Container) -> None:
    ds = instance(Spec(study="nulsop"))
    del ds.PatientID
    _raw(ds, "SOPInstanceUID", b"1.2.3\x004")
    with pytest.raises(MissingRequiredTags):
        _store(world, ds)
    with world.engine.connect() as conn:
        event = conn.execute(select(dicom_event)).one()  # PostgreSQL refused the row before
    assert "(0010,0020)" in event.message
    assert event.sop_uid == ""


def test_numbers_outside_their_vr_are_indexed_empty_on_every_backend(world: Container) -> None:
    ds = instance(Spec(study="bignum"))
    _raw(ds, "SeriesNumber", b"99999999999999")  # integer out of range on PostgreSQL
    _raw(ds, "InstanceNumber", b"-2147483649")
    _raw(ds, "NumberOfFrames", b"2147483648")
    _raw(ds, "SliceThickness", b"1e400")  # infinity: no JSON number for it
    stored = _store(world, ds)
    assert stored is not None
    [series] = world.imaging.index.series_of_studies([uid("bignum")])[uid("bignum")]
    assert (series.series_number, series.slice_thickness) == (None, None)
    [row] = world.imaging.instances_for_retrieve(uid("bignum"))
    assert (row.instance_number, row.number_of_frames) == (None, 1)
    assert dicomjson.to_dicom_json(dicomjson.series_attributes(series), dicomjson.SERIES_KEYS)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_value_pydicom_cannot_convert_in_a_deflated_file_is_indexed_empty(
    world: Container,
) -> None:
    # Deflated files are read by pydicom, not walked by hand: IS "1e400" overflowed and a
    # 6-byte FD could not be unpacked, both escaping as exceptions.
    ds = instance(Spec(study="deflated"))
    _raw(ds, "SeriesNumber", b"1e400")
    _raw(ds, "StudyID", b"\x1b$)A\xd5\xc5", vr="FD")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    world.imaging.store_instance(buf.getvalue(), institution=HOSP_A, source=Source.STOW)
    [series] = world.imaging.index.series_of_studies([uid("deflated")])[uid("deflated")]
    assert series.series_number is None
    assert world.imaging.study_view(uid("deflated")).study.study_id == ""


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_long_patient_name_is_stored_with_its_mask_cut(world: Container) -> None:
    ds = instance(Spec(study="longname"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "检查" * 60  # its mask was longer than the column (PostgreSQL refused)
    _store(world, ds)
    with world.engine.connect() as conn:
        masked = conn.execute(select(imaging_study.c.patient_name_masked)).scalar_one()
    assert len(masked) == 64
    study = world.imaging.study_view(uid("longname")).study
    assert world.imaging.reveal(study.patient_name_enc) == "检查" * 60
