"""The laboratory's original report document (HL7 v2 OBX of value type ED, v2.5.1
§2.A.24): kept with its result version in the same transaction, served as sent, read and
audited like the report, shown as a link on the workbench, the retrieval page and the
patient's page. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from dataclasses import replace

import hl7
import pytest
from fastapi.testclient import TestClient
from hl7.client import MLLPClient
from sqlalchemy import Table, func, select

from huren.adapters.db.tables import result, result_document
from huren.adapters.hl7v2.parse import AckCode
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.api.app import create_app
from huren.api.auth import SESSION_COOKIE, VIEWER_COOKIE
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.results import ReportDocument
from huren.services.intake import Channel, Disposition, encode_submission
from tests.fixtures.actors import Login
from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_control_id, with_field
from tests.fixtures.results import lab_panel
from tests.fixtures.world import GS1, HOSP_A, HOSP_B
from tests.integration import test_hl7_mllp
from tests.integration.sharing_helpers import audit_rows
from tests.integration.test_hl7_mllp import RunningServer

HL7_PATIENT = "110105197203051620"  # 王秀英 of the HL7 sample
mllp = test_hl7_mllp.mllp  # the fixture: a listener on a free port
ER7 = "x-application/hl7-v2+er7"


def minimal_pdf(line: str) -> bytes:
    """A small valid PDF 1.4 (ISO 32000-1 §7.5: header, objects, xref table, trailer)
    with one page showing ``line``."""
    content = f"BT /F1 12 Tf 20 50 Td ({line}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


PDF_V1 = minimal_pdf("LFT report v1")
PDF_V2 = minimal_pdf("LFT report v2 corrected")


def ed_obx(data: str, *, set_id: int = 7, subtype: str = "PDF", encoding: str = "Base64") -> str:
    return f"OBX|{set_id}|ED|PDF^检验报告单^L||LIS^AP^{subtype}^{encoding}^{data}||||||F"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def oru(*extra_obx: str, control: str = "LIS20260614DOC1", obr25: str = "F") -> str:
    """Hospital A's liver panel with the given OBX rows after its own."""
    text = with_field(with_control_id(sample_text(LAB_LFT_V251), control), "OBR", 25, obr25)
    return "\r".join([text, *extra_obx])


def count(world: Container, table: Table) -> int:
    with world.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def ack(payload: bytes) -> hl7.Message:
    return hl7.parse(payload.strip(b"\x0b\x1c\r").decode())


def has_err(message: hl7.Message) -> bool:
    return "ERR" in [str(seg[0]) for seg in message]


@pytest.fixture
def receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


def stored_id(receiver: Hl7Receiver, text: str) -> int:
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AA, reply.ack
    assert reply.outcome is not None
    return reply.outcome.results[0].result_id


def document_url(result_id: int, seq: int = 1) -> str:
    return f"/api/v1/results/{result_id}/documents/{seq}"


# ------------------------------------------------------------------ channels
def test_pdf_over_mllp_is_stored_and_served_byte_identical_and_audited(
    mllp: RunningServer, client: TestClient, login: Login, world: Container
) -> None:
    with MLLPClient("127.0.0.1", mllp.port) as sender:
        reply = ack(sender.send_message(oru(ed_obx(b64(PDF_V1)))))
    assert (str(reply.segment("MSA")[1]), str(reply.segment("MSA")[2])) == (
        "AA",
        "LIS20260614DOC1",
    )
    assert not has_err(reply)  # nothing left out: the PDF is kept
    with world.engine.connect() as conn:
        result_id = conn.execute(select(result.c.id)).scalar_one()
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    before = audit_rows(world, result_id=result_id, outcome="ok")
    r = client.get(document_url(result_id), params={"purpose": "treatment"}, headers=doctor)
    assert r.status_code == 200, r.text
    assert r.content == PDF_V1
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == (f'inline; filename="result-{result_id}-v1-1.pdf"')
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"].startswith("default-src 'none';")
    assert "frame-ancestors" in r.headers["content-security-policy"]
    assert audit_rows(world, result_id=result_id, outcome="ok") == before + 1
    # Recorded as the original document read, apart from opening the report.
    assert audit_rows(world, result_id=result_id, action="document", outcome="ok") == 1


