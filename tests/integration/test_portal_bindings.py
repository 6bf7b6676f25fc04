"""Binding a patient's portal account at an institution's counter, on the staff page
(/patient-bindings) and through the API list: masked in every list, a clear result, the
patient then logs in with a one-time code, and a re-binding tells the previous mobile."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db.tables_sharing import portal_binding
from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.identity import mask_id
from huren.services.portal import LogCodeSender
from tests.fixtures.actors import Login
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.sharing_helpers import audit_rows

PHONE = "13812345678"
NEW_PHONE = "13987654321"


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    store(world, lab_panel(HOSP_A))  # 张三 has a result: the platform knows him
    with TestClient(create_app(world)) as c:
        yield c


@pytest.fixture
def admin(login: Login) -> dict[str, str]:
    return login(Role.INSTITUTION_ADMIN, institution=HOSP_A)


@pytest.fixture
def sms(world: Container) -> LogCodeSender:
    sender = world.sharing.portal.sender
    assert isinstance(sender, LogCodeSender)
    return sender


def bind(
    client: TestClient, headers: dict[str, str], identifier: str = ZHANG_SAN_ID, **kw: str
) -> str:
    form = {
        "identifier_kind": "national_id",
        "identifier": identifier,
        "phone": PHONE,
        "verified": "yes",
    } | kw
    r = client.post("/patient-bindings", data=form, headers=headers)
    return f"{r.status_code}\n{r.text}"


def bindings(world: Container) -> int:
    with world.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(portal_binding)).scalar_one())


def test_the_page_is_for_institution_admins_and_the_nav_shows_it_to_them_only(
    client: TestClient, admin: dict[str, str], login: Login
) -> None:
    page = client.get("/patient-bindings", headers=admin)
    assert page.status_code == 200
    assert 'id="bind-form"' in page.text
    assert 'id="no-bindings"' in page.text
    assert '<a href="/patient-bindings">患者账号绑定</a>' in page.text

    clinician = login(Role.CLINICIAN, institution=HOSP_A)
    refused = client.get("/patient-bindings", headers=clinician)
    assert refused.status_code == 403
    assert 'id="bind-form"' not in refused.text
    assert "/patient-bindings" not in client.get("/retrieval", headers=clinician).text
    assert "/patient-bindings" not in bind(client, clinician).split("<main>", 1)[1]
    assert bindings(client.app.state.container) == 0  # type: ignore[attr-defined]


def test_binding_shows_a_clear_masked_result_and_the_masked_list(
    client: TestClient, admin: dict[str, str]
) -> None:
    out = bind(client, admin)
    assert out.startswith("201")
    result = out.split('id="bound"', 1)[1].split("</div>", 1)[0]
    assert "已为患者 张* 开通患者端账号" in result
    assert f"证件 {mask_id(ZHANG_SAN_ID)}" in result
    assert "138****5678" in result
    listing = out.split('id="bindings"', 1)[1]
    assert f"居民身份证 {mask_id(ZHANG_SAN_ID)}" in listing
    assert "138****5678" in listing
    assert "张*" in listing
    assert ZHANG_SAN_ID not in out
    assert PHONE not in out


def test_the_bound_patient_logs_in_with_the_code_sent_to_the_bound_phone(
    client: TestClient, admin: dict[str, str], sms: LogCodeSender
) -> None:
    bind(client, admin)
    ident = {"identifier_kind": "national_id", "identifier": ZHANG_SAN_ID}
    assert client.post("/api/v1/patient/otp", json=ident).status_code == 200
    phone, text = sms.sent[-1]
    assert phone == PHONE
    code = re.search(r"验证码为 (\d{6})", text)
    assert code
    r = client.post("/api/v1/patient/token", json=ident | {"code": code.group(1)})
    assert r.status_code == 200
    me = client.get(
        "/api/v1/patient/results", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
    )
    assert me.status_code == 200
    assert len(me.json()) == 1


def test_without_the_id_check_confirmed_nothing_is_bound(
    client: TestClient, world: Container, admin: dict[str, str]
) -> None:
    out = bind(client, admin, verified="")
    assert out.startswith("422")
    assert "请先核验患者本人有效身份证件原件" in out
    assert bindings(world) == 0


def test_a_bad_phone_is_refused_naming_it_and_nothing_is_bound(
    client: TestClient, world: Container, admin: dict[str, str]
) -> None:
    out = bind(client, admin, phone="1234")
    assert out.startswith("422")
    assert "请输入 11 位手机号码" in out
    assert bindings(world) == 0


def test_a_patient_the_platform_has_no_results_for_cannot_be_bound(
    client: TestClient, world: Container, admin: dict[str, str]
) -> None:
    out = bind(client, admin, identifier=LI_SI_ID)
    assert out.startswith("404")
    assert "平台中尚无该患者的检查检验结果" in out
    assert bindings(world) == 0


def test_rebinding_replaces_the_phone_and_tells_the_previous_one(
    client: TestClient, world: Container, admin: dict[str, str], sms: LogCodeSender
) -> None:
    bind(client, admin)
    before = len(sms.sent)
    out = bind(client, admin, phone=NEW_PHONE)
    assert "已为患者 张* 改绑手机" in out
    assert bindings(world) == 1
    [(phone, text)] = sms.sent[before:]
    assert phone == PHONE
    assert "变更为 139****4321" in text
    assert "如非本人办理" in text
    client.post(
        "/api/v1/patient/otp", json={"identifier_kind": "national_id", "identifier": ZHANG_SAN_ID}
    )
    assert sms.sent[-1][0] == NEW_PHONE


def test_the_api_lists_only_the_bindings_made_at_ones_own_institution_masked(
    client: TestClient, admin: dict[str, str], login: Login
) -> None:
    bind(client, admin)
    mine = client.get("/api/v1/patient/bindings", headers=admin)
    assert mine.status_code == 200
    [row] = mine.json()
    assert row["identifier_label"] == "居民身份证"
    assert row["identifier_masked"] == mask_id(ZHANG_SAN_ID)
    assert ZHANG_SAN_ID not in mine.text
    assert PHONE not in mine.text
    assert row["phone_masked"] == "138****5678"
    other = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    assert client.get("/api/v1/patient/bindings", headers=other).json() == []
    clinician = login(Role.CLINICIAN, institution=HOSP_A)
    assert client.get("/api/v1/patient/bindings", headers=clinician).status_code == 403


def test_every_binding_attempt_is_audited_and_the_patient_sees_who_bound_the_account(
    client: TestClient, world: Container, admin: dict[str, str], sms: LogCodeSender
) -> None:
    bind(client, admin, identifier=LI_SI_ID)  # unknown to the platform: still recorded
    assert audit_rows(world, action="bind", role="institution_admin") == 1
    bind(client, admin)
    assert audit_rows(world, action="bind", role="institution_admin") == 2
    ident = {"identifier_kind": "national_id", "identifier": ZHANG_SAN_ID}
    client.post("/api/v1/patient/otp", json=ident)
    code = re.search(r"验证码为 (\d{6})", sms.sent[-1][1])
    assert code
    token = client.post("/api/v1/patient/token", json=ident | {"code": code.group(1)}).json()
    readers = client.get(
        "/api/v1/patient/audit", headers={"Authorization": f"Bearer {token['access_token']}"}
    ).json()
    [binding] = [r for r in readers if r["action"] == "开通或改绑患者端账号"]
    assert binding["institution_name"] == "河北医科大学第二医院"
    assert binding["purpose"] == "现场核验身份证件"


def test_bindings_are_rate_limited_per_administrator(
    client: TestClient, world: Container, admin: dict[str, str], login: Login
) -> None:
    from huren.services.portal import BIND_LIMIT

    for _ in range(BIND_LIMIT.limit):
        assert bind(client, admin).startswith("201")
    out = bind(client, admin)
    assert out.startswith("429")
    assert "办理绑定过于频繁" in out
    colleague = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    assert bind(client, colleague).startswith("201")
