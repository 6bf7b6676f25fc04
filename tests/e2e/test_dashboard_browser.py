"""The regulator dashboard in a real browser (Debian chromium through Playwright): the
charts render and the drill-down goes 省 → 市 → 机构 → 科室 → 医师 through htmx partials."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.e2e.browser import ARTIFACTS, launch
from tests.e2e.live import serve
from tests.fixtures import governance as gv
from tests.fixtures import world as w

# Counts canvas pixels that are drawn (not transparent, not near-white).
INK_JS = """(sel) => {
  const c = document.querySelector(sel + ' canvas');
  if (!c) return -1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0 && (d[i] < 235 || d[i + 1] < 235 || d[i + 2] < 235)) n++;
  }
  return n;
}"""


@pytest.fixture
def dashboard(world: Container, login: Callable[..., dict[str, str]]) -> Iterator[tuple[str, str]]:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    world.monitoring.refresh()
    token = login(Role.REGULATOR, jurisdiction="HE")["Authorization"].removeprefix("Bearer ")
    with serve(world) as base:
        yield base, token


def _ink_in_screenshot(path: Path, box: dict[str, float]) -> int:
    img = Image.open(path).convert("RGB")
    crop = img.crop(
        (int(box["x"]), int(box["y"]), int(box["x"] + box["width"]), int(box["y"] + box["height"]))
    )
    pixels = crop.tobytes()
    return sum(
        1
        for i in range(0, len(pixels), 3)
        if pixels[i] < 235 or pixels[i + 1] < 235 or pixels[i + 2] < 235
    )


@pytest.mark.browser
def test_dashboard_charts_render_and_drill_down_reaches_clinicians(
    dashboard: tuple[str, str],
) -> None:
    from playwright.sync_api import sync_playwright

    base, token = dashboard
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
            context.add_cookies([{"name": "huren_session", "value": token, "url": base}])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/dashboard?month_from=2026-01&month_to=2026-06")

            page.wait_for_selector("#drill-table[data-level=province]")
            assert page.evaluate(INK_JS, "#trend-chart") > 500
            page.click("#drill-table >> text=河北省")
            page.wait_for_selector("#drill-table[data-level=city]")
            page.click("#drill-table >> text=保定市")
            page.wait_for_selector("#drill-table[data-level=institution]")
            assert page.locator("#drill-table >> text=保定市第一医院").count() == 1
            page.click(f"#drill-table >> text={'保定市第一中心医院'}")
            page.wait_for_selector("#drill-table[data-level=department]")
            page.click("#drill-table a.drill-link >> nth=0")
            page.wait_for_selector("#drill-table[data-level=clinician]")
            assert page.evaluate(INK_JS, "#drill-chart") > 500
            clinicians = page.locator("#drill-table tbody tr").all_inner_texts()
            assert clinicians
            assert all(w.HOSP_B[-3:] in row for row in clinicians)  # HOSP_B's own clinicians
            crumbs = page.locator("nav.crumbs").inner_text()
            assert "河北省" in crumbs
            assert "保定市第一中心医院" in crumbs

            page.evaluate("window.scrollTo(0, 0)")
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot))
            trend_box = page.locator("#trend-chart").bounding_box()
            assert trend_box is not None
            assert _ink_in_screenshot(shot, trend_box) > 500
            page.locator("#drill-panel").scroll_into_view_if_needed()
            drill_shot = ARTIFACTS / "dashboard-drill.png"
            page.screenshot(path=str(drill_shot))
            box = page.locator("#drill-chart").bounding_box()
            assert box is not None
            assert _ink_in_screenshot(drill_shot, box) > 500
            assert errors == []
        finally:
            browser.close()
