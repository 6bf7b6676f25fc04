"""CDS Hooks 2.0 against a running server, driven by plain httpx sending spec-conformant
JSON (https://cds-hooks.hl7.org/2.0/), as a HIS would."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from huren.adapters.db.tables import decision, reminder
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.e2e.live import serve
from tests.fixtures.ehr_fhir import ehr_fhir_server
from tests.fixtures.imaging import ct_report, store_complete_ct_study, store_thick_only_ct_study
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B

SELECT = "huren-recognition-order-select"
SIGN = "huren-recognition-order-sign"
NATIONAL_ID_SYSTEM = "https://huren.example/fhir/sid/national-id"


@pytest.fixture
def hebei(
    world: Container, login: Callable[..., dict[str, str]]
) -> Iterator[tuple[str, dict[str, str]]]:
    """Results of 张三 at hospital A — a liver panel and a chest CT whose complete study
    (厚层, 薄层, MPR) the PACS sent; the server; hospital B's HIS interface account."""
    store(world, lab_panel(HOSP_A))
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_complete_ct_study(world, ct)
    headers = login(Role.INTEGRATION, institution=HOSP_B)
    with serve(world) as base:
        yield base, headers


@pytest.fixture
def hospital_b(
    world: Container, login: Callable[..., dict[str, str]]
) -> Iterator[tuple[str, dict[str, str]]]:
    """The server with no results yet, and hospital B's HIS interface account."""
    headers = login(Role.INTEGRATION, institution=HOSP_B)
    with serve(world) as base:
        yield base, headers


def service_request(sr_id: str, code: str, display: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "ServiceRequest",
            "id": sr_id,
            "status": "draft",
            "intent": "order",
            "code": {
                "coding": [
                    {
                        "system": f"https://huren.example/fhir/CodeSystem/local/{HOSP_B}",
                        "code": code,
                        "display": display,
                    }
                ],
                "text": display,
            },
            "subject": {"reference": "Patient/pat-0001"},
        }
    }


def patient_resource(national_id: str = ZHANG_SAN_ID) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "pat-0001",
        "identifier": [{"system": NATIONAL_ID_SYSTEM, "value": national_id}],
        "gender": "male",
        "birthDate": "1985-01-01",
    }


def hook_request(
    hook: str = "order-select",
    *,
    orders: list[dict[str, Any]] | None = None,
    selections: list[str] | None = None,
    prefetch: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    orders = orders or [
        service_request("sr-ct", "B-CT-CHEST", "胸部平扫CT"),
        service_request("sr-lft", "B-LFT", "肝功十项"),
    ]
    context: dict[str, Any] = {
        "userId": "Practitioner/dr-wang",
        "patientId": "pat-0001",
        "encounterId": "enc-778",
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": orders},
    }
    if hook == "order-select":
        context["selections"] = selections or [
            f"ServiceRequest/{o['resource']['id']}" for o in orders
        ]
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def post(base: str, headers: dict[str, str], service: str, body: Any) -> httpx.Response:
    return httpx.post(f"{base}/cds-services/{service}", json=body, headers=headers, timeout=10)


def test_discovery_lists_order_select_and_order_sign_with_prefetch_templates(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, _ = hebei
    services = httpx.get(f"{base}/cds-services").json()["services"]
    assert {s["hook"] for s in services} == {"order-select", "order-sign"}
    for s in services:
        assert s["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert s["prefetch"]["diagnosticReports"].startswith(
            "DiagnosticReport?patient={{context.patientId}}"
        )
        assert s["description"]


def test_spec_example_without_lab_or_imaging_orders_gets_no_cards(
    hebei: tuple[str, dict[str, str]],
) -> None:
    # The order-select R4 example of the CDS Hooks hook catalogue: a diet and a medication.
    base, headers = hebei
    body = {
        "hook": "order-select",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {
            "userId": "PractitionerRole/123",
            "patientId": "1288992",
            "encounterId": "89284",
            "selections": [
                "NutritionOrder/pureeddiet-simple",
                "MedicationRequest/smart-MedicationRequest-103",
            ],
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "NutritionOrder",
                            "id": "pureeddiet-simple",
                            "status": "draft",
                            "patient": {"reference": "Patient/1288992"},
                            "dateTime": "2014-09-17",
                        }
                    },
                    {
                        "resource": {
                            "resourceType": "MedicationRequest",
                            "id": "smart-MedicationRequest-103",
                            "status": "draft",
                            "intent": "order",
                            "medicationCodeableConcept": {
                                "coding": [
                                    {
                                        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                        "code": "617993",
                                    }
                                ]
                            },
                            "subject": {"reference": "Patient/1288992"},
                        }
                    },
                ],
            },
        },
    }
    r = post(base, headers, SELECT, body)
    assert r.status_code == 200
    assert r.json() == {"cards": []}


