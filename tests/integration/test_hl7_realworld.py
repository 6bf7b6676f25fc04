"""ORU^R01 as real LIS/RIS and interface engines (Mirth/NextGen Connect, HAPI) send
them, through the receiver, HTTP and MLLP into the real intake (SQLite and PostgreSQL).

Each test pins one fault found with such messages: a value stored as something else, a
part of the message dropped without a word, a wrong status, a refusal of a valid
message, or a connection left hanging. The samples are in tests/fixtures/hl7/realworld/
(written after HL7 v2.5.1 chapter 7 examples, HAPI/Mirth test messages and Chinese LIS
interface documents, with the test world's hospitals and codes)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from fastapi.testclient import TestClient
from hl7.client import MLLPClient

from huren.adapters.hl7v2.mllp import MllpServer
from huren.adapters.hl7v2.parse import AckCode, ParsedOru
from huren.adapters.hl7v2.receiver import Hl7Receiver, Hl7Reply, MllpGroupCommit
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.results import ObservationValue, ResultStatus, StoredResult, ValueType
from huren.services.intake import Channel
from tests.fixtures.actors import Login
from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_control_id, with_field
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.test_hl7_mllp import RunningServer

REALWORLD = Path(__file__).parent.parent / "fixtures" / "hl7" / "realworld"
PANEL_CULTURE_V251 = "oru_r01_lab_panel_culture_v251_utf8.hl7"
CBC_V231_GB18030 = "oru_r01_cbc_v231_gb18030.hl7"
ER7 = "x-application/hl7-v2+er7"


def realworld_text(name: str) -> str:
    """The sample as text, segments separated by CR (the files keep LF / CR LF)."""
    encoding = "gb18030" if "gb18030" in name else "utf-8"
    text = (REALWORLD / name).read_bytes().decode(encoding)
    return text.replace("\r\n", "\n").strip().replace("\n", "\r")


def realworld_bytes(name: str) -> bytes:
    return realworld_text(name).encode("gb18030" if "gb18030" in name else "utf-8")


@pytest.fixture
def receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


def ack_segments(reply: Hl7Reply | bytes, encoding: str = "utf-8") -> hl7.Message:
    payload = reply.payload if isinstance(reply, Hl7Reply) else reply
    return hl7.parse(payload.strip(b"\x0b\x1c\r").decode(encoding))


def msa(reply: Hl7Reply | bytes, encoding: str = "utf-8") -> tuple[str, str, str]:
    seg = ack_segments(reply, encoding).segment("MSA")
    return str(seg[1]), str(seg[2]), str(seg[3])


def stored(world: Container, reply: Hl7Reply) -> list[StoredResult]:
    assert reply.outcome is not None, reply.ack
    return [world.results.get_result(ref.result_id) for ref in reply.outcome.results]


def observation(result: StoredResult, code: str) -> ObservationValue:
    return next(o for o in result.observations if o.code == code)


def lab(*obx: str, obr25: str = "F", control: str = "LIS2026061400RW") -> bytes:
    """The liver panel sample of hospital A with the given OBX rows."""
    text = with_field(with_control_id(sample_text(LAB_LFT_V251), control), "OBR", 25, obr25)
    head = [line for line in text.split("\r") if not line.startswith("OBX|")]
    return "\r".join([*head, *obx]).encode()


ALT = "OBX|1|NM|1742-6^ALT^LN||56|U/L|9-50|H|||F"
AST = "OBX|2|NM|1920-8^AST^LN||32|U/L|15-40|N|||{status}"


# ------------------------------------------------------------------ values
def test_nm_with_a_detection_limit_comparator_is_kept_with_its_comparator(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: NM "<500" refused AE (the whole panel lost); storing 500 would be another
    result. Now: kept as SN text "<500", no number."""
    reply = receiver.handle(realworld_bytes(PANEL_CULTURE_V251))
    assert reply.code is AckCode.AA, reply.ack
    panel = stored(world, reply)[0]
    hbv = observation(panel, "HBVDNA")
    assert (hbv.value_type, hbv.value_num, hbv.value_text) == (ValueType.SN, None, "<500")
    assert (hbv.unit, hbv.ref_text, hbv.ref_high) == ("IU/mL", "<500", 500.0)


