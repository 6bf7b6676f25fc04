"""The DICOM network service against real peers: dcmtk's echoscu/storescu/findscu/
movescu/getscu and pynetdicom as SCU, with pydicom's CT_small.dcm made into studies."""

from __future__ import annotations

import hashlib
import socket
import threading
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from sqlalchemy import func, select

from huren.adapters.db.tables_imaging import dicom_event, imaging_instance, imaging_study
from huren.bootstrap import Container
from tests.fixtures.dicom import Spec, instance, series_specs, uid, write
from tests.fixtures.dicom.peers import PACS_AE, SCP_AE, dcmtk, register_ae, running_scp, storescu
from tests.fixtures.world import HOSP_A

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/storescu").exists(), reason="dcmtk 未安装 (scripts/setup 安装)"
)


@pytest.fixture
def pacs(world: Container) -> Container:
    register_ae(world, HOSP_A, PACS_AE, "PACS_A2")
    return world


def _count(c: Container, table: object) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_echoscu_gets_a_verification_response(pacs: Container) -> None:
    with running_scp(pacs) as scp:
        out = dcmtk("echoscu", ["-aet", PACS_AE, "-aec", SCP_AE, "127.0.0.1", str(scp.port)])
    assert out.returncode == 0, out.stderr


def test_storescu_stores_a_series_and_indexes_it(pacs: Container, tmp_path: Path) -> None:
    files = write(tmp_path, series_specs("s1", "thin", 3, thickness=1.0, description="Chest 1mm"))
    with running_scp(pacs) as scp:
        out = storescu(scp.port, files)
    assert out.returncode == 0, out.stderr
    assert _count(pacs, imaging_instance) == 3
    with pacs.engine.connect() as c:
        study = c.execute(select(imaging_study)).one()
    assert (study.institution_code, study.series_count, study.instance_count) == (HOSP_A, 1, 3)
    assert study.accession_number == "ACC0001"


def test_stored_file_keeps_the_data_set_and_transfer_syntax_sent(
    pacs: Container, tmp_path: Path
) -> None:
    [path] = write(tmp_path, [Spec(study="bytes")])
    with running_scp(pacs) as scp:
        storescu(scp.port, [path])
    rows = pacs.imaging.instances_for_retrieve(uid("bytes"))
    stored = pydicom.dcmread(BytesIO(pacs.imaging.read_blob(rows[0].content_hash)))
    sent = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert stored.PixelData == sent.PixelData
    assert stored.SOPInstanceUID == sent.SOPInstanceUID
    assert (
        rows[0].content_hash
        == hashlib.sha256(pacs.imaging.read_blob(rows[0].content_hash)).hexdigest()
    )


def test_unknown_calling_ae_is_rejected_and_logged(pacs: Container, tmp_path: Path) -> None:
    [path] = write(tmp_path, [Spec(study="rogue")])
    with running_scp(pacs) as scp:
        out = storescu(scp.port, [path], calling="ROGUE")
    assert out.returncode != 0
    assert "Rejected" in out.stderr or "rejected" in out.stderr.lower()
    assert _count(pacs, imaging_instance) == 0
    with pacs.engine.connect() as c:
        ev = c.execute(select(dicom_event)).one()
    assert (ev.kind, ev.calling_ae) == ("association_rejected", "ROGUE")


def test_scp_sockets_have_nagle_switched_off(pacs: Container) -> None:
    seen: list[int] = []

    def on_open(event: evt.Event) -> None:
        pass

    with running_scp(pacs) as scp:
        ae = AE(ae_title=PACS_AE)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        assert assoc.is_established
        for a in scp.ae.active_associations:
            assert a.dul.socket is not None
            sock = a.dul.socket.socket
            assert sock is not None
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        assoc.release()
    assert seen
    assert all(seen)


