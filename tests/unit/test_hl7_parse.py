"""ORU^R01 → ResultSubmissions (R3): what each field of a real LIS/RIS message becomes,
and how a bad message is refused naming the field."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from huren.adapters.hl7v2.codes import ErrorCode
from huren.adapters.hl7v2.parse import (
    AckCode,
    Hl7Rejected,
    ParsedOru,
    parse_oru,
    parse_reference_range,
    parse_ts,
)
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.masterdata import Category
from huren.domain.results import ResultStatus, ValueType
from huren.services.intake import Channel
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    CT_CHEST_V24,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_field,
    without_segments,
)

HOSP_A = "H130100001"


def parse(raw: bytes | str, hint: str | None = None) -> ParsedOru:
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    return parse_oru(data, Channel.HL7V2_MLLP, charset_hint=hint)


def rejected(raw: bytes | str) -> Hl7Rejected:
    with pytest.raises(Hl7Rejected) as info:
        parse(raw)
    return info.value


def fields(exc: Hl7Rejected) -> list[str]:
    return [p.field for p in exc.problems]


LFT = sample_text(LAB_LFT_V251)


# ---------------------------------------------------------------- the lab panel (v2.5.1)
def test_msh_gives_institution_control_id_version_and_charset() -> None:
    parsed = parse(sample_bytes(LAB_LFT_V251))
    h = parsed.header
    assert (h.institution, h.control_id, h.version) == (HOSP_A, "LIS202606140001", "2.5.1")
    assert (h.charset, h.charset_field) == ("utf-8", "UNICODE UTF-8")
    assert parsed.message.institution == HOSP_A
    assert parsed.message.control_id == "LIS202606140001"
    assert parsed.message.channel is Channel.HL7V2_MLLP


def test_one_obr_is_one_report_with_its_number_code_times_and_signer() -> None:
    (sub,) = parse(sample_bytes(LAB_LFT_V251)).message.submissions
    assert sub.report_no == "RPT-LIS-20260614-0001"  # OBR-3 filler order number
    assert (sub.local_code, sub.local_name) == ("LIS-LFT", "肝功能全套")  # OBR-4
    assert sub.performed_at == datetime(2026, 6, 13, 23, 30, tzinfo=UTC)  # OBR-7, +08:00
    assert sub.issued_at == datetime(2026, 6, 14, 0, 30, tzinfo=UTC)  # OBR-22
    assert sub.status is ResultStatus.FINAL  # OBR-25 F
    assert (sub.signer, sub.performer) == ("李明", "周丽")  # OBR-32 / OBR-34 (CN in NDL)
    assert sub.category is Category.LAB  # OBR-24 CH


def test_pid3_repetitions_become_mrn_national_id_and_insurance_number() -> None:
    (sub,) = parse(sample_bytes(LAB_LFT_V251)).message.submissions
    assert sub.patient.identifiers == (
        PatientIdentifier(IdentifierKind.MRN, "MR0012345", HOSP_A),
        PatientIdentifier(IdentifierKind.NATIONAL_ID, "110105197203051620"),
        PatientIdentifier(IdentifierKind.INSURANCE, "YB1306020001"),
    )
    assert (sub.patient.name, sub.patient.sex) == ("王秀英", "F")
    assert sub.patient.birth_date == date(1972, 3, 5)


def test_numeric_result_keeps_unit_range_flag_and_loinc() -> None:
    (sub,) = parse(sample_bytes(LAB_LFT_V251)).message.submissions
    alt = sub.observations[0]
    assert (alt.code, alt.name, alt.loinc) == ("1742-6", "丙氨酸氨基转移酶(ALT)", "1742-6")
    assert (alt.value_type, alt.value_num, alt.unit) == (ValueType.NM, 56.0, "U/L")
    assert (alt.ref_low, alt.ref_high, alt.ref_text, alt.flag) == (9.0, 50.0, "9-50", "H")


def test_structured_numeric_with_comparator_is_text_without_a_number() -> None:
    (sub,) = parse(sample_bytes(LAB_LFT_V251)).message.submissions
    hbsab = next(o for o in sub.observations if o.code == "HBSAB")
    assert (hbsab.value_type, hbsab.value_text, hbsab.value_num) == (ValueType.SN, ">1000", None)
    assert (hbsab.ref_low, hbsab.ref_high) == (None, 10.0)  # OBX-7 "<10"


def test_structured_numeric_ratio_and_plain_number() -> None:
    text = with_field(LFT, "OBX", 5, "^1^:^40", occurrence=4)
    text = with_field(text, "OBX", 2, "SN", occurrence=1)
    text = with_field(text, "OBX", 5, "=^56", occurrence=1)
    (sub,) = parse(text).message.submissions
    assert (sub.observations[3].value_text, sub.observations[3].value_num) == ("1:40", None)
    assert (sub.observations[0].value_text, sub.observations[0].value_num) == ("56", 56.0)


def test_coded_result_keeps_its_text() -> None:
    (sub,) = parse(sample_bytes(LAB_LFT_V251)).message.submissions
    hbsag = next(o for o in sub.observations if o.code == "HBSAG")
    assert (hbsag.value_type, hbsag.value_text, hbsag.ref_text) == (ValueType.CE, "阴性", "阴性")


def test_escaped_tilde_in_reference_range_is_a_range_not_a_repetition() -> None:
    (sub,) = parse(sample_bytes(LAB_LFT_V251)).message.submissions
    alb = sub.observations[-1]
    assert (alb.ref_text, alb.ref_low, alb.ref_high) == ("40~55", 40.0, 55.0)


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        ("\\XE5BCA0\\医生", "张医生"),  # UTF-8 bytes
        ("\\XD5C5\\医生", "张医生"),  # GB18030 bytes
        ("李\\X00\\医生", "李医生"),  # a NUL (found by a fuzzer: AR 207 on PostgreSQL)
        ("李\\X0D0A\\医生", "李\r\n医生"),
        ("李\\X1B07\\医生", "李医生"),
        ("李\\XZZ\\医生", "李医生"),
    ],
)
def test_hexadecimal_escapes_read_as_text_without_control_characters(
    escaped: str, text: str
) -> None:
    (sub,) = parse(with_field(LFT, "OBR", 32, f"0456&{escaped}")).message.submissions
    assert sub.signer == text


@pytest.mark.parametrize(
    ("obr25", "status"),
    [
        ("P", ResultStatus.PRELIMINARY),
        ("F", ResultStatus.FINAL),
        ("C", ResultStatus.CORRECTED),
        ("X", ResultStatus.CANCELLED),
        ("A", ResultStatus.PARTIAL),
    ],
)
def test_result_status_maps_to_report_status(obr25: str, status: ResultStatus) -> None:
    (sub,) = parse(with_field(LFT, "OBR", 25, obr25)).message.submissions
    assert sub.status is status


def test_every_observation_posted_as_wrong_makes_the_report_entered_in_error() -> None:
    text = LFT
    for n in range(1, 7):
        text = with_field(text, "OBX", 11, "W", occurrence=n)
    (sub,) = parse(text).message.submissions
    assert sub.status is ResultStatus.ENTERED_IN_ERROR


def test_missing_obr22_takes_the_message_time_as_issue_time() -> None:
    (sub,) = parse(with_field(LFT, "OBR", 22, "")).message.submissions
    assert sub.issued_at == datetime(2026, 6, 14, 0, 35, 12, tzinfo=UTC)  # MSH-7


def test_two_obr_give_two_reports_for_the_same_patient() -> None:
    lines = LFT.split("\r")
    second = [
        "OBR|2||RPT-LIS-20260614-0002|LIS-HBA1C^糖化血红蛋白^L|||20260614073000"
        + "|" * 15
        + "20260614090000||CH|P",
        "OBX|1|NM|4548-4^糖化血红蛋白^LN||6.1|%|4.0-6.0|H|||P",
    ]
    first, second_sub = parse("\r".join(lines + second)).message.submissions
    assert (first.report_no, second_sub.report_no) == (
        "RPT-LIS-20260614-0001",
        "RPT-LIS-20260614-0002",
    )
    assert second_sub.status is ResultStatus.PRELIMINARY
    assert second_sub.patient == first.patient


# ---------------------------------------------------------------- imaging (v2.4)
def test_imaging_findings_and_impression_are_kept_apart() -> None:
    (sub,) = parse(sample_bytes(CT_CHEST_V24)).message.submissions
    # 沪卫医〔2024〕135号: 检查检验结果不包括医师出具的诊断结论
    assert sub.findings.startswith("胸廓对称，气管居中。")
    assert "纵隔内未见肿大淋巴结" in sub.findings  # second TX repetition is a new line
    assert sub.findings.count("\n") == 1
    assert sub.conclusion == (
        "1. 右肺上叶尖段磨玻璃结节，建议12个月后复查。\n2. 余胸部CT平扫未见明显异常。"
    )
    assert sub.observations == ()
    assert sub.category is Category.IMAGING


def test_imaging_accession_study_uid_and_reading_physician() -> None:
    (sub,) = parse(sample_bytes(CT_CHEST_V24)).message.submissions
    assert sub.accession_number == "ACC20260612087"  # OBR-18
    assert sub.study_uid == "1.2.156.112605.14038013507713.20260612143000.1"  # ZDS-1
    assert (sub.signer, sub.performer) == ("赵刚", "钱进")


def test_report_sections_are_recognized_by_loinc_code_too() -> None:
    text = sample_text(CT_CHEST_V24)
    text = with_field(text, "OBX", 3, "18782-3^Radiology Study observation^LN", occurrence=1)
    text = with_field(text, "OBX", 3, "19005-8^Radiology Impression^LN", occurrence=2)
    (sub,) = parse(text).message.submissions
    assert sub.findings.startswith("胸廓对称")
    assert sub.conclusion.startswith("1. 右肺")


def test_v24_without_msh18_is_read_as_utf8() -> None:
    assert parse(sample_bytes(CT_CHEST_V24)).header.charset == "utf-8"


# ---------------------------------------------------------------- GB 18030 (v2.3)
def test_gb18030_message_declared_in_msh18_decodes_chinese_names() -> None:
    parsed = parse(sample_bytes(CBC_V23_GB18030))
    (sub,) = parsed.message.submissions
    assert parsed.header.charset == "gb18030"
    assert parsed.header.version == "2.3"
    assert sub.patient.name == "张三"
    assert sub.local_name == "血常规五分类"
    assert "张三" in parsed.message.raw


def test_gb18030_without_msh18_is_recognized() -> None:
    text = with_field(sample_text(CBC_V23_GB18030), "MSH", 18, "")
    parsed = parse(text.encode("gb18030"))
    assert parsed.header.charset == "gb18030"
    assert parsed.message.submissions[0].patient.name == "张三"


def test_national_id_named_by_assigning_authority_and_untyped_id_as_mrn() -> None:
    (sub,) = parse(sample_bytes(CBC_V23_GB18030)).message.submissions
    assert sub.patient.identifiers == (
        PatientIdentifier(IdentifierKind.MRN, "0098231", "H130600001"),
        PatientIdentifier(IdentifierKind.NATIONAL_ID, "310104199001011233"),
    )


def test_arrow_flag_and_plain_text_signer() -> None:
    (sub,) = parse(sample_bytes(CBC_V23_GB18030)).message.submissions
    hgb = sub.observations[1]
    assert (hgb.code, hgb.flag) == ("HGB", "L")  # "↓"
    assert sub.signer == "孙医生"
    assert sub.observations[3].value_type is ValueType.ST


def test_gb18030_bytes_declared_as_utf8_are_rejected_naming_msh18() -> None:
    text = with_field(sample_text(CBC_V23_GB18030), "MSH", 18, "UNICODE UTF-8")
    exc = rejected(text.encode("gb18030"))
    assert exc.ack is AckCode.AR
    assert fields(exc) == ["MSH-18"]


def test_unknown_charset_is_rejected_naming_msh18() -> None:
    exc = rejected(with_field(LFT, "MSH", 18, "EBCDIC"))
    assert (exc.ack, fields(exc), exc.problems[0].code) == (
        AckCode.AR,
        ["MSH-18"],
        ErrorCode.TABLE_VALUE_NOT_FOUND,
    )


def test_bytes_that_are_neither_utf8_nor_gb18030_are_rejected_naming_msh18() -> None:
    raw = with_field(LFT, "MSH", 18, "").encode("utf-8").replace("王".encode(), b"\xff\xff")
    exc = rejected(raw)
    assert (exc.ack, fields(exc)) == (AckCode.AR, ["MSH-18"])


# ---------------------------------------------------------------- unprocessable: AR
def test_text_that_is_not_hl7_is_rejected() -> None:
    exc = rejected("<ClinicalDocument>张三</ClinicalDocument>")
    assert (exc.ack, fields(exc)) == (AckCode.AR, ["MSH"])


@pytest.mark.parametrize("encoding_chars", ["^~\\", "^^\\&", "ab\\&", "^~|&"])
def test_wrong_encoding_characters_are_rejected_naming_msh2(encoding_chars: str) -> None:
    exc = rejected(LFT.replace("MSH|^~\\&|", f"MSH|{encoding_chars}|", 1))
    assert (exc.ack, fields(exc)) == (AckCode.AR, ["MSH-2"])


def test_bad_segment_is_rejected_with_its_position() -> None:
    lines = LFT.split("\r")
    lines.insert(3, "乱码 segment without id")
    exc = rejected("\r".join(lines))
    assert exc.ack is AckCode.AR
    assert "第 4 段" in exc.problems[0].message


@pytest.mark.parametrize(
    ("msh9", "code"),
    [("ADT^A01", ErrorCode.UNSUPPORTED_MESSAGE_TYPE), ("ORU^R30", ErrorCode.UNSUPPORTED_EVENT)],
)
def test_other_message_types_are_rejected(msh9: str, code: ErrorCode) -> None:
    exc = rejected(with_field(LFT, "MSH", 9, msh9))
    assert (exc.ack, fields(exc), exc.problems[0].code) == (AckCode.AR, ["MSH-9"], code)


def test_unsupported_version_is_rejected_naming_msh12() -> None:
    exc = rejected(with_field(LFT, "MSH", 12, "2.8"))
    assert (exc.ack, fields(exc), exc.problems[0].code) == (
        AckCode.AR,
        ["MSH-12"],
        ErrorCode.UNSUPPORTED_VERSION,
    )


def test_training_messages_are_not_stored_as_production_data() -> None:
    exc = rejected(with_field(LFT, "MSH", 11, "T"))
    assert (exc.ack, fields(exc)) == (AckCode.AR, ["MSH-11"])


def test_header_is_read_even_when_the_message_is_rejected() -> None:
    exc = rejected(with_field(LFT, "MSH", 12, "2.8"))
    assert (exc.header.control_id, exc.header.sending_facility) == ("LIS202606140001", HOSP_A)


# ---------------------------------------------------------------- bad content: AE
def test_truncated_message_without_results_is_an_error_on_the_obr() -> None:
    exc = rejected(without_segments(LFT, "OBX"))
    assert (exc.ack, fields(exc)) == (AckCode.AE, ["OBR[1]"])
    assert "截断" in exc.problems[0].message


def test_message_cut_inside_an_obx_names_the_missing_value() -> None:
    cut = LFT[: LFT.index("OBX|2|NM|1920-8") + len("OBX|2|NM|1920-8^AST^LN||")]
    exc = rejected(cut)
    assert (exc.ack, fields(exc)) == (AckCode.AE, ["OBX[2]-5"])


def test_missing_pid3_is_named() -> None:
    exc = rejected(with_field(LFT, "PID", 3, ""))
    assert (exc.ack, fields(exc)) == (AckCode.AE, ["PID-3"])
    assert exc.problems[0].code is ErrorCode.REQUIRED_FIELD_MISSING


def test_missing_pid_segment_is_named() -> None:
    exc = rejected(without_segments(LFT, "PID"))
    assert fields(exc) == ["PID"]


def test_missing_report_number_is_named_obr3() -> None:
    exc = rejected(with_field(LFT, "OBR", 3, ""))
    assert (exc.ack, fields(exc)) == (AckCode.AE, ["OBR[1]-3"])


def test_missing_observation_value_is_named_with_its_obx() -> None:
    exc = rejected(with_field(LFT, "OBX", 5, "", occurrence=2))
    assert (exc.ack, fields(exc)) == (AckCode.AE, ["OBX[2]-5"])


def test_empty_value_is_allowed_when_the_observation_could_not_be_obtained() -> None:
    text = with_field(with_field(LFT, "OBX", 5, "", occurrence=2), "OBX", 11, "X", occurrence=2)
    (sub,) = parse(text).message.submissions
    assert sub.observations[1].value_num is None


def test_non_numeric_nm_value_is_a_data_type_error() -> None:
    exc = rejected(with_field(LFT, "OBX", 5, "五十六", occurrence=1))
    assert (fields(exc), exc.problems[0].code) == (["OBX[1]-5"], ErrorCode.DATA_TYPE)


def test_invalid_national_id_is_an_error_naming_its_pid3_repetition() -> None:
    bad = "110105197203051621"  # check digit should be 0
    text = with_field(LFT, "PID", 3, f"MR0012345^^^{HOSP_A}^MR~{bad}^^^CHN^NI")
    exc = rejected(text)
    assert (exc.ack, fields(exc)) == (AckCode.AE, ["PID-3(2)"])
    assert "居民身份证" in exc.problems[0].message


def test_invalid_timestamp_and_status_are_all_reported_at_once() -> None:
    text = with_field(with_field(LFT, "OBR", 7, "2026-06-14"), "OBR", 25, "Q")
    exc = rejected(text)
    assert fields(exc) == ["OBR[1]-7", "OBR[1]-25"]


def test_unsupported_value_type_is_named() -> None:
    exc = rejected(with_field(LFT, "OBX", 2, "XYZ", occurrence=3))
    assert (fields(exc), exc.problems[0].code) == (["OBX[3]-2"], ErrorCode.TABLE_VALUE_NOT_FOUND)


def test_missing_sending_facility_is_named_msh4() -> None:
    exc = rejected(with_field(LFT, "MSH", 4, ""))
    assert "MSH-4" in fields(exc)


def test_same_report_twice_in_one_message_is_a_duplicate_key() -> None:
    lines = LFT.split("\r")
    obr_at = next(i for i, line in enumerate(lines) if line.startswith("OBR"))
    exc = rejected("\r".join(lines + lines[obr_at:]))
    assert (fields(exc), exc.problems[0].code) == (["OBR[2]-3"], ErrorCode.DUPLICATE_KEY)


# ---------------------------------------------------------------- field readers
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20260614", datetime(2026, 6, 13, 16, 0, tzinfo=UTC)),
        ("202606140830", datetime(2026, 6, 14, 0, 30, tzinfo=UTC)),
        ("20260614083015.25", datetime(2026, 6, 14, 0, 30, 15, 250000, tzinfo=UTC)),
        ("20260614083015+0000", datetime(2026, 6, 14, 8, 30, 15, tzinfo=UTC)),
    ],
)
def test_timestamps_without_offset_are_china_time(text: str, expected: datetime) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.5-5.5", (3.5, 5.5)),
        ("3.5～5.5", (3.5, 5.5)),
        ("-1.5--0.5", (-1.5, -0.5)),
        ("3.5--5.5", (3.5, 5.5)),
        ("<=5.2", (None, 5.2)),
        ("≥10", (10.0, None)),
        ("阴性", (None, None)),
    ],
)
def test_reference_ranges(text: str, expected: tuple[float | None, float | None]) -> None:
    assert parse_reference_range(text) == expected


def test_nul_byte_inside_the_message_is_rejected() -> None:
    exc = rejected(LFT.replace("王^秀英", "王\x00秀英"))
    assert exc.ack is AckCode.AR
    assert "第 2 段" in exc.problems[0].message


# ---------------------------------------------------------------- the plain OBX reader
# A plain OBX (no escape, no subcomponent character) with a numeric or coded value is read
# in one pass (``_plain_observation``); whatever it gives must be what the general reader
# gives, and where it declines the general reader decides (and names the problem).
_TEXT = st.text(alphabet="AZaz09 .-<>=:/~^阴性高低", max_size=12)
_NUMBERISH = st.sampled_from(["56", " 41.2 ", "-3", ".5", "1e3", "", "^", "7^x", "12~13", "abc"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value_type=st.sampled_from(["NM", "CE", "CWE", "ST", "nm"]),
    ident=st.lists(_TEXT, min_size=0, max_size=6),
    value=st.one_of(_NUMBERISH, _TEXT),
    unit=_TEXT,
    ref=_TEXT,
    flag=st.sampled_from(["", "H", "L", "N", "A", "h", "X", " H "]),
    status=st.sampled_from(["F", "", "X", "P"]),
)
def test_plain_obx_reads_as_the_general_reader(
    value_type: str,
    ident: list[str],
    value: str,
    unit: str,
    ref: str,
    flag: str,
    status: str,
) -> None:
    import huren.adapters.hl7v2.parse as module

    obx = "|".join(
        ["OBX", "1", value_type, "^".join(ident), "", value, unit, ref, flag, "", "", status]
    )
    text = without_segments(sample_text(LAB_LFT_V251), "OBX") + "\r" + obx
    data = text.encode("utf-8")

    def read() -> object:
        try:
            return parse(data).message.submissions
        except Hl7Rejected as exc:
            return [(str(p.location), p.code, p.message) for p in exc.problems]

    fast = read()
    general_only = module._plain_observation
    module._plain_observation = lambda *_: None
    try:
        assert read() == fast
    finally:
        module._plain_observation = general_only
