"""The embeddable workbench page (R5): over HTTP as a HIS frames it, and in a real browser
(Debian chromium through Playwright) as a clinician uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from huren.adapters.db.tables import decision
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.e2e.live import serve
from tests.fixtures.results import ZHANG_SAN_ID, imaging_report, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def workbench(world: Container, login: Callable[..., dict[str, str]]) -> Iterator[tuple[str, str]]:
    """张三 has a chest CT and a liver panel at hospital A; a clinician of hospital B orders
    both again. Yields (server base URL, the clinician's access token)."""
    store(world, imaging_report(HOSP_A))
    store(world, lab_panel(HOSP_A))
    token = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")[
        "Authorization"
    ].removeprefix("Bearer ")
    with serve(world) as base:
        yield base, token


def page_url(base: str, token: str, **extra: str) -> str:
    query = {
        "patient": f"national_id:{ZHANG_SAN_ID}",
        "items": "B-CT-CHEST,B-LFT",
        "institution": HOSP_B,
        "token": token,
        **extra,
    }
    return f"{base}/workbench?{urlencode(query)}"


def test_page_opened_with_a_token_shows_both_priors_and_may_be_framed(
    workbench: tuple[str, str],
) -> None:
    base, token = workbench
    r = httpx.get(page_url(base, token))
    assert r.status_code == 200
    assert "frame-ancestors" in r.headers["content-security-policy"]
    assert "x-frame-options" not in r.headers
    assert "—JJJHR" in r.text
    assert "☆" in r.text
    assert "不包括医师出具的诊断结论" in r.text


def test_invalid_token_gets_a_401_page_not_a_500(workbench: tuple[str, str]) -> None:
    base, _ = workbench
    r = httpx.get(page_url(base, "not-a-token"))
    assert r.status_code == 401
    assert "令牌" in r.text or "登录" in r.text


def test_page_of_another_institution_is_forbidden(workbench: tuple[str, str]) -> None:
    base, token = workbench
    r = httpx.get(page_url(base, token, institution=HOSP_A))
    assert r.status_code == 403


def test_without_credentials_the_page_redirects_to_login(workbench: tuple[str, str]) -> None:
    base, _ = workbench
    r = httpx.get(f"{base}/workbench?patient=1&items=B-LFT")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")


def test_full_report_shows_findings_and_conclusion_apart(workbench: tuple[str, str]) -> None:
    base, token = workbench
    page = httpx.get(page_url(base, token)).text
    href = page.split('href="/workbench/results/', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    r = httpx.get(f"{base}/workbench/results/{href}")
    assert r.status_code == 200
    assert "检查所见" in r.text
    assert "诊断结论（报告医师出具）" in r.text


@pytest.mark.browser
def test_clinician_accepts_the_ct_and_declines_the_lab_panel_in_the_browser(
    world: Container, workbench: tuple[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token = workbench
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 414, "height": 1400})  # a phone-width frame
            page.goto(page_url(base, token))
            ct = page.locator("section[data-item='YX-CT-001']")
            lab = page.locator("section[data-item='JY-SH-001']")
            expect(ct.locator(".mark")).to_have_text("—JJJHR")
            expect(lab.locator(".mark")).to_have_text("☆")
            expect(lab.locator("table.obs")).to_contain_text("丙氨酸氨基转移酶")

            ct.get_by_role("button", name="接受互认").click()
            emr = ct.locator("textarea.emr-text")
            expect(emr).to_be_visible()
            expect(emr).to_have_value(
                __import__("re").compile(
                    r"^【医学检查检验互认项目】胸部CT平扫.*报告单编号：CT", __import__("re").S
                )
            )

            lab.locator("summary", has_text="不予互认").click()
            lab.locator("select[name=reason_code]").select_option("HB-2")
            lab.get_by_role("button", name="确认重新检查").click()
            explanation = lab.locator(".patient-explanation")
            expect(explanation).to_contain_text("重新检查的目的")

            page.screenshot(path=str(ARTIFACTS / "workbench.png"), full_page=True)
        finally:
            browser.close()
    with world.engine.connect() as conn:
        rows = conn.execute(select(decision.c.action, decision.c.reason_code)).all()
    assert sorted(tuple(r) for r in rows) == [("accepted", ""), ("declined", "HB-2")]
