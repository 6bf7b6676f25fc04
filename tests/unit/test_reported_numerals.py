"""Lab numbers as the laboratory reported them (a result is a document): "7.40" is shown,
exported and read back as "7.40", 2345678 never as "2.34568e+06", 0.1234567 never as
0.123457 — from HL7 v2 NM (the OBX-5 text) and from FHIR R4 decimals (datatypes.html
#decimal: "the precision of the decimal value has significance"). No database."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.observation import Observation as R4BObservation

from huren.adapters.cdshooks.cards import key_values
from huren.adapters.fhir import render
from huren.adapters.fhir.ingest import parse_transaction
from huren.adapters.hl7v2.parse import parse_oru
from huren.domain.decisions import result_text
from huren.domain.errors import ValidationFailed
from huren.domain.masterdata import Category
from huren.domain.results import (
    ObservationValue,
    ResultStatus,
    StoredResult,
    ValueType,
    display_unit,
    flag_mark,
    number_text,
    reported_numerals,
)
from huren.services.intake import Channel, message_hash, submission_hash
from tests.fixtures.fhir.builders import lab_bundle
from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_field
from tests.fixtures.world import HOSP_A

HERE = Path(__file__).parent


def _k(value_num: float | None, value_text: str = "", **changes: Any) -> ObservationValue:
    k = ObservationValue(
        "K", "钾", ValueType.NM, value_num, value_text, "mmol/L", 3.5, 5.3, "3.50-5.30", "H"
    )
    return replace(k, **changes)


def _stored(*observations: ObservationValue) -> StoredResult:
    at = datetime(2026, 6, 13, 3, 42, tzinfo=UTC)
    return StoredResult(
        id=7,
        patient_id=3,
        institution=HOSP_A,
        report_no="JY-1",
        local_code="LIS-E",
        local_name="电解质",
        item_code=None,
        category=Category.LAB,
        status=ResultStatus.FINAL,
        performed_at=at,
        issued_at=at,
        version=1,
        observations=observations,
    )


# ---------------------------------------------------------------- the domain
@pytest.mark.parametrize(
    ("value", "text"),
    [
        (7.4, "7.4"),
        (56.0, "56"),
        (2345678.0, "2345678"),
        (0.1234567, "0.1234567"),
        (1e-7, "0.0000001"),
        (1e16, "10000000000000000"),
        (-0.0, "0"),
        (-3.25, "-3.25"),
    ],
)
def test_a_number_without_numerals_is_written_without_loss(value: float, text: str) -> None:
    assert number_text(value) == text
    assert float(number_text(value)) == value


@pytest.mark.parametrize(
    ("text", "value", "shown"),
    [
        ("7.40", 7.4, "7.40"),
        ("+007.40", 7.4, "7.40"),
        (".5", 0.5, "0.5"),
        ("7.", 7.0, "7"),
        ("-0.50", -0.5, "-0.50"),
        ("<0.50", 0.5, "<0.50"),
        (">=1000", 1000.0, ">=1000"),
        ("7.40", 8.1, None),  # the numerals of another number
        ("1e3", 1000.0, None),
        ("阴性", 0.0, None),
        ("٣", 3.0, None),  # a digit of another script is not a numeral a lab writes
    ],
)
def test_reported_numerals_are_kept_as_sent(text: str, value: float, shown: str | None) -> None:
    assert reported_numerals(text, value) == shown


def test_a_value_is_shown_with_its_numerals_and_never_with_another_numbers() -> None:
    assert _k(7.4, "7.40").shown_value() == "7.40"
    assert _k(7.4).shown_value() == "7.4"
    assert _k(2345678.0).shown_value() == "2345678"
    assert _k(0.1234567).shown_value() == "0.1234567"
    # numerals left from before a correction (stored by earlier code) are not shown
    assert _k(8.1, "7.40").shown_value() == "8.1"
    # a FHIR Quantity with a comparator keeps it
    assert _k(0.5, "<0.50", value_type=ValueType.SN).shown_value() == "<0.50"
    assert _k(None, "阴性", value_type=ValueType.CE).shown_value() == "阴性"


def test_reference_limits_are_the_numerals_of_the_reference_text() -> None:
    assert _k(7.4).reference_numerals() == ("3.50", "5.30")
    assert _k(7.4, ref_text="3.5～5.3").reference_numerals() == ("3.5", "5.3")
    assert _k(7.4, ref_text="", ref_low=0.1234567, ref_high=None).reference_numerals() == (
        "0.1234567",
        "",
    )
    assert _k(7.4, ref_low=-5.0, ref_high=-1.0, ref_text="-5.0--1.0").reference_numerals() == (
        "-5.0",
        "-1.0",
    )
    # a text that does not hold the limits: the limits themselves
    assert _k(7.4, ref_text="见报告").reference_numerals() == ("3.5", "5.3")


def test_the_emr_text_carries_the_numerals_reported() -> None:
    text = result_text(_stored(_k(7.4, "7.40"), _k(2345678.0, code="HBV", name="HBV-DNA")))
    assert text == "钾 7.40 mmol/L (H)；HBV-DNA 2345678 mmol/L (H)"


def test_the_card_shows_value_and_reference_range_as_reported() -> None:
    class _Assessment:
        result = _stored(_k(7.4, "7.40"), _k(0.1234567, code="X", name="X", ref_text="", flag=""))

    rows = key_values(_Assessment())  # type: ignore[arg-type]
    assert rows == [
        "| 钾 | 7.40 | mmol/L | 3.50–5.30 | H |",
        "| X | 0.1234567 | mmol/L | 3.5–5.3 |  |",
    ]


# ---------------------------------------------------------------- HL7 v2
def test_hl7_nm_keeps_its_numerals() -> None:
    text = with_field(sample_text(LAB_LFT_V251), "OBX", 5, "7.40", occurrence=3)
    text = with_field(text, "OBX", 7, "3.50-5.30", occurrence=3)
    sub = parse_oru(text.encode(), Channel.HL7V2_HTTP).message.submissions[0]
    tbil = sub.observations[2]
    assert (tbil.value_num, tbil.value_text, tbil.ref_text) == (7.4, "7.40", "3.50-5.30")
    assert tbil.shown_value() == "7.40"
    assert tbil.reference_numerals() == ("3.50", "5.30")


# ---------------------------------------------------------------- FHIR in
def _bundle_with(value: str, *, ref: str = "", comparator: str = "") -> bytes:
    """The lab Bundle with the first Observation's value written ``value`` (a JSON
    number as the sender wrote it), optionally its reference range ``ref``."""
    bundle = lab_bundle(n_obs=1)
    q = bundle["entry"][2]["resource"]["valueQuantity"]
    q["value"] = "@VALUE@"
    if comparator:
        q["comparator"] = comparator
    raw = json.dumps(bundle, ensure_ascii=False).replace('"@VALUE@"', value)
    if ref:
        raw = raw.replace(
            '"low": {"value": 9, "unit": "U/L"}, "high": {"value": 50, "unit": "U/L"}', ref
        )
    return raw.encode()


def _first(raw: bytes) -> ObservationValue:
    return parse_transaction(raw).message.submissions[0].observations[0]


@pytest.mark.parametrize(
    ("literal", "value_num", "value_text", "shown"),
    [
        ("7.40", 7.4, "7.40", "7.40"),
        ("56.0", 56.0, "56.0", "56.0"),
        ("7.4", 7.4, "", "7.4"),  # the float's own numerals: stored as before
        ("2345678", 2345678.0, "", "2345678"),
        ("0.1234567", 0.1234567, "", "0.1234567"),
        ("2.50e-3", 0.0025, "0.00250", "0.00250"),
        ("1E+3", 1000.0, "", "1000"),
        ("0.12345678901234567891", 0.12345678901234568, "0.12345678901234567891", None),
    ],
)
def test_fhir_value_quantity_keeps_its_numerals(
    literal: str, value_num: float, value_text: str, shown: str | None
) -> None:
    obs = _first(_bundle_with(literal))
    assert (obs.value_type, obs.value_num, obs.value_text) == (ValueType.NM, value_num, value_text)
    if shown is not None:
        assert obs.shown_value() == shown


def test_fhir_reference_range_and_structured_numerics_keep_their_numerals() -> None:
    obs = _first(_bundle_with("7.40", ref='"low": {"value": 3.50}, "high": {"value": 5.30}'))
    assert (obs.ref_low, obs.ref_high, obs.ref_text) == (3.5, 5.3, "3.50-5.30")
    assert _first(_bundle_with("0.50", comparator="<")).value_text == "<0.50"
    bundle = lab_bundle(n_obs=1)
    res = bundle["entry"][2]["resource"]
    del res["valueQuantity"]
    res["valueRange"] = {"low": {"value": "@LOW@"}, "high": {"value": 2345678}}
    raw = json.dumps(bundle).replace('"@LOW@"', "0.1234567")
    assert _first(raw.encode()).value_text == "0.1234567-2345678"
    res.pop("valueRange")
    res["valueRatio"] = {"numerator": {"value": 1}, "denominator": {"value": "@D@"}}
    raw = json.dumps(bundle).replace('"@D@"', "40.0")
    assert _first(raw.encode()).value_text == "1:40.0"


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ('"value": "@VALUE@"', "valueQuantity.value"),  # a string: not a decimal
        ("true", "valueQuantity.value"),
        ("1e400", "valueQuantity.value"),
    ],
)
def test_a_fhir_value_that_is_no_number_is_refused_naming_it(change: str, element: str) -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][2]["resource"]["valueQuantity"]["value"] = "@VALUE@"
    raw = json.dumps(bundle)
    raw = raw.replace(
        '"value": "@VALUE@"', change if change.startswith('"') else f'"value": {change}'
    )
    with pytest.raises(ValidationFailed) as err:
        parse_transaction(raw.encode())
    assert [p.field for p in err.value.problems] == [f"Bundle.entry[2].resource.{element}"]


@pytest.mark.parametrize(
    ("range_json", "field"),
    [
        ('{"low": {"value": "3.5"}}', "referenceRange[0].low.value"),
        ('{"high": {"value": false}}', "referenceRange[0].high.value"),
        (
            '{"age": {"low": {"value": "18"}}, "low": {"value": 1}}',
            "referenceRange[0].age.low.value",
        ),
        ("5", "referenceRange[0]"),
    ],
)
def test_a_reference_range_that_is_not_one_is_refused_naming_it(
    range_json: str, field: str
) -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][2]["resource"]["referenceRange"] = ["@RANGE@"]
    raw = json.dumps(bundle).replace('"@RANGE@"', range_json)
    with pytest.raises(ValidationFailed) as err:
        parse_transaction(raw.encode())
    assert [p.field for p in err.value.problems] == [f"Bundle.entry[2].resource.{field}"]


def test_a_fhir_value_sent_as_null_is_missing() -> None:
    with pytest.raises(ValidationFailed) as err:
        _first(_bundle_with("null"))
    assert [(p.field, p.message) for p in err.value.problems] == [
        ("Bundle.entry[2].resource.valueQuantity.value", "数值型结果缺少数值")
    ]


# A Bundle whose numbers have no trailing zeros and at most 6 significant digits: its
# submission and message hashes as computed by the code before numerals were kept
# (submission_hash / message_hash at commit 4754b3e). Sent again after the upgrade it is
# "unchanged", not a new version.
PINNED_BUNDLE = HERE.parent / "fixtures" / "fhir" / "numerals_before_upgrade.json"
SUBMISSION_HASH_BEFORE = "f70c722e0719cccb69bb63062731fcb8751bec39e3de36ec6ce27d6c9fc0da7a"
MESSAGE_HASH_BEFORE = "1715ccbb2a21c961174edeef6b7400eefcce413549a0cca8495494fabd39fde7"


def test_a_bundle_without_trailing_zeros_hashes_as_before_numerals_were_kept() -> None:
    parsed = parse_transaction(PINNED_BUNDLE.read_bytes())
    (sub,) = parsed.message.submissions
    assert [o.value_text for o in sub.observations] == ["", "", "<0.5", "3-5", "1:40"]
    assert [o.ref_text for o in sub.observations] == ["3.5-5.3", "137-147", "-10", "", ""]
    assert submission_hash(sub) == SUBMISSION_HASH_BEFORE
    assert message_hash(parsed.message) == MESSAGE_HASH_BEFORE


# ---------------------------------------------------------------- FHIR out
def test_fhir_output_carries_the_numerals_reported() -> None:
    r = _stored(
        _k(7.4, "7.40"),
        _k(2345678.0, code="HBV", name="HBV-DNA", ref_text="", ref_low=None, ref_high=None),
        _k(0.5, "<0.50", code="CRP", name="CRP", value_type=ValueType.SN),
    )
    rendered = render.observations(r, datetime(2026, 6, 15, tzinfo=UTC))
    for o in rendered:
        R4BObservation.model_validate(o)
    k, hbv, crp = (render.to_json(o) for o in rendered)
    assert b'"valueQuantity":{"value":7.40,' in k
    assert b'"referenceRange":[{"low":{"value":3.50,' in k
    assert b'"high":{"value":5.30,' in k
    assert b'"value":2345678,' in hbv
    assert b'"value":0.50,' in crp
    assert json.loads(crp)["valueQuantity"]["comparator"] == "<"
    # read as a decimal, as a FHIR client keeping the precision does
    assert str(json.loads(k, parse_float=Decimal)["valueQuantity"]["value"]) == "7.40"


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("10*9/L", "10^9/L"),
        ("10*12/L", "10^12/L"),
        ("umol/L", "μmol/L"),
        ("ug/L", "μg/L"),
        ("uIU/mL", "μIU/mL"),
        ("/uL", "/μL"),
        ("[IU]/L", "IU/L"),
        ("m[IU]/L", "mIU/L"),
        ("{cells}/uL", "cells/μL"),
        # already written for people, or no UCUM in it: as sent
        ("10^9/L", "10^9/L"),
        ("μmol/L", "μmol/L"),
        ("U/L", "U/L"),
        ("mg/L FEU", "mg/L FEU"),
        ("个/HP", "个/HP"),
        ("%", "%"),
        ("", ""),
    ],
)
def test_units_are_shown_as_reports_print_them(sent: str, shown: str) -> None:
    assert display_unit(sent) == shown


def test_abnormal_flags_are_shown_as_arrows_and_others_as_sent() -> None:
    assert [flag_mark(f) for f in ("H", "HH", "L", "LL", "N", "A", "")] == [
        "↑", "↑↑", "↓", "↓↓", "", "A", ""
    ]  # fmt: skip
