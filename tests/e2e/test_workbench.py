"""The embeddable workbench page (R5): over HTTP as a HIS frames it, and in a real browser
(Debian chromium through Playwright) as a clinician uses it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from huren.adapters.db.tables import decision
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.fixtures.imaging import (
    COMPLETE,
    ct_report,
    store_complete_ct_study,
    store_thick_only_ct_study,
)
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import CT_CHEST, HOSP_A, HOSP_B


@pytest.fixture
def workbench(world: Container, login: Callable[..., dict[str, str]]) -> Iterator[tuple[str, str]]:
    """张三 has a chest CT — report and complete study (厚层, 薄层, MPR) — and a liver
    panel at hospital A; a clinician of hospital B orders both again. Yields (server base
    URL, the clinician's access token)."""
    ct = ct_report(HOSP_A)
    store(world, ct)
    store_complete_ct_study(world, ct)
    store(world, lab_panel(HOSP_A))
    token = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")[
        "Authorization"
    ].removeprefix("Bearer ")
    with serve(world) as base:
        yield base, token


@pytest.fixture
def no_results(world: Container, login: Callable[..., dict[str, str]]) -> Iterator[tuple[str, str]]:
    """The server before any result of 张三 arrived, and hospital B's clinician's token."""
    token = login(Role.CLINICIAN, institution=HOSP_B, department="呼吸内科")[
        "Authorization"
    ].removeprefix("Bearer ")
    with serve(world) as base:
        yield base, token


def item_section(page: str, code: str) -> str:
    """The HTML of one ordered item's section of the workbench page."""
    return page.split(f'data-item="{code}"', 1)[1].split("</section>", 1)[0]


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


@pytest.mark.parametrize(
    ("query", "message"),
    [
        # Found by a mutation fuzzer: an id beyond 64 bits was an unnamed 422 (SQLite could
        # not bind it; PostgreSQL: bigint out of range) …
        ({"patient": str(2**70)}, "平台患者 id 超出范围"),
        # … and an ordered code wider than the reminder's column, or holding a NUL, a 500
        # on PostgreSQL.
        ({"items": "B-LFT," + "B" * 65}, "项目代码过长：最多 64 个字符"),
        ({"items": "B-LFT\x00"}, "项目代码不能包含空字符 NUL"),
    ],
)
def test_page_with_a_value_that_cannot_be_recorded_names_it(
    workbench: tuple[str, str], query: dict[str, str], message: str
) -> None:
    base, token = workbench
    r = httpx.get(page_url(base, token, **query))
    assert r.status_code == 422
    assert message in r.text


def test_decision_with_an_id_beyond_64_bits_is_refused_naming_it(
    world: Container, workbench: tuple[str, str]
) -> None:
    base, token = workbench
    headers = {"Authorization": f"Bearer {token}"}
    form = {"item": "B-LFT", "action": "declined", "reason_code": "HB-6", "free_text": "病情变化"}
    r = httpx.post(
        f"{base}/workbench/decisions", data={**form, "result_id": str(2**70)}, headers=headers
    )
    assert r.status_code == 200  # an htmx fragment saying what is wrong
    assert "结果 id 超出范围" in r.text
    r = httpx.post(
        f"{base}/workbench/decisions",
        data={**form, "free_text": "病情\x00变化"},
        headers=headers,
    )
    assert "补充说明不能包含空字符 NUL" in r.text
    with world.engine.connect() as conn:
        assert conn.execute(select(decision)).all() == []
    report = httpx.get(f"{base}/workbench/results/{2**70}", params={"token": token})
    assert report.status_code == 422
    assert "结果 id 超出范围" in report.text