def test_duplicate_sop_uid_with_other_content_is_refused_with_a9xx(pacs: Container) -> None:
    original = instance(Spec(study="dup"))
    altered = instance(Spec(study="dup"))
    altered.SeriesDescription = "something else"
    statuses = []
    with running_scp(pacs) as scp:
        ae = AE(ae_title=PACS_AE)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        for ds in (original, original, altered):
            statuses.append(int(assoc.send_c_store(ds).Status))
        assoc.release()
    assert statuses[:2] == [0x0000, 0x0000]  # resending the same bytes is idempotent
    assert statuses[2] & 0xFF00 == 0xA900
    assert _count(pacs, imaging_instance) == 1
    with pacs.engine.connect() as c:
        ev = c.execute(select(dicom_event)).one()
    assert ev.kind == "instance_conflict"
    assert ev.sop_uid == str(original.SOPInstanceUID)


def test_missing_patient_id_is_refused_naming_the_tag(pacs: Container) -> None:
    ds = instance(Spec(study="nopid"))
    del ds.PatientID
    with running_scp(pacs) as scp:
        ae = AE(ae_title=PACS_AE)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        status = int(assoc.send_c_store(ds).Status)
        assoc.release()
    assert status & 0xFF00 == 0xA900
    assert _count(pacs, imaging_study) == 0
    with pacs.engine.connect() as c:
        ev = c.execute(select(dicom_event)).one()
    assert "(0010,0020)" in ev.message


