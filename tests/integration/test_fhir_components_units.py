"""FHIR R4 read-back as it was sent, and reference ranges in another unit than the value.

An Observation sent with ``component`` (R4 observation.html, Observation.component: the
R4 example observation-example-bloodpressure, systolic 8480-6 and diastolic 8462-4) is
read back — search, ``_include``, read, history — as one Observation with its
``component`` array, not as one Observation per value. A reference range whose limits
are in another UCUM unit than the value (R4 Observation.referenceRange.low/high are
Quantities of their own) is kept as text naming its unit, not as numbers beside the
value's unit, and the transaction-response says so."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhir.resources.R4B.observation import Observation as R4BObservation

from huren.adapters.fhir.ingest import parse_transaction
from huren.bootstrap import Container
from huren.services.intake import submission_hash
from tests.fixtures.fhir.builders import LOINC, UCUM, lab_bundle
from tests.integration.test_fhir_realworld import (
    fixture,
    lab,
    post,
    qty,
    stored_report_id,
    transaction,
)

V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


@pytest.fixture
def client(lis_client: TestClient) -> TestClient:
    return lis_client


def _patient_id(response: Any) -> str:
    return str(
        next(
            e["response"]["location"]
            for e in response.json()["entry"]
            if e["response"].get("location", "").startswith("Patient/")
        )
    )


def _search(client: TestClient, path: str, **params: str) -> list[dict[str, Any]]:
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    R4BBundle.model_validate(r.json())  # a valid R4 searchset
    return [e["resource"] for e in r.json().get("entry", [])]


def _of(resources: list[dict[str, Any]], rid: int) -> list[dict[str, Any]]:
    return [
        o for o in resources if o["resourceType"] == "Observation" and o["id"].startswith(f"{rid}-")
    ]


def _codes(cc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in cc["coding"]}


def _bp(systolic: float = 107, diastolic: float = 60) -> dict[str, Any]:
    bp = fixture("observation-example-bloodpressure.json")
    bp["component"][0]["valueQuantity"]["value"] = systolic
    bp["component"][1]["valueQuantity"]["value"] = diastolic
    return bp


def _assert_blood_pressure(o: dict[str, Any], systolic: float, diastolic: float) -> None:
    R4BObservation.model_validate(o)
    assert o["code"]["coding"][0]["code"] == "85354-9"
    assert "valueQuantity" not in o
    sys_, dia = o["component"]
    assert (LOINC, "8480-6") in _codes(sys_["code"])
    assert (LOINC, "8462-4") in _codes(dia["code"])
    assert sys_["valueQuantity"] == {
        "value": systolic,
        "unit": "mm[Hg]",
        "system": UCUM,
        "code": "mm[Hg]",
    }
    assert dia["valueQuantity"]["value"] == diastolic
    assert [c["interpretation"][0]["coding"][0]["code"] for c in o["component"]] == ["N", "L"]


# ---------------------------------------------------------------- components
def test_blood_pressure_is_read_back_as_one_observation_with_two_components(
    client: TestClient, world: Container
) -> None:
    """Was two Observations ({id}-1 systolic, {id}-2 diastolic) in every read."""
    sent = post(client, transaction({"urn:uuid:bp": _bp()}, code="LIS-BP"))
    rid = stored_report_id(sent)
    patient = _patient_id(sent)
    # the transaction-response names the Observation by the id it is read back under
    bp_entry = sent.json()["entry"][2]["response"]
    assert bp_entry["location"] == f"Observation/{rid}-1/_history/1"

    (searched,) = _of(_search(client, "/fhir/Observation", patient=patient), rid)
    _assert_blood_pressure(searched, 107, 60)
    assert searched["id"] == f"{rid}-1"

    included = _search(
        client, "/fhir/DiagnosticReport", patient=patient, _include="DiagnosticReport:result"
    )
    (report,) = [r for r in included if r["resourceType"] == "DiagnosticReport"]
    assert report["result"] == [{"reference": f"Observation/{rid}-1"}]
    assert _of(included, rid) == [searched]

    read = client.get(f"/fhir/Observation/{rid}-1")
    assert read.status_code == 200
    assert read.json() == searched
    history = client.get(f"/fhir/Observation/{rid}-1/_history").json()
    assert [e["resource"] for e in history["entry"]] == [searched]

    # the stored rows are still one per value (the points of care show them so)
    stored = world.results.get_result(rid)
    assert [(o.name, o.value_num) for o in stored.observations] == [
        ("Systolic blood pressure", 107.0),
        ("Diastolic blood pressure", 60.0),
    ]
    # sent again: unchanged
    again = post(client, transaction({"urn:uuid:bp": _bp()}, code="LIS-BP"))
    assert again.status_code == 200, again.text
    assert world.results.get_result(rid).version == 1


def test_a_components_old_id_is_a_404_naming_the_observation_that_holds_it(
    client: TestClient,
) -> None:
    rid = stored_report_id(post(client, transaction({"urn:uuid:bp": _bp()}, code="LIS-BP")))
    for path in (f"/fhir/Observation/{rid}-2", f"/fhir/Observation/{rid}-2/_history"):
        r = client.get(path)
        assert r.status_code == 404, path
        issue = r.json()["issue"][0]
        assert r.json()["resourceType"] == "OperationOutcome"
        assert f"Observation/{rid}-1" in issue["diagnostics"]
        assert "component[1]" in issue["diagnostics"]
    assert client.get(f"/fhir/Observation/{rid}-3").status_code == 404


def test_components_among_other_values_keep_the_ids_of_their_first_rows(
    client: TestClient, world: Container
) -> None:
    """K, blood pressure, Na: Observations {id}-1, {id}-2 (rows 2 and 3), {id}-4."""
    k = lab("K", "钾", "2823-3", valueQuantity=qty(4.1, "mmol/L"))
    na = lab("NA", "钠", "2951-2", valueQuantity=qty(140, "mmol/L"))
    body = transaction({"urn:uuid:k": k, "urn:uuid:bp": _bp(), "urn:uuid:na": na})
    sent = post(client, body)
    rid = stored_report_id(sent)
    locations = [e["response"].get("location", "") for e in sent.json()["entry"][2:5]]
    assert locations == [f"Observation/{rid}-{k}/_history/1" for k in (1, 2, 4)]
    report = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    refs = [r["reference"] for r in report["result"]]
    assert refs == [f"Observation/{rid}-1", f"Observation/{rid}-2", f"Observation/{rid}-4"]
    read = [client.get(f"/fhir/{ref}").json() for ref in refs]
    assert [o["code"]["text"] for o in read] == ["钾", "85354-9", "钠"]
    _assert_blood_pressure(read[1], 107, 60)
    assert len(world.results.get_result(rid).observations) == 4


def test_two_blood_pressures_in_one_report_are_two_observations(client: TestClient) -> None:
    """Sitting and standing: the same code, each with its two components."""
    body = transaction({"urn:uuid:bp1": _bp(120, 80), "urn:uuid:bp2": _bp(100, 62)})
    rid = stored_report_id(post(client, body))
    report = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    read = [client.get(f"/fhir/{r['reference']}").json() for r in report["result"]]
    assert [o["id"] for o in read] == [f"{rid}-1", f"{rid}-3"]
    _assert_blood_pressure(read[0], 120, 80)
    _assert_blood_pressure(read[1], 100, 62)


def test_an_observation_with_its_own_value_and_components_is_one_observation(
    client: TestClient, world: Container
) -> None:
    """R4 allows value[x] beside component (e.g. a total with its parts)."""
    obs = lab(
        "ABO",
        "ABO 血型",
        valueCodeableConcept={"text": "A 型"},
        note=[{"text": "已复核"}],
        component=[
            {
                "code": {"coding": [{"system": "urn:lis", "code": "ANTI-A", "display": "抗A"}]},
                "valueString": "4+",
            },
            {
                "code": {"coding": [{"system": "urn:lis", "code": "ANTI-B", "display": "抗B"}]},
                "valueString": "0",
            },
        ],
    )
    rid = stored_report_id(post(client, transaction({"urn:uuid:abo": obs})))
    (o,) = _of(_search(client, "/fhir/Observation", **{"_count": "50"}), rid)
    R4BObservation.model_validate(o)
    assert (o["valueCodeableConcept"], o["note"]) == ({"text": "A 型"}, [{"text": "已复核"}])
    assert [(c["code"]["text"], c["valueString"]) for c in o["component"]] == [
        ("抗A", "4+"),
        ("抗B", "0"),
    ]
    assert [v.value_text for v in world.results.get_result(rid).observations] == [
        "A 型",
        "4+",
        "0",
    ]


def test_components_the_rows_could_not_give_back_stay_observations_of_their_own(
    client: TestClient,
) -> None:
    """Two Observations of one code, one component each: read back as one Observation
    with two components they would be another thing than was sent; the second keeps
    its component's code and is read back on its own (as before)."""
    first = _bp()
    first["component"] = first["component"][:1]
    second = _bp()
    second["component"] = second["component"][1:]
    rid = stored_report_id(post(client, transaction({"urn:uuid:a": first, "urn:uuid:b": second})))
    report = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    read = [client.get(f"/fhir/{r['reference']}").json() for r in report["result"]]
    assert [len(o.get("component", [])) for o in read] == [1, 0]
    assert read[1]["valueQuantity"]["value"] == 60
    assert (LOINC, "8462-4") in _codes(read[1]["code"])


