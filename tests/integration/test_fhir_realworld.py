"""FHIR R4 intake against what real senders send: the official R4 examples
(observation-example-bloodpressure, diagnosticreport-example-lipids / -ghp, value[x]
of every type, dataAbsentReason, age-specific reference ranges, presentedForm …) and
what HAPI clients and Chinese hospital feeds send (身份证 under its OID, UCUM units),
adapted to a transaction Bundle or a self-contained DiagnosticReport of hospital A.

Each input is either stored faithfully (read back through GET /fhir/…) or refused with
an OperationOutcome naming the element; nothing is silently lost."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.observation import Observation as R4BObservation
from sqlalchemy import func, select

from huren.adapters.db.tables import result
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.results import ValueType
from tests.fixtures.fhir.builders import (
    INSTITUTION,
    LOINC,
    NATIONAL_ID,
    UCUM,
    local_system,
    organization,
    patient_resource,
)
from tests.fixtures.results import ZHANG_SAN_ID
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.test_result_documents import b64, minimal_pdf

FHIR = "application/fhir+json"
REALWORLD = Path(__file__).parent.parent / "fixtures" / "fhir" / "realworld"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REPORT_NO_SYSTEM = f"https://huren.example/fhir/sid/report-no/{HOSP_A}"


@pytest.fixture
def client(lis_client: TestClient) -> TestClient:
    return lis_client


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REALWORLD / name).read_text(encoding="utf-8"))
    return loaded


def _entry(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def report(
    result_refs: list[str],
    *,
    report_no: str = "JY-RW-0001",
    code: str = "LIS-LFT",
    **extra: Any,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REPORT_NO_SYSTEM, "value": report_no}],
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CH"}]}
        ],
        "code": {
            "coding": [{"system": local_system(HOSP_A), "code": code, "display": "肝功能全套"}]
        },
        "subject": {"reference": "urn:uuid:patient-1"},
        "effectiveDateTime": "2026-06-13T08:10:00+08:00",
        "issued": "2026-06-13T11:42:00+08:00",
        "performer": [{"reference": "urn:uuid:org-1"}],
        "result": [{"reference": r} for r in result_refs],
    }
    res.update(extra)
    return {k: v for k, v in res.items() if v is not None}


def transaction(
    observations: dict[str, dict[str, Any]],
    top: list[str] | None = None,
    *,
    patient: dict[str, Any] | None = None,
    **report_extra: Any,
) -> dict[str, Any]:
    """Patient, Organization, the Observations (fullUrl → resource) and a DiagnosticReport
    whose ``result`` lists ``top`` (default: every Observation)."""
    entries = [
        _entry("urn:uuid:patient-1", patient or patient_resource()),
        _entry("urn:uuid:org-1", organization()),
        *(_entry(url, obs) for url, obs in observations.items()),
        _entry(
            "urn:uuid:report-1", report(list(observations) if top is None else top, **report_extra)
        ),
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def post(client: TestClient, body: dict[str, Any], path: str = "/fhir") -> Any:
    return client.post(
        path, content=json.dumps(body, ensure_ascii=False), headers={"Content-Type": FHIR}
    )


def stored_report_id(response: Any) -> int:
    assert response.status_code in (200, 201), response.text
    body = response.json()
    if body["resourceType"] == "DiagnosticReport":
        return int(body["id"])
    loc = next(
        e["response"]["location"]
        for e in body["entry"]
        if e["response"].get("location", "").startswith("DiagnosticReport/")
    )
    return int(loc.split("/")[1])


def observations_read_back(client: TestClient, rid: int) -> list[dict[str, Any]]:
    """The report's Observations as read back: each ``result`` of GET
    /fhir/DiagnosticReport/{id} read with GET /fhir/Observation/{id}, and the same found
    by an Observation search on the patient."""
    rep = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    read = [client.get(f"/fhir/{r['reference']}").json() for r in rep.get("result", [])]
    found = client.get(
        "/fhir/Observation", params={"patient.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}"}
    ).json()
    searched = [e["resource"] for e in found["entry"] if e["resource"]["id"].startswith(f"{rid}-")]
    assert [o["id"] for o in searched] == [o["id"] for o in read]
    return read


def refused(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issues: list[dict[str, Any]] = body["issue"]
    return issues


def _count(c: Container) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(result)).scalar_one())


def lab(code: str, name: str, loinc: str = "", **value: Any) -> dict[str, Any]:
    coding = [{"system": local_system(HOSP_A), "code": code, "display": name}]
    if loinc:
        coding.append({"system": LOINC, "code": loinc})
    return {"resourceType": "Observation", "status": "final", "code": {"coding": coding}, **value}


def qty(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


# ---------------------------------------------------------------- component (blood pressure)
def test_blood_pressure_components_are_stored_as_values(
    client: TestClient, world: Container
) -> None:
    """observation-example-bloodpressure: no value[x], the values are in component
    (R4 Observation.component). Was stored as one empty string: both values lost."""
    bp = fixture("observation-example-bloodpressure.json")
    rid = stored_report_id(post(client, transaction({"urn:uuid:bp": bp}, code="LIS-BP")))
    stored = world.results.get_result(rid)
    values = [(o.loinc, o.value_num, o.unit, o.flag) for o in stored.observations]
    assert values == [("8480-6", 107.0, "mm[Hg]", "N"), ("8462-4", 60.0, "mm[Hg]", "L")]
    (read,) = observations_read_back(client, rid)  # one Observation, as sent
    assert [c["valueQuantity"]["value"] for c in read["component"]] == [107.0, 60.0]


def test_a_component_without_a_value_keeps_its_data_absent_reason(
    client: TestClient, world: Container
) -> None:
    """observation-example-bloodpressure-dar: the diastolic component has no value but
    a dataAbsentReason."""
    bp = fixture("observation-example-bloodpressure.json")
    bp["component"][1].pop("valueQuantity")
    bp["component"][1].pop("interpretation")
    bp["component"][1]["dataAbsentReason"] = {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                "code": "not-performed",
                "display": "Not Performed",
            }
        ]
    }
    rid = stored_report_id(post(client, transaction({"urn:uuid:bp": bp}, code="LIS-BP")))
    diastolic = world.results.get_result(rid).observations[1]
    assert diastolic.value_num is None
    assert "Not Performed" in diastolic.value_text


# ---------------------------------------------------------------- panels (hasMember)
def test_contained_panel_members_are_stored(client: TestClient, world: Container) -> None:
    """diagnosticreport-example-ghp: the CBC panel Observation (no value) groups its
    analytes with hasMember (R4 Observation.hasMember). Was one empty value for the panel,
    the four analytes silently dropped."""
    ghp = json.loads(
        json.dumps(fixture("diagnosticreport-example-ghp.json")).replace(
            "__NATIONAL_ID__", ZHANG_SAN_ID
        )
    )
    rid = stored_report_id(post(client, ghp, "/fhir/DiagnosticReport"))
    stored = world.results.get_result(rid)
    assert [(o.code, o.value_num, o.unit, o.flag) for o in stored.observations] == [
        ("WBC", 11.6, "10*9/L", "H"),
        ("HGB", 135.0, "g/L", "N"),
        ("PLT", 210.0, "10*9/L", "N"),
        ("NEUT%", 78.2, "%", "H"),
        ("GLU", 5.1, "mmol/L", "N"),
    ]
    read = observations_read_back(client, rid)
    assert read[0]["valueQuantity"] == {
        "value": 11.6,
        "unit": "10*9/L",
        "system": UCUM,
        "code": "10*9/L",
    }
    assert read[0]["referenceRange"][0]["low"]["value"] == 3.5


def test_panel_members_sent_as_bundle_entries_are_stored(
    client: TestClient, world: Container
) -> None:
    """A HAPI client's Bundle: the panel in DiagnosticReport.result, its members as
    entries of their own referenced only from hasMember. Was refused: 'Observation 必须由
    DiagnosticReport.result 引用'."""
    members = {
        "urn:uuid:wbc": lab("WBC", "白细胞计数", "6690-2", valueQuantity=qty(6.5, "10*9/L")),
        "urn:uuid:hgb": lab("HGB", "血红蛋白", "718-7", valueQuantity=qty(140, "g/L")),
    }
    panel = lab("CBC", "血常规", "58410-2", hasMember=[{"reference": u} for u in members])
    bundle = transaction({"urn:uuid:cbc": panel, **members}, ["urn:uuid:cbc"], code="LIS-CBC")
    r = post(client, bundle)
    rid = stored_report_id(r)
    stored = world.results.get_result(rid)
    assert [(o.code, o.value_num) for o in stored.observations] == [("WBC", 6.5), ("HGB", 140.0)]
    locations = [e["response"].get("location", "") for e in r.json()["entry"]]
    assert locations[3:5] == [f"Observation/{rid}-1/_history/1", f"Observation/{rid}-2/_history/1"]


