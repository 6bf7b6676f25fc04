"""The insurer's verification page and the institution's patient-account binding page in
a real browser (Debian chromium through Playwright): upload a claims CSV, see the flagged
line, download the report; bind a patient at the counter, who then logs in on a phone
with the one-time code. Screenshots go to tests/e2e/artifacts/."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from huren.api.auth import SESSION_COOKIE
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.identity import mask_id
from huren.services.portal import LogCodeSender
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.fixtures.results import LI_SI_ID, ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B, LFT

pytestmark = pytest.mark.browser

CLAIMS = [
    ["结算单号", "明细序号", "证件类型", "证件号码", "机构编码", "互认项目编码", "服务日期"],
    ["JS2026061500001", "1", "身份证", ZHANG_SAN_ID, HOSP_B, LFT, "2026-06-15"],
    ["JS2026061500002", "1", "身份证", LI_SI_ID, HOSP_B, LFT, "2026-06-15"],
]
PHONE = {"width": 390, "height": 844}


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8-sig")


@pytest.fixture
def site(world: Container, login: Callable[..., dict[str, str]]) -> Iterator[dict[str, Any]]:
    """张三's liver panel at hospital A two days before hospital B billed another."""
    store(world, lab_panel(HOSP_A))

    def token(headers: dict[str, str]) -> str:
        return headers["Authorization"].removeprefix("Bearer ")

    sender = world.sharing.portal.sender
    assert isinstance(sender, LogCodeSender)
    with serve(world) as base:
        yield {
            "base": base,
            "sms": sender,
            "insurer": token(login(Role.INSURER, jurisdiction="HE")),
            "admin": token(login(Role.INSTITUTION_ADMIN, institution=HOSP_A)),
        }


def _page(browser: Any, base: str, token: str) -> Any:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    ctx.add_cookies([{"name": SESSION_COOKIE, "value": token, "url": base}])
    return ctx.new_page()


def test_an_insurer_uploads_claims_sees_the_flagged_line_and_downloads_the_report(
    site: dict[str, Any], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    base = site["base"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _page(browser, base, site["insurer"])
            page.goto(f"{base}/")
            page.click("nav a:has-text('医保核查')")
            page.wait_for_selector("#upload-form")
            page.set_input_files(
                "#upload-form input[name=file]",
                {"name": "claims.csv", "mimeType": "text/csv", "buffer": _csv(CLAIMS)},
            )
            page.click("#upload-form button:has-text('上传并核查')")
            page.wait_for_selector("#verdicts")
            assert page.locator("#verdicts tbody tr").count() == 2
            flagged = page.locator("#verdicts tr.flagged")
            assert flagged.count() == 1
            row = flagged.inner_text()
            assert "JS2026061500001" in row
            assert "存在可互认结果，重复检查未记录不予互认理由" in row
            assert "无记录" in row  # no decision recorded
            assert "共 2 条明细，疑点 1 条" in page.inner_text("#summary")
            assert ZHANG_SAN_ID not in page.content()
            page.screenshot(path=str(ARTIFACTS / "insurer-verify.png"), full_page=True)

            with page.expect_download() as got:
                page.click("#download-csv")
            download = got.value
            assert download.suggested_filename.startswith("医保核查报告-")
            assert download.suggested_filename.endswith(".csv")
            target = tmp_path / "report.csv"
            download.save_as(target)
            rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8-sig"))))
            assert rows[0][0] == "结算单号"
            assert [r[0] for r in rows[1:]] == ["JS2026061500001", "JS2026061500002"]
            assert "重复检查未记录" in rows[1][12]
            assert rows[1][2] == mask_id(ZHANG_SAN_ID)

            with page.expect_download() as got:
                page.click("#download-xlsx")
            xlsx = tmp_path / "report.xlsx"
            got.value.save_as(xlsx)
            ws = load_workbook(xlsx).active
            assert ws is not None
            assert ws.cell(2, 1).value == "JS2026061500001"
        finally:
            browser.close()


def test_a_claims_file_with_a_bad_date_is_refused_naming_row_and_column(
    site: dict[str, Any],
) -> None:
    from playwright.sync_api import sync_playwright

    base = site["base"]
    bad = [*CLAIMS, ["JS2026061500003", "1", "身份证", ZHANG_SAN_ID, HOSP_B, LFT, "2026-02-30"]]
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _page(browser, base, site["insurer"])
            page.goto(f"{base}/insurer")
            page.set_input_files(
                "#upload-form input[name=file]",
                {"name": "claims.csv", "mimeType": "text/csv", "buffer": _csv(bad)},
            )
            page.click("#upload-form button:has-text('上传并核查')")
            page.wait_for_selector("#error")
            error = page.inner_text("#error")
            assert "第 4 行: service_date" in error
            assert "服务日期无效: 2026-02-30" in error
            assert page.locator("#verdicts").count() == 0
        finally:
            browser.close()


def test_staff_bind_a_patient_who_then_logs_in_on_a_phone(site: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    base, sms = site["base"], site["sms"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = _page(browser, base, site["admin"])
            page.goto(f"{base}/")
            page.click("nav a:has-text('患者账号绑定')")
            page.wait_for_selector("#bind-form")
            assert page.locator("#no-bindings").count() == 1
            page.select_option("#bind-form select[name=identifier_kind]", "national_id")
            page.fill("#bind-form input[name=identifier]", ZHANG_SAN_ID)
            page.fill("#bind-form input[name=phone]", "138 1234 5678")
            page.check("#bind-form input[name=verified]")
            page.click("#bind-form button:has-text('绑定')")
            page.wait_for_selector("#bound")
            bound = page.inner_text("#bound")
            assert "已为患者 张* 开通患者端账号" in bound
            assert mask_id(ZHANG_SAN_ID) in bound
            assert "138****5678" in bound
            listing = page.inner_text("#bindings")
            assert f"居民身份证 {mask_id(ZHANG_SAN_ID)}" in listing
            assert ZHANG_SAN_ID not in page.content()
            assert "13812345678" not in page.content()
            assert page.input_value("#bind-form input[name=identifier]") == ""
            page.screenshot(path=str(ARTIFACTS / "patient-binding.png"), full_page=True)

            phone = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
            phone.goto(f"{base}/patient/login")
            phone.fill("input[name=identifier]", ZHANG_SAN_ID)
            phone.click("text=获取验证码")
            phone.wait_for_selector("input[name=code]")
            number, text = sms.sent[-1]
            assert number == "13812345678"
            code = re.search(r"验证码为 (\d{6})", text)
            assert code
            phone.fill("input[name=code]", code.group(1))
            phone.click("button:has-text('登录')")
            phone.wait_for_selector("#my-results")
            assert phone.locator(".result-card").count() == 1
        finally:
            browser.close()
