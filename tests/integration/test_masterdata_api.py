"""Master-data REST: everyone reads; regulators and QC centres edit only within their own
jurisdiction; bad input is rejected whole, naming the field. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from huren.adapters.db import tables as t
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.actors import Login
from tests.fixtures.results import lab_panel, store
from tests.fixtures.world import BJ1, CBC, CT_CHEST, HOSP_A, HOSP_B, LFT, SH1


def _count(world: Container, table: Any) -> int:
    with world.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def _qualification_id(client: TestClient, headers: dict[str, str], inst: str, item: str) -> int:
    rows = client.get(
        "/api/v1/qualifications", params={"institution": inst, "item": item}, headers=headers
    ).json()
    return int(rows[0]["id"])


NEW_ITEM = {
    "code": "YX-MR-001",
    "name": "头颅MR平扫",
    "category": "imaging",
    "group": "MR",
    "modality": "MR",
    "body_part": "HEAD",
    "time_limit_hours": 720,
    "price_fen": 48000,
}


def _bound(world: Container, binding: dict[str, Any]) -> dict[str, Any]:
    """``binding`` with a patient account's ``patient_id`` (None) made a stored patient's."""
    if "patient_id" not in binding:
        return binding
    return {"patient_id": store(world, lab_panel(HOSP_A)).results[0].patient_id}


# ---------------------------------------------------------------- reads
@pytest.mark.parametrize(
    ("role", "binding"),
    [
        (Role.CLINICIAN, {"institution": HOSP_B}),
        (Role.INSURER, {"jurisdiction": "SH"}),
        (Role.PATIENT, {"patient_id": None}),
    ],
)
def test_every_role_reads_the_item_catalogue(
    client: TestClient, world: Container, login: Login, role: Role, binding: dict[str, Any]
) -> None:
    r = client.get("/api/v1/items", headers=login(role, **_bound(world, binding)))
    assert r.status_code == 200
    assert {i["code"] for i in r.json()["items"]} >= {CT_CHEST, LFT, CBC}


def test_reads_require_authentication(client: TestClient) -> None:
    assert client.get("/api/v1/items").status_code == 401


def test_items_filter_by_category_and_search(client: TestClient, login: Login) -> None:
    h = login(Role.CLINICIAN, institution=HOSP_A)
    imaging = client.get("/api/v1/items", params={"category": "imaging"}, headers=h).json()
    assert [i["code"] for i in imaging["items"]] == [CT_CHEST]
    found = client.get("/api/v1/items", params={"q": "肝功"}, headers=h).json()
    assert [i["code"] for i in found["items"]] == [LFT]


def test_institutions_filter_by_province_and_level(client: TestClient, login: Login) -> None:
    h = login(Role.OPERATOR)
    r = client.get(
        "/api/v1/institutions", params={"province": "HE", "level": "secondary"}, headers=h
    )
    body = r.json()
    assert body["total"] == 1
    assert body["items"][0]["province"] == "HE"
    assert body["items"][0]["level"] == "secondary"


def test_qualification_lists_its_own_mark_and_the_effective_mark(
    client: TestClient, login: Login
) -> None:
    h = login(Role.CLINICIAN, institution=HOSP_B)
    rows = client.get(
        "/api/v1/qualifications", params={"institution": HOSP_A, "item": CT_CHEST}, headers=h
    ).json()
    marks = {(q["scope"], q["mark"]["symbol"]) for q in rows}
    # 冀卫医政函〔2025〕7号 二(二): 省内 —HBHR, 京津冀 —JJJHR; the widest scope is carried.
    assert marks == {("HE", "—HBHR"), ("JJJ", "—JJJHR")}
    assert {q["effective_mark"]["symbol"] for q in rows} == {"—JJJHR"}


def test_items_in_force_follow_list_versions(client: TestClient, login: Login) -> None:
    h = login(Role.OPERATOR)
    before = client.get(
        "/api/v1/items/in-force", params={"jurisdiction": "HE", "on": "2024-12-31"}, headers=h
    ).json()
    during = client.get(
        "/api/v1/items/in-force", params={"jurisdiction": "HE", "on": "2025-06-01"}, headers=h
    ).json()
    assert before["items"] == []
    assert CT_CHEST in during["items"]


def test_negative_list_carries_its_source(client: TestClient, login: Login) -> None:
    r = client.get("/api/v1/negative-list/SH", headers=login(Role.OPERATOR)).json()
    assert len(r["reasons"]) == 10
    assert all("沪" in reason["source"] for reason in r["reasons"])


# ---------------------------------------------------------------- writes within jurisdiction
def test_regulator_publishes_list_version_in_own_jurisdiction(
    client: TestClient, login: Login
) -> None:
    h = login(Role.REGULATOR, jurisdiction="BJ")
    r = client.post(
        "/api/v1/item-lists",
        json={
            "jurisdiction": "BJ",
            "version": "2026-1",
            "effective_from": "2026-07-01",
            "items": [CBC, LFT],
        },
        headers=h,
    )
    assert r.status_code == 201
    assert r.json()["items"] == sorted([CBC, LFT])
    assert r.json()["in_force_today"] is False


def test_list_version_for_another_jurisdiction_is_forbidden(
    client: TestClient, login: Login, world: Container
) -> None:
    before = _count(world, t.item_list_version)
    r = client.post(
        "/api/v1/item-lists",
        json={
            "jurisdiction": "SH",
            "version": "2027-1",
            "effective_from": "2027-01-01",
            "items": [CBC],
        },
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    )
    assert r.status_code == 403
    assert r.json()["errors"][0]["field"] == "jurisdiction"
    assert _count(world, t.item_list_version) == before


def test_overlapping_list_version_is_rejected(
    client: TestClient, login: Login, world: Container
) -> None:
    before = _count(world, t.item_list_entry)
    r = client.post(
        "/api/v1/item-lists",
        json={
            "jurisdiction": "HE",
            "version": "2026-1",
            "effective_from": "2026-01-01",
            "items": [CBC],
        },
        headers=login(Role.QC_CENTRE, jurisdiction="HE"),
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "effective_from"
    assert _count(world, t.item_list_entry) == before


def test_list_version_with_unknown_items_names_each_and_writes_nothing(
    client: TestClient, login: Login, world: Container
) -> None:
    before = _count(world, t.item_list_version)
    r = client.post(
        "/api/v1/item-lists",
        json={
            "jurisdiction": "BJ",
            "version": "2026-1",
            "effective_from": "2026-07-01",
            "items": [CBC, "JY-XX-998", "JY-XX-999"],
        },
        headers=login(Role.REGULATOR, jurisdiction="BJ"),
    )
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["items[1]", "items[2]"]
    assert _count(world, t.item_list_version) == before


def test_city_is_within_its_province_for_editing(client: TestClient, login: Login) -> None:
    r = client.post(
        "/api/v1/qualifications",
        json={
            "institution": HOSP_B,
            "item": CBC,
            "scope": "HE-BD",
            "basis": "eqa",
            "valid_from": "2026-01-01",
            "reason": "2026年度室间质评合格",
        },
        headers=login(Role.QC_CENTRE, jurisdiction="HE"),
    )
    assert r.status_code == 201
    assert r.json()["history"][0]["new_status"] == "active"


def test_qualification_for_unknown_institution_names_the_field(
    client: TestClient, login: Login, world: Container
) -> None:
    before = _count(world, t.qualification)
    r = client.post(
        "/api/v1/qualifications",
        json={
            "institution": "H139999999",
            "item": CBC,
            "scope": "HE",
            "basis": "eqa",
            "valid_from": "2026-01-01",
        },
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "institution"
    assert _count(world, t.qualification) == before


def test_qualification_in_a_scope_outside_jurisdiction_is_forbidden(
    client: TestClient, login: Login
) -> None:
    r = client.post(
        "/api/v1/qualifications",
        json={
            "institution": BJ1,
            "item": CT_CHEST,
            "scope": "JJJ",
            "basis": "qc_evaluation",
            "valid_from": "2026-01-01",
        },
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    )
    assert r.status_code == 403


def test_suspension_is_recorded_with_actor_and_reason_and_removes_the_mark(
    client: TestClient, login: Login
) -> None:
    h = login(Role.QC_CENTRE, jurisdiction="JJJ")
    [jjj] = client.get(
        "/api/v1/qualifications",
        params={"institution": HOSP_A, "item": CT_CHEST, "scope": "JJJ"},
        headers=h,
    ).json()
    r = client.post(
        f"/api/v1/qualifications/{jjj['id']}/status",
        json={"status": "suspended", "reason": "飞行检查发现图像质量不达标"},
        headers=h,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["mark"] is None
    assert body["effective_mark"]["symbol"] == "—HBHR"
    event = body["history"][-1]
    assert (event["old_status"], event["new_status"]) == ("active", "suspended")
    assert event["reason"] == "飞行检查发现图像质量不达标"
    assert event["actor"].startswith("qc_centre-")


def test_status_change_outside_jurisdiction_is_forbidden(client: TestClient, login: Login) -> None:
    qid = _qualification_id(client, login(Role.OPERATOR), SH1, CT_CHEST)
    r = client.post(
        f"/api/v1/qualifications/{qid}/status",
        json={"status": "suspended", "reason": "抽查不合格"},
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    )
    assert r.status_code == 403


def test_scope_cycle_is_rejected_naming_parent(
    client: TestClient, login: Login, world: Container
) -> None:
    r = client.put(
        "/api/v1/scopes/HE",
        json={"name": "河北省", "kind": "province", "parent": "HE-SJZ", "abbreviation": "HE"},
        headers=login(Role.OPERATOR),
    )
    assert r.status_code == 422
    assert r.json()["code"] == "scope_cycle"
    assert r.json()["errors"][0]["field"] == "parent"
    with world.engine.connect() as c:
        assert c.execute(select(t.scope.c.parent).where(t.scope.c.code == "HE")).scalar() is None


def test_writes_refresh_the_catalog_at_once(client: TestClient, login: Login) -> None:
    h = login(Role.REGULATOR, jurisdiction="HE")
    assert client.post("/api/v1/items", json=NEW_ITEM, headers=h).status_code == 201
    r = client.get(f"/api/v1/items/{NEW_ITEM['code']}", headers=h)
    assert r.json()["name"] == "头颅MR平扫"


def test_item_shared_by_another_jurisdictions_list_cannot_be_changed(
    client: TestClient, login: Login
) -> None:
    update = {k: v for k, v in NEW_ITEM.items() if k != "code"} | {"name": "血常规（五分类）"}
    update |= {"category": "lab", "group": "血液", "modality": "", "body_part": ""}
    r = client.put(
        f"/api/v1/items/{CBC}", json=update, headers=login(Role.REGULATOR, jurisdiction="HE")
    )
    assert r.status_code == 403  # CBC is also in Shanghai's list


@pytest.mark.parametrize(
    ("role", "binding", "status"),
    [
        (Role.CLINICIAN, {"institution": HOSP_A}, 403),
        (Role.INSTITUTION_ADMIN, {"institution": HOSP_A}, 403),
        (Role.INTEGRATION, {"institution": HOSP_A}, 403),
        (Role.INSURER, {"jurisdiction": "HE"}, 403),
        (Role.PATIENT, {"patient_id": None}, 403),
    ],
)
def test_roles_that_do_not_edit_lists_are_refused(
    client: TestClient,
    world: Container,
    login: Login,
    role: Role,
    binding: dict[str, Any],
    status: int,
) -> None:
    r = client.post("/api/v1/items", json=NEW_ITEM, headers=login(role, **_bound(world, binding)))
    assert r.status_code == status


def test_institution_admin_edits_own_code_map_only(client: TestClient, login: Login) -> None:
    h = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    own = client.put(
        f"/api/v1/institutions/{HOSP_A}/code-maps/LIS-CBC",
        json={"unified_code": CBC, "local_name": "血常规五分类"},
        headers=h,
    )
    other = client.put(
        f"/api/v1/institutions/{HOSP_B}/code-maps/LIS-CBC",
        json={"unified_code": CBC},
        headers=h,
    )
    assert own.status_code == 200
    assert other.status_code == 403


def test_code_map_to_unknown_unified_code_names_the_field(client: TestClient, login: Login) -> None:
    r = client.put(
        f"/api/v1/institutions/{HOSP_A}/code-maps/LIS-X",
        json={"unified_code": "JY-XX-999"},
        headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A),
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "unified_code"


def test_malformed_body_is_problem_json_naming_the_field(client: TestClient, login: Login) -> None:
    r = client.post(
        "/api/v1/items",
        json=NEW_ITEM | {"time_limit_hours": -1},
        headers=login(Role.OPERATOR),
    )
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "time_limit_hours"


def test_a_code_map_saved_re_maps_the_results_stored_unmapped(
    client: TestClient, world: Container, login: Login
) -> None:
    # Issue 7 §3: "When the map is fixed later, stored results are re-mapped."
    ref = store(world, lab_panel(HOSP_A, local_code="LIS-LIVER-NEW")).results[0]
    assert ref.item_code is None
    r = client.put(
        f"/api/v1/institutions/{HOSP_A}/code-maps/LIS-LIVER-NEW",
        json={"unified_code": LFT, "local_name": "肝功能（新套餐）"},
        headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_A),
    )
    assert r.status_code == 200
    assert r.json()["remapped"] == 1
    stored = world.results.get_result(ref.result_id)
    assert (stored.item_code, stored.mark_symbol) == (LFT, "☆")
    assert world.intake.unmapped_codes(HOSP_A) == []


def test_an_imported_code_map_file_re_maps_the_results_stored_unmapped(
    world: Container,
) -> None:
    from huren.services.catalog_io import CatalogKind

    waiting = store(world, lab_panel(HOSP_A, local_code="LIS-LIVER-NEW")).results[0]
    other = store(world, lab_panel(HOSP_B, local_code="LIS-LIVER-NEW")).results[0]
    rows = "机构编码,本院编码,统一编码,本院名称\n" + "".join(
        f"{HOSP_A},LIS-{n},{CBC},\n"
        for n in range(50)  # none of these has results
    )
    rows += f"{HOSP_A},LIS-LIVER-NEW,{LFT},肝功能（新套餐）\n"
    report = world.catalog_io.import_file(
        CatalogKind.CODE_MAPS, rows.encode(), "maps.csv", actor="test"
    )
    assert report.remapped == 1
    assert world.results.get_result(waiting.result_id).item_code == LFT
    assert world.results.get_result(other.result_id).item_code is None  # B's map has none
    assert [u.local_code for u in world.intake.unmapped_codes(HOSP_B)] == ["LIS-LIVER-NEW"]