def test_a_panel_member_that_is_not_in_the_bundle_is_refused_naming_it(
    client: TestClient, world: Container
) -> None:
    panel = lab("CBC", "血常规", hasMember=[{"reference": "Observation/elsewhere"}])
    issues = refused(post(client, transaction({"urn:uuid:cbc": panel}, code="LIS-CBC")))
    assert issues[0]["expression"] == ["Bundle.entry[2].resource.hasMember[0]"]
    assert _count(world) == 0


# ---------------------------------------------------------------- value[x]
def test_value_range_and_ratio_are_kept_as_structured_numeric(
    client: TestClient, world: Container
) -> None:
    """valueRange (e.g. 尿沉渣 红细胞 3-5 /HPF) and valueRatio (a titer 1:40): R4
    Observation.value[x]. Were stored as an empty string."""
    obs = {
        "urn:uuid:rbc": lab(
            "URBC",
            "尿沉渣红细胞",
            valueRange={"low": qty(3, "/[HPF]"), "high": qty(5, "/[HPF]")},
        ),
        "urn:uuid:aso": lab(
            "TITER",
            "抗核抗体滴度",
            valueRatio={"numerator": {"value": 1}, "denominator": {"value": 40}},
        ),
    }
    rid = stored_report_id(post(client, transaction(obs, code="LIS-URINE")))
    stored = world.results.get_result(rid).observations
    assert [(o.value_type, o.value_text, o.unit) for o in stored] == [
        (ValueType.SN, "3-5", "/[HPF]"),
        (ValueType.SN, "1:40", ""),
    ]
    read = observations_read_back(client, rid)
    assert read[0]["valueRange"]["low"]["value"] == 3
    assert read[0]["valueRange"]["high"]["value"] == 5
    assert read[1]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 40}}
    for o in read:
        R4BObservation.model_validate(o)


