"""Patient portal API: binding at the counter, one-time-code login, own results with
where they were recognized, downloads, who read them, and corrections."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from huren.adapters.clock import FixedClock
from huren.adapters.db.tables import decision
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.portal import CODE_SENT_MESSAGE, LogCodeSender
from tests.fixtures.actors import Login
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID, imaging_report, lab_panel, store
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B

PHONE = "13812345678"
ZHANG = {"identifier_kind": "national_id", "identifier": ZHANG_SAN_ID}


@pytest.fixture
def sms(world: Container) -> LogCodeSender:
    sender = world.sharing.portal.sender
    assert isinstance(sender, LogCodeSender)
    return sender


@pytest.fixture
def results(world: Container) -> dict[str, int]:
    return {
        "lft": store(world, lab_panel(HOSP_A)).results[0].result_id,
        "ct": store(world, imaging_report(HOSP_A)).results[0].result_id,
    }


@pytest.fixture
def bound(client: TestClient, login: Login, results: dict[str, int]) -> dict[str, str]:
    r = client.post(
        "/api/v1/patient/bindings",
        json=ZHANG | {"phone": PHONE},
        headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A),
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _last_code(sms: LogCodeSender) -> str:
    match = re.search(r"验证码为 (\d{6})", sms.sent[-1][1])
    assert match
    return match.group(1)


@pytest.fixture
def patient_headers(
    client: TestClient, bound: dict[str, str], sms: LogCodeSender
) -> dict[str, str]:
    assert client.post("/api/v1/patient/otp", json=ZHANG).status_code == 200
    r = client.post("/api/v1/patient/token", json=ZHANG | {"code": _last_code(sms)})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_binding_masks_the_phone_and_name(bound: dict[str, str]) -> None:
    assert bound["phone_masked"] == "138****5678"
    assert bound["name_masked"] == "张*"


def test_only_an_institution_admin_binds(
    client: TestClient, login: Login, results: dict[str, int]
) -> None:
    r = client.post(
        "/api/v1/patient/bindings",
        json=ZHANG | {"phone": PHONE},
        headers=login(Role.CLINICIAN, institution=HOSP_A),
    )
    assert r.status_code == 403


def test_the_code_goes_to_the_bound_phone_only(
    client: TestClient, bound: dict[str, str], sms: LogCodeSender
) -> None:
    r = client.post("/api/v1/patient/otp", json=ZHANG)
    assert r.json()["message"] == CODE_SENT_MESSAGE
    assert sms.sent[-1][0] == PHONE


def test_an_unbound_identifier_gets_the_same_answer_and_no_message(
    client: TestClient, bound: dict[str, str], sms: LogCodeSender
) -> None:
    before = len(sms.sent)
    r = client.post(
        "/api/v1/patient/otp", json={"identifier_kind": "national_id", "identifier": LI_SI_ID}
    )
    assert r.status_code == 200
    assert r.json()["message"] == CODE_SENT_MESSAGE
    assert len(sms.sent) == before
    bad = client.post(
        "/api/v1/patient/token",
        json={"identifier_kind": "national_id", "identifier": LI_SI_ID, "code": "000000"},
    )
    assert bad.status_code == 401


def test_a_wrong_code_is_refused_and_five_wrong_tries_burn_the_code(
    client: TestClient, bound: dict[str, str], sms: LogCodeSender
) -> None:
    client.post("/api/v1/patient/otp", json=ZHANG)
    good = _last_code(sms)
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(5):
        assert client.post("/api/v1/patient/token", json=ZHANG | {"code": wrong}).status_code == 401
    assert client.post("/api/v1/patient/token", json=ZHANG | {"code": good}).status_code == 401


def test_an_expired_code_is_refused(
    client: TestClient, bound: dict[str, str], sms: LogCodeSender, clock: FixedClock
) -> None:
    client.post("/api/v1/patient/otp", json=ZHANG)
    clock.at += timedelta(minutes=5, seconds=1)
    assert (
        client.post("/api/v1/patient/token", json=ZHANG | {"code": _last_code(sms)}).status_code
        == 401
    )


def test_a_code_works_once(client: TestClient, bound: dict[str, str], sms: LogCodeSender) -> None:
    client.post("/api/v1/patient/otp", json=ZHANG)
    code = _last_code(sms)
    assert client.post("/api/v1/patient/token", json=ZHANG | {"code": code}).status_code == 200
    assert client.post("/api/v1/patient/token", json=ZHANG | {"code": code}).status_code == 401


def test_codes_are_limited_per_identifier(
    client: TestClient, bound: dict[str, str], clock: FixedClock
) -> None:
    statuses = []
    for _ in range(6):
        statuses.append(client.post("/api/v1/patient/otp", json=ZHANG).status_code)
        clock.at += timedelta(seconds=61)
    assert statuses == [200] * 5 + [429]


def test_my_results_show_where_each_was_recognized_or_declined(
    client: TestClient, world: Container, patient_headers: dict[str, str], results: dict[str, int]
) -> None:
    patient_id = world.results.get_result(results["ct"]).patient_id
    with world.engine.begin() as c:
        c.execute(
            insert(decision).values(
                at=world.clock.now(),
                institution_code=HOSP_B,
                clinician="dr.liu",
                patient_id=patient_id,
                item_code=CT_CHEST,
                result_id=results["ct"],
                result_version=1,
                action="declined",
                reason_code="HB-4",
                patient_explanation="您目前处于急诊状态，需要立即复查以指导抢救。",
            )
        )
    r = client.get("/api/v1/patient/results", headers=patient_headers)
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()}
    assert set(by_id) == set(results.values())
    [d] = by_id[results["ct"]]["decisions"]
    assert d["institution_name"] == "保定市第一中心医院"
    assert "急诊" in d["reason"]
    assert "抢救" in d["explanation"]


def test_a_patient_downloads_a_print_ready_report_with_their_name(
    client: TestClient, patient_headers: dict[str, str], results: dict[str, int]
) -> None:
    r = client.get(f"/api/v1/patient/results/{results['lft']}/download", headers=patient_headers)
    assert r.status_code == 200
    assert "attachment" in r.headers["content-disposition"]
    assert "张三" in r.text
    assert "丙氨酸氨基转移酶" in r.text
    assert "@media print" in r.text


def test_a_patient_sees_who_read_their_results_with_masked_names(
    client: TestClient, login: Login, patient_headers: dict[str, str], results: dict[str, int]
) -> None:
    doctor = login(Role.CLINICIAN, institution=HOSP_B)
    r = client.get(f"/api/v1/retrieval/results/{results['ct']}?purpose=referral", headers=doctor)
    assert r.status_code == 200
    readers = client.get("/api/v1/patient/audit", headers=patient_headers).json()
    view = next(x for x in readers if x["action"] == "查看报告")
    assert view["institution_name"] == "保定市第一中心医院"
    assert view["purpose"] == "转诊"
    assert view["reader"].startswith("测**")


def test_a_patient_cannot_open_another_patients_result(
    client: TestClient, world: Container, patient_headers: dict[str, str]
) -> None:
    from tests.fixtures.results import patient

    other = store(world, lab_panel(HOSP_A, patient_demographics=patient(LI_SI_ID, "李四")))
    r = client.get(f"/api/v1/patient/results/{other.results[0].result_id}", headers=patient_headers)
    assert r.status_code == 404


def test_a_patient_files_a_correction_that_reaches_the_producing_hospital(
    client: TestClient, login: Login, patient_headers: dict[str, str], results: dict[str, int]
) -> None:
    r = client.post(
        "/api/v1/patient/corrections",
        json={"result_id": results["lft"], "text": "报告上的出生日期不对"},
        headers=patient_headers,
    )
    assert r.status_code == 201
    assert r.json()["producing_institution"] == HOSP_A
    queue = client.get(
        "/api/v1/corrections", headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    )
    assert [c["id"] for c in queue.json()] == [r.json()["id"]]