def test_full_report_shows_findings_and_conclusion_apart(workbench: tuple[str, str]) -> None:
    base, token = workbench
    page = httpx.get(page_url(base, token)).text
    href = page.split('href="/workbench/results/', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    r = httpx.get(f"{base}/workbench/results/{href}")
    assert r.status_code == 200
    assert "检查所见" in r.text
    assert "诊断结论（报告医师出具）" in r.text


def test_full_report_of_the_ct_links_to_its_image_viewer(workbench: tuple[str, str]) -> None:
    base, token = workbench
    ct = item_section(httpx.get(page_url(base, token)).text, CT_CHEST)
    href = ct.split('href="/workbench/results/', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    report = httpx.get(f"{base}/workbench/results/{href}").text
    result_id = href.split("?", 1)[0]
    assert f'class="btn secondary wb-viewer" href="/imaging/results/{result_id}?token=' in report


def test_ct_whose_images_have_not_arrived_is_not_proposed_and_says_so(
    world: Container, no_results: tuple[str, str]
) -> None:
    # Issue 4 §3; 沪卫医〔2024〕135号 四(二)2: a report without its study is incomplete.
    base, token = no_results
    store(world, ct_report(HOSP_A))
    ct = item_section(httpx.get(page_url(base, token)).text, CT_CHEST)
    assert "暂不建议互认" in ct
    assert "✗ 影像资料不完整：影像未上传：尚未收到该报告对应的 DICOM 影像" in ct


def test_ct_without_thin_slices_names_the_missing_series_until_they_arrive(
    world: Container, no_results: tuple[str, str]
) -> None:
    base, token = no_results
    report = ct_report(HOSP_A)
    store(world, report)
    store_thick_only_ct_study(world, report)
    before = item_section(httpx.get(page_url(base, token)).text, CT_CHEST)
    store_complete_ct_study(world, report)  # the PACS sends the rest; the 厚层 again
    after = item_section(httpx.get(page_url(base, token)).text, CT_CHEST)
    assert "✗ 影像资料不完整：缺少薄层序列（层厚 ≤ 1.5 mm）" in before
    assert '<span class="pill no">暂不建议互认</span>' in before
    assert '<span class="pill ok">可互认</span>' in after
    assert "✓ 影像资料完整" in after


def test_imaging_prior_links_to_the_image_viewer_and_lab_prior_does_not(
    workbench: tuple[str, str],
) -> None:
    base, token = workbench
    page = httpx.get(page_url(base, token)).text
    ct, lab = item_section(page, CT_CHEST), item_section(page, "JY-SH-001")
    href = ct.split('class="wb-viewer" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert href.startswith("/imaging/results/")
    assert "token=" in href  # a framed page has no cookie: the token goes along
    assert "wb-viewer" not in lab


def test_viewer_link_in_token_mode_opens_the_viewer_with_a_session_and_no_token_in_the_url(
    workbench: tuple[str, str],
) -> None:
    base, token = workbench
    page = httpx.get(page_url(base, token)).text
    href = item_section(page, CT_CHEST).split('class="wb-viewer" href="', 1)[1]
    href = href.split('"', 1)[0].replace("&amp;", "&")
    with httpx.Client(base_url=base, follow_redirects=True) as browser:
        viewer = browser.get(href)
        thumb = viewer.text.split('src="/dicomweb/', 1)[1].split('"', 1)[0]
        image = browser.get(f"/dicomweb/{thumb}")
    assert viewer.status_code == 200
    assert "token" not in str(viewer.url)
    assert viewer.text.count('class="series-btn"') == len(COMPLETE)
    assert "影像与报告完整" in viewer.text
    assert image.status_code == 200
    assert image.headers["content-type"].startswith("image/")


def test_viewer_link_with_an_invalid_token_goes_to_login_not_an_error(
    workbench: tuple[str, str],
) -> None:
    base, _ = workbench
    r = httpx.get(f"{base}/imaging/results/1?token=not-a-token")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")
    assert "set-cookie" not in r.headers


@pytest.mark.browser
def test_clinician_accepts_the_ct_and_declines_the_lab_panel_in_the_browser(
    world: Container, workbench: tuple[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token = workbench
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
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


# Counts the distinct grey levels of a loaded <img> drawn on a canvas: a blank or failed
# render has one (or none), a CT slice has many.
DISTINCT_GREYS = """img => {
  if (!img.complete || img.naturalWidth === 0) return 0;
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
  const seen = new Set();
  for (let i = 0; i < data.length; i += 4) seen.add(data[i]);
  return seen.size;
}"""


@pytest.mark.browser
def test_clinician_opens_the_image_viewer_of_the_recognizable_ct_from_the_workbench(
    workbench: tuple[str, str],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token = workbench
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(page_url(base, token))
            ct = page.locator(f"section[data-item='{CT_CHEST}']")
            expect(ct.locator(".pill.ok")).to_have_text("可互认")
            with context.expect_page() as opened:
                ct.locator("a.wb-viewer").click()
            viewer = opened.value
            viewer.wait_for_load_state("networkidle")
            assert "token" not in viewer.url

            expect(viewer.get_by_test_id("completeness")).to_have_text("影像与报告完整")
            buttons = viewer.locator(".series-btn")
            expect(buttons).to_have_count(len(COMPLETE))
            for series in COMPLETE:
                expect(viewer.locator(".viewer-series")).to_contain_text(series.description)
            thumbs = viewer.locator(".series-btn img")
            for i in range(len(COMPLETE)):
                thumb = thumbs.nth(i)
                thumb.scroll_into_view_if_needed()
                expect(thumb).to_have_js_property("complete", True)
                assert thumb.evaluate(DISTINCT_GREYS) > 16, f"缩略图 {i} 为空白"
            frame = viewer.locator("#frame")
            expect(viewer.locator("#position")).to_have_text("2 / 3")  # middle of the 厚层
            expect(frame).to_have_js_property("complete", True)
            assert frame.evaluate(DISTINCT_GREYS) > 16, "主图为空白"

            viewer.screenshot(path=str(ARTIFACTS / "workbench-viewer.png"), full_page=True)
        finally:
            browser.close()


@pytest.mark.browser
def test_clinician_sees_what_an_incomplete_ct_lacks_in_the_workbench_and_the_viewer(
    world: Container, no_results: tuple[str, str]
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, token = no_results
    report = ct_report(HOSP_A)
    store(world, report)
    store_thick_only_ct_study(world, report)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 414, "height": 900})
            page = context.new_page()
            page.goto(page_url(base, token))
            ct = page.locator(f"section[data-item='{CT_CHEST}']")
            expect(ct.locator(".pill.no")).to_have_text("暂不建议互认")
            expect(ct.locator(".wb-reasons li.blocks")).to_have_text(
                "✗ 影像资料不完整：缺少薄层序列（层厚 ≤ 1.5 mm）"
            )
            page.screenshot(path=str(ARTIFACTS / "workbench-incomplete-ct.png"), full_page=True)
            with context.expect_page() as opened:
                ct.locator("a.wb-viewer").click()
            viewer = opened.value
            expect(viewer.get_by_test_id("completeness")).to_contain_text(
                "缺少薄层序列（层厚 ≤ 1.5 mm）"
            )
            expect(viewer.locator(".series-btn")).to_have_count(1)
        finally:
            browser.close()


@pytest.mark.browser
def test_a_refused_decline_shows_why_and_keeps_the_form_to_correct_in_the_browser(
    world: Container, workbench: tuple[str, str]
) -> None:
    """“其他情形” without its text is refused: the message appears under the prior and the
    decline form — reason still chosen — stays, so the clinician adds the text and submits
    again (the refusal used to replace both forms, leaving only a reload)."""
    from playwright.sync_api import expect, sync_playwright

    base, token = workbench
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1400})  # a HIS frame
            page.goto(page_url(base, token))
            lab = page.locator("section[data-item='JY-SH-001']")
            lab.locator("summary", has_text="不予互认").click()
            lab.locator("select[name=reason_code]").select_option("HB-6")
            lab.get_by_role("button", name="确认重新检查").click()
            error = lab.locator(".wb-error")
            expect(error).to_contain_text("须填写具体原因")
            expect(lab.locator("select[name=reason_code]")).to_have_value("HB-6")
            expect(lab.get_by_role("button", name="接受互认")).to_be_visible()

            lab.locator("textarea[name=free_text]").fill("患者近日大量饮酒")
            lab.get_by_role("button", name="确认重新检查").click()
            expect(lab.locator(".patient-explanation")).to_contain_text("患者近日大量饮酒")
            expect(error).to_be_empty()
        finally:
            browser.close()
    with world.engine.connect() as conn:
        rows = conn.execute(select(decision.c.action, decision.c.reason_code)).all()
    assert [tuple(r) for r in rows] == [("declined", "HB-6")]