def test_observation_search_by_code_component_code_and_combo_code(client: TestClient) -> None:
    k = lab("K", "钾", "2823-3", valueQuantity=qty(4.1, "mmol/L"))
    rid = stored_report_id(post(client, transaction({"urn:uuid:k": k, "urn:uuid:bp": _bp()})))

    def ids(**params: str) -> list[str]:
        return [o["id"] for o in _of(_search(client, "/fhir/Observation", **params), rid)]

    assert ids(code=f"{LOINC}|2823-3") == [f"{rid}-1"]
    assert ids(**{"component-code": f"{LOINC}|8462-4"}) == [f"{rid}-2"]
    assert ids(**{"combo-code": f"{LOINC}|8480-6"}) == [f"{rid}-2"]
    assert ids(**{"combo-code": f"{LOINC}|2823-3"}) == [f"{rid}-1"]
    assert ids(code=f"{LOINC}|8480-6") == []  # a component's code is not the Observation's


# ---------------------------------------------------------------- reference range units
def _glucose(low: dict[str, Any], high: dict[str, Any], **range_extra: Any) -> dict[str, Any]:
    return lab(
        "GLU",
        "葡萄糖",
        "14749-6",
        valueQuantity=qty(5.2, "mmol/L"),
        referenceRange=[{"low": low, "high": high, **range_extra}],
        interpretation=[{"coding": [{"system": V3, "code": "N"}]}],
    )


