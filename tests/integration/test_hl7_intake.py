"""HL7 v2 messages through the receiver into the real intake service (SQLite and
PostgreSQL): AA only for what was stored, AE/AR store nothing but the rejection."""

from __future__ import annotations

import hl7
import pytest
from sqlalchemy import func, select

from huren.adapters.db.tables import (
    inbound_message,
    inflate_message,
    observation,
    patient,
    result,
)
from huren.adapters.hl7v2.parse import AckCode
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.domain.results import ResultStatus
from huren.services.intake import Channel
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    CT_CHEST_V24,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_control_id,
    with_field,
)
from tests.fixtures.world import CT_CHEST, HOSP_A, LFT


@pytest.fixture
def receiver(world: Container) -> Hl7Receiver:
    return Hl7Receiver(world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine))


def count(c: Container, table: object) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def msa(payload: bytes, encoding: str = "utf-8") -> tuple[str, str, str]:
    seg = hl7.parse(payload.decode(encoding)).segment("MSA")
    return str(seg[1]), str(seg[2]), str(seg[3])


def test_lab_panel_is_acknowledged_aa_and_stored_with_unified_code(
    receiver: Hl7Receiver, world: Container
) -> None:
    reply = receiver.handle(sample_bytes(LAB_LFT_V251))
    assert reply.code is AckCode.AA
    assert msa(reply.payload)[:2] == ("AA", "LIS202606140001")
    assert reply.outcome is not None
    (ref,) = reply.outcome.results
    stored = world.results.get_result(ref.result_id)
    assert (stored.report_no, stored.item_code, stored.status) == (
        "RPT-LIS-20260614-0001",
        LFT,
        ResultStatus.FINAL,
    )
    assert [o.code for o in stored.observations][:3] == ["1742-6", "1920-8", "1975-2"]
    assert stored.signer == "李明"


def test_imaging_report_keeps_findings_and_conclusion_apart(
    receiver: Hl7Receiver, world: Container
) -> None:
    reply = receiver.handle(sample_bytes(CT_CHEST_V24))
    assert reply.outcome is not None
    stored = world.results.get_result(reply.outcome.results[0].result_id)
    assert stored.item_code == CT_CHEST
    assert stored.findings.startswith("胸廓对称")
    assert "磨玻璃结节" not in stored.findings[-10:]
    assert stored.conclusion.startswith("1. 右肺上叶尖段磨玻璃结节")
    assert stored.study_uid == "1.2.156.112605.14038013507713.20260612143000.1"


def test_gb18030_message_is_answered_in_gb18030_and_unmapped_code_is_named(
    receiver: Hl7Receiver, world: Container
) -> None:
    reply = receiver.handle(sample_bytes(CBC_V23_GB18030))
    assert reply.code is AckCode.AA
    code, control_id, text = msa(reply.payload, "gb18030")
    assert (code, control_id) == ("AA", "BD20260613000311")
    assert "未对码项目: B-CBC" in text  # stored and flagged, not refused (R1.4)
    assert reply.outcome is not None
    stored = world.results.get_result(reply.outcome.results[0].result_id)
    assert stored.item_code is None
    assert world.results.patient_name(stored.patient_id) == "张三"


def test_resending_the_same_message_stores_nothing_twice(
    receiver: Hl7Receiver, world: Container
) -> None:
    first = receiver.handle(sample_bytes(LAB_LFT_V251))
    again = receiver.handle(sample_bytes(LAB_LFT_V251))
    assert again.code is AckCode.AA
    assert again.outcome is not None
    assert again.outcome.duplicate
    assert first.outcome is not None
    assert again.outcome.results == first.outcome.results
    assert (count(world, result), count(world, observation)) == (1, 6)


def test_same_report_under_a_new_control_id_is_unchanged(
    receiver: Hl7Receiver, world: Container
) -> None:
    receiver.handle(sample_bytes(LAB_LFT_V251))
    text = with_control_id(sample_text(LAB_LFT_V251), "LIS202606140099")
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AA
    assert count(world, result) == 1


