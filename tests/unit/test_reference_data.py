"""The shipped reference data (huren/data): jurisdictions, items, negative lists."""

from __future__ import annotations

import re

from huren.adapters import reference_data
from huren.domain.masterdata import Category, ScopeGraph, ScopeKind
from huren.services.catalog_io import loinc_well_formed


def test_every_loinc_code_is_well_formed_with_a_valid_check_digit() -> None:
    codes = [i.loinc for i in reference_data.items() if i.loinc]
    codes += [a.loinc for specs in reference_data.analytes().values() for a in specs if a.loinc]
    assert len(codes) > 60
    assert [c for c in codes if not loinc_well_formed(c)] == []


def test_loinc_check_digit_rejects_a_typo() -> None:
    assert loinc_well_formed("58410-2")  # CBC panel
    assert not loinc_well_formed("58410-3")
    assert not loinc_well_formed("CBC")


def test_common_lab_items_carry_their_real_loinc_codes() -> None:
    by_name = {i.name: i.loinc for i in reference_data.items()}
    assert by_name["血常规"] == "58410-2"
    assert by_name["糖化血红蛋白"] == "4548-4"
    assert by_name["促甲状腺激素"] == "3016-3"
    assert by_name["肝功能"] == "24325-3"


def test_every_lab_item_names_its_specimen_and_reports_analytes() -> None:
    analytes = reference_data.analytes()
    labs = [i for i in reference_data.items() if i.category is Category.LAB]
    assert len(labs) >= 60
    assert [i.code for i in labs if not i.specimen] == []
    assert [i.code for i in labs if i.code not in analytes] == []


def test_every_imaging_item_has_modality_body_part_and_quality_requirements() -> None:
    imaging = [i for i in reference_data.items() if i.category is Category.IMAGING]
    assert len(imaging) >= 55
    for item in imaging:
        assert item.modality, item.code
        assert item.body_part, item.code
        q = item.quality
        assert q.text, item.code
        assert q.required_series or q.min_images > 0, item.code


def test_ct_items_require_thick_thin_and_post_processed_series() -> None:
    # 沪卫医〔2024〕135号 四(二)2: CT 应上传厚层及薄层图像 … 后处理生成的影像
    for item in reference_data.items():
        if item.modality == "CT":
            names = {s.name for s in item.quality.required_series}
            assert {"厚层", "薄层", "后处理"} <= names, item.code
            assert any(s.derived for s in item.quality.required_series)


def test_head_mr_requires_every_sequence_of_its_protocol() -> None:
    head = next(i for i in reference_data.items() if i.name == "头颅MR平扫")
    names = [s.name for s in head.quality.required_series]
    assert names == ["T1WI", "T2WI", "T2-FLAIR", "DWI"]


def test_plain_films_mammography_and_barium_require_all_views() -> None:
    # 沪卫医〔2024〕135号 四(二)2: X 线平片、胃肠道钡餐及乳腺 X 线摄影 所有图像均需上传
    by_name = {i.name: i for i in reference_data.items()}
    assert by_name["胸部正侧位DR"].quality.min_images == 2
    assert by_name["乳腺钼靶（双侧）"].quality.min_images == 4
    assert by_name["上消化道钡餐造影"].quality.min_images >= 8


def test_item_codes_are_unique_and_prices_are_in_fen() -> None:
    items = reference_data.items()
    assert len({i.code for i in items}) == len(items)
    assert all(i.price_fen >= 500 and i.price_fen % 100 == 0 for i in items)
    assert all(i.time_limit.total_seconds() > 0 for i in items)


def test_negative_lists_keep_the_sources_counts() -> None:
    reasons = reference_data.negative_reasons()
    count = {j: sum(1 for r in reasons if r.jurisdiction == j) for j in ("HE", "SH", "GS")}
    assert count == {"HE": 6, "SH": 10, "GS": 6}


def test_hebei_has_its_eleven_prefecture_level_cities() -> None:
    cities = [c for c in reference_data.cities() if c.province == "HE"]
    assert len(cities) == 11
    assert {c.name for c in cities} >= {"石家庄市", "保定市", "衡水市", "雄安新区"} - {"雄安新区"}


def test_division_codes_are_six_digits_under_their_province() -> None:
    provinces = {s.code: s for s in reference_data.scopes() if s.kind is ScopeKind.PROVINCE}
    prefix = {"HE": "13", "BJ": "11", "SH": "31", "GS": "62", "SC": "51", "CQ": "50"}
    for city in reference_data.cities():
        assert city.province in provinces
        for division, _name in city.counties:
            assert re.fullmatch(r"\d{6}", division)
            if city.province in prefix:
                assert division.startswith(prefix[city.province]), (city.code, division)


def test_regions_cover_their_provinces_and_the_scope_graph_has_no_cycle() -> None:
    scopes = reference_data.scopes()
    graph = ScopeGraph(scopes, [])
    codes = {s.code for s in scopes}
    assert {"NATIONAL", "JJJ", "CSJ", "CY", "GS-8P", "HE-SJZ", "HE-BD"} <= codes
    jjj = next(s for s in scopes if s.code == "JJJ")
    assert jjj.member_scopes == {"BJ", "TJ", "HE"}
    agreement = next(s for s in scopes if s.code == "GS-8P")
    assert agreement.kind is ScopeKind.AGREEMENT
    assert len(agreement.member_scopes) == 8
    assert "GS" in agreement.member_scopes
    assert graph.ancestors("HE-SJZ") == ["HE"]
