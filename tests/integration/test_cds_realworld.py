"""CDS Hooks 2.0 ``order-select`` / ``order-sign`` calls as real CDS clients send them
(https://cds-hooks.hl7.org/2.0/ and the hook pages of cds-hooks/docs; the cds-hooks
sandbox; Epic-, Cerner- and HAPI-based clients): ``userId`` as ``PractitionerRole/…``,
``encounterId``, ``fhirAuthorization`` with a scope, prefetch keys not asked for, a
prefetch answered by a searchset Bundle, ``extension`` members, hookInstance values that
are not UUIDs, draftOrders holding medication, diet and device orders, ServiceRequests
coded with LOINC beside the hospital's code or not coded at all.

Each answer is checked against the spec's response rules (``assert_conformant``), and the
cards against the orders. Each test failed before its fix:
- a prefetched Patient given as a searchset Bundle was not found (info card "缺少患者身份
  信息"), and a prefetch that was no Patient (an OperationOutcome) kept the client's
  fhirServer from being asked;
- a ServiceRequest without a coded item (a consult, the sandbox's PAMA order before a study
  is chosen) refused the whole hook with a 400;
- a ServiceRequest coded with LOINC only got an "未对码" card although the item has that
  LOINC; with an unmapped local code beside it, the card named the LOINC code;
- cards nothing can be decided on (patient unknown, code unmapped) carried a uuid, and the
  feedback a client sends when the clinician dismisses one was refused (404 / 422);
- without a negative list in force the warning card carried ``"overrideReasons": []``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from huren.adapters.db.tables import negative_reason, reminder
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.ehr_fhir import EhrFhir, ehr_fhir_server
from tests.fixtures.imaging import ct_report, store_complete_ct_study
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B

SELECT = "huren-recognition-order-select"
SIGN = "huren-recognition-order-sign"
NATIONAL_ID = "https://huren.example/fhir/sid/national-id"
LOCAL = f"https://huren.example/fhir/CodeSystem/local/{HOSP_B}"
EPIC_PROC = "urn:oid:1.2.840.114350.1.13.0.1.7.2.696580"  # an EHR's own procedure codes
LOINC = "http://loinc.org"
LIVER_PANEL_LOINC = "24325-3"  # the liver panel's LOINC in the test world
PATIENT_ID = "eXbT1m5yHOX7.CqnA0vAnKw3"  # an Epic-style FHIR id


# ---------------------------------------------------------------- the spec's response rules
def _no_empty(value: Any, where: str) -> None:
    # CDS Hooks 2.0 §Null and empty JSON elements: null, "", [] and {} are prohibited.
    assert value not in (None, "", [], {}), f"{where} 为空"
    if isinstance(value, dict):
        for k, v in value.items():
            _no_empty(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_empty(v, f"{where}[{i}]")


def assert_conformant(answer: Any) -> list[dict[str, Any]]:
    """The cards of a CDS Service response that follows §CDS Service Response."""
    assert isinstance(answer, dict)
    assert isinstance(answer.get("cards"), list)
    for n, card in enumerate(answer["cards"]):
        _no_empty(card, f"cards[{n}]")
        assert isinstance(card["summary"], str)
        assert len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            for s in card["suggestions"]:
                assert s["label"]
                assert s["uuid"]
                assert s["actions"]
                for a in s["actions"]:
                    assert a["type"] in ("create", "update", "delete")
                    assert a["description"]
                    if a["type"] == "delete":
                        assert a["resourceId"].startswith("ServiceRequest/")
        for coding in card.get("overrideReasons", ()):
            assert coding["system"]
            assert coding["code"]
            assert coding["display"]
        for link in card.get("links", ()):
            assert link["label"]
            assert link["url"]
            assert link["type"] in ("absolute", "smart")
    cards: list[dict[str, Any]] = answer["cards"]
    return cards


# ---------------------------------------------------------------- requests as clients build them
def service_request(sr_id: str, *codings: dict[str, str], text: str = "") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": sr_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "encounter": {"reference": "Encounter/eNzmVGmm8VzFPu0QHpGJ1Xw3"},
        "requester": {"reference": "PractitionerRole/eM5CWtq15N0WJeuCet5bJlQ3"},
    }
    if codings or text:
        resource["code"] = {"coding": list(codings)} if codings else {}
        if text:
            resource["code"]["text"] = text
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource}


def liver_panel_order(sr_id: str = "sr-lft") -> dict[str, Any]:
    # LOINC first, then the hospital's own code (the mapped one), as interface engines send.
    return service_request(
        sr_id,
        {"system": LOINC, "code": LIVER_PANEL_LOINC, "display": "Hepatic function panel"},
        {"system": LOCAL, "code": "B-LFT", "display": "肝功十项"},
        text="肝功十项",
    )


def chest_ct_order(sr_id: str = "sr-ct") -> dict[str, Any]:
    return service_request(
        sr_id, {"system": LOCAL, "code": "B-CT-CHEST", "display": "胸部平扫CT"}, text="胸部平扫CT"
    )


OTHER_ORDERS = [
    {
        "resource": {
            "resourceType": "MedicationRequest",
            "id": "med-1",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "617993"}
                ]
            },
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
        }
    },
    {
        "resource": {
            "resourceType": "NutritionOrder",
            "id": "pureeddiet-simple",
            "status": "draft",
            "intent": "order",
            "patient": {"reference": f"Patient/{PATIENT_ID}"},
            "dateTime": "2026-06-15",
        }
    },
    {
        "resource": {
            "resourceType": "DeviceRequest",
            "id": "dev-1",
            "status": "draft",
            "intent": "order",
            "codeCodeableConcept": {"text": "轮椅"},
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
        }
    },
]


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "identifier": [
            {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.0", "value": "E2731"},
            {"system": NATIONAL_ID, "value": ZHANG_SAN_ID},
        ],
        "gender": "male",
        "birthDate": "1985-01-01",
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    """A prefetch template answered by a search (``Patient?_id=…``)."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"https://ehr.example/fhir/Patient?_id={PATIENT_ID}"}],
        "entry": [
            {
                "fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def hook_request(
    hook: str,
    orders: list[dict[str, Any]],
    *,
    selections: list[str] | None = None,
    prefetch: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "userId": "PractitionerRole/eM5CWtq15N0WJeuCet5bJlQ3",
        "patientId": PATIENT_ID,
        "encounterId": "eNzmVGmm8VzFPu0QHpGJ1Xw3",
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": orders},
    }
    if selections is not None:
        context["selections"] = selections
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


# ---------------------------------------------------------------- the world and the client
@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    with TestClient(create_app(world), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def his(login: Callable[..., dict[str, str]]) -> dict[str, str]:
    """Hospital B's HIS interface account."""
    return login(Role.INTEGRATION, institution=HOSP_B)


@pytest.fixture
def priors(world: Container) -> None:
    """张三's liver panel and complete chest CT study at hospital A."""
    store(world, lab_panel(HOSP_A))
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_complete_ct_study(world, ct)


def post(client: TestClient, headers: dict[str, str], service: str, body: Any) -> Any:
    r = client.post(
        f"/cds-services/{service}",
        content=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def deleted(card: dict[str, Any]) -> str:
    resource_id: str = card["suggestions"][0]["actions"][0]["resourceId"]
    return resource_id


@pytest.fixture
def ehr_fhir() -> Iterator[EhrFhir]:
    with ehr_fhir_server(PATIENT_ID, patient()) as server:
        yield server


# ---------------------------------------------------------------- prefetch
@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_epic_style_call_with_the_patient_prefetched_as_a_searchset_bundle(
    client: TestClient, his: dict[str, str], priors: None, hook: str
) -> None:
    # §Providing FHIR Resources: "in the case of searches, this resource may be a searchset
    # Bundle". With it: a prefetch key not asked for, fhirAuthorization with a scope (and
    # the 2.0 ``patient`` member), extensions, a hookInstance that is no UUID, medication,
    # diet and device orders, a LOINC-and-local coded order, selections naming only some.
    body = hook_request(
        hook,
        [*OTHER_ORDERS, liver_panel_order(), chest_ct_order()],
        selections=["ServiceRequest/sr-lft", "MedicationRequest/med-1"],
        prefetch={
            "patient": searchset(patient()),
            "diagnosticReports": None,
            "practitioner": {"resourceType": "Practitioner", "id": "eM5CWtq15N0WJeuCet5bJlQ3"},
        },
        fhirServer="https://ehr.example/api/FHIR/R4",
        fhirAuthorization={
            "access_token": "opaque-ehr-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/ServiceRequest.read",
            "subject": "huren-cds",
            "patient": PATIENT_ID,
        },
        extension={"com.epic.cdshooks.request.cds-hooks-specification-version": "2.0"},
    )
    body["hookInstance"] = "EPIC-7f3c91-20260615093000-0042"
    body["context"]["extension"] = {"com.example.department": "心内科门诊"}
    cards = assert_conformant(post(client, his, SELECT if hook == "order-select" else SIGN, body))
    assert [c["indicator"] for c in cards] == ["warning"] * len(cards)
    if hook == "order-select":  # only the selected ServiceRequest
        assert [deleted(c) for c in cards] == ["ServiceRequest/sr-lft"]
    else:  # every draft ServiceRequest, the selections of order-select meaning nothing
        assert [deleted(c) for c in cards] == ["ServiceRequest/sr-lft", "ServiceRequest/sr-ct"]


def test_the_patient_with_the_context_id_is_taken_from_a_bundle_of_several(
    client: TestClient, his: dict[str, str], priors: None
) -> None:
    other = {
        "resourceType": "Patient",
        "id": "someone-else",
        "identifier": [{"system": NATIONAL_ID, "value": "130602199001011234"}],
    }
    body = hook_request(
        "order-sign", [liver_panel_order()], prefetch={"patient": searchset(other, patient())}
    )
    (card,) = assert_conformant(post(client, his, SIGN, body))
    assert card["indicator"] == "warning"


@pytest.mark.parametrize(
    "prefetched",
    [
        searchset(),  # the search found nothing
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]},
    ],
)
def test_a_prefetch_that_holds_no_patient_falls_back_to_the_fhir_server(
    client: TestClient,
    his: dict[str, str],
    priors: None,
    ehr_fhir: EhrFhir,
    prefetched: dict[str, Any],
) -> None:
    body = hook_request(
        "order-sign",
        [liver_panel_order()],
        prefetch={"patient": prefetched},
        fhirServer=ehr_fhir.url("/api/FHIR/R4"),
        fhirAuthorization={
            "access_token": "opaque-ehr-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read",
            "subject": "huren-cds",
        },
    )
    (card,) = assert_conformant(post(client, his, SIGN, body))
    assert card["indicator"] == "warning"
    assert ehr_fhir.reads == [(f"/api/FHIR/R4/Patient/{PATIENT_ID}", "Bearer opaque-ehr-token")]


def test_a_prefetch_that_holds_no_patient_is_named_in_the_412(
    client: TestClient, his: dict[str, str], priors: None
) -> None:
    # CDS Hooks 2.0: a client that failed to prefetch may send an OperationOutcome; with
    # no fhirServer either, the data cannot be had: 412 (§Prefetch, SHALL).
    body = hook_request(
        "order-sign",
        [liver_panel_order()],
        prefetch={"patient": {"resourceType": "OperationOutcome", "issue": []}},
    )
    r = client.post(f"/cds-services/{SIGN}", json=body, headers=his)
    assert r.status_code == 412
    assert "prefetch.patient 不是 Patient 资源（收到 OperationOutcome）" in r.json()["detail"]


def test_a_patient_without_an_identifier_to_match_on_gets_an_info_card(
    client: TestClient, his: dict[str, str], priors: None
) -> None:
    # The Patient was had, so no 412: the clinician is told why nothing can be looked up.
    nameless = {**patient(), "identifier": []}
    body = hook_request("order-sign", [liver_panel_order()], prefetch={"patient": nameless})
    (card,) = assert_conformant(post(client, his, SIGN, body))
    assert card["indicator"] == "info"
    assert "缺少患者身份信息" in card["summary"]
    assert "居民身份证" in card["detail"]


# ---------------------------------------------------------------- draft orders
def test_service_requests_without_a_coded_item_are_left_out_not_a_400(
    world: Container, client: TestClient, his: dict[str, str], priors: None
) -> None:
    # A consult with only code.text, an order with no code yet, and the cds-hooks
    # sandbox's PAMA order before a study is chosen (a coding without a code): valid FHIR,
    # and order-select "CDS services should expect some of the order information to not
    # yet be specified". The coded liver panel beside them still gets its card.
    consult = service_request("sr-consult", text="请心内科会诊")
    blank = service_request("sr-blank")
    pama = service_request("example-request-id", {"system": "http://www.ama-assn.org/go/cpt"})
    pama["resource"]["intent"] = "plan"
    orders = [consult, blank, pama, liver_panel_order()]
    body = hook_request("order-sign", orders, prefetch={"patient": patient()})
    (card,) = assert_conformant(post(client, his, SIGN, body))
    assert deleted(card) == "ServiceRequest/sr-lft"
    body = hook_request(
        "order-select",
        orders,
        selections=["ServiceRequest/sr-consult", "ServiceRequest/example-request-id"],
        prefetch={"patient": patient()},
    )
    assert assert_conformant(post(client, his, SELECT, body)) == []
    with world.engine.connect() as conn:
        assert conn.execute(select(reminder.c.local_code)).scalars().all() == ["B-LFT"]


def test_an_order_coded_with_loinc_only_is_matched_to_the_item_with_that_loinc(
    client: TestClient, his: dict[str, str], priors: None
) -> None:
    order = service_request(
        "sr-lft", {"system": LOINC, "code": LIVER_PANEL_LOINC, "display": "Hepatic function panel"}
    )
    body = hook_request(
        "order-select",
        [order],
        selections=["ServiceRequest/sr-lft"],
        prefetch={"patient": patient()},
    )
    (card,) = assert_conformant(post(client, his, SELECT, body))
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("肝功能：")


def test_an_unmapped_order_is_reported_by_the_hospitals_own_code_not_its_loinc(
    client: TestClient, his: dict[str, str], priors: None
) -> None:
    order = service_request(
        "sr-k",
        {"system": LOINC, "code": "2823-3", "display": "Potassium"},
        {"system": EPIC_PROC, "code": "LAB123", "display": "血钾"},
    )
    body = hook_request("order-sign", [order], prefetch={"patient": patient()})
    (card,) = assert_conformant(post(client, his, SIGN, body))
    assert card["indicator"] == "info"
    assert card["summary"] == "医嘱项目 LAB123 未对码，无法查询互认结果"


# ---------------------------------------------------------------- cards and feedback
def test_cards_nothing_can_be_decided_on_carry_no_uuid_so_no_feedback_is_refused(
    client: TestClient, his: dict[str, str], priors: None
) -> None:
    # §Feedback: "If either the card or the suggestion has no uuid, the CDS Client does not
    # send a notification". Before, these cards had one, and the feedback a client sends
    # when the clinician dismisses the card was refused: 422 for the unmapped code (with
    # the entries after it in the same feedback), 404 for the unknown patient.
    unmapped = service_request("sr-x", {"system": LOCAL, "code": "B-XRAY-99"})
    body = hook_request(
        "order-sign", [liver_panel_order(), unmapped], prefetch={"patient": patient()}
    )
    lab, info = assert_conformant(post(client, his, SIGN, body))
    assert "未对码" in info["summary"]
    no_patient = hook_request("order-sign", [liver_panel_order()], prefetch={"patient": None})
    refused = client.post(f"/cds-services/{SIGN}", json=no_patient, headers=his)
    assert refused.status_code == 412  # §Prefetch: the data could not be had
    assert "prefetch.patient 为 null" in refused.json()["detail"]
    assert "uuid" not in info
    r = client.post(
        f"/cds-services/{SIGN}/feedback",
        json={
            "feedback": [
                {
                    "card": lab["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": "2026-06-15T09:31:00Z",
                }
            ]
        },
        headers=his,
    )
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 1


def test_without_a_negative_list_the_card_has_no_empty_override_reasons(
    world: Container, client: TestClient, his: dict[str, str], priors: None
) -> None:
    # §Null and empty JSON elements: an OPTIONAL attribute without a value is omitted.
    with world.engine.begin() as conn:
        conn.execute(delete(negative_reason))
    world.catalog.invalidate()
    body = hook_request("order-sign", [liver_panel_order()], prefetch={"patient": patient()})
    (card,) = assert_conformant(post(client, his, SIGN, body))
    assert card["indicator"] == "warning"
    assert "overrideReasons" not in card


def test_a_user_id_with_a_fhir_id_of_64_characters_is_answered(
    client: TestClient, his: dict[str, str], priors: None, world: Container
) -> None:
    """``PractitionerRole/`` and a 64-character FHIR id (R4 id: up to 64) is 81
    characters: the columns keeping the clinician held 64, so such an EHR got a 400 on
    every call (migration 0005)."""
    body = hook_request(
        "order-select",
        [liver_panel_order()],
        selections=["ServiceRequest/sr-lft"],
        prefetch={"patient": patient()},
    )
    user = "PractitionerRole/" + "a1B2-c3D4." * 6 + "e5F6"
    body["context"]["userId"] = user
    assert len(user) == 81
    (card,) = assert_conformant(post(client, his, SELECT, body))
    assert deleted(card) == "ServiceRequest/sr-lft"
    with world.engine.connect() as conn:
        assert set(conn.execute(select(reminder.c.clinician)).scalars()) == {user}
