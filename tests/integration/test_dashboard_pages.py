"""Dashboard pages and the published lists over HTTP (server-rendered, Chinese)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures import governance as gv
from tests.fixtures import world as w
from tests.fixtures.actors import Login


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    world.monitoring.refresh()
    with TestClient(create_app(world)) as c:
        yield c


def test_dashboard_requires_login(client: TestClient) -> None:
    r = client.get("/dashboard", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")


def test_dashboard_shows_outlier_with_its_explanation_and_empty_backlog(
    client: TestClient, login: Login
) -> None:
    html = client.get(
        "/dashboard?month_from=2026-01&month_to=2026-06",
        headers=login(Role.REGULATOR, jurisdiction="HE"),
    ).text
    assert "监管驾驶舱" in html
    assert "保定市第一医院" in html  # the planted outlier
    assert "稳健Z值" in html
    assert "纠错待办" in html
    assert "/static/vendor/echarts-5.6.0.min.js" in html


def test_drill_partial_links_to_the_next_level(client: TestClient, login: Login) -> None:
    reg = login(Role.REGULATOR, jurisdiction="HE")
    html = client.get(
        "/dashboard/drill?level=city&scope=HE&month_from=2026-01&month_to=2026-06", headers=reg
    ).text
    assert "保定市" in html
    assert "level=institution&amp;scope=HE-BD" in html or "level=institution&scope=HE-BD" in html


def test_clinician_may_not_open_the_dashboard(client: TestClient, login: Login) -> None:
    r = client.get("/dashboard", headers=login(Role.CLINICIAN, institution=w.HOSP_A))
    assert r.status_code == 403


def test_monthly_report_is_print_ready(client: TestClient, login: Login) -> None:
    html = client.get(
        "/dashboard/report?month=2026-05", headers=login(Role.REGULATOR, jurisdiction="HE")
    ).text
    assert "检查检验结果互认工作月度报告" in html
    assert "@media print" in html
    assert "2026年5月" in html


def test_public_institution_list_needs_no_login_and_downloads(client: TestClient) -> None:
    html = client.get("/public/institutions?jurisdiction=HE&half=2026H1").text
    assert "河北医科大学第二医院" in html
    # Hebei's list rests on the national guidance; the half-yearly rule is Gansu's own.
    assert "国卫医政发〔2024〕37号" in html
    assert "以其主管部门的规定为准" in html
    gansu = client.get("/public/institutions?jurisdiction=GS&half=2026H1").text
    assert "甘卫医政函〔2025〕16号 四(一)“每半年公布互认医疗机构清单”" in gansu
    r = client.get("/public/institutions?jurisdiction=HE&half=2026H1&format=xlsx")
    sheet = load_workbook(io.BytesIO(r.content)).active
    assert sheet is not None
    names = {row[1] for row in sheet.iter_rows(min_row=2, values_only=True)}
    assert "河北医科大学第二医院" in names
    assert "保定市满城区医院" in names  # its alliance qualification is in force


def test_failed_qualification_is_not_published(client: TestClient) -> None:
    r = client.get("/public/institutions?jurisdiction=HE&half=2026H1&format=csv")
    lines = r.content.decode("utf-8-sig").splitlines()
    county = [ln for ln in lines if ln.startswith(w.HOSP_C)]
    assert county
    assert all("保定市第一中心医院医联体" in ln for ln in county)  # not the failed 河北省 one


def test_public_item_list_shows_version_and_effective_date(client: TestClient) -> None:
    html = client.get("/public/items?jurisdiction=SH").text
    assert "2024-135" in html
    assert "2024-10-01" in html
    assert "胸部CT平扫" in html


def test_unknown_half_year_is_rejected(client: TestClient) -> None:
    r = client.get("/public/institutions?jurisdiction=HE&half=2026H3")
    assert r.status_code == 422
