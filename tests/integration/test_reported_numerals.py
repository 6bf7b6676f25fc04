"""A lab result is a document: the numerals the laboratory reported — HL7 v2 NM "7.40",
FHIR R4 decimal 7.40 (datatypes.html#decimal) — are what every view shows: the CDS Hooks
card, the workbench (page and full report), retrieval, the EMR text and the FHIR read-back;
2345678 is not "2.34568e+06" and 0.1234567 not 0.123457. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from fastapi.testclient import TestClient

from huren.adapters.fhir import render
from huren.adapters.hl7v2.parse import AckCode
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.decisions import result_text
from huren.services.intake import Channel
from tests.e2e.test_cdshooks import hook_request, patient_resource, service_request
from tests.fixtures.actors import Login
from tests.fixtures.fhir.builders import lab_bundle
from tests.fixtures.hl7 import LAB_LFT_V251, sample_text, with_field
from tests.fixtures.results import ZHANG_SAN_ID
from tests.fixtures.world import HOSP_B

FHIR = "application/fhir+json"
HL7_PATIENT = "110105197203051620"  # 王秀英 of the HL7 sample


def _card_request(national_id: str) -> dict[str, Any]:
    """Hospital B's HIS ordering 肝功能 (B-LFT) for the patient: an order-select call."""
    return hook_request(
        orders=[service_request("sr-lft", "B-LFT", "肝功十项")],
        prefetch={"patient": patient_resource(national_id)},
    )


def _views(world: Container, login: Login, rid: int, national_id: str) -> dict[str, str]:
    """What each view shows of result ``rid`` (its patient ``national_id``)."""
    his = login(Role.INTEGRATION, institution=HOSP_B)
    doctor = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")
    token = doctor["Authorization"].removeprefix("Bearer ")
    with TestClient(create_app(world)) as tc:
        card = tc.post(
            "/cds-services/huren-recognition-order-select",
            json=_card_request(national_id),
            headers=his,
        )
        assert card.status_code == 200, card.text
        page = tc.get(
            "/workbench",
            params={
                "patient": f"national_id:{national_id}",
                "items": "B-LFT",
                "institution": HOSP_B,
                "token": token,
            },
        )
        assert page.status_code == 200, page.text
        report = tc.get(f"/workbench/results/{rid}", params={"token": token})
        assert report.status_code == 200, report.text
        retrieval = tc.get(f"/api/v1/retrieval/results/{rid}?purpose=treatment", headers=doctor)
        assert retrieval.status_code == 200, retrieval.text
        fhir = [tc.get(f"/fhir/Observation/{rid}-{seq}", headers=his) for seq in range(1, 4)]
    return {
        "card": "\n".join(c["detail"] for c in card.json()["cards"]),
        "page": page.text,
        "report": report.text,
        "retrieval": json.dumps([o["value"] for o in retrieval.json()["observations"]]),
        "emr": result_text(world.results.get_result(rid)),
        "fhir": "\n".join(r.content.decode() for r in fhir),
    }


def _assert_shown_as_reported(views: dict[str, str], names: tuple[str, str, str]) -> None:
    first, second, third = names
    assert f"| {first} | 7.40 | U/L | 3.50–5.30 |" in views["card"]
    assert f"| {second} | 2345678 |" in views["card"]
    assert f"| {third} | 0.1234567 |" in views["card"]
    for name in ("page", "report"):
        assert "<td>7.40</td>" in views[name], name
        assert "<td>2345678</td>" in views[name], name
        assert "<td>0.1234567</td>" in views[name], name
        assert "3.50-5.30" in views[name], name
    assert json.loads(views["retrieval"])[:3] == ["7.40", "2345678", "0.1234567"]
    assert f"{first} 7.40 U/L" in views["emr"]
    assert f"{second} 2345678 " in views["emr"]
    assert f"{third} 0.1234567 " in views["emr"]
    fhir = views["fhir"]
    assert '"valueQuantity":{"value":7.40,' in fhir
    assert '"low":{"value":3.50,' in fhir
    assert '"high":{"value":5.30,' in fhir
    assert '"value":2345678,' in fhir
    assert '"value":0.1234567,' in fhir
    for shown in views.values():
        assert "e+06" not in shown
        assert "0.123457" not in shown.replace("0.1234567", "")


def test_hl7_numerals_are_shown_as_reported_everywhere(world: Container, login: Login) -> None:
    text = sample_text(LAB_LFT_V251)
    for occurrence, value in ((1, "7.40"), (2, "2345678"), (3, "0.1234567")):
        text = with_field(text, "OBX", 5, value, occurrence=occurrence)
    text = with_field(text, "OBX", 7, "3.50-5.30", occurrence=1)
    receiver = Hl7Receiver(
        world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine)
    )
    reply = receiver.handle(text.encode())
    assert reply.code is AckCode.AA, reply.ack
    assert reply.outcome is not None
    rid = reply.outcome.results[0].result_id
    views = _views(world, login, rid, HL7_PATIENT)
    _assert_shown_as_reported(
        views, ("丙氨酸氨基转移酶(ALT)", "天门冬氨酸氨基转移酶(AST)", "总胆红素(TBIL)")
    )
    # the same message again: nothing new
    again = receiver.handle(text.encode())
    assert again.outcome is not None
    assert again.outcome.duplicate


