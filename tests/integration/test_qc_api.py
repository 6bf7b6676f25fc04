"""QC and monitoring over HTTP: roles, problem+json on bad input, exports."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient
from openpyxl import load_workbook

from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures import governance as gv
from tests.fixtures import world as w
from tests.fixtures.actors import Login


def _eqa(on: str, passed: bool) -> dict[str, object]:
    return {
        "institution": w.HOSP_A,
        "kind": "eqa_round",
        "organiser": "national_centre",
        "evaluated_on": on,
        "passed": passed,
        "group": "生化",
        "round_id": f"NCCL-{on[:7]}",
    }


def test_qc_centre_records_eqa_and_regulator_confirms_over_http(
    client: TestClient, login: Login
) -> None:
    qc = login(Role.QC_CENTRE, jurisdiction="HE")
    reg = login(Role.REGULATOR, jurisdiction="HE")
    assert (
        client.post(
            "/api/v1/qc/evaluations", json=_eqa("2026-01-20", False), headers=qc
        ).status_code
        == 201
    )
    r = client.post("/api/v1/qc/evaluations", json=_eqa("2026-05-20", False), headers=qc)
    pid = r.json()["proposal_id"]
    assert r.json()["suggested_organiser"] == "national_centre"
    assert (
        client.post(
            f"/api/v1/qc/proposals/{pid}/confirm", json={"note": ""}, headers=qc
        ).status_code
        == 403
    )
    r = client.post(f"/api/v1/qc/proposals/{pid}/confirm", json={"note": "整改无效"}, headers=reg)
    assert r.status_code == 200
    assert r.json()["status"] == "confirmed"
    assert r.json()["status_label"] == "已暂停"


def test_evaluation_without_item_or_group_is_rejected_naming_the_field(
    client: TestClient, login: Login
) -> None:
    qc = login(Role.QC_CENTRE, jurisdiction="HE")
    body = _eqa("2026-05-20", True)
    del body["group"]
    r = client.post("/api/v1/qc/evaluations", json=body, headers=qc)
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"][0]["field"] == "item"


def test_future_evaluation_date_is_rejected(client: TestClient, login: Login) -> None:
    qc = login(Role.QC_CENTRE, jurisdiction="HE")
    r = client.post("/api/v1/qc/evaluations", json=_eqa("2026-12-01", True), headers=qc)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "evaluated_on"


def test_clinician_cannot_record_evaluations(client: TestClient, login: Login) -> None:
    doc = login(Role.CLINICIAN, institution=w.HOSP_A)
    assert (
        client.post(
            "/api/v1/qc/evaluations", json=_eqa("2026-05-20", True), headers=doc
        ).status_code
        == 403
    )


def test_spot_check_draw_over_http_records_the_seed(client: TestClient, login: Login) -> None:
    reg = login(Role.REGULATOR, jurisdiction="HE")
    body = {
        "jurisdiction": "HE",
        "period": "2026H1",
        "count": 2,
        "inspectors_per_check": 1,
        "inspectors": [
            {"name": "李专家", "institution": w.HOSP_A},
            {"name": "王专家", "institution": w.HOSP_B},
        ],
        "seed": 99,
    }
    first = client.post("/api/v1/qc/spot-checks", json=body, headers=reg).json()
    second = client.post("/api/v1/qc/spot-checks", json=body, headers=reg).json()
    assert first["seed"] == "99"
    assert first["drawn"] == second["drawn"]


def test_statistics_export_to_excel_has_the_rows(
    world: Container, client: TestClient, login: Login
) -> None:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    world.monitoring.refresh()
    reg = login(Role.REGULATOR, jurisdiction="HE")
    q = "level=institution&scope=HE&month_from=2026-01&month_to=2026-06"
    data = client.get(f"/api/v1/monitoring/statistics?{q}", headers=reg).json()
    r = client.get(f"/api/v1/monitoring/statistics?{q}&format=xlsx", headers=reg)
    assert r.status_code == 200
    sheet = load_workbook(io.BytesIO(r.content)).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[0][:3] == ("编码", "医疗机构", "提醒项次")
    assert {row[0] for row in rows[1:]} == {row["key"] for row in data["rows"]}
    csv = client.get(f"/api/v1/monitoring/statistics?{q}&format=csv", headers=reg)
    assert csv.content.startswith("\ufeff编码".encode())


def test_outliers_api_returns_the_statistic_and_its_explanation(
    world: Container, client: TestClient, login: Login
) -> None:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    world.monitoring.refresh()
    reg = login(Role.REGULATOR, jurisdiction="HE")
    found = client.get(
        "/api/v1/monitoring/outliers?month_from=2026-01&month_to=2026-06", headers=reg
    ).json()
    assert [f["key"] for f in found] == [gv.LOW_RATIO_HOSPITAL]
    assert found[0]["peer_count"] == 8
    assert "中位数" in found[0]["explanation"]


def test_bad_month_is_a_problem_not_a_500(client: TestClient, login: Login) -> None:
    reg = login(Role.REGULATOR, jurisdiction="HE")
    r = client.get("/api/v1/monitoring/statistics?month_from=2026-13", headers=reg)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "month_from"


def test_item_and_trend_statistics_export_as_the_json_rows(
    world: Container, client: TestClient, login: Login
) -> None:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    world.monitoring.refresh()
    reg = login(Role.REGULATOR, jurisdiction="HE")
    q = "scope=HE&month_from=2026-01&month_to=2026-06"
    for path, head in (("items", "项目编码"), ("trend", "月份")):
        data = client.get(f"/api/v1/monitoring/{path}?{q}", headers=reg).json()
        assert data
        r = client.get(f"/api/v1/monitoring/{path}?{q}&format=xlsx", headers=reg)
        sheet = load_workbook(io.BytesIO(r.content)).active
        assert sheet is not None
        rows = list(sheet.iter_rows(values_only=True))
        assert rows[0][0] == head
        assert [row[0] for row in rows[1:]] == [row["key"] for row in data]
