"""Catalog import/export against real databases: all-or-nothing, upsert, round trip."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from huren.adapters.db import tables as t
from huren.bootstrap import Container
from huren.domain.errors import ValidationFailed
from huren.domain.masterdata import QualificationStatus
from huren.services.catalog_io import CatalogKind
from tests.fixtures import world as w

WATCHED = (t.scope, t.scope_member, t.item, t.item_list_version, t.item_list_entry,
           t.institution, t.qualification, t.qualification_event, t.code_map)  # fmt: skip


def _snapshot(container: Container) -> dict[str, list[Any]]:
    with container.engine.connect() as c:
        return {
            table.name: sorted(tuple(map(str, row)) for row in c.execute(select(table)))
            for table in WATCHED
        }


BAD_FILES = {
    CatalogKind.CODE_MAPS: (
        f"机构编码,本院编码,统一编码\n{w.HOSP_A},NEW-1,{w.CBC}\n{w.HOSP_A},NEW-2,YX-XX-000\n",
        "row 3: 统一编码",
    ),
    CatalogKind.QUALIFICATIONS: (
        "机构编码,项目编码,互认范围,依据,有效期起,有效期止,状态\n"
        f"{w.HOSP_B},{w.CBC},HE,室间质评,2026-01-01,2026-12-31,有效\n"
        f"H000000000,{w.CBC},HE,室间质评,2026-01-01,2026-12-31,有效\n",
        "row 3: 机构编码",
    ),
    CatalogKind.ITEM_LISTS: (
        f"辖区,版本,生效日期,失效日期,项目编码\nHE,2026-2,2026-03-01,,{w.CBC}\n",
        "row 2: 生效日期",  # overlaps the open-ended HE 2025-1 already in force
    ),
    CatalogKind.SCOPES: (
        "编码,名称,类型,上级,成员范围\nHE-BD,保定市,市,HE,\nHE,河北省,省,HE-BD,\n",
        "上级",
    ),
    CatalogKind.INSTITUTIONS: (
        f"机构编码,机构名称,等级,公立,所在辖区\n{w.HOSP_C},保定市满城区医院,二级,是,HE-BD\n"
        "H130600099,某医院,四级,是,HE-BD\nH130600098,另一医院,二级,是,HE-XX\n",
        "row 3: 等级",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_rejected_whole_and_the_database_is_unchanged(
    world: Container, kind: CatalogKind
) -> None:
    before = _snapshot(world)
    text, expected_field = BAD_FILES[kind]
    with pytest.raises(ValidationFailed) as exc:
        world.catalog_io.import_file(kind, text.encode("utf-8-sig"), f"{kind}.csv")
    assert any(expected_field in p.field for p in exc.value.problems), exc.value.problems
    assert _snapshot(world) == before


@pytest.mark.parametrize("kind", list(CatalogKind))
@pytest.mark.parametrize("ext", ["csv", "xlsx"])
def test_export_reads_back_as_the_same_records(
    world: Container, kind: CatalogKind, ext: str
) -> None:
    data = world.catalog_io.export_file(kind, f"export.{ext}")
    changes = world.catalog_io.validate_file(kind, data, f"export.{ext}")
    rec = world.master_data.load_master_data()
    expected: dict[CatalogKind, tuple[list[Any], list[Any]]] = {
        CatalogKind.SCOPES: (changes.scopes, rec.scopes),
        CatalogKind.ITEMS: (changes.items, rec.items),
        CatalogKind.ITEM_LISTS: (changes.item_lists, rec.item_lists),
        CatalogKind.INSTITUTIONS: (changes.institutions, rec.institutions),
        CatalogKind.QUALIFICATIONS: (changes.qualifications, rec.qualifications),
        CatalogKind.CODE_MAPS: (changes.code_maps, rec.code_maps),
    }
    got, want = expected[kind]
    assert set(got) == set(want)
    assert got


def test_reimporting_an_export_changes_nothing(world: Container) -> None:
    for kind in CatalogKind:
        data = world.catalog_io.export_file(kind, "x.xlsx")
        before = _snapshot(world)
        report = world.catalog_io.import_file(kind, data, "x.xlsx")
        assert report.created == 0
        after = _snapshot(world)
        # only updated_at/published_at timestamps may move; the content stays
        assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in before.items()}
        assert world.catalog_io.export_file(kind, "y.csv") == world.catalog_io.export_file(
            kind, "y.csv"
        )


def test_a_reimported_qualification_status_change_is_recorded_and_removes_the_mark(
    world: Container,
) -> None:
    catalog = world.catalog.get()
    assert catalog.mark_for(w.HOSP_B, w.CT_CHEST, world.clock.now()) is not None
    data = (
        "机构编码,项目编码,互认范围,依据,有效期起,有效期止,状态\n"
        f"{w.HOSP_B},{w.CT_CHEST},HE,质控中心质量评价,2026-01-01,2026-12-31,暂停\n"
    ).encode()
    report = world.catalog_io.import_file(CatalogKind.QUALIFICATIONS, data, "q.csv", actor="qc-he")
    assert (report.created, report.updated) == (0, 1)
    assert world.catalog.get().mark_for(w.HOSP_B, w.CT_CHEST, world.clock.now()) is None
    with world.engine.connect() as c:
        event = c.execute(
            select(t.qualification_event).where(t.qualification_event.c.actor == "qc-he")
        ).one()
    assert (event.old_status, event.new_status) == ("active", QualificationStatus.SUSPENDED.value)


def test_new_scopes_institutions_and_maps_import_in_dependency_order(world: Container) -> None:
    io = world.catalog_io
    io.import_file(
        CatalogKind.SCOPES,
        "编码,名称,类型,上级\nHE-HS,衡水市,市,HE\n".encode(),
        "s.csv",
    )
    io.import_file(
        CatalogKind.INSTITUTIONS,
        "机构编码,机构名称,等级,公立,所在辖区,地址\nH131100001,衡水市人民医院,三级,是,HE-HS,衡水市桃城区人民东路180号\n".encode(),
        "i.csv",
    )
    io.import_file(
        CatalogKind.CODE_MAPS,
        f"机构编码,本院编码,统一编码,本院名称\nH131100001,3001,{w.CBC},血细胞分析\n".encode(),
        "m.csv",
    )
    catalog = world.catalog.get()
    assert catalog.unified_code("H131100001", "3001") == w.CBC
    assert catalog.graph.contains("HE", "H131100001")
