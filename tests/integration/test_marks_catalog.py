"""Marks resolved from the stored lists (R2), on both backends."""

from __future__ import annotations

from datetime import UTC, datetime

from huren.bootstrap import Container
from tests.fixtures import world as w


def test_largest_scope_wins_jjj_over_hebei(world: Container) -> None:
    # 冀卫医政函〔2025〕7号 二(二): 参加京津冀互认的，直接标注京津冀互认标识（影像“—JJJHR”）
    mark = world.catalog.get().mark_for(w.HOSP_A, w.CT_CHEST, datetime(2026, 5, 1, tzinfo=UTC))
    assert mark is not None
    assert mark.symbol == "—JJJHR"
    assert mark.scope == "JJJ"


def test_hebei_lab_mark_is_a_star(world: Container) -> None:
    # 冀卫医政函〔2025〕7号 二(二)2: 通过后可在全省范围内互认并标注互认标识“☆”
    mark = world.catalog.get().mark_for(w.HOSP_A, w.LFT, datetime(2026, 5, 1, tzinfo=UTC))
    assert mark is not None
    assert mark.symbol == "☆"


def test_shanghai_mark_names_the_widest_scope(world: Container) -> None:
    # 沪卫医〔2024〕135号 四(四): 如同一项目满足多个互认范围，则以最大范围的名称标注
    mark = world.catalog.get().mark_for(w.SH1, w.CT_CHEST, datetime(2026, 5, 1, tzinfo=UTC))
    assert mark is not None
    assert (mark.symbol, mark.symbol_en) == ("长三角HR", "CSJHR")


def test_failed_eqa_leaves_only_the_alliance_mark(world: Container) -> None:
    catalog = world.catalog.get()
    mark = catalog.mark_for(w.HOSP_C, w.LFT, datetime(2026, 5, 1, tzinfo=UTC))
    assert mark is not None
    assert mark.scope == "BD-YLT"
    assert catalog.graph.contains("BD-YLT", w.HOSP_B)
    assert not catalog.graph.contains("BD-YLT", w.HOSP_A)


def test_no_mark_outside_the_validity_window(world: Container) -> None:
    mark = world.catalog.get().mark_for(w.HOSP_A, w.CT_CHEST, datetime(2025, 6, 1, tzinfo=UTC))
    assert mark is None


def test_gansu_uses_the_six_conditions(world: Container) -> None:
    reasons = world.catalog.get().reasons_for(w.GS1)
    assert [r.number for r in reasons] == [1, 2, 3, 4, 5, 6]


def test_shanghai_has_its_own_ten(world: Container) -> None:
    reasons = world.catalog.get().reasons_for(w.SH1)
    assert len(reasons) == 10
    assert reasons[5].imaging_only
