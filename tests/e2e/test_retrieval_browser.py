"""The clinician's retrieval page and the correction queue in a real browser (Debian
chromium through Playwright): look a patient up with a purpose, open a report, file a
correction; the producing hospital's administrator corrects it; the earlier version stays
readable. Screenshots go to tests/e2e/artifacts/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from huren.api.auth import SESSION_COOKIE
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.fixtures.results import ZHANG_SAN_ID, imaging_report, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.sharing_helpers import audit_rows

pytestmark = pytest.mark.browser


@pytest.fixture
def site(world: Container, login: Callable[..., dict[str, str]]) -> Iterator[dict[str, Any]]:
    lft = store(world, lab_panel(HOSP_A)).results[0].result_id
    store(world, imaging_report(HOSP_A))

    def token(headers: dict[str, str]) -> str:
        return headers["Authorization"].removeprefix("Bearer ")

    with serve(world) as base:
        yield {
            "base": base,
            "lft": lft,
            "doctor": token(login(Role.CLINICIAN, institution=HOSP_B)),
            "admin": token(login(Role.INSTITUTION_ADMIN, institution=HOSP_A)),
        }


def _context(browser: Any, base: str, token: str) -> Any:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.add_cookies([{"name": SESSION_COOKIE, "value": token, "url": base}])
    return ctx


def test_a_clinician_retrieves_opens_and_files_a_correction_that_the_producer_corrects(
    site: dict[str, Any], world: Container
) -> None:
    from playwright.sync_api import sync_playwright

    base = site["base"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _context(browser, base, site["doctor"]).new_page()
            page.goto(f"{base}/retrieval")
            page.fill("input[name=identifier]", ZHANG_SAN_ID)
            page.select_option("select[name=purpose]", "referral")
            page.click("button:has-text('查询')")
            page.wait_for_selector("#results table")
            rows = page.locator("#results tbody tr")
            assert rows.count() == 2
            listing = page.inner_text("#results")
            assert "张*" in listing
            assert ZHANG_SAN_ID not in listing
            assert "☆" in listing
            assert "—JJJHR" in listing
            page.screenshot(path=str(ARTIFACTS / "retrieval-list.png"), full_page=True)

            rows.filter(has_text="肝功能").locator("a").click()
            page.wait_for_selector("#report")
            assert "转诊" in page.inner_text("main")
            assert "↑" in page.inner_text("table.obs")  # ALT 56 above 9–50
            page.fill("#file-correction textarea", "ALT 原始记录为 36 U/L，平台显示 56")
            page.click("#file-correction button")
            page.wait_for_selector("#filed")
            page.screenshot(path=str(ARTIFACTS / "retrieval-report-filed.png"), full_page=True)

            admin = _context(browser, base, site["admin"]).new_page()
            admin.goto(f"{base}/corrections")
            admin.wait_for_selector("#queue")
            admin.click("#queue a:has-text('处理')")
            admin.wait_for_selector("#accept")
            admin.fill("input[name='obs:ALT']", "36")
            admin.select_option("select[name='flag:ALT']", "N")
            admin.fill("#accept textarea[name=reason]", "LIS 传输错误，已按原始记录更正")
            admin.screenshot(path=str(ARTIFACTS / "corrections-review.png"), full_page=True)
            admin.click("#accept button")
            admin.wait_for_selector("text=已更正")
            assert "第 2 版" in admin.inner_text("#request")

            page.goto(f"{base}/inbox")
            assert "结果已更正" in page.inner_text("#inbox") or "纠错申请已更正" in page.inner_text(
                "#inbox"
            )
            page.goto(f"{base}/retrieval/results/{site['lft']}?purpose=referral")
            assert "36" in page.inner_text("table.obs")
            page.click("#versions a:has-text('查看')")
            page.wait_for_selector("text=正在查看历史版本")
            assert "56" in page.inner_text("table.obs")
            page.screenshot(path=str(ARTIFACTS / "retrieval-versions.png"), full_page=True)
        finally:
            browser.close()
    assert audit_rows(world, result_id=site["lft"], action="version") == 1


def test_a_lookup_without_a_purpose_is_refused_on_the_page(site: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    base = site["base"]
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _context(browser, base, site["doctor"]).new_page()
            page.goto(f"{base}/retrieval")
            page.fill("input[name=identifier]", ZHANG_SAN_ID)
            page.evaluate(
                "document.querySelector('select[name=purpose]').removeAttribute('required')"
            )
            page.click("button:has-text('查询')")
            page.wait_for_selector("[role=alert]")
            assert "调阅须说明目的" in page.inner_text("[role=alert]")
        finally:
            browser.close()