def test_value_time_date_time_and_period_are_kept_as_text(
    client: TestClient, world: Container
) -> None:
    obs = {
        "urn:uuid:t": lab("CLOT", "凝血时间点", valueTime="08:15:00"),
        "urn:uuid:d": lab("LMP", "末次月经", valueDateTime="2026-05-20"),
        "urn:uuid:p": lab(
            "COLL",
            "留尿时段",
            valuePeriod={"start": "2026-06-12T08:00:00+08:00", "end": "2026-06-13T08:00:00+08:00"},
        ),
    }
    rid = stored_report_id(post(client, transaction(obs, code="LIS-MISC")))
    texts = [o.value_text for o in world.results.get_result(rid).observations]
    assert texts == [
        "08:15:00",
        "2026-05-20",
        "2026-06-12T08:00:00+08:00/2026-06-13T08:00:00+08:00",
    ]


def test_sampled_data_is_refused_naming_the_element(client: TestClient, world: Container) -> None:
    """valueSampledData (a waveform) has no place among lab values: refused, not stored
    as an empty string."""
    ecg = lab(
        "ECG",
        "心电波形",
        valueSampledData={
            "origin": {"value": 2048},
            "period": 10,
            "dimensions": 1,
            "data": "2041 2043",
        },
    )
    issues = refused(post(client, transaction({"urn:uuid:ecg": ecg}, code="LIS-ECG")))
    assert issues[0]["expression"] == ["Bundle.entry[2].resource.valueSampledData"]
    assert _count(world) == 0


