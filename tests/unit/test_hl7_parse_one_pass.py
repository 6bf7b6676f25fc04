"""The one-pass OBX reader (``_plain_observation``) gives what the general reader
(``_Translator._observation``) gives, also for OBX that are not plain as a whole — an
escaped reference range, a performer with subcomponents — and for SN values."""

from __future__ import annotations

import pytest

from huren.adapters.hl7v2.codes import VALUE_TYPES
from huren.adapters.hl7v2.parse import (
    MessageHeader,
    Segment,
    _observation_fields_plain,
    _plain_observation,
    _Translator,
    split_segments,
)
from huren.domain.results import ObservationValue, ValueType

HEADER = MessageHeader(institution="H130100001")
MSH = "MSH|^~\\&|LIS|H130100001|HUREN|HUREN|20260614083512||ORU^R01|C1|P|2.5.1"


def _obx(line: str) -> Segment:
    return split_segments(f"{MSH}\r{line}", HEADER)[1]


def _both(line: str) -> tuple[ObservationValue | None, ObservationValue | None]:
    obx = _obx(line)
    vt = obx.f(2).component(1).upper()
    kind = VALUE_TYPES[vt]
    general = _Translator([obx], HEADER)._observation(obx, vt, kind)
    return _plain_observation(obx, vt, kind), general


@pytest.mark.parametrize(
    "line",
    [
        "OBX|6|NM|1751-7^白蛋白(ALB)^LN||41.2|g/L|40\\R\\55|N|||F",
        "OBX|1|NM|1742-6^ALT^LN||56|U/L|9-50|H|||F|||||0231&李&明",
        "OBX|4|SN|HBSAB^乙肝表面抗体^L||>^1000|mIU/mL|<10|A|||F|||||0317&周&丽",
        "OBX|4|SN|TITER^滴度^L||^1^:^40||<1\\T\\40|N|||F",
        "OBX|4|SN|X^数值^L||=^12.5|g/L|10\\E\\20|N|||F",
        "OBX|2|CE|HBSAG^乙肝表面抗原^L||NEG^阴性^L||阴\\S\\性|N|||F",
    ],
)
def test_one_pass_reader_agrees_with_the_general_reader(line: str) -> None:
    obx = _obx(line)
    assert not obx.plain
    assert _observation_fields_plain(obx)
    one_pass, general = _both(line)
    assert one_pass is not None
    assert one_pass == general


def test_escaped_range_and_sn_are_read_in_one_pass() -> None:
    ratio, _ = _both("OBX|4|SN|TITER^滴度^L||^1^:^40||1\\T\\40~x|N|||F")
    assert ratio is not None
    assert (ratio.value_type, ratio.value_num, ratio.value_text) == (ValueType.SN, None, "1:40")
    assert ratio.ref_text == "1&40"  # the first repetition, unescaped
    albumin, _ = _both("OBX|6|NM|1751-7^白蛋白^LN||41.2|g/L|40\\R\\55|N|||F")
    assert albumin is not None
    assert (albumin.ref_low, albumin.ref_high, albumin.ref_text) == (40.0, 55.0, "40~55")


@pytest.mark.parametrize(
    "line",
    [
        "OBX|4|SN|X^数值^L||abc^1|U|1-2|N|||F",  # no valid comparator
        "OBX|4|SN|X^数值^L||<^|U|1-2|N|||F",  # no number
        "OBX|4|SN|X^数值^L||^1^?^2|U|1-2|N|||F",  # no valid separator
        "OBX|4|SN|X^数值^L||<^0.5~<^0.6|U|1-2|N|||F",  # repeated: one number per OBX
    ],
)
def test_what_the_one_pass_reader_cannot_read_goes_to_the_general_reader(line: str) -> None:
    obx = _obx(line)
    assert _observation_fields_plain(obx)
    assert _plain_observation(obx, "SN", VALUE_TYPES["SN"]) is None


def test_an_escape_in_a_field_read_by_components_is_not_read_in_one_pass() -> None:
    assert not _observation_fields_plain(_obx("OBX|4|SN|X^\\S\\数值^L||<^0.5|U|1-2|N|||F"))
    assert not _observation_fields_plain(_obx("OBX|4|SN|X^数值^L||<^0.5|U&V|1-2|N|||F"))
