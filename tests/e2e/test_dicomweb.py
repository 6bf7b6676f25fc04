"""DICOMweb (PS3.18) against dicomweb-client as the peer, over real HTTP (uvicorn on a free
port): STOW-RS, QIDO-RS, WADO-RS, metadata and rendered frames; bad input refused whole."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from io import BytesIO

import httpx
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.tag import Tag
from sqlalchemy import func, select

from huren.adapters.db.tables_imaging import dicom_event, imaging_instance
from huren.api.app import create_app
from huren.api.routes import dicomweb
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from tests.e2e.live import free_port
from tests.fixtures.dicom import Spec, instance, instance_bytes, series_specs, to_bytes, uid
from tests.fixtures.world import HOSP_A

# The build machine is shared and loaded: httpx's 5 s default timed out once at load 11.
_http = httpx.Client(timeout=30)

PACS = Principal(1, "pacs-a", "PACS 接口", Role.INTEGRATION, institution=HOSP_A)
DOCTOR = Principal(2, "dr-li", "李医生", Role.CLINICIAN, institution="H130600001")


class Server:
    def __init__(self, container: Container) -> None:
        self.app = create_app(container)
        self.principal = PACS
        self.app.dependency_overrides[dicomweb.stow_caller] = lambda: self.principal
        self.app.dependency_overrides[dicomweb.reader] = lambda: self.principal
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicomweb"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )

    def __enter__(self) -> Server:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server(world: Container) -> Iterator[Server]:
    with Server(world) as s:
        yield s


@pytest.fixture
def client(server: Server) -> DICOMwebClient:
    return DICOMwebClient(server.url)


def _instances(c: Container) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(imaging_instance)).scalar_one())


def test_stow_rs_stores_instances_and_reports_their_urls(
    client: DICOMwebClient, world: Container
) -> None:
    datasets = [instance(s) for s in series_specs("st", "thin", 3, thickness=1.0)]
    response = client.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    assert _instances(world) == 3


def test_qido_rs_finds_a_study_by_patient_and_date_range(client: DICOMwebClient) -> None:
    client.store_instances([instance(Spec(study="q1", patient_id="P9", study_date="20260601"))])
    client.store_instances([instance(Spec(study="q2", patient_id="P9", study_date="20240101"))])
    found = client.search_for_studies(
        search_filters={"PatientID": "P9", "StudyDate": "20260101-20261231"}
    )
    assert [pydicom.Dataset.from_json(f).StudyInstanceUID for f in found] == [uid("q1")]


def test_qido_rs_filters_by_accession_and_modality(client: DICOMwebClient) -> None:
    client.store_instances([instance(Spec(study="a1", accession="X1"))])
    client.store_instances(
        [instance(Spec(study="a2", accession="X2", source="MR_small.dcm", modality="MR"))]
    )
    by_acc = client.search_for_studies(search_filters={"AccessionNumber": "X2"})
    by_mod = client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})
    assert [pydicom.Dataset.from_json(f).StudyInstanceUID for f in by_acc] == [uid("a2")]
    assert [pydicom.Dataset.from_json(f).StudyInstanceUID for f in by_mod] == [uid("a1")]


def test_qido_rs_pages_with_limit_and_offset(client: DICOMwebClient) -> None:
    client.store_instances([instance(s) for s in series_specs("pg", "s", 5)])
    first = client.search_for_instances(study_instance_uid=uid("pg"), limit=2, offset=0)
    rest = client.search_for_instances(study_instance_uid=uid("pg"), limit=10, offset=2)
    sops = [pydicom.Dataset.from_json(f).SOPInstanceUID for f in first + rest]
    assert len(first) == 2
    assert len(set(sops)) == 5


def test_qido_rs_lists_series_with_their_counts(client: DICOMwebClient) -> None:
    client.store_instances([instance(s) for s in series_specs("sr", "thin", 2, thickness=1.0)])
    client.store_instances([instance(Spec(study="sr", series="thick"))])
    found = {
        ds.SeriesInstanceUID: int(ds.NumberOfSeriesRelatedInstances)
        for ds in (
            pydicom.Dataset.from_json(f)
            for f in client.search_for_series(study_instance_uid=uid("sr"))
        )
    }
    assert found == {uid("sr/thin"): 2, uid("sr/thick"): 1}


def test_wado_rs_returns_the_original_instance(client: DICOMwebClient) -> None:
    original = instance(Spec(study="wd"))
    client.store_instances([original])
    got = client.retrieve_instance(uid("wd"), uid("wd/series-1"), original.SOPInstanceUID)
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PixelData == original.PixelData
    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_wado_rs_retrieves_a_whole_series(client: DICOMwebClient) -> None:
    client.store_instances([instance(s) for s in series_specs("ws", "s", 3)])
    got = client.retrieve_series(uid("ws"), uid("ws/s"))
    assert sorted(int(d.InstanceNumber) for d in got) == [1, 2, 3]


def test_wado_rs_metadata_is_dicom_json_with_pixel_data_as_bulk_data(
    client: DICOMwebClient,
) -> None:
    client.store_instances([instance(Spec(study="md"))])
    [meta] = client.retrieve_series_metadata(uid("md"), uid("md/series-1"))
    assert meta["00080060"]["Value"] == ["CT"]
    assert meta["7FE00010"]["BulkDataURI"].endswith(uid("md/series-1/1"))


def test_rendered_frame_is_a_jpeg_of_the_image_size(client: DICOMwebClient, server: Server) -> None:
    client.store_instances([instance(Spec(study="rd"))])
    url = f"{server.url}/studies/{uid('rd')}/series/{uid('rd/series-1')}/instances/{uid('rd/series-1/1')}/frames/1/rendered"
    r = _http.get(url, params={"window": "40,400"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(r.content)).size == (128, 128)


def test_rendered_window_changes_the_picture(client: DICOMwebClient, server: Server) -> None:
    client.store_instances([instance(Spec(study="rw"))])
    url = f"{server.url}/studies/{uid('rw')}/series/{uid('rw/series-1')}/instances/{uid('rw/series-1/1')}/rendered"
    lung = _http.get(url, params={"window": "-600,1500", "accept": "image/png"}).content
    bone = _http.get(url, params={"window": "400,1800", "accept": "image/png"}).content
    assert lung != bone


def test_stow_of_non_dicom_bytes_is_refused_with_409_and_logged(
    server: Server, world: Container
) -> None:
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nthis is not dicom\r\n--b1--\r\n"
    r = _http.post(
        f"{server.url}/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'},
    )
    assert r.status_code == 409
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"][0] & 0xF000 == 0xC000  # PS3.18 I.2.2 Cxxx
    assert _instances(world) == 0
    with world.engine.connect() as c:
        assert c.execute(select(dicom_event.c.kind)).scalar_one() == "instance_rejected"


def test_stow_of_a_batch_with_one_bad_instance_stores_the_rest_with_202(
    server: Server, world: Container
) -> None:
    good = instance_bytes(Spec(study="mix"))
    bad = instance(Spec(study="mix", instance=2))
    del bad.SeriesInstanceUID
    parts = b"".join(
        b"--b2\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in (good, to_bytes(bad))
    )
    r = _http.post(
        f"{server.url}/studies",
        content=parts + b"--b2--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b2'},
    )
    assert r.status_code == 202
    assert len(r.json()["00081199"]["Value"]) == 1
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA901]
    assert _instances(world) == 1


def test_stow_with_a_json_body_is_unsupported_media_type(server: Server) -> None:
    r = _http.post(f"{server.url}/studies", json={"a": 1})
    assert r.status_code == 415
    assert r.headers["content-type"].startswith("application/problem+json")


def test_stow_of_a_conflicting_duplicate_is_409(client: DICOMwebClient, server: Server) -> None:
    original = instance(Spec(study="cf"))
    client.store_instances([original])
    changed = instance(Spec(study="cf"))
    changed.PatientName = "Li^Si"
    body = (
        b"--b3\r\nContent-Type: application/dicom\r\n\r\n" + to_bytes(changed) + b"\r\n--b3--\r\n"
    )
    r = _http.post(
        f"{server.url}/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b3'},
    )
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA902]


def test_qido_with_an_unsupported_matching_key_names_it(server: Server) -> None:
    r = _http.get(f"{server.url}/studies", params={"ReferringPhysicianName": "x"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "ReferringPhysicianName"


def test_reads_without_credentials_are_401(world: Container) -> None:
    with Server(world) as s:
        s.app.dependency_overrides.clear()
        r = _http.get(f"{s.url}/studies")
    assert r.status_code == 401


def _stow_one(server: Server, data: bytes) -> httpx.Response:
    body = b"--b9\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b9--\r\n"
    return _http.post(
        f"{server.url}/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b9'},
    )


def _set_raw(ds: pydicom.Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element as a sender wrote it, past pydicom's checks of its value."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_stow_of_an_instance_with_an_overlong_uid_fails_that_instance_naming_why(
    server: Server, world: Container
) -> None:
    ds = instance(Spec(study="longuid"))
    _set_raw(ds, 0x0020000D, "UI", b"1.2." + b"3" * 80)
    r = _stow_one(server, to_bytes(ds))
    # PostgreSQL refused the row (the whole request answered 422), SQLite stored it.
    assert r.status_code == 409
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA903]
    assert _instances(world) == 0
    with world.engine.connect() as c:
        message = c.execute(select(dicom_event.c.message)).scalar_one()
    assert "检查实例UID (0020,000D)" in message


def test_metadata_of_an_instance_with_values_outside_their_vr_is_given_as_sent(
    server: Server,
) -> None:
    ds = instance(Spec(study="oddvr"))
    _set_raw(ds, 0x00200013, "IS", b"abc ")  # Instance Number: not a number
    _set_raw(ds, 0x00281053, "FD", b"\x1b$)A\xd5\xc5")  # Rescale Slope: 6 bytes as FD
    _set_raw(ds, 0x00281052, "DS", b"1e400 ")  # Rescale Intercept: infinity
    assert _stow_one(server, to_bytes(ds)).status_code == 200
    r = _http.get(f"{server.url}/studies/{uid('oddvr')}/metadata")
    assert r.status_code == 200  # was 500: pydicom's JSON conversion raised
    [meta] = r.json()
    assert meta["00200013"] == {"vr": "UN", "InlineBinary": "YWJjIA=="}
    assert meta["00281053"]["vr"] == "UN"
    assert meta["00281052"]["vr"] == "UN"  # no JSON number for infinity
    assert meta["00080060"]["Value"] == ["CT"]
    rendered = _http.get(
        f"{server.url}/studies/{uid('oddvr')}/series/{uid('oddvr/series-1')}"
        f"/instances/{uid('oddvr/series-1/1')}/rendered"
    )
    assert rendered.status_code == 200  # the odd slope and intercept read as absent
    assert Image.open(BytesIO(rendered.content)).size == (128, 128)


def test_rendering_a_stored_file_pydicom_cannot_read_is_not_acceptable(server: Server) -> None:
    ds = instance(Spec(study="nochars"))
    ds[0x00080005] = DataElement(0x00080005, "SQ", [pydicom.Dataset()])  # a charset as SQ
    assert _stow_one(server, to_bytes(ds)).status_code == 200
    base = f"{server.url}/studies/{uid('nochars')}/series/{uid('nochars/series-1')}"
    r = _http.get(f"{base}/instances/{uid('nochars/series-1/1')}/rendered")
    assert r.status_code == 406  # was 500 (UnboundLocalError)
    assert "文件结构损坏" in r.json()["detail"]
    [meta] = _http.get(f"{base}/metadata").json()  # what the index holds of it
    assert meta["00080018"]["Value"] == [uid("nochars/series-1/1")]


@pytest.mark.parametrize(
    ("name", "value"), [("quality", "abc"), ("window", "nan,nan"), ("window", "40,inf")]
)
def test_rendered_parameters_that_are_not_numbers_are_refused_naming_them(
    server: Server, name: str, value: str
) -> None:
    _stow_one(server, instance_bytes(Spec(study="rq")))
    url = f"{server.url}/studies/{uid('rq')}/series/{uid('rq/series-1')}/instances/{uid('rq/series-1/1')}/rendered"
    r = _http.get(url, params={name: value})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == name