def test_corrected_report_becomes_a_new_version(receiver: Hl7Receiver, world: Container) -> None:
    receiver.handle(sample_bytes(LAB_LFT_V251))
    text = with_control_id(sample_text(LAB_LFT_V251), "LIS202606140100")
    text = with_field(with_field(text, "OBR", 25, "C"), "OBX", 5, "48", occurrence=1)
    reply = receiver.handle(text.encode())
    assert reply.outcome is not None
    stored = world.results.get_result(reply.outcome.results[0].result_id)
    assert (stored.version, stored.status) == (2, ResultStatus.CORRECTED)
    assert stored.observations[0].value_num == 48.0


def test_invalid_national_id_is_ae_naming_pid3_and_nothing_is_stored(
    receiver: Hl7Receiver, world: Container
) -> None:
    text = with_field(
        sample_text(LAB_LFT_V251),
        "PID",
        3,
        "MR0012345^^^H130100001^MR~110105197203051621^^^CHN^NI",
    )
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AE
    ack = hl7.parse(reply.payload.decode())
    assert str(ack.segment("ERR")[2]) == "PID^1^3^2"
    assert "PID-3(2)" in msa(reply.payload)[2]
    assert (count(world, result), count(world, patient)) == (0, 0)


@pytest.mark.parametrize(
    ("segment", "field", "value", "location", "said"),
    [
        ("MSH", 4, "H999999999", "MSH^1^4^1", "H999999999"),
        # 0001-01-01 in China time is year 0 in UTC: it overflowed on its way to the
        # database (found by a fuzzer).
        ("OBR", 7, "00010101000000", "OBR^1^7^1", "1900–2199"),
    ],
    ids=["unknown institution", "time at the end of the calendar"],
)
def test_what_the_intake_service_refuses_is_ae_naming_its_field(
    receiver: Hl7Receiver,
    world: Container,
    segment: str,
    field: int,
    value: str,
    location: str,
    said: str,
) -> None:
    text = with_field(sample_text(LAB_LFT_V251), segment, field, value)
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AE
    assert str(hl7.parse(reply.payload.decode()).segment("ERR")[2]) == location
    assert said in msa(reply.payload)[2]
    assert count(world, result) == 0


def test_rejection_is_recorded_with_its_reason_raw_text_and_ack(
    receiver: Hl7Receiver, world: Container
) -> None:
    text = with_field(sample_text(LAB_LFT_V251), "OBR", 3, "")
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AE
    with world.engine.connect() as conn:
        row = conn.execute(select(inbound_message)).one()
    assert (row.status, row.channel, row.control_id) == (
        "rejected",
        "hl7v2-mllp",
        "LIS202606140001",
    )
    assert row.institution_code == HOSP_A
    assert "OBR[1]-3" in row.error
    assert inflate_message(row.raw_deflated) == text
    assert row.response == reply.ack
    assert count(world, result) == 0


def test_unreadable_message_is_ar_and_recorded(receiver: Hl7Receiver, world: Container) -> None:
    reply = receiver.handle(b"\x00\x01 not hl7 at all")
    assert reply.code is AckCode.AR
    with world.engine.connect() as conn:
        assert conn.execute(select(inbound_message.c.status)).scalar_one() == "rejected"


def test_database_failure_is_ar_207_and_not_acknowledged(world: Container) -> None:
    class Broken:
        def receive(self, message: object) -> object:
            raise OSError("disk full")

        def reject(self, rejection: object) -> int:
            raise OSError("disk full")

    reply = Hl7Receiver(Broken(), world.clock, Channel.HL7V2_MLLP).handle(  # type: ignore[arg-type]
        sample_bytes(LAB_LFT_V251)
    )
    assert reply.code is AckCode.AR
    assert str(hl7.parse(reply.payload.decode()).segment("ERR")[3]).startswith("207^")
