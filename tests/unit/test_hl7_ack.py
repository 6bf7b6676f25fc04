"""ACK^R01 (HL7 v2.5.1 §2.9.2 original mode): read back with python-hl7 as an interface
engine would."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from huren.adapters.hl7v2.ack import build_ack, encode_ack
from huren.adapters.hl7v2.codes import ErrorCode
from huren.adapters.hl7v2.parse import (
    AckCode,
    Hl7Problem,
    Hl7Rejected,
    Location,
    MessageHeader,
    parse_oru,
)
from huren.services.intake import Channel
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    CT_CHEST_V24,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_field,
)

NOW = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)


def header_of(name: str) -> MessageHeader:
    return parse_oru(sample_bytes(name), Channel.HL7V2_MLLP).header


def read(ack: str) -> hl7.Message:
    return hl7.parse(ack)


def test_accept_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    msg = read(build_ack(header_of(LAB_LFT_V251), AckCode.AA, now=NOW, text="已接收 1 份报告"))
    msh = msg.segment("MSH")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == (
        "HUREN",
        "HUREN",
        "LIS",
        "H130100001",
    )
    assert str(msh[9]) == "ACK^R01^ACK"
    assert str(msh[12]) == "2.5.1"
    assert str(msh[7]) == "20260615173000+0800"
    assert str(msh[10]) != "LIS202606140001"  # a control id of its own
    msa = msg.segment("MSA")
    assert (str(msa[1]), str(msa[2]), str(msa[3])) == ("AA", "LIS202606140001", "已接收 1 份报告")


def test_accept_has_no_err_segment() -> None:
    msg = read(build_ack(header_of(LAB_LFT_V251), AckCode.AA, now=NOW))
    assert [str(s[0]) for s in msg] == ["MSH", "MSA"]


def test_v251_error_has_location_code_and_chinese_text_in_err() -> None:
    problem = Hl7Problem(
        Location("PID", 1, 3, 2), ErrorCode.DATA_TYPE, "居民身份证：居民身份证号码无效"
    )
    ack = build_ack(
        header_of(LAB_LFT_V251), AckCode.AE, now=NOW, text="PID-3(2): 无效", problems=[problem]
    )
    err = read(ack).segment("ERR")
    assert str(err[2]) == "PID^1^3^2"  # ERR-2 error location
    assert str(err[3]) == "102^Data type error^HL70357"  # ERR-3, Table 0357
    assert str(err[4]) == "E"
    assert str(err[8]) == "居民身份证：居民身份证号码无效"  # ERR-8 user message
    assert str(read(ack).segment("MSA")[1]) == "AE"


def test_v251_one_err_segment_per_problem() -> None:
    problems = [
        Hl7Problem(
            Location("OBR", 1, 3, indexed=True), ErrorCode.REQUIRED_FIELD_MISSING, "缺少报告单编号"
        ),
        Hl7Problem(
            Location("OBX", 2, 5, indexed=True), ErrorCode.REQUIRED_FIELD_MISSING, "缺少结果值"
        ),
    ]
    msg = read(build_ack(header_of(LAB_LFT_V251), AckCode.AE, now=NOW, problems=problems))
    assert [str(e[2]) for e in msg.segments("ERR")] == ["OBR^1^3^1", "OBX^2^5^1"]


def test_v24_error_uses_err1_with_code_and_text() -> None:
    problems = [
        Hl7Problem(
            Location("OBR", 1, 3, indexed=True), ErrorCode.REQUIRED_FIELD_MISSING, "缺少报告单编号"
        ),
        Hl7Problem(
            Location("OBX", 2, 5, indexed=True), ErrorCode.REQUIRED_FIELD_MISSING, "缺少结果值"
        ),
    ]
    ack = build_ack(header_of(CT_CHEST_V24), AckCode.AE, now=NOW, problems=problems)
    msg = read(ack)
    assert str(msg.segment("MSH")[12]) == "2.4"
    (err,) = msg.segments("ERR")
    assert str(err[1]) == "OBR^1^3^101&缺少报告单编号&HL70357~OBX^2^5^101&缺少结果值&HL70357"
    assert len(err) == 2  # nothing after ERR-1 in v2.4


def test_v23_message_type_has_no_structure_component() -> None:
    msg = read(build_ack(header_of(CBC_V23_GB18030), AckCode.AA, now=NOW))
    assert str(msg.segment("MSH")[9]) == "ACK^R01"


def test_ack_is_encoded_like_the_incoming_gb18030_message() -> None:
    header = header_of(CBC_V23_GB18030)
    ack = build_ack(header, AckCode.AE, now=NOW, text="张三的报告缺少结果值")
    data = encode_ack(ack, header)
    assert "张三".encode("gb18030") in data
    assert str(read(data.decode("gb18030")).segment("MSH")[18]) == "GB 18030-2000"


def test_ack_to_an_utf8_message_without_msh18_declares_utf8() -> None:
    header = header_of(CT_CHEST_V24)
    ack = build_ack(header, AckCode.AA, now=NOW, text="已接收")
    assert str(read(ack).segment("MSH")[18]) == "UNICODE UTF-8"
    assert encode_ack(ack, header) == ack.encode("utf-8")


def test_delimiters_in_the_text_are_escaped() -> None:
    problem = Hl7Problem(Location("OBX", 1, 5, indexed=True), ErrorCode.DATA_TYPE, "值 a|b^c 无效")
    ack = build_ack(header_of(LAB_LFT_V251), AckCode.AE, now=NOW, problems=[problem])
    err = read(ack).segment("ERR")
    assert str(err[8]) == "值 a\\F\\b\\S\\c 无效"
    assert read(ack).unescape(str(err[8])) == "值 a|b^c 无效"


@pytest.mark.parametrize("raw_version", ["2.8", "3.0"])
def test_reject_of_an_unsupported_version_still_parses_as_an_ack(raw_version: str) -> None:
    text = with_field(sample_text(LAB_LFT_V251), "MSH", 12, raw_version)
    with pytest.raises(Hl7Rejected) as info:
        parse_oru(text.encode(), Channel.HL7V2_MLLP)
    exc = info.value
    msg = read(build_ack(exc.header, exc.ack, now=NOW, problems=exc.problems))
    assert str(msg.segment("MSA")[1]) == "AR"
    assert str(msg.segment("MSA")[2]) == "LIS202606140001"
    assert str(msg.segment("ERR")[3]) == "203^Unsupported version id^HL70357"