def test_data_absent_reason_is_kept_instead_of_an_empty_value(
    client: TestClient, world: Container
) -> None:
    """An Observation with no value and dataAbsentReason (R4 obs-6), as a LIS sends a
    haemolysed specimen. Was stored as an empty string, the reason lost."""
    obs = lab(
        "K",
        "钾",
        "2823-3",
        dataAbsentReason={
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                    "code": "error",
                    "display": "Error",
                }
            ],
            "text": "标本溶血",
        },
    )
    rid = stored_report_id(post(client, transaction({"urn:uuid:k": obs})))
    k = world.results.get_result(rid).observations[0]
    assert (k.value_num, k.value_text) == (None, "未出结果：标本溶血")


# ---------------------------------------------------------------- interpretation, ranges
def test_withdrawn_observation_is_not_stored_as_a_value_of_the_report(
    client: TestClient, world: Container
) -> None:
    """Observation.status entered-in-error inside a final report: "withdrawn following
    previous final release". Was stored as a current value, as HL7 OBX-11 W had been."""
    alt = lab("ALT", "丙氨酸氨基转移酶", "1742-6", valueQuantity=qty(56, "U/L"))
    ast = {**lab("AST", "天门冬氨酸氨基转移酶", "1920-8", valueQuantity=qty(999, "U/L"))}
    ast["status"] = "entered-in-error"
    answer = post(client, transaction({"urn:uuid:alt": alt, "urn:uuid:ast": ast}))
    rid = stored_report_id(answer)
    assert [o.code for o in world.results.get_result(rid).observations] == ["ALT"]
    withdrawn = answer.json()["entry"][3]["response"]
    assert "entered-in-error" in withdrawn["outcome"]["issue"][0]["diagnostics"]


def test_cancelled_observation_without_a_value_says_it_could_not_be_obtained(
    client: TestClient, world: Container
) -> None:
    """Observation.status cancelled with no value (as HL7 OBX-11 X): was an empty string."""
    k = {**lab("K", "钾", "2823-3")}
    k["status"] = "cancelled"
    rid = stored_report_id(post(client, transaction({"urn:uuid:k": k})))
    (value,) = world.results.get_result(rid).observations
    assert (value.value_num, value.value_text) == (None, "无法获得结果")


def test_interpretation_is_read_from_the_v3_coding(client: TestClient, world: Container) -> None:
    """A LIS sends its own abnormal sign first and the v3 ObservationInterpretation code
    after it: the flag is the v3 code, not the local '↑'."""
    obs = lab(
        "ALT",
        "丙氨酸氨基转移酶",
        "1742-6",
        valueQuantity=qty(56, "U/L"),
        interpretation=[
            {
                "coding": [
                    {"system": "https://h130100001.example.cn/lis/flag", "code": "↑"},
                    {"system": V3_INTERPRETATION, "code": "H", "display": "High"},
                ]
            }
        ],
    )
    rid = stored_report_id(post(client, transaction({"urn:uuid:alt": obs})))
    assert world.results.get_result(rid).observations[0].flag == "H"


def test_age_specific_reference_range_is_the_patients(client: TestClient, world: Container) -> None:
    """Two referenceRanges by age (R4 Observation.referenceRange.age): the first, a
    child's, was kept for an adult born 1985."""
    obs = lab(
        "ALP",
        "碱性磷酸酶",
        "6768-6",
        valueQuantity=qty(88, "U/L"),
        referenceRange=[
            {
                "low": qty(42, "U/L"),
                "high": qty(390, "U/L"),
                "age": {
                    "low": {"value": 0, "unit": "a", "system": UCUM, "code": "a"},
                    "high": {"value": 17, "unit": "a", "system": UCUM, "code": "a"},
                },
            },
            {
                "low": qty(45, "U/L"),
                "high": qty(125, "U/L"),
                "age": {"low": {"value": 18, "unit": "a", "system": UCUM, "code": "a"}},
            },
        ],
    )
    rid = stored_report_id(post(client, transaction({"urn:uuid:alp": obs})))
    alp = world.results.get_result(rid).observations[0]
    assert (alp.ref_low, alp.ref_high) == (45, 125)