def test_order_select_proposes_the_prior_ct_and_lab_panel(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    r = post(base, headers, SELECT, hook_request(prefetch={"patient": patient_resource()}))
    assert r.status_code == 200
    ct, lab = r.json()["cards"]
    for card in (ct, lab):
        assert card["indicator"] == "warning"
        assert len(card["summary"]) < 140
        assert card["source"]["label"]
        assert card["selectionBehavior"] == "at-most-one"
        assert card["links"][0]["type"] == "absolute"
        assert "/workbench?" in card["links"][0]["url"]
    assert "—JJJHR" in ct["summary"]
    assert "检查所见" in ct["detail"]
    assert "不属于互认内容" in ct["detail"]
    assert "河北医科大学第二医院" in lab["detail"]
    assert "| 丙氨酸氨基转移酶 | 56 | U/L | 9–50 | H |" in lab["detail"]
    (action,) = lab["suggestions"][0]["actions"]
    assert action == {
        "type": "delete",
        "description": action["description"],
        "resourceId": "ServiceRequest/sr-lft",
    }


def test_override_reasons_are_the_jurisdictions_negative_list(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    cards = post(
        base, headers, SELECT, hook_request(prefetch={"patient": patient_resource()})
    ).json()["cards"]
    reasons = cards[0]["overrideReasons"]
    assert [c["code"] for c in reasons] == [f"HB-{n}" for n in range(1, 7)]
    assert {c["system"] for c in reasons} == {"urn:huren:negative-reason:HE"}
    assert all(c["display"] for c in reasons)


def test_order_select_considers_only_the_selected_orders(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    body = hook_request(
        prefetch={"patient": patient_resource()}, selections=["ServiceRequest/sr-lft"]
    )
    cards = post(base, headers, SELECT, body).json()["cards"]
    assert len(cards) == 1
    assert cards[0]["suggestions"][0]["actions"][0]["resourceId"] == "ServiceRequest/sr-lft"


def test_order_sign_considers_every_draft_order(hebei: tuple[str, dict[str, str]]) -> None:
    base, headers = hebei
    body = hook_request("order-sign", prefetch={"patient": patient_resource()})
    assert len(post(base, headers, SIGN, body).json()["cards"]) == 2


def test_order_sign_offers_no_delete_for_an_order_that_is_not_a_draft(
    hebei: tuple[str, dict[str, str]],
) -> None:
    """An HIS re-signing an order sends it ``active``: a delete is no undo for a signed
    order, so its card informs without the suggestion; the draft beside it keeps its."""
    base, headers = hebei
    ct, lft = (
        service_request("sr-ct", "B-CT-CHEST", "胸部平扫CT"),
        service_request("sr-lft", "B-LFT", "肝功十项"),
    )
    lft["resource"]["status"] = "active"
    body = hook_request("order-sign", orders=[ct, lft], prefetch={"patient": patient_resource()})
    cards = {c["summary"][:2]: c for c in post(base, headers, SIGN, body).json()["cards"]}
    assert set(cards) == {"胸部", "肝功"}, cards
    assert cards["胸部"]["suggestions"][0]["actions"][0]["resourceId"] == "ServiceRequest/sr-ct"
    liver = cards["肝功"]
    assert "suggestions" not in liver
    assert "selectionBehavior" not in liver
    assert "该医嘱状态为 active（非草稿）" in liver["detail"]
    assert liver["overrideReasons"]


@pytest.mark.parametrize("threads", [1, 3])
def test_concurrent_calls_each_get_their_own_committed_cards(
    world: Container,
    login: Callable[..., dict[str, str]],
    threads: int,
) -> None:
    """Calls answered by several threads at once, their rows written in shared commits:
    every call gets its own cards, each card's reminder rows are committed when it is
    answered, and its feedback finds it at once."""
    store(world, lab_panel(HOSP_A))
    headers = login(Role.INTEGRATION, institution=HOSP_B)
    world.settings.cds_threads = threads
    bodies = [hook_request(prefetch={"patient": patient_resource()}) for _ in range(16)]
    with serve(world) as base, ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post(base, headers, SELECT, b), bodies))
        assert [r.status_code for r in answers] == [200] * len(bodies)
        cards = [r.json()["cards"] for r in answers]
        assert all(len(c) == 1 for c in cards)  # the liver panel; no CT stored
        uuids = {c[0]["uuid"] for c in cards}
        assert len(uuids) == len(bodies)
        with world.engine.connect() as conn:
            rows = conn.execute(select(reminder.c.request_id)).scalars().all()
        assert sorted(rows) == sorted(b["hookInstance"] for b in bodies for _ in range(2))
        assert _feedback(base, headers, _accepted(cards[-1][0])).status_code == 200
        answering = {t.name for t in threading.enumerate() if t.name.startswith("cds-hooks")}
        assert min(threads, 2) <= len(answering) <= threads


def test_unmapped_order_code_gets_an_info_card(
    world: Container, hebei: tuple[str, dict[str, str]]
) -> None:
    base, headers = hebei
    body = hook_request(
        orders=[service_request("sr-x", "B-XRAY-99", "腰椎正侧位")],
        prefetch={"patient": patient_resource()},
    )
    (card,) = post(base, headers, SELECT, body).json()["cards"]
    assert card["indicator"] == "info"
    assert "未对码" in card["summary"]
    with world.engine.connect() as conn:
        row = conn.execute(select(reminder)).one()
    assert (row.local_code, row.item_code, row.channel) == ("B-XRAY-99", None, "cds-hooks")


def test_without_prefetch_or_fhir_server_the_answer_is_412(
    hebei: tuple[str, dict[str, str]],
) -> None:
    # CDS Hooks 2.0 §Prefetch: unable to obtain required data → "SHALL respond with an
    # HTTP 412 Precondition Failed status code". It was a 200 with an info card.
    base, headers = hebei
    r = post(base, headers, SELECT, hook_request())
    assert r.status_code == 412
    problem = r.json()
    assert problem["code"] == "prefetch_unavailable"
    assert problem["errors"][0]["field"] == "prefetch.patient"
    assert "未提供 prefetch.patient" in problem["detail"]


def test_unreachable_fhir_server_is_named_in_the_412(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    body = hook_request(fhirServer="http://127.0.0.1:9/fhir")
    r = post(base, headers, SELECT, body)
    assert r.status_code == 412
    assert "http://127.0.0.1:9/fhir" in r.json()["detail"]


def test_without_prefetch_the_patient_is_read_from_the_fhir_server(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    with ehr_fhir_server("pat-0001", patient_resource()) as fhir:
        body = hook_request(
            fhirServer=fhir.url(),
            fhirAuthorization={
                "access_token": "his-opaque-token-42",
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/Patient.read",
                "subject": "huren-cds",
            },
        )
        cards = post(base, headers, SELECT, body).json()["cards"]
    assert [c["indicator"] for c in cards] == ["warning", "warning"]
    assert fhir.reads[-1][1] == "Bearer his-opaque-token-42"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b["context"].pop("draftOrders"), "context.draftOrders"),
        (
            lambda b: b["context"].update(draftOrders={"resourceType": "List"}),
            "context.draftOrders",
        ),
        (lambda b: b["context"].pop("selections"), "context.selections"),
        (lambda b: b.update(hook="patient-view"), "hook"),
        (lambda b: b.update(fhirAuthorization={"access_token": "x"}), "fhirServer"),
        # Found by a mutation fuzzer; each was a 500. A NUL PostgreSQL cannot store:
        (lambda b: b["context"].update(userId="Practitioner/\u0000"), "context.userId"),
        (lambda b: b.update(hookInstance="a\u0000b"), "hookInstance"),
        (
            lambda b: _order(b, 0).update(id="sr\u0000ct"),
            "context.draftOrders.entry[0].resource.id",
        ),
        # a lone surrogate UTF-8 cannot encode (not for the database, nor for the 400 that
        # echoed the hook):
        (lambda b: b.update(hook="order-select\ud800"), "hook"),
        (
            lambda b: _order(b, 1)["code"]["coding"][0].update(code="B-LFT\udc00"),
            "context.draftOrders.entry[1].resource.code.coding[0].code",
        ),
        # values beyond the width of the column recording them (PostgreSQL refused them):
        (lambda b: b["context"].update(userId="Practitioner/" + "9" * 90), "context.userId"),
        (lambda b: _rename(b, 0, "x" * 200), "context.draftOrders.entry[0].resource.id"),
        (
            lambda b: _order(b, 1)["code"]["coding"][0].update(code="B-" + "9" * 70),
            "context.draftOrders.entry[1].resource.code.coding",
        ),
        # a coding that is not an array:
        (
            lambda b: _order(b, 0)["code"].update(coding=7),
            "context.draftOrders.entry[0].resource.code.coding",
        ),
        # a fhirServer that is no URL (urlsplit raised) or whose port does not exist:
        (lambda b: b.update(fhirServer="http://["), "fhirServer"),
        (lambda b: b.update(fhirServer="http://127.0.0.1:99999/fhir"), "fhirServer"),
    ],
)
def test_malformed_hook_request_is_400_naming_the_field(
    hebei: tuple[str, dict[str, str]], mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    base, headers = hebei
    body = hook_request(prefetch={"patient": patient_resource()})
    mutate(body)
    r = post_raw(base, headers, SELECT, body)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in r.json()["errors"]]


