"""FHIR R4 ⇄ domain mapping (no database), and the lean parse path checked against
fhir.resources' R4B models (conformance)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as R4BCapability
from fhir.resources.R4B.diagnosticreport import DiagnosticReport as R4BReport
from fhir.resources.R4B.observation import Observation as R4BObservation
from fhir.resources.R4B.operationoutcome import OperationOutcome as R4BOutcome

from huren.adapters.fhir import render
from huren.adapters.fhir.ingest import parse_report, parse_transaction
from huren.domain.errors import Problem, ValidationFailed
from huren.domain.identity import IdentifierKind
from huren.domain.masterdata import Category
from huren.domain.results import ResultStatus, StoredResult, ValueType
from tests.fixtures.fhir.builders import contained_report, dumps, imaging_bundle, lab_bundle
from tests.fixtures.results import ZHANG_SAN_ID, liver_panel_observations
from tests.fixtures.world import HOSP_A


def _problems(raw: bytes) -> list[Problem]:
    with pytest.raises(ValidationFailed) as err:
        parse_transaction(raw)
    return err.value.problems


# ---------------------------------------------------------------- FHIR → domain
def test_lab_bundle_becomes_one_submission_per_report() -> None:
    parsed = parse_transaction(dumps(lab_bundle(n_reports=2, n_obs=3)))
    subs = parsed.message.submissions
    assert [s.report_no for s in subs] == ["JY202606130001", "JY202606130001-2"]
    assert parsed.message.institution == HOSP_A
    assert subs[0].local_code == "LIS-LFT"
    assert subs[0].patient.identifiers[0].kind is IdentifierKind.NATIONAL_ID
    assert subs[0].patient.identifiers[0].value == ZHANG_SAN_ID


def test_observation_keeps_value_unit_range_flag_and_loinc() -> None:
    obs = parse_transaction(dumps(lab_bundle(n_obs=1))).message.submissions[0].observations[0]
    assert (obs.code, obs.loinc, obs.value_type) == ("ALT", "1742-6", ValueType.NM)
    assert (obs.value_num, obs.unit, obs.ref_low, obs.ref_high, obs.flag) == (
        56.0,
        "U/L",
        9,
        50,
        "H",
    )


def test_effective_and_issued_times_keep_their_offset() -> None:
    sub = parse_transaction(dumps(lab_bundle())).message.submissions[0]
    assert sub.performed_at.astimezone(UTC) == datetime(2026, 6, 13, 0, 10, tzinfo=UTC)
    assert sub.issued_at.astimezone(UTC) == datetime(2026, 6, 13, 3, 42, tzinfo=UTC)


def test_imaging_findings_conclusion_and_study_links_are_apart() -> None:
    sub = parse_transaction(dumps(imaging_bundle())).message.submissions[0]
    assert sub.findings.startswith("双肺纹理清晰")
    assert sub.conclusion.startswith("右肺上叶微小磨玻璃结节")
    assert sub.observations == ()
    assert (sub.accession_number, sub.study_uid) == ("ACC20260613007", "1.2.156.112605.20260613.7")
    assert sub.category is Category.IMAGING


def test_comparator_quantity_becomes_structured_numeric() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][2]["resource"]["valueQuantity"]["comparator"] = "<"
    obs = parse_transaction(dumps(bundle)).message.submissions[0].observations[0]
    # json.dumps writes the fixture's 56.0 so: the numerals as sent (R4 decimal)
    assert (obs.value_type, obs.value_text) == (ValueType.SN, "<56.0")


def test_coded_value_is_kept_as_text() -> None:
    bundle = lab_bundle(n_obs=1)
    res = bundle["entry"][2]["resource"]
    del res["valueQuantity"]
    res["valueCodeableConcept"] = {"coding": [{"code": "NEG", "display": "阴性"}]}
    obs = parse_transaction(dumps(bundle)).message.submissions[0].observations[0]
    assert (obs.value_type, obs.value_text) == (ValueType.CE, "阴性")


def test_contained_report_is_parsed_like_a_bundle() -> None:
    sub = parse_report(dumps(contained_report("JY-C-9", n_obs=2))).message.submissions[0]
    assert (sub.report_no, len(sub.observations), sub.institution) == ("JY-C-9", 2, HOSP_A)


def test_contained_report_decoded_in_one_pass_is_the_report_decoded_resource_by_resource() -> None:
    # A contained resource of a type not read sends the report the generic way (each
    # contained resource decoded on its own), which ignores it: the same submissions.
    report = contained_report("JY-C-9", n_obs=3)
    with_other = contained_report("JY-C-9", n_obs=3)
    with_other["contained"].append({"resourceType": "Encounter", "id": "e"})
    one_pass, generic = parse_report(dumps(report)), parse_report(dumps(with_other))
    assert one_pass.message.submissions == generic.message.submissions
    assert one_pass.entries == generic.entries


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        (
            lambda r: r["contained"][2].update(status="bogus"),
            ["DiagnosticReport.contained[2].status", "DiagnosticReport.result[0]"],
        ),
        (lambda r: r.pop("resourceType"), ["DiagnosticReport.resourceType"]),
        (lambda r: r.update(resourceType="Observation"), ["DiagnosticReport.resourceType"]),
    ],
)
def test_contained_report_problems_name_the_element(change: Any, fields: list[str]) -> None:
    report = contained_report("JY-C-9", n_obs=2)
    change(report)
    with pytest.raises(ValidationFailed) as err:
        parse_report(dumps(report))
    assert [p.field for p in err.value.problems] == fields


def test_mrn_takes_the_sending_institution_as_assigner() -> None:
    bundle = lab_bundle()
    bundle["entry"][0]["resource"]["identifier"].append(
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ]
            },
            "value": "0012345",
        }
    )
    idents = parse_transaction(dumps(bundle)).message.submissions[0].patient.identifiers
    assert (idents[1].kind, idents[1].assigner) == (IdentifierKind.MRN, HOSP_A)


# ---------------------------------------------------------------- refusals name the element
def test_invalid_national_id_names_the_identifier_value() -> None:
    bad = ZHANG_SAN_ID[:-1] + ("0" if ZHANG_SAN_ID[-1] != "0" else "1")
    problems = _problems(dumps(lab_bundle(national_id=bad)))
    assert [p.field for p in problems] == ["Bundle.entry[0].resource.identifier[0].value"]


def test_naive_effective_time_is_refused() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][-1]["resource"]["effectiveDateTime"] = "2026-06-13T08:10:00"
    assert [p.field for p in _problems(dumps(bundle))] == [
        "Bundle.entry[3].resource.effectiveDateTime"
    ]


def test_missing_issued_is_refused() -> None:
    bundle = lab_bundle(n_obs=1)
    del bundle["entry"][-1]["resource"]["issued"]
    assert [p.field for p in _problems(dumps(bundle))] == ["Bundle.entry[3].resource.issued"]


def test_unknown_status_code_is_refused_naming_the_element() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][-1]["resource"]["status"] = "done"
    assert [p.field for p in _problems(dumps(bundle))] == ["Bundle.entry[3].resource.status"]


def test_unreferenced_observation_is_refused() -> None:
    bundle = lab_bundle(n_obs=2)
    bundle["entry"][-1]["resource"]["result"].pop()
    assert [p.field for p in _problems(dumps(bundle))] == ["Bundle.entry[3]"]


def test_batch_bundle_is_refused() -> None:
    bundle = lab_bundle()
    bundle["type"] = "batch"
    assert [p.field for p in _problems(dumps(bundle))] == ["Bundle.type"]


def test_dangling_result_reference_is_refused() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][-1]["resource"]["result"].append({"reference": "urn:uuid:nowhere"})
    assert [p.field for p in _problems(dumps(bundle))] == ["Bundle.entry[3].resource.result[1]"]


@pytest.mark.parametrize("value", [None, 7, ["Patient"]])
def test_a_resource_type_that_is_not_a_name_is_refused_naming_it(value: Any) -> None:
    # Found by a mutation fuzzer: a null resourceType escaped as an uncaught msgspec error.
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][0]["resource"]["resourceType"] = value
    assert [p.field for p in _problems(dumps(bundle))] == ["Bundle.entry[0].resource.resourceType"]


def test_a_nul_character_is_refused_naming_each_string_that_holds_one() -> None:
    # PostgreSQL text cannot store U+0000: found by the fuzzer as a 500 on PostgreSQL.
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][0]["resource"]["name"][0]["text"] = "张\u0000三"
    bundle["entry"][-1]["resource"]["code"]["coding"][0]["display"] = "肝功\u0000能"
    assert [p.field for p in _problems(dumps(bundle))] == [
        "Bundle.entry[0].resource.name[0].text",
        "Bundle.entry[3].resource.code.coding[0].display",
    ]
    report = contained_report("R-NUL", n_obs=1)
    report["conclusion"] = "\x00"
    with pytest.raises(ValidationFailed) as err:
        parse_report(dumps(report))
    assert [p.field for p in err.value.problems] == ["DiagnosticReport.conclusion"]


def test_bytes_that_are_not_utf8_are_refused_naming_the_document() -> None:
    # msgspec reports them as a UnicodeDecodeError, which escaped the parser (a 500).
    bad = dumps(lab_bundle(n_obs=1)).replace("肝功能".encode(), b"\xed\xa0\x80")
    problems = _problems(bad)
    assert [p.field for p in problems] == ["Bundle"]
    assert "UTF-8" in problems[0].message
    report = dumps(contained_report("R-UTF8", n_obs=1)).replace("张三".encode(), b"\xff\xfe")
    with pytest.raises(ValidationFailed) as err:
        parse_report(report)
    assert [p.field for p in err.value.problems] == ["DiagnosticReport"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
        + b"[" * 50_000
        + b"]" * 50_000
        + b"}]}",
        b'{"resourceType":"DiagnosticReport","contained":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    ],
    ids=["bundle", "report"],
)
def test_json_nested_beyond_the_decoder_is_refused_not_a_recursion_error(raw: bytes) -> None:
    # Found by fuzzing huren ingest: msgspec's RecursionError ended the load (and 500).
    with pytest.raises(ValidationFailed) as err:
        (parse_transaction if b"Bundle" in raw else parse_report)(raw)
    assert "嵌套层次过深" in err.value.problems[0].message


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][-1]["resource"]["code"]["coding"][0]["display"] = "C:\\u0000"
    parsed = parse_transaction(dumps(bundle))
    assert parsed.message.submissions[0].local_name == "C:\\u0000"


def test_unsupported_resource_type_is_informational_not_an_error() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"].append(
        {
            "resource": {"resourceType": "Encounter", "status": "finished"},
            "request": {"method": "POST", "url": "Encounter"},
        }
    )
    parsed = parse_transaction(dumps(bundle))
    assert parsed.entries[-1].kind == "info"
    assert "Encounter" in parsed.informational[-1]


# ---------------------------------------------------------------- conformance with R4B
@pytest.mark.parametrize("bundle", [lab_bundle(n_obs=3), imaging_bundle()], ids=["lab", "imaging"])
def test_fixture_bundles_are_valid_r4b(bundle: dict[str, Any]) -> None:
    R4BBundle.model_validate_json(json.dumps(bundle))


def test_lean_parse_and_r4b_agree_on_a_wrong_value_type() -> None:
    bundle = lab_bundle(n_obs=1)
    bundle["entry"][2]["resource"]["valueQuantity"]["value"] = "高"
    with pytest.raises(ValueError, match="value"):
        R4BObservation.model_validate_json(json.dumps(bundle["entry"][2]["resource"]))
    assert _problems(dumps(bundle))[0].field == "Bundle.entry[2].resource.valueQuantity.value"


def test_lean_parse_and_r4b_agree_on_a_missing_observation_status() -> None:
    bundle = lab_bundle(n_obs=1)
    del bundle["entry"][2]["resource"]["status"]
    with pytest.raises(ValueError, match="status"):
        R4BObservation.model_validate_json(json.dumps(bundle["entry"][2]["resource"]))
    assert "status" in _problems(dumps(bundle))[0].message


def _stored() -> StoredResult:
    now = datetime(2026, 6, 13, 3, 42, tzinfo=UTC)
    return StoredResult(
        id=7,
        patient_id=3,
        institution=HOSP_A,
        report_no="JY-1",
        local_code="LIS-LFT",
        local_name="肝功能全套",
        item_code="JY-SH-001",
        category=Category.LAB,
        status=ResultStatus.FINAL,
        performed_at=now,
        issued_at=now,
        version=2,
        mark_scope="HE",
        mark_symbol="☆",
        signer="李审核",
        findings="所见",
        conclusion="结论",
        observations=liver_panel_observations(),
    )


def test_rendered_report_and_observations_are_valid_r4b() -> None:
    r = _stored()
    updated = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)
    report = R4BReport.model_validate(render.diagnostic_report(r, updated))
    assert report.meta is not None
    assert report.meta.versionId == "2"
    for o in render.observations(r, updated):
        R4BObservation.model_validate(o)


def test_rendered_report_round_trips_through_the_lean_parser() -> None:
    r = _stored()
    res = render.diagnostic_report(r, datetime(2026, 6, 15, tzinfo=UTC))
    res["contained"] = [
        {
            "resourceType": "Patient",
            "id": "p",
            "identifier": [
                {"system": "https://huren.example/fhir/sid/national-id", "value": ZHANG_SAN_ID}
            ],
        },
        *(
            {**o, "id": f"o{k}"}
            for k, o in enumerate(render.observations(r, datetime(2026, 6, 15, tzinfo=UTC)))
        ),
    ]
    res["subject"] = {"reference": "#p"}
    res["result"] = [{"reference": f"#o{k}"} for k in range(len(r.observations))]
    sub = parse_report(render.to_json(res)).message.submissions[0]
    assert (sub.report_no, sub.local_code, sub.conclusion, sub.findings) == (
        "JY-1",
        "LIS-LFT",
        "结论",
        "所见",
    )
    assert [o.value_num for o in sub.observations] == [o.value_num for o in r.observations]


def test_capability_statement_and_outcome_are_valid_r4b() -> None:
    R4BCapability.model_validate(
        render.capability_statement("http://x/fhir", datetime(2026, 6, 15, tzinfo=UTC), "0.1.0")
    )
    outcome = render.operation_outcome(
        [Problem("Bundle.entry[0].resource.identifier[0].value", "居民身份证号码无效")]
    )
    assert R4BOutcome.model_validate(outcome).issue[0].expression == [
        "Bundle.entry[0].resource.identifier[0].value"
    ]
