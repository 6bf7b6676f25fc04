"""What a walk through the integration engineer's pages (issue 7 §7, §3) turned up, kept
fixed: an accepted message showed the intake's internal JSON (``[1004, 1, "created", …,
null, null]``) instead of what was stored, an unmapped result not flagged; the 未对码
page promised that stored results are re-mapped "automatically" while nothing re-mapped
them and no page could map a code; the operator's list of institutions put the ones
sending (and failing) among hundreds that never sent, in code order; the rejected list
was headed 上传消息, and a page of older messages had no way back to the newest.

Over HTTP (TestClient) for the pages' content, and once in Debian chromium (Playwright):
hospital B's 机构管理员 maps its unmapped code from the page and the list empties."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from huren.adapters.db.tables import result
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.accounts import NewAccount
from huren.services.intake import Channel
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.fixtures.actors import SEED, Login
from tests.fixtures.hl7 import (
    CBC_V23_GB18030,
    LAB_LFT_V251,
    sample_bytes,
    sample_text,
    with_control_id,
    with_field,
)
from tests.fixtures.world import BJ1, CBC, HOSP_A, HOSP_B

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.fixture
def traffic(world: Container) -> None:
    """Hospital A: its liver panel accepted (mapped), one message refused (OBR-3 empty).
    Hospital B: a GB 18030 blood count whose local code B-CBC is not in its code map."""
    receiver = Hl7Receiver(
        world.intake, world.clock, Channel.HL7V2_MLLP, SqlResponseLog(world.engine)
    )
    receiver.handle(sample_bytes(LAB_LFT_V251))
    refused = with_field(with_control_id(sample_text(LAB_LFT_V251), "A-BAD-1"), "OBR", 3, "")
    receiver.handle(refused.encode())
    receiver.handle(sample_bytes(CBC_V23_GB18030))


def _only_message(client: TestClient, headers: dict[str, str]) -> int:
    (row,) = client.get("/api/v1/integration/messages", headers=headers).json()
    return int(row["id"])


def _item_code_of_b_cbc(world: Container) -> str | None:
    with world.engine.connect() as conn:
        found: str | None = conn.execute(
            select(result.c.item_code).where(
                result.c.institution_code == HOSP_B, result.c.local_code == "B-CBC"
            )
        ).scalar_one()
    return found


# ---------------------------------------------------------------- one message
@pytest.mark.usefixtures("traffic")
def test_an_accepted_message_shows_what_was_stored_with_the_unmapped_result_flagged(
    client: TestClient, login: Login
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    page = client.get(f"/integration/messages/{_only_message(client, headers)}", headers=headers)
    assert page.status_code == 200
    assert 'id="stored"' in page.text
    row = re.search(r'<tr data-result="\d+">(.*?)</tr>', page.text, re.S)
    assert row is not None
    assert "新建" in row.group(1)
    assert "<code>B-CBC</code>" in row.group(1)
    assert "未对码" in row.group(1)
    assert 'href="/integration/unmapped"' in row.group(1)
    # Not the intake's internal answer: no disposition keys, no JSON nulls.
    assert '"created"' not in page.text
    assert "null" not in page.text


@pytest.mark.usefixtures("traffic")
def test_a_mapped_result_is_shown_by_its_item_and_mark(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    accepted = client.get("/api/v1/integration/messages?status=accepted", headers=headers).json()
    page = client.get(f"/integration/messages/{accepted[0]['id']}", headers=headers).text
    row = re.search(r'<tr data-result="\d+">(.*?)</tr>', page, re.S)
    assert row is not None
    lft = world.catalog.get().items["JY-SH-001"]
    assert f"{lft.name}（{lft.code}）" in row.group(1)
    assert "未对码" not in row.group(1)


@pytest.mark.usefixtures("traffic")
def test_a_rejected_message_keeps_the_ack_with_the_field_and_leads_back_to_the_rejected(
    client: TestClient, login: Login
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    (bad,) = client.get("/api/v1/integration/messages?status=rejected", headers=headers).json()
    page = client.get(f"/integration/messages/{bad['id']}", headers=headers).text
    assert "OBR[1]-3" in page
    assert 'id="response"' in page
    assert "MSA|AE|A-BAD-1|" in page
    assert 'id="stored"' not in page
    assert '<a href="/integration/messages?status=rejected">← 拒收消息</a>' in page


# ---------------------------------------------------------------- 对码 from the page
def _csrf(client: TestClient, headers: dict[str, str], page: str = "/integration/unmapped") -> str:
    found = CSRF.search(client.get(page, headers=headers).text)
    assert found is not None, f"{page} offers this account no form"
    return found.group(1)


@pytest.mark.usefixtures("traffic")
def test_the_institution_admin_maps_a_code_on_the_page_and_stored_results_are_remapped(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    assert _item_code_of_b_cbc(world) is None
    form = {
        "csrf": _csrf(client, headers),
        "institution": HOSP_B,
        "local_code": "B-CBC",
        "local_name": "血常规五分类",
        "unified_code": CBC,
    }
    done = client.post("/integration/unmapped", data=form, headers=headers)
    assert done.status_code == 200, done.text
    assert "已保存的 1 条结果已重新对码" in done.text
    assert 'id="all-mapped"' in done.text
    assert _item_code_of_b_cbc(world) == CBC
    assert world.catalog.get().unified_code(HOSP_B, "B-CBC") == CBC
    listed = client.get("/api/v1/integration/unmapped", headers=headers).json()
    assert listed["codes"] == []


@pytest.mark.usefixtures("traffic")
def test_a_message_whose_result_was_mapped_since_says_so(client: TestClient, login: Login) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    message = f"/integration/messages/{_only_message(client, headers)}"
    form = {"csrf": _csrf(client, headers), "institution": HOSP_B, "local_code": "B-CBC"}
    client.post("/integration/unmapped", data=form | {"unified_code": CBC}, headers=headers)
    page = client.get(message, headers=headers).text
    assert f"接收时未对码，已补充对码为 血常规（{CBC}）" in page
    assert "去对码" not in page


@pytest.mark.usefixtures("traffic")
def test_an_unknown_unified_code_is_refused_on_the_page_and_nothing_changes(
    client: TestClient, login: Login, world: Container
) -> None:
    headers = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    form = {
        "csrf": _csrf(client, headers),
        "institution": HOSP_B,
        "local_code": "B-CBC",
        "unified_code": "NO-SUCH-ITEM",
    }
    refused = client.post("/integration/unmapped", data=form, headers=headers)
    assert refused.status_code == 422
    assert "统一编码 NO-SUCH-ITEM 不存在" in refused.text
    assert 'value="NO-SUCH-ITEM"' in refused.text  # what was entered stays in its row
    assert _item_code_of_b_cbc(world) is None
    assert world.catalog.get().unified_code(HOSP_B, "B-CBC") is None


@pytest.mark.usefixtures("traffic")
def test_mapping_needs_the_pages_token_and_the_institutions_own_admin(
    client: TestClient, login: Login, world: Container
) -> None:
    form = {"institution": HOSP_B, "local_code": "B-CBC", "unified_code": CBC}
    admin_b = login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    assert (
        client.post("/integration/unmapped", data=form | {"csrf": "0" * 64}, headers=admin_b)
    ).status_code == 403
    admin_a = login(Role.INSTITUTION_ADMIN, institution=HOSP_A)
    token_a = _csrf(client, admin_a, "/integration/credentials")  # A has nothing unmapped
    other = client.post("/integration/unmapped", data=form | {"csrf": token_a}, headers=admin_a)
    assert other.status_code == 403
    interface = login(Role.INTEGRATION, institution=HOSP_B)
    page = client.get("/integration/unmapped", headers=interface).text
    assert "B-CBC" in page
    assert 'name="csrf"' not in page
    assert "由该机构的机构管理员" in page
    assert client.post("/integration/unmapped", data=form, headers=interface).status_code == 403
    assert _item_code_of_b_cbc(world) is None


@pytest.mark.usefixtures("traffic")
def test_the_unmapped_page_no_longer_promises_an_automatic_remap(
    client: TestClient, login: Login
) -> None:
    page = client.get(
        "/integration/unmapped", headers=login(Role.INSTITUTION_ADMIN, institution=HOSP_B)
    ).text
    assert "平台会自动重新对码" not in page


# ---------------------------------------------------------------- lists
@pytest.mark.usefixtures("traffic")
def test_the_operators_institutions_put_those_failing_and_sending_before_the_silent(
    client: TestClient, login: Login
) -> None:
    page = client.get("/integration/unmapped", headers=login(Role.OPERATOR)).text
    order = re.findall(r'href="/integration/unmapped\?institution=([^"]+)"', page)
    # Hospital A refused one of two today (failing), B sent one, BJ1 never sent.
    assert order.index(HOSP_A) < order.index(HOSP_B) < order.index(BJ1)
    assert f'href="/integration/messages?institution={HOSP_A}"' in page


@pytest.mark.usefixtures("traffic")
def test_the_rejected_list_says_so_and_an_older_page_leads_back_to_the_newest(
    client: TestClient, login: Login
) -> None:
    headers = login(Role.INTEGRATION, institution=HOSP_A)
    rejected = client.get("/integration/messages?status=rejected", headers=headers).text
    assert "<h1>拒收消息</h1>" in rejected
    assert 'href="/integration/messages?status=rejected" aria-current="page"' in rejected
    older = client.get("/integration/messages?status=rejected&before=1", headers=headers).text
    assert "没有更早的消息了" in older
    assert 'id="newest" href="/integration/messages?status=rejected&channel=&' in older


# ---------------------------------------------------------------- in a browser
ADMIN, PASSWORD = "admin-b", "admin-b-password"


@pytest.fixture
def site(world: Container, traffic: None) -> Iterator[str]:
    world.accounts.create_account(
        NewAccount(ADMIN, "医院B 信息科", Role.INSTITUTION_ADMIN, institution=HOSP_B),
        PASSWORD,
        actor=SEED,
    )
    with serve(world) as base:
        yield base


@pytest.mark.browser
def test_an_engineer_finds_the_unmapped_result_of_a_message_and_maps_it(
    site: str, world: Container
) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page: Any = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{site}/login?next=/integration/messages")
            page.fill("input[name=username]", ADMIN)
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text('登录')")
            page.wait_for_url("**/integration/messages")
            page.click("#messages tbody tr:first-child a")
            page.wait_for_selector("#stored")
            assert "未对码" in page.inner_text("#stored")
            page.screenshot(path=str(ARTIFACTS / "integration-message-stored.png"), full_page=True)

            page.click("#stored a:has-text('去对码')")
            page.wait_for_selector("tr[data-local-code='B-CBC']")
            row = page.locator("tr[data-local-code='B-CBC']")
            row.locator("input[name=unified_code]").fill(CBC)
            row.locator("button:has-text('对码')").click()
            page.wait_for_selector("#notice")
            assert "已保存的 1 条结果已重新对码" in page.inner_text("#notice")
            assert page.locator("#all-mapped").count() == 1
            page.screenshot(path=str(ARTIFACTS / "integration-mapped.png"), full_page=True)
        finally:
            browser.close()
    assert _item_code_of_b_cbc(world) == CBC
