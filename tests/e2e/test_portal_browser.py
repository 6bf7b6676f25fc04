"""The patient portal in a real browser (Debian chromium through Playwright) on a phone:
one-time-code login, my results with where they were recognized, a report, who read my
results, and a correction request. Screenshots go to tests/e2e/artifacts/."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import insert

from huren.adapters.db.tables import decision
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.services.portal import LogCodeSender
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.fixtures.results import ZHANG_SAN_ID, imaging_report, lab_panel, store
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B
from tests.integration.sharing_helpers import principal

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
ZHANG = PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID)


@pytest.fixture
def portal(world: Container) -> Iterator[tuple[str, LogCodeSender]]:
    """张三: a liver panel and a chest CT at hospital A; hospital B declined the CT (急诊)
    and a clinician of B read it; 张三's account bound at hospital A's counter."""
    store(world, lab_panel(HOSP_A))
    ct = store(world, imaging_report(HOSP_A)).results[0].result_id
    patient_id = world.results.get_result(ct).patient_id
    with world.engine.begin() as c:
        c.execute(
            insert(decision).values(
                at=world.clock.now(),
                institution_code=HOSP_B,
                clinician="dr.liu",
                patient_id=patient_id,
                item_code=CT_CHEST,
                result_id=ct,
                result_version=1,
                action="declined",
                reason_code="HB-4",
                patient_explanation="您目前处于急诊状态，需要立即复查以指导抢救。",
            )
        )
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B, name="刘德华")
    world.sharing.retrieval.open_report(doctor, ct, "emergency")
    admin = principal(world, Role.INSTITUTION_ADMIN, institution=HOSP_A)
    world.sharing.portal.bind(admin, ZHANG, "13812345678")
    sender = world.sharing.portal.sender
    assert isinstance(sender, LogCodeSender)
    with serve(world) as base:
        yield base, sender


def test_a_patient_logs_in_by_code_and_uses_the_portal_on_a_phone(
    portal: tuple[str, LogCodeSender],
) -> None:
    from playwright.sync_api import sync_playwright

    base, sms = portal
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(
                viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            page.goto(f"{base}/patient")
            assert page.url.endswith("/patient/login")
            page.fill("input[name=identifier]", ZHANG_SAN_ID)
            page.click("text=获取验证码")
            page.wait_for_selector("input[name=code]")
            assert "验证码已发送" in page.inner_text("main")
            page.screenshot(path=str(ARTIFACTS / "portal-login.png"), full_page=True)
            match = re.search(r"验证码为 (\d{6})", sms.sent[-1][1])
            assert match
            page.fill("input[name=code]", match.group(1))
            page.click("button:has-text('登录')")
            page.wait_for_selector("#my-results")
            cards = page.locator(".result-card")
            assert cards.count() == 2
            assert "张三，您好" in page.inner_text("h1")
            assert "未互认" in page.inner_text("#my-results")
            assert "急诊" in page.inner_text("#my-results")
            # mobile-first: nothing wider than the phone
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / "portal-results.png"), full_page=True)

            page.locator(".result-card a", has_text="胸部CT平扫").click()
            page.wait_for_selector("#report")
            assert "磨玻璃结节" in page.inner_text(".findings")
            assert "抢救" in page.inner_text("#decisions")
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / "portal-report.png"), full_page=True)

            page.fill("#correction textarea", "报告上的检查日期与我实际检查的日期不一致")
            page.click("#correction button")
            page.wait_for_selector("#filed")
            assert "纠错申请已提交" in page.inner_text("#filed")

            page.click("text=调阅记录")
            page.wait_for_selector("#readers")
            readers = page.inner_text("#readers")
            assert "保定市第一中心医院" in readers
            assert "急诊急救" in readers
            assert "刘德华" not in readers
            assert "刘**" in readers
            page.screenshot(path=str(ARTIFACTS / "portal-audit.png"), full_page=True)
        finally:
            browser.close()


def test_a_wrong_code_keeps_the_patient_out(portal: tuple[str, LogCodeSender]) -> None:
    from playwright.sync_api import sync_playwright

    base, sms = portal
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport=PHONE)
            page.goto(f"{base}/patient/login")
            page.fill("input[name=identifier]", ZHANG_SAN_ID)
            page.click("text=获取验证码")
            page.wait_for_selector("input[name=code]")
            good = re.search(r"验证码为 (\d{6})", sms.sent[-1][1])
            assert good
            page.fill("input[name=code]", "000000" if good.group(1) != "000000" else "111111")
            page.click("button:has-text('登录')")
            page.wait_for_selector("[role=alert]")
            assert "验证码错误" in page.inner_text("[role=alert]")
            page.goto(f"{base}/patient")
            assert page.url.endswith("/patient/login")
        finally:
            browser.close()