def _study_find(port: int) -> tuple[Association, Dataset]:
    """An association of the PACS AE for Study Root C-FIND, and a STUDY-level query."""
    ae = AE(ae_title=PACS_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    return ae.associate("127.0.0.1", port, ae_title=SCP_AE), q


def test_c_find_at_study_level_matches_patient_and_date_range(
    pacs: Container, tmp_path: Path
) -> None:
    files = write(tmp_path / "a", [Spec(study="fa", patient_id="P1", study_date="20260601")])
    files += write(tmp_path / "b", [Spec(study="fb", patient_id="P1", study_date="20250101")])
    files += write(tmp_path / "c", [Spec(study="fc", patient_id="P2", study_date="20260601")])
    with running_scp(pacs) as scp:
        storescu(scp.port, files)
        assoc, q = _study_find(scp.port)
        q.PatientID = "P1"
        q.StudyDate = "20260101-"
        q.StudyInstanceUID = ""
        q.NumberOfStudyRelatedInstances = ""
        found = [
            ds
            for status, ds in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
            if ds is not None and status.Status == 0xFF00
        ]
        assoc.release()
    assert [str(d.StudyInstanceUID) for d in found] == [uid("fa")]
    assert int(found[0].NumberOfStudyRelatedInstances) == 1


def test_findscu_series_level_lists_the_series_of_a_study(pacs: Container, tmp_path: Path) -> None:
    files = write(
        tmp_path, series_specs("fs", "thin", 2, thickness=1.0) + series_specs("fs", "thick", 1)
    )
    with running_scp(pacs) as scp:
        storescu(scp.port, files)
        out = dcmtk(
            "findscu",
            [
                "-S",
                "-aet",
                PACS_AE,
                "-aec",
                SCP_AE,
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={uid('fs')}",
                "-k",
                "SeriesInstanceUID",
                "-k",
                "NumberOfSeriesRelatedInstances",
                "-v",
                "127.0.0.1",
                str(scp.port),
            ],
        )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert uid("fs/thin") in text
    assert uid("fs/thick") in text


def test_movescu_moves_a_study_to_a_registered_destination(pacs: Container, tmp_path: Path) -> None:
    from huren.services.imaging import MoveDestination
    from tests.e2e.live import free_port

    files = write(tmp_path / "src", series_specs("mv", "s", 2))
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    port = free_port()
    pacs.imaging.index.add_move_destination(MoveDestination("MOVE_DEST", "127.0.0.1", port, HOSP_A))  # type: ignore[attr-defined]
    with running_scp(pacs) as scp:
        storescu(scp.port, files)
        out = dcmtk(
            "movescu",
            [
                "-S",
                "-aet",
                PACS_AE,
                "-aec",
                SCP_AE,
                "-aem",
                "MOVE_DEST",
                "--port",
                str(port),
                "-od",
                str(dest_dir),
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={uid('mv')}",
                "127.0.0.1",
                str(scp.port),
            ],
        )
    assert out.returncode == 0, out.stderr
    assert len(list(dest_dir.iterdir())) == 2


def test_move_to_an_unknown_destination_is_refused_with_a801(
    pacs: Container, tmp_path: Path
) -> None:
    files = write(tmp_path, [Spec(study="mvx")])
    with running_scp(pacs) as scp:
        storescu(scp.port, files)
        out = dcmtk(
            "movescu",
            [
                "-S",
                "-aet",
                PACS_AE,
                "-aec",
                SCP_AE,
                "-aem",
                "NOWHERE",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={uid('mvx')}",
                "-v",
                "127.0.0.1",
                str(scp.port),
            ],
        )
    # PS3.4 C.4.2.1.5: 0xA801 Refused: Move Destination unknown
    assert "Refused: MoveDestinationUnknown" in out.stdout + out.stderr
    with pacs.engine.connect() as c:
        ev = c.execute(select(dicom_event)).one()
    assert (ev.kind, ev.status) == ("move_refused", 0xA801)


def test_getscu_retrieves_a_series_over_the_same_association(
    pacs: Container, tmp_path: Path
) -> None:
    files = write(tmp_path / "src", series_specs("gt", "s", 2))
    out_dir = tmp_path / "got"
    out_dir.mkdir()
    with running_scp(pacs) as scp:
        storescu(scp.port, files)
        out = dcmtk(
            "getscu",
            [
                "-S",
                "-aet",
                PACS_AE,
                "-aec",
                SCP_AE,
                "-od",
                str(out_dir),
                "-k",
                "QueryRetrieveLevel=SERIES",
                "-k",
                f"StudyInstanceUID={uid('gt')}",
                "-k",
                f"SeriesInstanceUID={uid('gt/s')}",
                "127.0.0.1",
                str(scp.port),
            ],
        )
    assert out.returncode == 0, out.stderr
    assert len(list(out_dir.iterdir())) == 2


# ---------------------------------------------------------------- the C-STORE fast path
@pytest.mark.parametrize(
    ("message_id", "status", "sop_instance"),
    [(1, 0x0000, "1.2.3.4"), (65535, 0xA700, "1.2.3.45"), (7, 0xC211, uid("rsp"))],
)
def test_the_hand_encoded_c_store_response_is_what_pynetdicom_encodes(
    message_id: int, status: int, sop_instance: str
) -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    from huren.adapters.dicom.scp import store_response_command

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    [pdata] = list(message.encode_msg(1, 16384))
    [(context_id, pdv)] = pdata.presentation_data_value_list
    mine = store_response_command(CTImageStorage, message_id, status, sop_instance)
    assert (context_id, pdv) == (1, b"\x03" + mine)


def test_c_store_is_served_where_it_arrives_and_other_requests_keep_their_order(
    pacs: Container,
) -> None:
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    served: list[tuple[str, str]] = []  # (request, kind of thread serving it)

    def kind() -> str:
        t = threading.current_thread()
        if isinstance(t, DULServiceProvider):
            return "connection"
        return "association" if isinstance(t, Association) else type(t).__name__

    with running_scp(pacs) as scp:
        on_store, on_echo = scp._on_store, scp._on_echo

        def store(event: evt.Event) -> int | Dataset:
            request = event.request
            assert isinstance(request, C_STORE)
            served.append((str(request.AffectedSOPInstanceUID), kind()))
            return on_store(event)

        def echo(event: evt.Event) -> int:
            served.append(("echo", kind()))
            return on_echo(event)

        server = scp._server
        assert server is not None
        for event, old, new in (
            (evt.EVT_C_STORE, on_store, store),
            (evt.EVT_C_ECHO, on_echo, echo),
        ):
            server.unbind(event, old)
            server.bind(event, new)
        ae = AE(ae_title=PACS_AE)
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        statuses = [int(assoc.send_c_echo().Status)]
        sent = []
        for n in range(1, 4):
            ds = instance(Spec(study="fast", instance=n))
            sent.append(str(ds.SOPInstanceUID))
            statuses.append(int(assoc.send_c_store(ds).Status))
        statuses.append(int(assoc.send_c_echo().Status))
        assoc.release()
    assert statuses == [0] * 5
    assert [r for r, _ in served] == ["echo", *sent, "echo"]
    assert {k for r, k in served if r != "echo"} == {"connection"}
    assert {k for r, k in served if r == "echo"} == {"association"}
    assert _count(pacs, imaging_instance) == 3


def test_a_peer_with_a_tiny_maximum_pdu_still_gets_every_response(pacs: Container) -> None:
    statuses = []
    with running_scp(pacs) as scp:
        ae = AE(ae_title=PACS_AE)
        ae.maximum_pdu_size = 64  # smaller than a C-STORE-RSP command: fragmented answers
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        for n in range(1, 3):
            statuses.append(int(assoc.send_c_store(instance(Spec(study="pdu", instance=n))).Status))
        assoc.release()
    assert statuses == [0, 0]
    assert _count(pacs, imaging_instance) == 2


def test_associations_share_the_servers_contexts_without_changing_them(
    pacs: Container, tmp_path: Path
) -> None:
    files = write(tmp_path, series_specs("shared", "s", 2))
    with running_scp(pacs) as scp:
        server = scp._server
        assert server is not None
        before = [(str(cx.abstract_syntax), list(cx.transfer_syntax)) for cx in server.contexts]
        out = storescu(scp.port, files)
        echo = dcmtk("echoscu", ["-aet", PACS_AE, "-aec", SCP_AE, "127.0.0.1", str(scp.port)])
        after = [(str(cx.abstract_syntax), list(cx.transfer_syntax)) for cx in server.contexts]
        # Negotiation as acceptor builds new contexts; the shared ones stay untouched.
        assert all(cx.context_id is None and cx.result is None for cx in server.contexts)
    assert out.returncode == 0, out.stderr
    assert echo.returncode == 0, echo.stderr
    assert after == before
    assert _count(pacs, imaging_instance) == 2


def _raw_element(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """An element as a sender wrote it, past pydicom's checks of its value."""
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_refused_instance_is_answered_with_an_error_comment_naming_the_attribute(
    pacs: Container,
) -> None:
    ds = instance(Spec(study="longuid"))
    _raw_element(ds, 0x0020000D, "UI", b"1.2." + b"3" * 80)  # 84 characters
    with running_scp(pacs) as scp:
        ae = AE(ae_title=PACS_AE)
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        rsp = assoc.send_c_store(ds)
        echo = assoc.send_c_echo()  # the association goes on
        assoc.release()
    # PostgreSQL refused the row: pynetdicom answered 0xC211 with no comment and the file
    # stayed on disk; SQLite indexed a UID longer than a UID can be.
    assert int(rsp.Status) == 0xA903
    assert rsp.ErrorComment == "invalid_attributes: StudyInstanceUID"
    assert int(echo.Status) == 0x0000
    assert _count(pacs, imaging_study) == 0
    assert not list((pacs.settings.data_dir / "dicom").rglob("*.dcm"))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_c_store_request_without_an_affected_sop_instance_uid_is_answered(
    pacs: Container, tmp_path: Path
) -> None:
    ds = instance(Spec(study="nosop"))
    _raw_element(ds, 0x00080018, "UI", b"\0")  # empty once its padding is stripped
    path = tmp_path / "nosop.dcm"
    ds.save_as(path, enforce_file_format=True)
    with running_scp(pacs) as scp:
        ae = AE(ae_title=PACS_AE)
        ae.dimse_timeout = 10  # pynetdicom's acceptor dropped it: the peer waited this long
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=SCP_AE)
        rsp = assoc.send_c_store(path)
        established = assoc.is_established
        assoc.release()
    assert int(rsp.Status) == 0xC000
    assert "AffectedSOPInstanceUID" in rsp.ErrorComment
    assert established
    assert _count(pacs, imaging_instance) == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_c_find_with_a_study_date_that_is_no_date_fails_naming_it(pacs: Container) -> None:
    with running_scp(pacs) as scp:
        assoc, q = _study_find(scp.port)
        q.StudyDate = "20261340"
        q.StudyInstanceUID = ""
        [(status, identifier)] = list(
            assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
        )
        assoc.release()
    assert identifier is None
    assert int(status.Status) == 0xA900  # was 0xC311: the handler raised ValueError
    assert status.ErrorComment == "invalid StudyDate"