def test_a_range_in_mg_dl_beside_a_value_in_mmol_l_is_kept_as_text_and_said(
    client: TestClient, world: Container
) -> None:
    """Was ref_low 70, ref_high 110 beside 5.2 mmol/L: shown as 70–110 mmol/L, the
    value 'below' its range."""
    glucose = _glucose(qty(70, "mg/dL"), qty(110, "mg/dL"))
    sent = post(client, transaction({"urn:uuid:glu": glucose}))
    rid = stored_report_id(sent)
    (o,) = world.results.get_result(rid).observations
    assert (o.ref_low, o.ref_high, o.ref_text) == (None, None, "70-110 mg/dL")
    assert (o.value_num, o.unit) == (5.2, "mmol/L")
    report_entry = sent.json()["entry"][-1]["response"]
    said = " ".join(i["diagnostics"] for i in report_entry["outcome"]["issue"])
    assert "referenceRange[0]" in said
    assert "70-110 mg/dL" in said
    read = client.get(f"/fhir/Observation/{rid}-1").json()
    assert read["referenceRange"] == [{"text": "70-110 mg/dL"}]


def test_a_range_text_without_its_unit_gets_it(client: TestClient, world: Container) -> None:
    glucose = _glucose(qty(70, "mg/dL"), qty(110, "mg/dL"), text="成人空腹 70-110")
    rid = stored_report_id(post(client, transaction({"urn:uuid:glu": glucose})))
    (o,) = world.results.get_result(rid).observations
    assert (o.ref_low, o.ref_high, o.ref_text) == (None, None, "成人空腹 70-110 mg/dL")