def test_second_obr_group_and_repeated_coded_answers_are_all_stored(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: a culture's second organism (OBX-5 repetition 2 of a CWE) was dropped."""
    reply = receiver.handle(realworld_bytes(PANEL_CULTURE_V251))
    panel, culture = stored(world, reply)
    assert (panel.report_no, culture.report_no) == ("RPT-LIS-RW-0001", "RPT-LIS-RW-0002")
    organisms = observation(culture, "600-7")
    assert organisms.value_text == "大肠埃希菌；肺炎克雷伯菌"
    assert organisms.loinc == "600-7"
    assert observation(culture, "TTP").value_num == 18.5
    hbsag = observation(panel, "HBSAG")
    assert (hbsag.value_text, hbsag.loinc, hbsag.flag) == ("阴性", "5196-1", "N")


def test_abnormal_flag_in_a_later_repetition_is_kept(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: OBX-8 "~H" (empty first repetition) stored no flag at all."""
    reply = receiver.handle(realworld_bytes(PANEL_CULTURE_V251))
    panel = stored(world, reply)[0]
    assert observation(panel, "1742-6").flag == "H"
    assert observation(panel, "HBSAB").flag == "H"  # "H~A": the first one given


def test_unknown_flag_in_a_later_repetition_is_named(receiver: Hl7Receiver) -> None:
    """Was: "H~ZZ" accepted, ZZ never looked at."""
    reply = receiver.handle(lab("OBX|1|NM|1742-6^ALT^LN||56|U/L|9-50|H~ZZ|||F"))
    assert reply.code is AckCode.AE
    _code, _, text = msa(reply)
    assert "OBX[1]-8(2)" in text
    assert "'ZZ'" in text
    err = ack_segments(reply).segment("ERR")
    assert str(err[2]) == "OBX^1^8^2"


def test_repeated_numeric_value_is_refused_rather_than_cut(receiver: Hl7Receiver) -> None:
    """Was: NM "56~57" stored 56 and dropped 57 without a word."""
    reply = receiver.handle(lab("OBX|1|NM|1742-6^ALT^LN||56~57|U/L|9-50||||F"))
    assert reply.code is AckCode.AE
    assert msa(reply)[2].startswith("OBX[1]-5(2):")
    assert reply.outcome is None


def test_unescaped_power_of_ten_unit_is_kept_whole(receiver: Hl7Receiver, world: Container) -> None:
    """Was: OBX-6 "10^9/L" (caret not escaped, as Chinese LIS write it) stored unit "10"."""
    reply = receiver.handle(realworld_bytes(CBC_V231_GB18030))
    assert reply.code is AckCode.AA, reply.ack.encode()
    (cbc,) = stored(world, reply)
    assert observation(cbc, "WBC").unit == "10^9/L"
    assert observation(cbc, "RBC").unit == "10^12/L"
    baso = observation(cbc, "BASO")
    assert (baso.value_type, baso.value_text, baso.unit) == (ValueType.SN, "<0.01", "10^9/L")


# ------------------------------------------------------------------ statuses (Table 0085)
def test_observation_that_could_not_be_obtained_does_not_refuse_the_report(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: OBX-11 X with an empty NM value — allowed by the parser — refused AE by
    intake ("数值型结果缺少数值"). Now: stored as text saying why there is no value."""
    reply = receiver.handle(realworld_bytes(CBC_V231_GB18030))
    (cbc,) = stored(world, reply)
    ret = observation(cbc, "RET")
    assert (ret.value_type, ret.value_num, ret.value_text) == (ValueType.ST, None, "无法获得结果")


def test_pending_observation_in_a_preliminary_report(
    receiver: Hl7Receiver, world: Container
) -> None:
    reply = receiver.handle(lab(ALT, "OBX|2|NM|1920-8^AST^LN|||U/L|15-40||||I", obr25="P"))
    assert reply.code is AckCode.AA, reply.ack
    (result,) = stored(world, reply)
    assert result.status is ResultStatus.PRELIMINARY
    assert observation(result, "1920-8").value_text == "结果待出"


@pytest.mark.parametrize("obx11", ["D", "W"])
def test_deleted_or_wrong_observation_is_not_stored_as_a_current_value(
    receiver: Hl7Receiver, world: Container, obx11: str
) -> None:
    """Was: an OBX-11 D ("deletes the OBX record") or W ("post original as wrong") row
    beside valid rows was stored as a valid value."""
    reply = receiver.handle(lab(ALT, AST.format(status=obx11)))
    assert reply.code is AckCode.AA, reply.ack
    (result,) = stored(world, reply)
    assert [o.code for o in result.observations] == ["1742-6"]
    assert result.status is ResultStatus.FINAL


def test_corrected_observation_under_obr25_f_makes_a_corrected_version(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: OBX-11 C (a correction replacing a final result) under OBR-25 F stored the
    new version as "final"."""
    receiver.handle(lab(ALT, AST.format(status="F")))
    reply = receiver.handle(
        lab(ALT, "OBX|2|NM|1920-8^AST^LN||35|U/L|15-40|N|||C", control="LIS2026061400RW2")
    )
    (result,) = stored(world, reply)
    assert (result.version, result.status) == (2, ResultStatus.CORRECTED)
    assert observation(result, "1920-8").value_num == 35.0


# ------------------------------------------------------------------ structure
def test_obx_after_another_patients_pid_without_its_obr_is_refused(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: the second patient's OBX was filed into the first patient's report."""
    text = lab(ALT).decode() + "\rPID|2||MR999^^^^MR||李^四||19800101|M\r" + AST.format(status="F")
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AE
    assert msa(reply)[2].startswith("OBX[2]:")
    assert str(ack_segments(reply).segment("ERR")[2]) == "OBX^2"
    assert reply.outcome is None


def test_comments_are_kept_and_embedded_pdf_is_kept_with_the_report(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: NTE comments and an ED (PDF) report were dropped with a bare AA; then both
    were acknowledged as not kept. Now: NTE after OBR is the report's comment and NTE
    after OBX that value's (v2.5.1 §7.3.1), and the PDF (OBX-2 ED, §2.A.24) is kept as
    the report's original document: AA without any ERR."""
    reply = receiver.handle(realworld_bytes(PANEL_CULTURE_V251))
    assert reply.code is AckCode.AA
    code, control, text = msa(reply)
    assert (code, control) == ("AA", "LIS20260614RW0001")
    assert "未保存" not in text
    assert "ERR" not in [str(seg[0]) for seg in ack_segments(reply)]
    panel, culture = stored(world, reply)
    assert panel.comment == "标本轻度溶血，结果仅供参考"
    assert observation(panel, "HBSAG").comment == "复查后确认"
    assert [o.comment for o in panel.observations if o.code != "HBSAG"] == [""] * 4
    assert culture.comment == ""
    (doc,) = world.results.documents(panel.id, panel.version)
    assert (doc.content_type, doc.title) == ("application/pdf", "检验报告单")
    assert world.results.documents(culture.id, culture.version) == []


def test_report_that_is_only_a_document_reference_is_refused(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: AA, and a result stored with nothing in it. A reference pointer (RP,
    v2.5.1 §2.A.65) is not fetched, so such a report has nothing to keep."""
    reply = receiver.handle(
        lab("OBX|1|RP|PDF^报告^L||http://lis.example/r/1.pdf^LIS^AP^PDF||||||F")
    )
    assert reply.code is AckCode.AE
    assert msa(reply)[2].startswith("OBX[1]-2:")
    assert reply.outcome is None


# ------------------------------------------------------------------ identity, charset
def test_national_id_in_pid19_identifies_the_patient(
    receiver: Hl7Receiver, world: Container
) -> None:
    """Was: PID-19 (where many Chinese LIS put 身份证) ignored: the patient was known
    only by the local MRN and never matched across institutions."""
    reply = receiver.handle(realworld_bytes(CBC_V231_GB18030))
    (cbc,) = stored(world, reply)
    national = PatientIdentifier(IdentifierKind.NATIONAL_ID, "110105197203051620")
    assert world.results.find_patients(national) == [cbc.patient_id]


def _from_regional_lab(pid3: str) -> bytes:
    """Hospital B's lab reporting for a patient known by a record number only."""
    text = with_field(lab(ALT, control="LAB-B-0001").decode(), "MSH", 4, HOSP_B)
    return with_field(text, "PID", 3, pid3).encode()


def test_record_number_issued_by_another_hospital_finds_that_hospitals_patient(
    receiver: Hl7Receiver, world: Container
) -> None:
    """A regional lab names the ordering hospital as the 病历号's assigning authority
    (CX-4): the number was read as the lab's own, so the result went to whichever of the
    lab's patients had that number, or to a new one."""
    (own,) = stored(world, receiver.handle(lab(ALT)))  # hospital A: MR0012345^^^HOSP_A
    reply = receiver.handle(_from_regional_lab(f"MR0012345^^^{HOSP_A}^MR"))
    (regional,) = stored(world, reply)
    assert regional.patient_id == own.patient_id
    mrn = PatientIdentifier(IdentifierKind.MRN, "MR0012345", HOSP_A)
    assert world.results.find_patients(mrn) == [own.patient_id]


def test_record_number_of_a_system_name_is_the_senders(
    receiver: Hl7Receiver, world: Container
) -> None:
    """CX-4 "HIS" is no institution: the number stays the sender's, and does not meet
    hospital A's same number."""
    (own,) = stored(world, receiver.handle(lab(ALT)))
    (regional,) = stored(world, receiver.handle(_from_regional_lab("MR0012345^^^HIS^MR")))
    assert regional.patient_id != own.patient_id
    mrn_b = PatientIdentifier(IdentifierKind.MRN, "MR0012345", HOSP_B)
    assert world.results.find_patients(mrn_b) == [regional.patient_id]


def test_invalid_national_id_in_pid19_is_named(receiver: Hl7Receiver) -> None:
    text = with_field(realworld_text(CBC_V231_GB18030), "PID", 19, "110105197203051621")
    reply = receiver.handle(text.encode("gb18030"))
    assert reply.code is AckCode.AE
    assert msa(reply, "gb18030")[2].startswith("PID-19:")


def test_msh18_gb18030_without_the_space_is_read(receiver: Hl7Receiver) -> None:
    """Was: MSH-18 "GB18030-2000" refused AR 不支持的字符集."""
    parsed = receiver.parse(realworld_bytes(CBC_V231_GB18030))
    assert isinstance(parsed, ParsedOru)
    assert parsed.header.charset == "gb18030"
    assert parsed.message.submissions[0].patient.name == "张三"


# ------------------------------------------------------------------ HTTP
def test_http_body_with_a_utf8_byte_order_mark_is_read(
    client: TestClient, login: Login, world: Container
) -> None:
    """Was: AR "必须以 MSH 段开头" for a file saved by a Windows editor."""
    headers = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    body = b"\xef\xbb\xbf" + realworld_bytes(PANEL_CULTURE_V251)
    r = client.post("/api/v1/hl7v2", content=body, headers=headers)
    assert r.status_code == 200
    assert msa(r.content)[:2] == ("AA", "LIS20260614RW0001")


def test_http_batch_envelope_around_one_message_is_unwrapped(
    client: TestClient, login: Login
) -> None:
    """Was: FHS/BHS … BTS/FTS around one message (Mirth's batch writer) refused AR."""
    headers = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    batch = "\r".join(
        [
            "FHS|^~\\&|LIS|H130100001|HUREN|HUREN|20260614093600",
            "BHS|^~\\&|LIS|H130100001|HUREN|HUREN|20260614093600||||BATCH0001",
            realworld_text(PANEL_CULTURE_V251),
            "BTS|1",
            "FTS|1",
        ]
    )
    r = client.post("/api/v1/hl7v2", content=batch.encode(), headers=headers)
    assert msa(r.content)[:2] == ("AA", "LIS20260614RW0001")


def test_http_batch_of_several_messages_is_refused_naming_the_batch(
    client: TestClient, login: Login, world: Container
) -> None:
    """A batch needs one ACK per message: refused AR naming BHS, MSA-2 the batch id."""
    headers = login(Role.INTEGRATION, institution=HOSP_A) | {"Content-Type": ER7}
    first = realworld_text(PANEL_CULTURE_V251)
    second = with_control_id(sample_text(LAB_LFT_V251), "LIS2026061400RW9")
    batch = "\r".join(
        [
            "BHS|^~\\&|LIS|H130100001|HUREN|HUREN|20260614093600||||BATCH0002",
            first,
            second,
            "BTS|2",
        ]
    )
    r = client.post("/api/v1/hl7v2", content=batch.encode(), headers=headers)
    code, control, text = msa(r.content)
    assert (code, control) == ("AR", "BATCH0002")
    assert text.startswith("BHS:")
    assert "2 条消息" in text
    assert str(ack_segments(r.content).segment("MSH")[5]) == "LIS"


# ------------------------------------------------------------------ MLLP
@pytest.fixture
def mllp(world: Container) -> Iterator[RunningServer]:
    receiver = Hl7Receiver(
        world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine)
    )
    server = MllpServer(host="127.0.0.1", port=0, batch=MllpGroupCommit(receiver))
    with RunningServer(server) as running:
        yield running


def test_mllp_client_sends_the_realworld_samples(mllp: RunningServer, world: Container) -> None:
    with MLLPClient("127.0.0.1", mllp.server.port) as client:
        first = client.send_message(realworld_text(PANEL_CULTURE_V251))
    with MLLPClient("127.0.0.1", mllp.server.port, encoding="gb18030") as client:
        second = client.send_message(realworld_bytes(CBC_V231_GB18030))
    assert msa(first)[0] == "AA"
    assert msa(second, "gb18030")[:2] == ("AA", "BD20260613RW0002")


@pytest.mark.parametrize("ending", [b"\x1c", b"\x1c\n"], ids=["EB", "EB-LF"])
def test_mllp_frame_ended_without_cr_is_answered(
    mllp: RunningServer, world: Container, ending: bytes
) -> None:
    """Was: a sender ending its frame with <EB> alone (or <EB><LF>) never got an ACK:
    the listener waited for the <CR> and the connection hung."""
    payload = b"\x0b" + realworld_bytes(PANEL_CULTURE_V251) + ending
    with socket.create_connection(("127.0.0.1", mllp.server.port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed without an ACK"
            data += chunk
    assert msa(data)[:2] == ("AA", "LIS20260614RW0001")