def _order(body: dict[str, Any], n: int) -> dict[str, Any]:
    resource: dict[str, Any] = body["context"]["draftOrders"]["entry"][n]["resource"]
    return resource


def _rename(body: dict[str, Any], n: int, new_id: str) -> None:
    """Give the n-th draft order another id, its selection following it."""
    order = _order(body, n)
    selections = body["context"]["selections"]
    selections[selections.index(f"ServiceRequest/{order['id']}")] = f"ServiceRequest/{new_id}"
    order["id"] = new_id


def post_raw(base: str, headers: dict[str, str], service: str, body: Any) -> httpx.Response:
    """``post``, the JSON written by ``json.dumps`` (which escapes a lone surrogate, as a
    client may send it; httpx's own encoder cannot encode one)."""
    return httpx.post(
        f"{base}/cds-services/{service}",
        content=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
        timeout=10,
    )


@pytest.mark.parametrize("bad", ["\u0000", "\udfff"])
def test_a_character_in_a_medication_order_does_not_refuse_the_lab_orders(
    hebei: tuple[str, dict[str, str]], bad: str
) -> None:
    """Orders that are no ServiceRequest are never read or stored: a NUL or a lone
    surrogate in one is no reason to refuse the hook; in a ServiceRequest it still is."""
    base, headers = hebei
    medication = {
        "resource": {
            "resourceType": "MedicationRequest",
            "id": "mr-1",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {"text": f"阿司匹林{bad}肠溶片"},
        }
    }
    lft = service_request("sr-lft", "B-LFT", "肝功十项")
    body = hook_request(
        orders=[medication, lft],
        selections=["ServiceRequest/sr-lft", "MedicationRequest/mr-1"],
        prefetch={"patient": patient_resource()},
    )
    r = post_raw(base, headers, SELECT, body)
    assert r.status_code == 200, r.text
    assert any("肝功" in c["summary"] for c in r.json()["cards"])
    lft["resource"]["code"]["text"] = f"肝功{bad}十项"
    r = post_raw(base, headers, SELECT, body)
    assert r.status_code == 400, r.text
    assert "context.draftOrders.entry[1].resource.code.text" in r.text