def test_reference_text_too_long_is_refused_naming_the_fhir_element(
    client: TestClient, world: Container
) -> None:
    """A text-only referenceRange longer than the platform keeps: the refusal named
    'submissions[0].observations[0].ref_text', which a sender cannot find."""
    obs = lab(
        "HCG",
        "人绒毛膜促性腺激素",
        valueQuantity=qty(3, "[IU]/L"),
        referenceRange=[{"text": "未孕<5；孕3周 5.4-72；孕4周 10.2-708；孕5周 217-8245；" * 3}],
    )
    issues = refused(post(client, transaction({"urn:uuid:hcg": obs})))
    assert issues[0]["expression"] == ["Bundle.entry[2].resource.referenceRange[0].text"]
    assert "100" in issues[0]["diagnostics"]
    assert _count(world) == 0


def test_sex_specific_reference_range_is_the_patients(client: TestClient, world: Container) -> None:
    """referenceRange.appliesTo by sex (SNOMED CT 248152002 female, 248153007 male): the
    first (female) range was kept for 张三, a man."""

    def by_sex(code: str, display: str, low: float, high: float) -> dict[str, Any]:
        return {
            "low": qty(low, "g/L"),
            "high": qty(high, "g/L"),
            "appliesTo": [
                {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": display}]}
            ],
        }

    obs = lab(
        "HGB",
        "血红蛋白",
        "718-7",
        valueQuantity=qty(140, "g/L"),
        referenceRange=[
            by_sex("248152002", "Female", 115, 150),
            by_sex("248153007", "Male", 130, 175),
        ],
    )
    rid = stored_report_id(post(client, transaction({"urn:uuid:hgb": obs}, code="LIS-CBC")))
    hgb = world.results.get_result(rid).observations[0]
    assert (hgb.ref_low, hgb.ref_high) == (130, 175)


def test_age_ranges_for_a_patient_without_birth_date_are_refused(
    client: TestClient, world: Container
) -> None:
    """When the patient's age is unknown the right range cannot be chosen: refused
    naming referenceRange rather than storing a child's range for anyone."""
    patient = patient_resource()
    del patient["birthDate"]
    obs = lab(
        "ALP",
        "碱性磷酸酶",
        valueQuantity=qty(88, "U/L"),
        referenceRange=[
            {
                "low": qty(42, "U/L"),
                "high": qty(390, "U/L"),
                "age": {"high": {"value": 17, "code": "a"}},
            },
            {
                "low": qty(45, "U/L"),
                "high": qty(125, "U/L"),
                "age": {"low": {"value": 18, "code": "a"}},
            },
        ],
    )
    issues = refused(post(client, transaction({"urn:uuid:alp": obs}, patient=patient)))
    assert issues[0]["expression"] == ["Bundle.entry[2].resource.referenceRange"]
    assert _count(world) == 0


# ---------------------------------------------------------------- times
def test_report_without_effective_takes_its_observations_effective_time(
    client: TestClient, world: Container
) -> None:
    """A HAPI client puts effectiveDateTime on the Observations only (R4 DiagnosticReport
    .effective[x] is 0..1). Was refused for a missing time the Bundle holds."""
    obs = {
        "urn:uuid:alt": lab(
            "ALT",
            "丙氨酸氨基转移酶",
            valueQuantity=qty(56, "U/L"),
            effectiveDateTime="2026-06-13T07:55:00+08:00",
        ),
        "urn:uuid:ast": lab(
            "AST",
            "天门冬氨酸氨基转移酶",
            valueQuantity=qty(32, "U/L"),
            effectivePeriod={"start": "2026-06-13T07:50:00+08:00"},
        ),
    }
    rid = stored_report_id(post(client, transaction(obs, effectiveDateTime=None)))
    performed = world.results.get_result(rid).performed_at
    assert performed.isoformat() == "2026-06-12T23:50:00+00:00"
    rep = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    assert rep["effectiveDateTime"] == "2026-06-12T23:50:00+00:00"


def test_effective_period_with_only_an_end_is_its_time(
    client: TestClient, world: Container
) -> None:
    """effectivePeriod of a 24-hour urine collection sent with its end only: was refused
    for a missing start."""
    obs = {"urn:uuid:u": lab("UPRO", "24小时尿蛋白", valueQuantity=qty(0.12, "g/(24.h)"))}
    bundle = transaction(
        obs, effectiveDateTime=None, effectivePeriod={"end": "2026-06-13T08:00:00+08:00"}
    )
    rid = stored_report_id(post(client, bundle))
    assert world.results.get_result(rid).performed_at.isoformat() == "2026-06-13T00:00:00+00:00"


@pytest.mark.parametrize("when", ["2026-06", "2026"])
def test_a_time_known_only_to_the_month_is_refused_saying_so(
    client: TestClient, world: Container, when: str
) -> None:
    """YYYY-MM is a valid FHIR dateTime: the refusal said it was not one."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    issues = refused(post(client, transaction(obs, effectiveDateTime=when)))
    assert issues[0]["expression"] == ["Bundle.entry[3].resource.effectiveDateTime"]
    assert "只精确到年或月" in issues[0]["diagnostics"]
    assert _count(world) == 0


# ---------------------------------------------------------------- report forms
def test_conclusion_code_is_kept_when_no_conclusion_text_is_sent(
    client: TestClient, world: Container
) -> None:
    """R4 DiagnosticReport.conclusionCode (SNOMED / ICD-10) without conclusion text: the
    conclusion was lost."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    bundle = transaction(
        obs,
        conclusionCode=[
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/sid/icd-10",
                        "code": "K76.0",
                        "display": "脂肪肝",
                    }
                ]
            }
        ],
    )
    rid = stored_report_id(post(client, bundle))
    assert world.results.get_result(rid).conclusion == "脂肪肝"
    assert client.get(f"/fhir/DiagnosticReport/{rid}").json()["conclusion"] == "脂肪肝"