def test_pdf_over_http_is_stored_and_listed_with_the_report(
    client: TestClient, login: Login, world: Container
) -> None:
    lis = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    r = client.post("/api/v1/hl7v2", content=oru(ed_obx(b64(PDF_V1))).encode(), headers=lis)
    assert str(ack(r.content).segment("MSA")[1]) == "AA"
    with world.engine.connect() as conn:
        result_id = conn.execute(select(result.c.id)).scalar_one()
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    report = client.get(
        f"/api/v1/retrieval/results/{result_id}", params={"purpose": "treatment"}, headers=doctor
    ).json()
    (doc,) = report["documents"]
    assert (doc["seq"], doc["content_type"], doc["title"], doc["size"]) == (
        1,
        "application/pdf",
        "检验报告单",
        len(PDF_V1),
    )
    served = client.get(doc["url"], headers=doctor)
    assert served.status_code == 200
    assert served.content == PDF_V1


# ------------------------------------------------------------------ who may read it
def test_a_clinician_who_may_not_see_the_result_gets_404_and_the_refusal_is_audited(
    receiver: Hl7Receiver, client: TestClient, login: Login, world: Container
) -> None:
    result_id = stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    gansu = login(Role.CLINICIAN, institution=GS1)
    r = client.get(document_url(result_id), params={"purpose": "treatment"}, headers=gansu)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert PDF_V1 not in r.content
    assert audit_rows(world, result_id=result_id, outcome="denied", action="document") == 1
    assert client.get(document_url(result_id)).status_code == 401


def test_a_missing_document_is_404_naming_it(
    receiver: Hl7Receiver, client: TestClient, login: Login
) -> None:
    result_id = stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    r = client.get(document_url(result_id, 2), params={"purpose": "treatment"}, headers=doctor)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "第 2 份原始报告文档" in r.json()["detail"]


def test_the_patient_reads_their_own_document(
    receiver: Hl7Receiver, client: TestClient, login: Login, world: Container
) -> None:
    result_id = stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    patient_id = world.results.get_result(result_id).patient_id
    me = login(Role.PATIENT, patient_id=patient_id)
    r = client.get(document_url(result_id), headers=me)
    assert r.status_code == 200
    assert r.content == PDF_V1
    # A clinician's read of the document is shown to the patient under its own name.
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    client.get(document_url(result_id), params={"purpose": "treatment"}, headers=doctor)
    audit = client.get("/patient/audit", headers=me)
    assert audit.status_code == 200
    assert "查看原始报告（PDF）" in audit.text


# ------------------------------------------------------------------ bad data
@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("JVBERi0xLjQK@@@@", "Base64"),  # not the Base64 alphabet
        ("JVBERi0xLjQ", "Base64"),  # truncated: not a multiple of 4
        (b64(b"hello, not a pdf"), "不是 PDF"),
        ("", "Base64"),
    ],
)
def test_bad_document_data_is_ae_naming_obx5_and_nothing_is_stored(
    receiver: Hl7Receiver, world: Container, data: str, why: str
) -> None:
    reply = receiver.handle(oru(ed_obx(data)).encode())
    assert reply.code is AckCode.AE
    message = ack(reply.payload)
    text = str(message.segment("MSA")[3])
    assert text.startswith("OBX[7]-5:"), text
    assert "OBX-1 设置号 7" in text
    assert why in text
    assert str(message.segment("ERR")[2]) == "OBX^7^5^1"
    assert reply.outcome is None
    assert count(world, result) == 0
    assert count(world, result_document) == 0


