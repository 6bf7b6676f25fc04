"""The master-data pages: login required, filters, marks on the qualifications page; and a
browser (Debian chromium through Playwright) logging in and reading the marks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from huren.api.app import create_app
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.accounts import NewAccount
from tests.e2e.browser import launch
from tests.e2e.live import serve
from tests.fixtures.actors import SEED
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B, HOSP_C

PASSWORD = "qc-centre-pass-2026"


@pytest.fixture
def browser_user(world: Container) -> str:
    world.accounts.create_account(
        NewAccount("he.qc", "河北省质控中心 李老师", Role.QC_CENTRE, jurisdiction="HE"),
        PASSWORD,
        actor=SEED,
    )
    return "he.qc"


@pytest.fixture
def client(world: Container, browser_user: str) -> Iterator[TestClient]:
    with TestClient(create_app(world)) as c:
        yield c


def _logged_in(client: TestClient, username: str) -> TestClient:
    r = client.post("/login", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/catalog/items",
        "/catalog/institutions",
        "/catalog/qualifications",
        "/catalog/negative-list",
    ],
)
def test_pages_redirect_to_login_when_not_logged_in(client: TestClient, path: str) -> None:
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")


def test_items_page_filters_by_category(client: TestClient, browser_user: str) -> None:
    page = _logged_in(client, browser_user).get("/catalog/items", params={"category": "lab"})
    assert page.status_code == 200
    assert "肝功能" in page.text
    assert "胸部CT平扫" not in page.text


def test_htmx_filter_returns_only_the_table(client: TestClient, browser_user: str) -> None:
    r = _logged_in(client, browser_user).get(
        "/catalog/institutions", params={"level": "secondary"}, headers={"HX-Request": "true"}
    )
    assert "<html" not in r.text
    assert HOSP_C in r.text
    assert HOSP_A not in r.text


def test_qualifications_page_shows_marks(client: TestClient, browser_user: str) -> None:
    r = _logged_in(client, browser_user).get(
        "/catalog/qualifications", params={"institution": HOSP_A, "item": CT_CHEST}
    )
    assert '<span class="mark" title="JJJHR">—JJJHR</span>' in r.text
    assert '<span class="mark" title="HBHR">—HBHR</span>' in r.text


def test_negative_list_page_defaults_to_users_province_and_cites_source(
    client: TestClient, browser_user: str
) -> None:
    r = _logged_in(client, browser_user).get("/catalog/negative-list")
    assert "冀卫医政函" in r.text


@pytest.mark.browser
def test_browser_login_and_see_marks_on_qualifications_page(
    world: Container, browser_user: str
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with serve(world) as base, sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.goto(f"{base}/catalog/qualifications")
            expect(page).to_have_url(f"{base}/login?next=%2Fcatalog%2Fqualifications")
            page.fill("input[name=username]", browser_user)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{base}/catalog/qualifications")
            row = page.locator(f'tr[data-institution="{HOSP_A}"][data-item="{CT_CHEST}"]')
            expect(row.first.locator("td.effective span.mark")).to_have_text("—JJJHR")
            jjj = page.locator(
                f'tr[data-institution="{HOSP_A}"][data-item="{CT_CHEST}"][data-scope="JJJ"]'
            )
            expect(jjj.locator("span.mark").first).to_have_text("—JJJHR")
            # htmx filter: choose hospital B; its chest CT is qualified in 河北 only.
            page.select_option("select[name=institution]", HOSP_B)
            b_row = page.locator(f'tr[data-institution="{HOSP_B}"][data-item="{CT_CHEST}"]')
            expect(b_row.locator("td.effective span.mark")).to_have_text("—HBHR")
            expect(page.locator(f'tr[data-institution="{HOSP_A}"]')).to_have_count(0)
        finally:
            browser.close()
