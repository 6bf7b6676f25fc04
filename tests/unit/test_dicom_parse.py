"""Reading the indexed header of a received instance: the hand walk over the data set gives
what pydicom's reader gives, on every file pydicom ships, and C-STORE's File Meta
Information is what pynetdicom would write."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import encode_file_meta

from huren.adapters.dicom.parse import PydicomParser, _walk_part10
from huren.adapters.dicom.scp import part10
from huren.services.imaging import InvalidDicomBytes
from tests.fixtures.dicom import Spec, instance, to_bytes

TEST_FILES = sorted(
    p for p in Path(str(get_testdata_file("CT_small.dcm"))).parent.rglob("*") if p.is_file()
)


def _by_pydicom(data: bytes) -> object:
    try:
        return PydicomParser()._parse_with_pydicom(data)
    except InvalidDicomBytes:
        return "invalid"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_the_header_is_the_one_pydicom_reads(path: Path) -> None:
    data = path.read_bytes()
    try:
        got: object = PydicomParser().parse(data)
    except InvalidDicomBytes:
        got = "invalid"
    assert got == _by_pydicom(data)


def test_little_endian_files_are_walked_by_hand() -> None:
    data = to_bytes(instance(Spec(study="walk")))
    raw, transfer_syntax = _walk_part10(data)
    assert transfer_syntax == "1.2.840.10008.1.2.1"
    assert raw.text("Rows") == "128"
    assert raw.text("ImageType") == "ORIGINAL\\PRIMARY\\AXIAL"


def test_a_chinese_patient_name_is_decoded_with_the_character_set() -> None:
    ds = instance(Spec(study="gb"))
    ds.SpecificCharacterSet = "GB18030"
    ds.PatientName = "张^三"
    header, _ = PydicomParser().parse(to_bytes(ds))
    assert header.patient_name == "张 三"


def test_bytes_that_are_not_dicom_are_refused() -> None:
    with pytest.raises(InvalidDicomBytes):
        PydicomParser().parse(b"MSH|^~\\&|LIS|" + b"\x00" * 200)


def test_a_c_store_file_has_the_meta_information_pynetdicom_would_write() -> None:
    ds = instance(Spec(study="meta"))
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data_set = buf.getvalue()[132 + len(encode_file_meta(ds.file_meta)) :]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + data_set
    got = part10(
        str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), data_set
    )
    assert got == expected
    assert pydicom.dcmread(BytesIO(got)).SOPInstanceUID == ds.SOPInstanceUID
