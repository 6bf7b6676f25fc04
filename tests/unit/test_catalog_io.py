"""Catalog import validation: every problem named by row and column, nothing applied."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from huren.adapters import reference_data
from huren.adapters.clock import FixedClock
from huren.adapters.tabular import TabularFiles
from huren.domain.errors import ValidationFailed
from huren.services.catalog import MasterDataRecords
from huren.services.catalog_io import CatalogIO, CatalogKind, ImportChanges
from tests.fixtures import world as w


class FakeStore:
    def __init__(self) -> None:
        self.records = MasterDataRecords(
            scopes=list(w.SCOPES),
            institutions=list(w.INSTITUTIONS),
            items=list(w.ITEMS),
            item_lists=[],
            qualifications=w.qualifications(),
            symbols=reference_data.mark_symbols(),
            negative_reasons=reference_data.negative_reasons(),
            exclusions=[],
            code_maps=list(w.CODE_MAPS),
        )
        self.applied: list[ImportChanges] = []

    def load_master_data(self) -> MasterDataRecords:
        return self.records

    def apply(self, changes: ImportChanges, at: datetime, actor: str) -> None:
        self.applied.append(changes)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def io(store: FakeStore) -> CatalogIO:
    return CatalogIO(
        store,
        TabularFiles(),
        FixedClock(datetime(2026, 6, 15, tzinfo=UTC)),
        lambda: None,
        remap=lambda _codes: 0,  # no results in these tests
    )


def _csv(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


def _problems(
    io: CatalogIO, kind: CatalogKind, data: bytes, name: str = "f.csv"
) -> list[tuple[str, str]]:
    with pytest.raises(ValidationFailed) as exc:
        io.import_file(kind, data, name)
    return [(p.field, p.message) for p in exc.value.problems]


def test_unknown_unified_code_in_a_code_map_is_named_by_row_and_column(
    io: CatalogIO, store: FakeStore
) -> None:
    data = _csv(f"机构编码,本院编码,统一编码,本院名称\n{w.HOSP_A},CT0102,YX-CT-999,头颅CT\n")
    problems = _problems(io, CatalogKind.CODE_MAPS, data)
    assert problems == [("row 2: 统一编码", "未知的统一项目编码“YX-CT-999”")]
    assert store.applied == []


def test_qualification_for_an_unknown_institution_is_rejected(
    io: CatalogIO, store: FakeStore
) -> None:
    data = _csv(
        "机构编码,项目编码,项目组,互认范围,依据,有效期起,有效期止,状态\n"
        f"{w.HOSP_A},{w.CBC},,HE,室间质评,2026-01-01,2026-12-31,有效\n"
        "H999999999,,生化,HE,室间质评,2026-01-01,2026-12-31,有效\n"
    )
    problems = _problems(io, CatalogKind.QUALIFICATIONS, data)
    assert [f for f, _ in problems] == ["row 3: 机构编码"]
    assert "H999999999" in problems[0][1]
    assert store.applied == []


def test_malformed_dates_and_unknown_status_are_each_reported(io: CatalogIO) -> None:
    data = _csv(
        "机构编码,项目编码,互认范围,依据,有效期起,有效期止,状态\n"
        f"{w.HOSP_A},{w.CBC},HE,室间质评,2026-13-01,,有效\n"
        f"{w.HOSP_B},{w.CBC},HE,室间质评,2026-01-01,,永久\n"
    )
    fields = [f for f, _ in _problems(io, CatalogKind.QUALIFICATIONS, data)]
    assert fields == ["row 2: 有效期起", "row 3: 状态"]


def test_duplicate_rows_name_the_first_occurrence(io: CatalogIO) -> None:
    data = _csv(
        f"机构编码,本院编码,统一编码\n{w.HOSP_A},L1,{w.CBC}\n{w.HOSP_A},L2,{w.LFT}\n{w.HOSP_A},L1,{w.LFT}\n"
    )
    assert _problems(io, CatalogKind.CODE_MAPS, data) == [
        ("row 4: 本院编码", "重复行: 与第 2 行的键相同")
    ]


def test_overlapping_list_versions_are_rejected(io: CatalogIO) -> None:
    data = _csv(
        "辖区,版本,生效日期,失效日期,项目编码\n"
        f"HE,2025-1,2025-01-01,,{w.CBC}\n"
        f"HE,2026-1,2026-01-01,,{w.LFT}\n"
    )
    problems = _problems(io, CatalogKind.ITEM_LISTS, data)
    assert [f for f, _ in problems] == ["row 3: 生效日期"]
    assert "重叠" in problems[0][1]


def test_a_scope_cycle_is_rejected_at_a_row_of_the_cycle(io: CatalogIO) -> None:
    data = _csv("编码,名称,类型,上级\nZONE-A,甲片区,医联体,ZONE-B\nZONE-B,乙片区,医联体,ZONE-A\n")
    problems = _problems(io, CatalogKind.SCOPES, data)
    assert len(problems) == 1
    field, message = problems[0]
    assert field in ("row 2: 上级", "row 3: 上级")
    assert "循环" in message


def test_unknown_and_missing_columns_are_reported_on_the_header_row(io: CatalogIO) -> None:
    data = _csv(f"机构编码,本院代码,统一编码\n{w.HOSP_A},L1,{w.CBC}\n")
    assert [f for f, _ in _problems(io, CatalogKind.CODE_MAPS, data)] == [
        "row 1: 本院代码",
        "row 1: 本院编码",
    ]


def test_english_headers_are_accepted_as_aliases(io: CatalogIO, store: FakeStore) -> None:
    data = _csv(
        f"institution,local_code,unified_code,local_name\n{w.HOSP_B},B-CBC,{w.CBC},血常规五分类\n"
    )
    report = io.import_file(CatalogKind.CODE_MAPS, data, "maps.csv")
    assert (report.created, report.updated) == (1, 0)
    assert store.applied[0].code_maps[0].unified_code == w.CBC


def test_gb18030_csv_from_excel_is_read(io: CatalogIO, store: FakeStore) -> None:
    data = f"机构编码,本院编码,统一编码,本院名称\r\n{w.HOSP_B},B-CBC,{w.CBC},血常规\r\n".encode(
        "gb18030"
    )
    io.import_file(CatalogKind.CODE_MAPS, data, "对码.csv")
    assert store.applied[0].code_maps[0].local_name == "血常规"


def test_lab_item_without_specimen_and_bad_loinc_are_rejected(io: CatalogIO) -> None:
    data = _csv(
        "项目编码,项目名称,类别,标本类型,LOINC编码,参考时限(小时)\n"
        "JY-XY-099,网织红细胞,检验,,4679-7,72\n"
        "JY-XY-098,血小板,检验,全血,777-4,72\n"
    )
    assert [f for f, _ in _problems(io, CatalogKind.ITEMS, data)] == [
        "row 2: 标本类型",
        "row 3: LOINC编码",
    ]


def test_reimport_of_an_existing_code_map_counts_as_an_update(io: CatalogIO) -> None:
    data = _csv(f"机构编码,本院编码,统一编码\n{w.HOSP_A},CT0101,{w.CT_CHEST}\n")
    report = io.import_file(CatalogKind.CODE_MAPS, data, "m.csv")
    assert (report.created, report.updated) == (0, 1)