def test_a_pdf_presented_form_is_kept_and_served_as_sent(
    client: TestClient, world: Container, login: Callable[..., dict[str, str]]
) -> None:
    """The signed PDF in presentedForm is the laboratory's original report: kept with the
    result version (as an HL7 OBX ED is) and served byte for byte; a form given only by
    url is named in the response (nothing is fetched)."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    pdf = minimal_pdf("FHIR presentedForm")
    bundle = transaction(
        obs,
        presentedForm=[
            {"contentType": "application/pdf", "data": b64(pdf), "title": "检验报告单"},
            {"contentType": "application/pdf", "url": "https://lis.example/r/1.pdf"},
        ],
    )
    response = post(client, bundle)
    rid = stored_report_id(response)
    report_response = response.json()["entry"][-1]["response"]
    notes = [i["diagnostics"] for i in report_response["outcome"]["issue"]]
    assert [n for n in notes if "presentedForm" in n] == [
        next(n for n in notes if "presentedForm[1]" in n and "url" in n)
    ]
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    r = client.get(
        f"/api/v1/results/{rid}/documents/1", params={"purpose": "treatment"}, headers=doctor
    )
    assert r.status_code == 200, r.text
    assert r.content == pdf
    assert r.headers["content-type"] == "application/pdf"
    (doc,) = world.results.documents(rid, 1)
    assert doc.title == "检验报告单"
    # The same Bundle again: unchanged, no second document.
    assert stored_report_id(post(client, bundle)) == rid
    assert len(world.results.documents(rid, 1)) == 1


def test_the_kept_document_reads_back_as_a_presented_form_and_binary(
    client: TestClient, world: Container
) -> None:
    """R4 DiagnosticReport.presentedForm points at the document's Binary (binary.html):
    read as sent, or as a Binary resource when application/fhir+json is asked for."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    pdf = minimal_pdf("FHIR read-back")
    bundle = transaction(
        obs, presentedForm=[{"contentType": "application/pdf", "data": b64(pdf), "title": "报告单"}]
    )
    rid = stored_report_id(post(client, bundle))
    expected = {
        "contentType": "application/pdf",
        "url": f"Binary/{rid}-1-1",
        "size": len(pdf),
        "title": "报告单",
    }
    read = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    assert read["presentedForm"][-1] == expected
    (found,) = client.get(f"/fhir/DiagnosticReport?_id={rid}").json()["entry"]
    assert found["resource"]["presentedForm"][-1] == expected
    history = client.get(f"/fhir/DiagnosticReport/{rid}/_history").json()["entry"]
    assert history[0]["resource"]["presentedForm"][-1] == expected
    raw = client.get(f"/fhir/{expected['url']}", headers={"Accept": "application/pdf"})
    assert raw.status_code == 200, raw.text
    assert raw.content == pdf
    assert raw.headers["x-content-type-options"] == "nosniff"
    binary = client.get(f"/fhir/{expected['url']}", headers={"Accept": FHIR}).json()
    assert binary["resourceType"] == "Binary"
    assert base64.b64decode(binary["data"]) == pdf
    for missing in (f"{rid}-1-2", f"{rid}-2-1", "x-1-1", f"{rid}-1"):
        r = client.get(f"/fhir/Binary/{missing}")
        assert r.status_code == 404, (missing, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    capability = client.get("/fhir/metadata").json()
    kinds = {r["type"] for r in capability["rest"][0]["resource"]}
    assert "Binary" in kinds


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("not base64!", "base64"),
        (b64(b"<html>not a pdf</html>"), "不是 PDF"),
    ],
)
def test_a_presented_form_that_is_no_pdf_is_refused_naming_it(
    client: TestClient, world: Container, data: str, why: str
) -> None:
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    bundle = transaction(obs, presentedForm=[{"contentType": "application/pdf", "data": data}])
    r = post(client, bundle)
    assert r.status_code in (400, 422), r.text
    issues = r.json()["issue"]
    assert any(
        i["expression"][0].endswith("].resource.presentedForm[0].data") and why in i["diagnostics"]
        for i in issues
    ), issues
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(result)).scalar_one() == 0