@pytest.mark.parametrize(
    "identifier",
    [
        {"type": "MR", "value": "B-000123"},
        {"type": {"coding": 7}, "value": "B-000123"},
        # a value that cannot be hashed for the look-up (UTF-8 cannot encode it):
        {"type": {"coding": [{"code": "MR"}]}, "value": "B-000123\ud800"},
    ],
)
def test_malformed_prefetched_identifier_is_skipped_not_a_500(
    hebei: tuple[str, dict[str, str]], identifier: Any
) -> None:
    # Found by a mutation fuzzer: a ``type`` that is not a CodeableConcept (a string, a
    # number) or a ``coding`` that is not an array raised in the identifier parser (500).
    base, headers = hebei
    alone = {**patient_resource(), "identifier": [identifier]}
    (card,) = post_raw(base, headers, SELECT, hook_request(prefetch={"patient": alone})).json()[
        "cards"
    ]
    assert card["indicator"] == "info"
    assert "缺少患者身份信息" in card["summary"]
    beside = patient_resource()
    beside["identifier"].insert(0, identifier)
    r = post_raw(base, headers, SELECT, hook_request(prefetch={"patient": beside}))
    assert [c["indicator"] for c in r.json()["cards"]] == ["warning", "warning"]


def test_prefetched_identifier_list_that_is_not_an_array_is_named_in_the_info_card(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    resource = {**patient_resource(), "identifier": True}
    (card,) = post(base, headers, SELECT, hook_request(prefetch={"patient": resource})).json()[
        "cards"
    ]
    assert card["indicator"] == "info"
    assert "prefetch.patient.identifier 应为 Identifier 数组" in card["detail"]


def test_own_fhir_server_patient_id_beyond_64_bits_gets_an_info_card(
    hebei: tuple[str, dict[str, str]],
) -> None:
    # Was an unnamed 422 (SQLite could not bind the id, PostgreSQL: bigint out of range).
    base, headers = hebei
    body = hook_request(fhirServer=f"{base}/fhir")
    body["context"]["patientId"] = str(2**70)
    (card,) = post(base, headers, SELECT, body).json()["cards"]
    assert card["indicator"] == "info"
    assert f"context.patientId（{2**70}）不是本平台的患者 id" in card["detail"]


def test_invalid_json_is_400(hebei: tuple[str, dict[str, str]]) -> None:
    base, headers = hebei
    r = httpx.post(
        f"{base}/cds-services/{SELECT}",
        content=b"{not json",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert "JSON" in r.json()["detail"]


def test_unknown_service_is_404_and_unauthenticated_call_is_401(
    hebei: tuple[str, dict[str, str]],
) -> None:
    base, headers = hebei
    assert post(base, headers, "no-such-service", hook_request()).status_code == 404
    assert post(base, {}, SELECT, hook_request()).status_code == 401


def _cards(base: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = hook_request(prefetch={"patient": patient_resource()})
    return list(post(base, headers, SELECT, body).json()["cards"])


def _feedback(base: str, headers: dict[str, str], *entries: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{base}/cds-services/{SELECT}/feedback", json={"feedback": list(entries)}, headers=headers
    )


def _accepted(card: dict[str, Any]) -> dict[str, Any]:
    """The feedback of a clinician who accepted the card's suggestion."""
    return {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "2026-06-15T09:31:00Z",
    }


def test_accepted_feedback_records_the_decision_with_emr_text(
    world: Container, hebei: tuple[str, dict[str, str]]
) -> None:
    base, headers = hebei
    ct, _ = _cards(base, headers)
    r = _feedback(base, headers, _accepted(ct))
    assert r.status_code == 200
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert row.action == "accepted"
    assert row.saved_fen == 24000
    assert row.clinician == "Practitioner/dr-wang"
    assert row.emr_text.startswith("【医学检查检验互认项目】胸部CT平扫")


def test_overridden_feedback_records_the_negative_list_reason(
    world: Container, hebei: tuple[str, dict[str, str]]
) -> None:
    base, headers = hebei
    _, lab = _cards(base, headers)
    reason = lab["overrideReasons"][1]
    r = _feedback(
        base,
        headers,
        {
            "card": lab["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": reason, "userComment": "肝酶两天内上升明显"},
            "outcomeTimestamp": "2026-06-15T09:31:00Z",
        },
    )
    assert r.status_code == 200
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert (row.action, row.reason_code) == ("declined", "HB-2")
    assert "重新检查的目的" in row.patient_explanation


def test_feedback_sent_twice_is_recorded_once(
    world: Container, hebei: tuple[str, dict[str, str]]
) -> None:
    base, headers = hebei
    ct, _ = _cards(base, headers)
    entry = _accepted(ct)
    first = _feedback(base, headers, entry).json()["decisions"]
    second = _feedback(base, headers, entry).json()["decisions"]
    assert first == second
    with world.engine.connect() as conn:
        assert len(conn.execute(select(decision)).all()) == 1


def test_other_circumstances_override_without_comment_is_refused(
    world: Container, hebei: tuple[str, dict[str, str]]
) -> None:
    base, headers = hebei
    _, lab = _cards(base, headers)
    r = _feedback(
        base,
        headers,
        {
            "card": lab["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": lab["overrideReasons"][5]},
            "outcomeTimestamp": "2026-06-15T09:31:00Z",
        },
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "feedback[0].overrideReason.userComment"


@pytest.mark.parametrize("bad", ["\u0000", "\udfff"])
def test_feedback_with_a_character_that_cannot_be_stored_is_400_naming_the_field(
    world: Container, hebei: tuple[str, dict[str, str]], bad: str
) -> None:
    # Found by a mutation fuzzer: PostgreSQL refused the NUL (an unnamed 422), a lone
    # surrogate could not be encoded on either backend (500).
    base, headers = hebei
    _, lab = _cards(base, headers)
    entry = {
        "card": lab["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": lab["overrideReasons"][1], "userComment": f"肝酶{bad}"},
        "outcomeTimestamp": "2026-06-15T09:31:00Z",
    }
    clean = {**entry, "overrideReason": {"reason": lab["overrideReasons"][1]}}
    for body in ({"feedback": [entry]}, {"feedback": [{**clean, "card": bad}]}):
        r = httpx.post(
            f"{base}/cds-services/{SELECT}/feedback",
            content=json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 400
        fields = [e["field"] for e in r.json()["errors"]]
        assert fields in (["feedback[0].overrideReason.userComment"], ["feedback[0].card"])
    with world.engine.connect() as conn:
        assert conn.execute(select(decision)).all() == []


def test_feedback_for_an_unknown_card_is_404(hebei: tuple[str, dict[str, str]]) -> None:
    base, headers = hebei
    r = _feedback(
        base,
        headers,
        {
            "card": str(uuid.uuid4()),
            "outcome": "overridden",
            "outcomeTimestamp": "2026-06-15T09:31:00Z",
        },
    )
    assert r.status_code == 404


def test_override_without_a_reason_is_recorded_as_an_unexplained_decline(
    world: Container, hebei: tuple[str, dict[str, str]]
) -> None:
    # CDS Hooks 2.0 §Overridden guidance: a card may be dismissed without a reason.
    base, headers = hebei
    _, lab = _cards(base, headers)
    r = _feedback(
        base,
        headers,
        {"card": lab["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-06-15T09:31:00Z"},
    )
    assert r.status_code == 200
    with world.engine.connect() as conn:
        row = conn.execute(select(decision)).one()
    assert (row.action, row.reason_code) == ("declined", "")
    assert row.reason_text == "未说明理由（提醒卡片被关闭）"


# ---------------------------------------------------------------- imaging completeness
def _ct_card(base: str, headers: dict[str, str]) -> dict[str, Any]:
    body = hook_request(
        orders=[service_request("sr-ct", "B-CT-CHEST", "胸部平扫CT")],
        prefetch={"patient": patient_resource()},
    )
    (card,) = post(base, headers, SELECT, body).json()["cards"]
    return dict(card)


def test_ct_report_whose_images_have_not_arrived_gets_an_info_card_saying_so(
    world: Container, hospital_b: tuple[str, dict[str, str]]
) -> None:
    # Issue 4 §3; 沪卫医〔2024〕135号 四(二)2: the report alone is not a complete result.
    base, headers = hospital_b
    store(world, ct_report(HOSP_A))
    card = _ct_card(base, headers)
    assert card["indicator"] == "info"
    assert "suggestions" not in card
    assert "暂不建议直接互认（影像资料不完整：影像未上传" in card["summary"]
    assert "✗ 影像资料不完整：影像未上传：尚未收到该报告对应的 DICOM 影像" in card["detail"]


def test_ct_without_thin_slices_gets_an_info_card_naming_the_missing_series(
    world: Container,
    hospital_b: tuple[str, dict[str, str]],
    login: Callable[..., dict[str, str]],
) -> None:
    base, headers = hospital_b
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_thick_only_ct_study(world, ct)
    card = _ct_card(base, headers)
    assert card["indicator"] == "info"
    assert "✗ 影像资料不完整：缺少薄层序列（层厚 ≤ 1.5 mm）" in card["detail"]
    (viewer,) = [link for link in card["links"] if link["label"].startswith("调阅影像")]
    page = httpx.get(viewer["url"], headers=login(Role.CLINICIAN, institution=HOSP_B))
    assert "缺少薄层序列（层厚 ≤ 1.5 mm）" in page.text
    assert page.text.count('class="series-btn"') == 1


def test_card_proposes_the_ct_once_its_images_arrive(
    world: Container, hospital_b: tuple[str, dict[str, str]]
) -> None:
    base, headers = hospital_b
    ct = ct_report(HOSP_A)
    store(world, ct)
    before = _ct_card(base, headers)
    store_complete_ct_study(world, ct)
    after = _ct_card(base, headers)
    assert (before["indicator"], after["indicator"]) == ("info", "warning")
    assert "可互认" in after["summary"]
    assert "影像资料完整" in after["detail"]


def test_ct_card_links_to_the_image_viewer_showing_its_series(
    world: Container,
    hebei: tuple[str, dict[str, str]],
    login: Callable[..., dict[str, str]],
) -> None:
    base, headers = hebei
    ct, _ = _cards(base, headers)
    viewer = next(link for link in ct["links"] if link["label"].startswith("调阅影像"))
    assert viewer["type"] == "absolute"
    assert viewer["url"].startswith(f"{base}/imaging/results/")
    clinician = login(Role.CLINICIAN, institution=HOSP_B)
    page = httpx.get(viewer["url"], headers=clinician)
    assert page.status_code == 200
    assert page.text.count('class="series-btn"') == 3
    assert "影像与报告完整" in page.text


def test_lab_card_has_no_image_viewer_link(hebei: tuple[str, dict[str, str]]) -> None:
    base, headers = hebei
    _, lab = _cards(base, headers)
    assert [link["label"] for link in lab["links"]] == ["查看完整报告及影像（互认工作台）"]
