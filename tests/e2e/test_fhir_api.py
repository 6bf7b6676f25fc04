"""FHIR R4 endpoint at /fhir over HTTP: plain httpx (TestClient) and fhirclient as a real
peer against a running server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db.tables import audit_event, inbound_message, result
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.accounts import NewAccount
from tests.fixtures.actors import SEED
from tests.fixtures.fhir.builders import (
    NATIONAL_ID,
    contained_report,
    imaging_bundle,
    lab_bundle,
)
from tests.fixtures.results import ZHANG_SAN_ID
from tests.fixtures.world import HOSP_A, HOSP_B, LFT

FHIR = "application/fhir+json"


def api_key(c: Container, username: str, institution: str) -> str:
    c.accounts.create_account(
        NewAccount(username, f"{institution} LIS 接口", Role.INTEGRATION, institution=institution),
        actor=SEED,
    )
    return c.accounts.create_api_key(username, "LIS", actor=SEED).key


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    key = api_key(world, "lis-a", HOSP_A)
    with TestClient(create_app(world), headers={"Authorization": f"ApiKey {key}"}) as tc:
        yield tc


def post_bundle(client: TestClient, bundle: dict[str, Any]) -> Any:
    return client.post(
        "/fhir", content=json.dumps(bundle, ensure_ascii=False), headers={"Content-Type": FHIR}
    )


def _count(c: Container, table: Any) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# ---------------------------------------------------------------- capability and auth
def test_metadata_is_an_r4_capability_statement(client: TestClient) -> None:
    r = client.get("/fhir/metadata")
    assert r.headers["content-type"].startswith(FHIR)
    body = r.json()
    assert (body["resourceType"], body["fhirVersion"]) == ("CapabilityStatement", "4.0.1")
    types = {res["type"] for res in body["rest"][0]["resource"]}
    assert {"DiagnosticReport", "Observation"} <= types


def test_transaction_without_credentials_is_401_operation_outcome(world: Container) -> None:
    with TestClient(create_app(world)) as anonymous:
        r = post_bundle(anonymous, lab_bundle())
    assert r.status_code == 401
    assert r.headers["content-type"].startswith(FHIR)
    assert r.json()["resourceType"] == "OperationOutcome"


def test_rest_of_the_api_keeps_problem_json(client: TestClient) -> None:
    r = client.get("/api/v1/no-such-thing")
    assert r.headers["content-type"].startswith("application/problem+json")


# ---------------------------------------------------------------- transactions
def test_transaction_stores_the_lab_report_and_answers_a_transaction_response(
    client: TestClient, world: Container
) -> None:
    r = post_bundle(client, lab_bundle(n_obs=4))
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert len(statuses) == 2 + 4 + 1  # patient, organization, 4 observations, report
    report_loc = body["entry"][-1]["response"]["location"]
    assert report_loc.startswith("DiagnosticReport/")
    assert report_loc.endswith("/_history/1")
    assert body["entry"][-1]["response"]["status"] == "201 Created"
    rid = int(report_loc.split("/")[1])
    stored = world.results.get_result(rid)
    assert stored.item_code == LFT
    assert stored.report_no == "JY202606130001"
    assert [o.loinc for o in stored.observations] == ["1742-6", "1920-8", "1975-2", "1968-7"]


def test_identical_bundle_resent_answers_the_same_and_stores_nothing_new(
    client: TestClient, world: Container
) -> None:
    bundle = lab_bundle(bundle_id="urn:uuid:7d1c6f3e-0001")
    first = post_bundle(client, bundle).json()
    before = _count(world, result)
    again = post_bundle(client, bundle).json()
    assert [e["response"] for e in again["entry"]] == [e["response"] for e in first["entry"]]
    assert _count(world, result) == before


def test_corrected_bundle_creates_version_2_readable_with_vread(
    client: TestClient, world: Container
) -> None:
    first = post_bundle(client, lab_bundle()).json()
    loc = first["entry"][-1]["response"]["location"]
    rid = loc.split("/")[1]
    post_bundle(client, lab_bundle(status="corrected", alt_value=36.0))
    current = client.get(f"/fhir/DiagnosticReport/{rid}").json()
    old = client.get(f"/fhir/DiagnosticReport/{rid}/_history/1").json()
    assert (current["meta"]["versionId"], current["status"]) == ("2", "corrected")
    assert (old["meta"]["versionId"], old["status"]) == ("1", "final")
    alt_now = client.get(f"/fhir/Observation/{rid}-1").json()
    alt_then = client.get(f"/fhir/Observation/{rid}-1/_history/1").json()
    assert alt_now["valueQuantity"]["value"] == 36.0
    assert alt_then["valueQuantity"]["value"] == 56.0
    history = client.get(f"/fhir/DiagnosticReport/{rid}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_imaging_bundle_keeps_findings_conclusion_and_accession(
    client: TestClient, world: Container
) -> None:
    body = post_bundle(client, imaging_bundle()).json()
    rid = int(body["entry"][-1]["response"]["location"].split("/")[1])
    stored = world.results.get_result(rid)
    assert stored.findings.startswith("双肺纹理清晰")
    assert stored.conclusion.startswith("右肺上叶微小磨玻璃结节")
    assert (stored.accession_number, stored.study_uid) == (
        "ACC20260613007",
        "1.2.156.112605.20260613.7",
    )
    outcomes = [e["response"].get("outcome") for e in body["entry"]]
    notes = [o["issue"][0]["diagnostics"] for o in outcomes if o]
    assert any("检查检验申请" in n for n in notes)  # ServiceRequest: informational


def test_unmapped_code_is_stored_and_flagged_in_the_response(
    client: TestClient, world: Container
) -> None:
    body = post_bundle(client, lab_bundle(local_code="LIS-NEW-07")).json()
    report = body["entry"][-1]["response"]
    assert report["status"] == "201 Created"
    assert "尚未对码" in report["outcome"]["issue"][0]["diagnostics"]
    assert [u.local_code for u in world.intake.unmapped_codes(HOSP_A)] == ["LIS-NEW-07"]


def test_invalid_national_id_rejects_the_bundle_naming_the_element(
    client: TestClient, world: Container
) -> None:
    bad = ZHANG_SAN_ID[:-1] + ("0" if ZHANG_SAN_ID[-1] != "0" else "1")
    r = post_bundle(client, lab_bundle(national_id=bad))
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[0].resource.identifier[0].value"]
    assert "居民身份证" in issue["diagnostics"]
    assert _count(world, result) == 0
    with world.engine.connect() as c:
        status = c.execute(select(inbound_message.c.status)).scalar_one()
    assert status == "rejected"


def test_wrong_value_type_is_rejected_naming_the_element(client: TestClient) -> None:
    bundle = lab_bundle(n_obs=2)
    bundle["entry"][3]["resource"]["valueQuantity"]["value"] = "五十六"
    r = post_bundle(client, bundle)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[3].resource.valueQuantity.value"]


def test_malformed_json_is_an_operation_outcome(client: TestClient) -> None:
    r = client.post(
        "/fhir", content=b'{"resourceType": "Bundle", "type": ', headers={"Content-Type": FHIR}
    )
    assert r.status_code == 422
    assert r.json()["resourceType"] == "OperationOutcome"


def test_missing_report_number_is_rejected_naming_the_element(client: TestClient) -> None:
    bundle = lab_bundle(n_obs=1)
    del bundle["entry"][-1]["resource"]["identifier"]
    r = post_bundle(client, bundle)
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[3].resource.identifier"]


def test_integration_account_cannot_send_for_another_institution(client: TestClient) -> None:
    r = post_bundle(client, lab_bundle(institution=HOSP_B, local_code="B-LFT"))
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"


def test_single_diagnostic_report_with_contained_resources_is_created(
    client: TestClient, world: Container
) -> None:
    r = client.post(
        "/fhir/DiagnosticReport",
        content=json.dumps(contained_report("JY-C-1", n_obs=3), ensure_ascii=False),
        headers={"Content-Type": FHIR},
    )
    assert r.status_code == 201
    assert r.headers["location"].endswith("/_history/1")
    assert len(r.json()["result"]) == 3


def test_lone_observation_cannot_be_posted(client: TestClient) -> None:
    r = client.post("/fhir/Observation", content=b"{}", headers={"Content-Type": FHIR})
    assert r.status_code == 422
    assert "DiagnosticReport" in r.json()["issue"][0]["diagnostics"]


# ---------------------------------------------------------------- search
def test_search_by_patient_identifier_and_code_with_included_observations(
    client: TestClient, world: Container
) -> None:
    post_bundle(client, lab_bundle(n_obs=3))
    post_bundle(client, imaging_bundle())
    r = client.get(
        "/fhir/DiagnosticReport",
        params={
            "patient.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}",
            "code": "http://loinc.org|1742-6",
            "_include": "DiagnosticReport:result",
        },
    )
    body = r.json()
    kinds = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in body["entry"]]
    assert kinds == [("DiagnosticReport", "match")] + [("Observation", "include")] * 3
    assert body["total"] == 1


def test_search_by_date_and_last_updated(client: TestClient) -> None:
    post_bundle(client, lab_bundle())
    hit = client.get("/fhir/DiagnosticReport", params={"date": "2026-06-13"}).json()
    miss = client.get("/fhir/DiagnosticReport", params={"date": "ge2026-06-14"}).json()
    recent = client.get("/fhir/DiagnosticReport", params={"_lastUpdated": "ge2026-06-15"}).json()
    assert (hit["total"], miss["total"], recent["total"]) == (1, 0, 1)


def test_observation_search_by_loinc_returns_only_that_analyte(client: TestClient) -> None:
    post_bundle(client, lab_bundle(n_obs=5))
    body = client.get(
        "/fhir/Observation",
        params={
            "patient.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}",
            "code": "http://loinc.org|1751-7",
        },
    ).json()
    assert [e["resource"]["valueQuantity"]["value"] for e in body["entry"]] == [43.1]


def test_entered_in_error_report_is_not_found_by_search_but_readable(
    client: TestClient,
) -> None:
    loc = post_bundle(client, lab_bundle()).json()["entry"][-1]["response"]["location"]
    post_bundle(client, lab_bundle(status="entered-in-error"))
    assert client.get("/fhir/DiagnosticReport").json()["total"] == 0
    rid = loc.split("/")[1]
    assert client.get(f"/fhir/DiagnosticReport/{rid}").json()["status"] == "entered-in-error"


def test_reads_are_audited(client: TestClient, world: Container) -> None:
    loc = post_bundle(client, lab_bundle()).json()["entry"][-1]["response"]["location"]
    client.get(f"/fhir/{loc.rsplit('/_history', 1)[0]}")
    with world.engine.connect() as c:
        row = c.execute(select(audit_event)).one()
    assert (row.action, row.actor, row.result_id) == ("fhir.read", "lis-a", int(loc.split("/")[1]))


def test_unknown_report_is_404_operation_outcome(client: TestClient) -> None:
    r = client.get("/fhir/DiagnosticReport/999999")
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/DiagnosticReport/¹",
        "/fhir/DiagnosticReport/1/_history/¹",
        "/fhir/Observation/1-1/_history/¹",  # was a 500: "¹".isdigit(), then int("¹")
        "/fhir/Observation/¹-1",
        "/fhir/Patient/¹",
    ],
)
def test_an_id_of_other_digits_is_404_not_a_server_error(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["issue"][0]["code"] == "not-found"


def test_a_patient_parameter_of_other_digits_is_refused_naming_it(client: TestClient) -> None:
    r = client.get("/fhir/DiagnosticReport", params={"patient": "Patient/٣"})
    assert r.status_code == 422
    assert "patient" in json.dumps(r.json(), ensure_ascii=False)


# ---------------------------------------------------------------- bulk
def test_import_ndjson_stores_good_lines_and_reports_bad_ones(
    client: TestClient, world: Container
) -> None:
    good = [
        json.dumps(contained_report(f"JY-N-{k}", n_obs=2), ensure_ascii=False) for k in range(3)
    ]
    bad = json.dumps(contained_report("JY-N-bad", national_id="110101198001011230"))
    body = "\n".join([good[0], bad, good[1], good[2]]).encode()
    r = client.post(
        "/fhir/$import", content=body, headers={"Content-Type": "application/fhir+ndjson"}
    )
    issues = r.json()["issue"]
    assert "保存结果 3 份" in issues[0]["diagnostics"]
    assert issues[1]["expression"][0].startswith("line 2: ")
    assert _count(world, result) == 3


# ---------------------------------------------------------------- fhirclient as a peer
def test_fhirclient_reads_capability_posts_a_bundle_and_searches(world: Container) -> None:
    from fhirclient import client as fhir_client
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.diagnosticreport import DiagnosticReport

    from tests.e2e.live import serve

    key = api_key(world, "lis-peer", HOSP_A)
    with serve(world) as base:
        smart = fhir_client.FHIRClient(settings={"app_id": "lis", "api_base": f"{base}/fhir/"})
        smart.server.session.headers["Authorization"] = f"ApiKey {key}"
        smart.server.get_capability()  # parsed with fhirclient's R4 models
        capability = smart.server.capabilityStatement
        assert capability.fhirVersion == "4.0.1"

        response = smart.server.post_json("", lab_bundle(n_obs=3))
        answered = Bundle(response.json())
        assert answered.type == "transaction-response"

        found = DiagnosticReport.where(
            struct={"patient.identifier": f"{NATIONAL_ID}|{ZHANG_SAN_ID}"}
        ).perform_resources_iter(smart.server)
        found = list(found)
        assert [r.identifier[0].value for r in found] == ["JY202606130001"]
        report = DiagnosticReport.read(found[0].id, smart.server)
        assert report.code.coding[1].code == LFT
