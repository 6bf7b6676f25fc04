"""The 接口凭据 page in a real browser (Debian chromium through Playwright): a hospital's
机构管理员 logs in with a password, creates an API key for its LIS interface account and
sees it once, registers the HIS's CDS client from a JWK Set file, and revokes the key
after a confirmation — each checked against the platform over HTTP — and finds each
change in 变更记录 with their name. Screenshots go to
tests/e2e/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.accounts import NewAccount
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.e2e.test_cds_client_jwt import Signer
from tests.fixtures.actors import SEED
from tests.fixtures.world import HOSP_A

pytestmark = pytest.mark.browser

ADMIN, PASSWORD = "admin-a", "admin-a-password"
HIS = "https://his.hosp-a.example/"


@pytest.fixture
def site(world: Container) -> Iterator[str]:
    world.accounts.create_account(
        NewAccount(ADMIN, "医院A 信息科", Role.INSTITUTION_ADMIN, institution=HOSP_A),
        PASSWORD,
        actor=SEED,
    )
    world.accounts.create_account(
        NewAccount("lis-a", "检验科 LIS 接口", Role.INTEGRATION, institution=HOSP_A), actor=SEED
    )
    with serve(world) as base:
        yield base


def _me(base: str, key: str) -> int:
    return httpx.get(f"{base}/api/v1/auth/me", headers={"X-API-Key": key}).status_code


def test_an_admin_creates_a_key_registers_a_cds_client_and_revokes_the_key(
    site: str, world: Container
) -> None:
    from playwright.sync_api import sync_playwright

    base = site
    signer = Signer("ES384", kid="his-a-2026")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page: Any = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/login?next=/integration/messages")
            page.fill("input[name=username]", ADMIN)
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text('登录')")
            page.wait_for_url("**/integration/messages")
            page.click(".integration-nav a:has-text('接口凭据')")
            page.wait_for_selector("section.interface-account[data-username=lis-a]")
            account = page.locator("section.interface-account[data-username=lis-a]")
            assert "尚无 API 密钥" in account.inner_text()

            # A key for the LIS, shown once.
            account.locator("input[name=label]").fill("LIS 生产环境")
            account.locator("button:has-text('创建 API 密钥')").click()
            page.wait_for_selector("#new-key")
            assert "它只显示这一次" in page.inner_text("#shown-once")
            key = page.inner_text("#new-key-value").strip()
            prefix = "_".join(key.split("_")[:2])
            assert _me(base, key) == 200
            page.screenshot(path=str(ARTIFACTS / "credentials-new-key.png"), full_page=True)
            page.goto(f"{base}/integration/credentials")
            assert key not in page.content()
            row = page.locator(f"tr[data-prefix='{prefix}']")
            assert "LIS 生产环境" in row.inner_text()
            assert "有效" in row.inner_text()

            # The HIS's CDS client, its JWK Set uploaded as a file.
            form = page.locator("#register-form")
            form.locator("input[name=issuer]").fill(HIS)
            form.locator("input[name=label]").fill("HIS 医嘱系统")
            form.locator("input[name=jwks_file]").set_input_files(
                {
                    "name": "his-jwks.json",
                    "mimeType": "application/json",
                    "buffer": signer.jwks().encode(),
                }
            )
            form.locator("button:has-text('登记')").click()
            page.wait_for_selector("#notice")
            assert f"已登记 CDS 客户端 {HIS}" in page.inner_text("#notice")
            client_row = page.locator(f"tr[data-issuer='{HIS}']")
            assert "his-a-2026" in client_row.inner_text()
            assert "HIS 医嘱系统" in client_row.inner_text()
            now = world.clock.now()
            aud = f"{base}/cds-services/huren-order-select"
            who = world.cds_clients.principal_from_jwt(signer.token(aud, now, iss=HIS), [aud])
            assert who.username == "lis-a"

            # Revoking the key asks first.
            page.locator(f"tr[data-prefix='{prefix}'] a:has-text('吊销')").click()
            page.wait_for_selector("#confirm-form")
            assert prefix in page.inner_text("#confirm")
            assert _me(base, key) == 200
            page.screenshot(path=str(ARTIFACTS / "credentials-revoke-confirm.png"), full_page=True)
            page.click("#confirm-form button:has-text('确认吊销')")
            page.wait_for_selector("#notice")
            assert f"已吊销 API 密钥 {prefix}" in page.inner_text("#notice")
            assert "已吊销" in page.locator(f"tr[data-prefix='{prefix}']").inner_text()
            assert _me(base, key) == 401
            page.screenshot(path=str(ARTIFACTS / "credentials-revoked.png"), full_page=True)

            # 变更记录: each change with who made it, newest first.
            history = page.locator("#history tr[data-action]")
            actions = [history.nth(i).get_attribute("data-action") for i in range(4)]
            assert actions == [
                "api_key_revoked",
                "cds_client_registered",
                "api_key_created",
                "account_created",  # lis-a, by the test's set-up
            ]
            newest = history.first.inner_text()
            assert "医院A 信息科（admin-a，机构管理员）" in newest
            assert "吊销 API 密钥" in newest
            assert prefix in newest
            page.locator("#history").screenshot(path=str(ARTIFACTS / "credentials-history.png"))
        finally:
            browser.close()