def _fhir_bundle(**changes: Any) -> dict[str, Any]:
    """The liver panel Bundle with ALT 7.40 (3.50–5.30), AST 2345678, TBIL 0.1234567 —
    written as a sender keeping the precision writes them (``render.to_json``)."""
    bundle = lab_bundle(n_obs=3, **changes)
    alt, ast, tbil = (bundle["entry"][k]["resource"] for k in (2, 3, 4))
    alt["valueQuantity"]["value"] = Decimal("7.40")
    alt["referenceRange"] = [
        {"low": {"value": Decimal("3.50"), "unit": "U/L"}, "high": {"value": Decimal("5.30")}}
    ]
    ast["valueQuantity"]["value"] = 2345678
    tbil["valueQuantity"]["value"] = Decimal("0.1234567")
    return bundle


def test_fhir_numerals_are_shown_as_reported_everywhere(
    world: Container, login: Login, lis_client: TestClient
) -> None:
    body = render.to_json(_fhir_bundle())
    assert b'"value":7.40,' in body
    r = lis_client.post("/fhir", content=body, headers={"Content-Type": FHIR})
    assert r.status_code in (200, 201), r.text
    loc = next(
        e["response"]["location"]
        for e in r.json()["entry"]
        if e["response"].get("location", "").startswith("DiagnosticReport/")
    )
    rid = int(loc.split("/")[1])
    views = _views(world, login, rid, ZHANG_SAN_ID)
    _assert_shown_as_reported(views, ("丙氨酸氨基转移酶", "天门冬氨酸氨基转移酶", "总胆红素"))
    # sent again: unchanged
    again = lis_client.post("/fhir", content=body, headers={"Content-Type": FHIR})
    assert again.status_code in (200, 201), again.text
    assert world.results.get_result(rid).version == 1


def test_a_bundle_whose_numerals_were_dropped_before_is_a_new_version_when_resent(
    world: Container, lis_client: TestClient
) -> None:
    """What the code before the upgrade stored of ALT 7.40 (3.50–5.30) is what it stores
    of 7.4 (3.5–5.3) now: value_text "" and the range "3.5-5.3". The Bundle with 7.40
    sent again is a new version whose numerals are the reported ones — and "unchanged"
    from then on; 7.4 sent again would have been "unchanged"."""
    before = _fhir_bundle()
    alt = before["entry"][2]["resource"]
    alt["valueQuantity"]["value"] = 7.4
    alt["referenceRange"] = [{"low": {"value": 3.5, "unit": "U/L"}, "high": {"value": 5.3}}]

    def post(bundle: dict[str, Any]) -> int:
        r = lis_client.post("/fhir", content=render.to_json(bundle), headers={"Content-Type": FHIR})
        assert r.status_code in (200, 201), r.text
        loc = next(
            e["response"]["location"]
            for e in r.json()["entry"]
            if e["response"].get("location", "").startswith("DiagnosticReport/")
        )
        return int(loc.split("/")[1])

    rid = post(before)
    first = world.results.get_result(rid).observations[0]
    assert (first.value_text, first.ref_text, first.shown_value()) == ("", "3.5-5.3", "7.4")
    assert post(before) == rid
    assert world.results.get_result(rid).version == 1
    post(_fhir_bundle())
    now = world.results.get_result(rid)
    assert now.version == 2
    assert (now.observations[0].value_text, now.observations[0].ref_text) == ("7.40", "3.50-5.30")
    post(_fhir_bundle())
    assert world.results.get_result(rid).version == 2


def test_a_range_kept_only_as_numbers_is_written_without_a_trailing_point_zero(
    world: Container, login: Login
) -> None:
    """A range without text (a correction, older rows) is written from its limits: "9–50",
    not the floats' "9.0–50.0"; 0.1234567 in full."""
    from dataclasses import replace

    from tests.fixtures.results import lab_panel, liver_panel_observations, store

    alt, ast, *rest = liver_panel_observations()
    observations = (
        replace(alt, ref_text="", ref_low=9.0, ref_high=50.0),
        replace(ast, ref_text="", ref_low=0.1234567, ref_high=None),
        *rest,
    )
    rid = store(world, lab_panel(observations=observations)).results[0].result_id
    doctor = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")
    with TestClient(create_app(world)) as tc:
        page = tc.get(f"/retrieval/results/{rid}?purpose=treatment", headers=doctor)
    assert page.status_code == 200, page.text
    assert "9–50" in page.text
    assert "0.1234567–" in page.text
    assert "9.0" not in page.text