def test_a_gb18030_text_presented_form_is_decoded_by_its_charset(
    client: TestClient, world: Container
) -> None:
    """Attachment.contentType 'text/plain; charset=GB18030', as Chinese RIS send it: the
    findings were dropped without a word (decoded as UTF-8, failed, kept empty)."""
    text = "肝脏形态大小正常，包膜光整，实质回声均匀。"
    report_extra: dict[str, Any] = {
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "US"}]}
        ],
        "presentedForm": [
            {
                "contentType": "text/plain; charset=GB18030",
                "data": base64.b64encode(text.encode("gb18030")).decode(),
            }
        ],
        "conclusion": "肝脏未见明显异常",
    }
    rid = stored_report_id(post(client, transaction({}, code="US-LIVER", **report_extra)))
    assert world.results.get_result(rid).findings == text


def test_a_presented_form_that_is_not_base64_is_refused_naming_it(
    client: TestClient, world: Container
) -> None:
    bundle = transaction(
        {},
        code="US-LIVER",
        presentedForm=[{"contentType": "text/plain", "data": "不是base64!"}],
        conclusion="肝脏未见明显异常",
    )
    issues = refused(post(client, bundle))
    assert issues[0]["expression"] == ["Bundle.entry[2].resource.presentedForm[0].data"]
    assert _count(world) == 0


def test_a_presented_form_not_in_its_charset_is_refused_saying_so(
    client: TestClient, world: Container
) -> None:
    """GB 18030 bytes declared (by default) UTF-8: the refusal says which charset failed,
    not that the base64 is invalid (UnicodeDecodeError is a ValueError too)."""
    data = base64.b64encode("肝脏形态大小正常".encode("gb18030")).decode()
    bundle = transaction(
        {},
        code="US-LIVER",
        presentedForm=[{"contentType": "text/plain", "data": data}],
        conclusion="肝脏未见明显异常",
    )
    issues = refused(post(client, bundle))
    assert issues[0]["expression"] == ["Bundle.entry[2].resource.presentedForm[0].data"]
    assert "utf-8" in issues[0]["diagnostics"]
    assert _count(world) == 0


