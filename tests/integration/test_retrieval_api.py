"""Retrieval over HTTP: the role matrix (each role sees only what it may), every read
counted against the audit log, no enumeration, and the audit queries."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.actors import Login
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import GS1, HOSP_A, HOSP_B, LFT, SH1
from tests.integration.sharing_helpers import audit_rows

SEARCH = "/api/v1/retrieval/search"
ZHANG = {"identifier_kind": "national_id", "identifier": ZHANG_SAN_ID}


@pytest.fixture
def shared(world: Container) -> dict[str, int]:
    return {
        "he": store(world, lab_panel(HOSP_A)).results[0].result_id,
        "sh": store(world, lab_panel(SH1, local_code=LFT)).results[0].result_id,
    }


# role, binding, purpose → status, institutions of the results shown
MATRIX: list[tuple[Role, dict[str, str], str, int, set[str]]] = [
    (Role.CLINICIAN, {"institution": HOSP_B}, "treatment", 200, {HOSP_A}),
    (Role.CLINICIAN, {"institution": SH1}, "treatment", 200, {SH1}),
    (Role.CLINICIAN, {"institution": GS1}, "treatment", 200, set()),
    (Role.INSTITUTION_ADMIN, {"institution": HOSP_B}, "referral", 200, {HOSP_A}),
    (Role.REGULATOR, {"jurisdiction": "HE"}, "supervision", 200, {HOSP_A}),
    (Role.REGULATOR, {"jurisdiction": "SH"}, "supervision", 200, {SH1}),
    (Role.QC_CENTRE, {"jurisdiction": "HE"}, "quality_control", 200, {HOSP_A}),
    (Role.INSURER, {"jurisdiction": "HE"}, "claim_verification", 403, set()),
    (Role.OPERATOR, {}, "treatment", 403, set()),
    (Role.INTEGRATION, {"institution": HOSP_B}, "treatment", 403, set()),
]


@pytest.mark.parametrize(("role", "binding", "purpose", "status", "seen"), MATRIX)
def test_each_role_sees_only_what_it_may(
    client: TestClient,
    login: Login,
    shared: dict[str, int],
    role: Role,
    binding: dict[str, str],
    purpose: str,
    status: int,
    seen: set[str],
) -> None:
    r = client.post(SEARCH, json=ZHANG | {"purpose": purpose}, headers=login(role, **binding))
    assert r.status_code == status
    if status == 200:
        assert {x["institution"] for x in r.json()["results"]} == seen


def test_a_patient_account_cannot_use_clinician_retrieval(
    client: TestClient, world: Container, login: Login, shared: dict[str, int]
) -> None:
    pid = world.results.get_result(shared["he"]).patient_id
    r = client.post(
        SEARCH, json=ZHANG | {"purpose": "self_access"}, headers=login(Role.PATIENT, patient_id=pid)
    )
    assert r.status_code == 403
    assert audit_rows(world, role="patient", outcome="denied") == 1


def test_every_read_appears_in_the_audit_log(
    client: TestClient, world: Container, login: Login, shared: dict[str, int]
) -> None:
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    insurer = login(Role.INSURER, jurisdiction="HE")
    reads = 0
    for body in (ZHANG | {"purpose": "treatment"}, ZHANG | {"purpose": "consultation"}):
        found = client.post(SEARCH, json=body, headers=doctor).json()["results"]
        reads += 1 + len(found)  # the lookup, and each result listed
    for rid in (shared["he"], shared["sh"], 424242):  # ok, out of reach, missing
        client.get(f"/api/v1/retrieval/results/{rid}?purpose=treatment", headers=doctor)
        reads += 1
    client.get(
        f"/api/v1/retrieval/results/{shared['he']}?purpose=treatment&version=1", headers=doctor
    )
    reads += 1
    client.post(SEARCH, json=ZHANG | {"purpose": "claim_verification"}, headers=insurer)
    reads += 1
    assert audit_rows(world) == reads
    assert audit_rows(world, outcome="denied") == 3


def test_unknown_and_known_but_not_yours_answer_identically(
    client: TestClient, login: Login, shared: dict[str, int]
) -> None:
    gansu = login(Role.CLINICIAN, institution=GS1)
    known = client.post(SEARCH, json=ZHANG | {"purpose": "treatment"}, headers=gansu)
    unknown = client.post(
        SEARCH,
        json={"identifier_kind": "national_id", "identifier": LI_SI_ID, "purpose": "treatment"},
        headers=gansu,
    )
    assert (known.status_code, known.content) == (unknown.status_code, unknown.content)


def test_opening_a_missing_and_an_unreachable_result_answer_identically(
    client: TestClient, login: Login, shared: dict[str, int]
) -> None:
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    a = client.get(f"/api/v1/retrieval/results/{shared['sh']}?purpose=treatment", headers=doctor)
    b = client.get("/api/v1/retrieval/results/987654?purpose=treatment", headers=doctor)
    assert (
        (a.status_code, a.json()["detail"])
        == (b.status_code, b.json()["detail"])
        == (404, a.json()["detail"])
    )


def test_lists_mask_names_and_identifiers(
    client: TestClient, login: Login, shared: dict[str, int]
) -> None:
    r = client.post(
        SEARCH,
        json=ZHANG | {"purpose": "treatment"},
        headers=login(Role.CLINICIAN, institution=HOSP_B),
    )
    p: dict[str, Any] = r.json()["patient"]
    assert p["name"] == "张*"
    assert ZHANG_SAN_ID not in r.text
    assert p["identifiers"][0]["value"] == ZHANG_SAN_ID[:4] + "*" * 10 + ZHANG_SAN_ID[-4:]


def test_the_report_keeps_findings_and_conclusion_apart_and_links_images(
    client: TestClient, world: Container, login: Login
) -> None:
    from tests.fixtures.results import imaging_report

    rid = store(world, imaging_report(HOSP_A, study_uid="1.2.156.1.2.3")).results[0].result_id
    r = client.get(
        f"/api/v1/retrieval/results/{rid}?purpose=treatment",
        headers=login(Role.CLINICIAN, institution=HOSP_B),
    )
    body = r.json()
    assert "磨玻璃结节" in body["findings"]
    assert body["conclusion"].startswith("右肺上叶")
    assert body["image_url"] == "/imaging/studies/1.2.156.1.2.3"


def test_an_institution_admin_reads_the_audit_of_its_own_results_only(
    client: TestClient, login: Login, shared: dict[str, int]
) -> None:
    client.post(
        SEARCH,
        json=ZHANG | {"purpose": "treatment"},
        headers=login(Role.CLINICIAN, institution=HOSP_B),
    )
    admin_a = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    rows = client.get(f"/api/v1/audit/institutions/{HOSP_A}", headers=admin_a).json()
    assert any(r["result_id"] == shared["he"] and r["institution"] == HOSP_B for r in rows)
    assert client.get(f"/api/v1/audit/institutions/{HOSP_B}", headers=admin_a).status_code == 403


def test_a_regulator_reads_the_audit_of_its_jurisdiction_only(
    client: TestClient, login: Login, shared: dict[str, int]
) -> None:
    client.post(
        SEARCH,
        json=ZHANG | {"purpose": "treatment"},
        headers=login(Role.CLINICIAN, institution=HOSP_B),
    )
    he = login(Role.REGULATOR, jurisdiction="HE")
    assert client.get("/api/v1/audit/jurisdictions/HE", headers=he).json()
    assert client.get("/api/v1/audit/jurisdictions/SH", headers=he).status_code == 403


def test_an_invalid_national_id_is_422_naming_the_field(client: TestClient, login: Login) -> None:
    r = client.post(
        SEARCH,
        json={
            "identifier_kind": "national_id",
            "identifier": "130102198501011230",
            "purpose": "treatment",
        },
        headers=login(Role.CLINICIAN, institution=HOSP_B),
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "identifier"