@pytest.mark.parametrize(
    ("value_unit", "range_unit"),
    [("10*9/L", "10^9/L"), ("mmol/L", "mmol/l"), ("umol/L", "µmol/L")],
)
def test_equivalent_spellings_of_one_unit_keep_the_range_numeric(
    client: TestClient, world: Container, value_unit: str, range_unit: str
) -> None:
    wbc = lab(
        "WBC",
        "白细胞",
        valueQuantity=qty(6.5, value_unit),
        referenceRange=[{"low": qty(3.5, range_unit), "high": qty(9.5, range_unit)}],
    )
    sent = post(client, transaction({"urn:uuid:wbc": wbc}))
    rid = stored_report_id(sent)
    (o,) = world.results.get_result(rid).observations
    assert (o.ref_low, o.ref_high, o.ref_text) == (3.5, 9.5, "3.5-9.5")
    assert "outcome" not in sent.json()["entry"][-1]["response"]


def test_units_as_display_text_only_are_left_as_they_were(
    client: TestClient, world: Container
) -> None:
    """No UCUM system: the units are not compared (only equal text could be)."""
    glucose = _glucose({"value": 70, "unit": "mg/dL"}, {"value": 110, "unit": "mg/dL"})
    rid = stored_report_id(post(client, transaction({"urn:uuid:glu": glucose})))
    (o,) = world.results.get_result(rid).observations
    assert (o.ref_low, o.ref_high) == (70.0, 110.0)


def test_a_components_range_in_another_unit_is_named_by_its_component(
    client: TestClient, world: Container
) -> None:
    bp = _bp()
    bp["component"][0]["referenceRange"] = [{"low": qty(12, "kPa"), "high": qty(18.7, "kPa")}]
    sent = post(client, transaction({"urn:uuid:bp": copy.deepcopy(bp)}))
    rid = stored_report_id(sent)
    systolic = world.results.get_result(rid).observations[0]
    assert (systolic.ref_low, systolic.ref_text) == (None, "12-18.7 kPa")
    said = sent.json()["entry"][-1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "component[0].referenceRange[0]" in said


# submission_hash of ``lab_bundle(n_obs=10)`` with UCUM-coded range limits, parsed and
# hashed by the code of commit 4d9eefb (before components and range units were kept so):
# a report without components or unit differences must hash exactly so, or a Bundle
# re-sent after the upgrade would be stored as a new version.
HASH_BEFORE = "896a03f966373a29f1d1801977e1ac9dbee8d2448be4158ee4a14a4490e09585"


def test_a_bundle_without_components_or_unit_differences_hashes_as_before() -> None:
    bundle = lab_bundle(n_obs=10)
    for e in bundle["entry"]:
        for rr in e["resource"].get("referenceRange", []):
            for limit in rr.values():
                limit.update(system=UCUM, code=limit["unit"])
    (sub,) = parse_transaction(json.dumps(bundle).encode()).message.submissions
    assert all(o.ref_low is not None for o in sub.observations)
    assert submission_hash(sub) == HASH_BEFORE