# ---------------------------------------------------------------- identifiers, references
def test_national_id_under_its_oid_matches_the_patient(
    client: TestClient, world: Container
) -> None:
    """Chinese hospital feeds name the 身份证 by its OID (WS/T 500: 2.16.156.10011.1.3).
    Was ignored: with an MRN the patient was matched by MRN only (no cross-institution
    match); alone, the Bundle was refused for want of an identifier."""
    patient = patient_resource()
    patient["identifier"] = [{"system": "urn:oid:2.16.156.10011.1.3", "value": ZHANG_SAN_ID}]
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    rid = stored_report_id(post(client, transaction(obs, patient=patient)))
    found = client.get(
        "/fhir/DiagnosticReport", params={"patient.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}"}
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [str(rid)]


def test_a_conditional_patient_reference_is_resolved(client: TestClient, world: Container) -> None:
    """HAPI clients reference the Patient by a search (R4 §3.1.0.11.2 conditional
    references): was refused as a Patient 'not in the Bundle'."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    bundle = transaction(obs)
    bundle["entry"][-1]["resource"]["subject"] = {
        "reference": f"Patient?identifier={NATIONAL_ID}|{ZHANG_SAN_ID}"
    }
    r = post(client, bundle)
    rid = stored_report_id(r)
    assert r.json()["entry"][0]["response"]["location"].startswith("Patient/")
    found = client.get(
        "/fhir/DiagnosticReport", params={"patient.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}"}
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [str(rid)]


def test_conditional_performer_references_are_resolved(
    client: TestClient, world: Container
) -> None:
    """Interface engines name the performing laboratory and the signing practitioner by a
    search too (R4 §3.1.0.11.2): ``Organization?identifier=…`` was refused as '引用无法解析'.
    Resolved to the Organization of the Bundle, or taken as the institution's code."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    in_bundle = transaction(obs, report_no="JY-COND-1")
    in_bundle["entry"][-1]["resource"]["performer"] = [
        {"reference": f"Organization?identifier={INSTITUTION}|{HOSP_A}"},
        {
            "reference": "Practitioner?identifier=urn:oid:2.16.156.10011.1.4|110101",
            "display": "王检验",
        },
    ]
    first = world.results.get_result(stored_report_id(post(client, in_bundle)))
    assert (first.institution, first.performer) == (HOSP_A, "王检验")

    logical = transaction(obs, report_no="JY-COND-2")
    del logical["entry"][1]  # no Organization in the Bundle: the identifier is the code
    logical["entry"][-1]["resource"]["performer"] = [
        {"reference": f"Organization?identifier={INSTITUTION}|{HOSP_A}"}
    ]
    assert world.results.get_result(stored_report_id(post(client, logical))).institution == HOSP_A


def test_a_conditional_performer_by_another_search_is_refused_by_name(
    client: TestClient, world: Container
) -> None:
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    bundle = transaction(obs)
    bundle["entry"][-1]["resource"]["performer"] = [{"reference": "Organization?name=二院"}]
    issues = refused(post(client, bundle))
    assert issues[0]["expression"] == ["Bundle.entry[3].resource.performer[0].reference"]
    assert "Organization?identifier=system|value" in issues[0]["diagnostics"]
    assert _count(world) == 0


def test_a_practitioner_role_performer_in_the_bundle_is_not_unresolvable(
    client: TestClient, world: Container
) -> None:
    """DiagnosticReport.performer may be a PractitionerRole (R4): one sent in the Bundle
    was refused as '引用无法解析'."""
    obs = {"urn:uuid:a": lab("ALT", "丙氨酸氨基转移酶", valueQuantity=qty(56, "U/L"))}
    bundle = transaction(obs)
    role = {"resourceType": "PractitionerRole", "practitioner": {"display": "王检验"}}
    bundle["entry"].insert(2, _entry("urn:uuid:role-1", role))
    bundle["entry"][-1]["resource"]["performer"].append(
        {"reference": "urn:uuid:role-1", "display": "王检验"}
    )
    rid = stored_report_id(post(client, bundle))
    assert world.results.get_result(rid).performer == "王检验"