def test_a_document_over_the_limit_is_refused(
    receiver: Hl7Receiver, world: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("huren.services.intake.MAX_DOCUMENT_BYTES", len(PDF_V1) - 1)
    reply = receiver.handle(oru(ed_obx(b64(PDF_V1))).encode())
    assert reply.code is AckCode.AE
    assert "文档过大" in str(ack(reply.payload).segment("MSA")[3])
    assert count(world, result) == 0


def test_a_type_not_served_stays_a_notice_and_is_not_stored(
    receiver: Hl7Receiver, world: Container
) -> None:
    reply = receiver.handle(oru(ed_obx(b64(b"{\\rtf1 report}"), subtype="RTF")).encode())
    assert reply.code is AckCode.AA
    err = ack(reply.payload).segment("ERR")
    assert (str(err[2]), str(err[4])) == ("OBX^7^5^1", "W")
    assert "未保存" in str(err[8])
    assert count(world, result) == 1
    assert count(world, result_document) == 0


# ------------------------------------------------------------------ encodings
def test_hex_repetitions_and_add_continuation_are_read(
    receiver: Hl7Receiver, world: Container
) -> None:
    """ED-4 Hex; a second document as OBX-5's second repetition (each repetition is a
    document), its data continued by a repetition with only data and by ADD-1 (v2.5.1
    §2.10.2)."""
    second = b64(PDF_V2)
    a, b, c = second[:40], second[40:80], second[80:]
    obx = (
        f"OBX|7|ED|PDF^检验报告单^L||LIS^AP^PDF^Hex^{PDF_V1.hex().upper()}"
        f"~LIS^AP^PDF^Base64^{a}~^^^^{b}||||||F"
    )
    result_id = stored_id(receiver, oru(obx, f"ADD|{c}"))
    docs = world.results.documents(result_id, 1)
    assert [d.seq for d in docs] == [1, 2]
    first = world.results.document(result_id, 1, 1)
    last = world.results.document(result_id, 1, 2)
    assert first is not None
    assert last is not None
    assert (first.data, last.data) == (PDF_V1, PDF_V2)


def test_a_report_that_is_only_a_pdf_is_kept(receiver: Hl7Receiver, world: Container) -> None:
    """Was: refused, since it would have been stored empty. The PDF is now its content."""
    text = sample_text(LAB_LFT_V251)
    head = [line for line in text.split("\r") if not line.startswith("OBX|")]
    result_id = stored_id(receiver, "\r".join([*head, ed_obx(b64(PDF_V1), set_id=1)]))
    assert [d.size for d in world.results.documents(result_id, 1)] == [len(PDF_V1)]


# ------------------------------------------------------------------ versions
def test_resend_is_unchanged_and_a_correction_keeps_each_versions_document(
    receiver: Hl7Receiver, client: TestClient, login: Login, world: Container
) -> None:
    first = receiver.handle(oru(ed_obx(b64(PDF_V1))).encode())
    assert first.outcome is not None
    result_id = first.outcome.results[0].result_id
    # The same report under another control id: the same content, nothing written.
    again = receiver.handle(oru(ed_obx(b64(PDF_V1)), control="LIS20260614DOC2").encode())
    assert again.outcome is not None
    assert again.outcome.results[0].disposition is Disposition.UNCHANGED
    assert count(world, result_document) == 1
    # A corrected report with a new PDF: version 2 has it, version 1 keeps the old one.
    corrected = receiver.handle(
        oru(ed_obx(b64(PDF_V2)), control="LIS20260614DOC3", obr25="C").encode()
    )
    assert corrected.outcome is not None
    (ref,) = corrected.outcome.results
    assert (ref.result_id, ref.version, ref.disposition) == (result_id, 2, Disposition.UPDATED)
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    url = document_url(result_id)
    latest = client.get(url, params={"purpose": "treatment"}, headers=doctor)
    v1 = client.get(url, params={"purpose": "treatment", "version": 1}, headers=doctor)
    v2 = client.get(url, params={"purpose": "treatment", "version": 2}, headers=doctor)
    assert (latest.content, v1.content, v2.content) == (PDF_V2, PDF_V1, PDF_V2)
    assert v1.headers["content-disposition"].endswith(f'"result-{result_id}-v1-1.pdf"')
    missing = client.get(url, params={"purpose": "treatment", "version": 3}, headers=doctor)
    assert missing.status_code == 404


def test_a_new_document_alone_is_a_new_version(receiver: Hl7Receiver, world: Container) -> None:
    """The document is part of the content: the same values with another PDF are not
    "unchanged"."""
    stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    reply = receiver.handle(oru(ed_obx(b64(PDF_V2)), control="LIS20260614DOC2").encode())
    assert reply.outcome is not None
    assert reply.outcome.results[0].disposition is Disposition.UPDATED


# ------------------------------------------------------------------ pages
def test_workbench_report_links_the_document_and_the_link_works_in_token_mode(
    receiver: Hl7Receiver, world: Container, login: Login
) -> None:
    result_id = stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    token = login(Role.CLINICIAN, institution=HOSP_B)["Authorization"].removeprefix("Bearer ")
    with TestClient(create_app(world)) as frame:  # a HIS frame: no session cookie
        page = frame.get(f"/workbench/results/{result_id}", params={"token": token})
        assert page.status_code == 200
        assert "原始报告（PDF）" in page.text
        href = page.text.split('class="btn secondary wb-document" href="', 1)[1].split('"', 1)[0]
        href = href.replace("&amp;", "&")
        assert "purpose=recognition" in href
        assert "token=" in href
        hop = frame.get(href, follow_redirects=False)
        assert hop.status_code == 303
        assert "token" not in hop.headers["location"]
        assert frame.cookies.get(VIEWER_COOKIE) == token
        served = frame.get(hop.headers["location"])
        assert served.status_code == 200
        assert served.content == PDF_V1
        assert audit_rows(world, result_id=result_id, purpose="recognition") >= 1


def test_the_workbench_page_links_each_priors_document(
    receiver: Hl7Receiver, world: Container, login: Login
) -> None:
    """In the order screen's frame, next to 完整报告: the prior's original report."""
    result_id = stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    token = login(Role.CLINICIAN, institution=HOSP_B)["Authorization"].removeprefix("Bearer ")
    with TestClient(create_app(world)) as frame:
        page = frame.get(
            "/workbench",
            params={
                "patient": f"national_id:{HL7_PATIENT}",
                "items": "B-LFT",
                "institution": HOSP_B,
                "token": token,
            },
        )
        assert page.status_code == 200, page.text
        assert "原始报告（PDF）" in page.text
        href = page.text.split('class="wb-document" href="', 1)[1].split('"', 1)[0]
        href = href.replace("&amp;", "&")
        assert href.startswith(f"/api/v1/results/{result_id}/documents/1?version=1")
        hop = frame.get(href, follow_redirects=False)
        assert frame.get(hop.headers["location"]).content == PDF_V1


def test_retrieval_and_patient_pages_link_the_document(
    receiver: Hl7Receiver, world: Container, login: Login
) -> None:
    result_id = stored_id(receiver, oru(ed_obx(b64(PDF_V1))))
    doctor = login(Role.CLINICIAN, institution=HOSP_B)["Authorization"].removeprefix("Bearer ")
    with TestClient(create_app(world)) as browser:
        browser.cookies.set(SESSION_COOKIE, doctor)
        page = browser.get(f"/retrieval/results/{result_id}", params={"purpose": "treatment"})
        assert page.status_code == 200
        assert "原始报告（PDF）" in page.text
        assert f"/api/v1/results/{result_id}/documents/1?version=1&amp;purpose=treatment" in (
            page.text
        )
    patient_id = world.results.get_result(result_id).patient_id
    me = login(Role.PATIENT, patient_id=patient_id)["Authorization"].removeprefix("Bearer ")
    with TestClient(create_app(world)) as phone:
        phone.cookies.set(SESSION_COOKIE, me)
        page = phone.get(f"/patient/results/{result_id}")
        assert page.status_code == 200, page.text
        assert "原始报告（PDF）" in page.text


# ------------------------------------------------------------------ the content hash
def test_documents_count_in_the_hash_by_content_and_not_at_all_when_absent() -> None:
    sub = lab_panel(HOSP_A)
    assert sub.documents == ()
    with_pdf = replace(sub, documents=(ReportDocument("application/pdf", PDF_V1, "报告"),))
    same = replace(sub, documents=(ReportDocument("application/pdf", bytes(PDF_V1), "报告"),))
    other = replace(sub, documents=(ReportDocument("application/pdf", PDF_V2, "报告"),))
    hashes = [encode_submission(s)[0] for s in (sub, with_pdf, same, other)]
    assert hashes[1] == hashes[2]
    assert len({hashes[0], hashes[1], hashes[3]}) == 3
