"""Catalog import and export (issue 3 item 5): scopes, items, item lists, institutions,
qualifications and 对码 code maps as CSV or Excel, what regulators exchange.

Import is all-or-nothing: every row is validated first, against the database and against
the other rows of the same file; a bad file is rejected with every problem found as
(row number, column, reason) and nothing is written. A good file is applied in one
transaction.

Upsert on re-import (the natural key of each kind decides whether a row is new):
- scopes by 编码; a scope's members are replaced by those in the file;
- items by 项目编码; institutions by 机构编码; every column is replaced;
- item lists by (辖区, 版本): the rows of a version in the file are its whole content;
  the version's dates and entries are replaced;
- qualifications by (机构编码, 项目编码, 项目组, 互认范围, 有效期起): basis, end date and
  status are replaced, and a status change is recorded in the qualification history;
- code maps by (机构编码, 本院编码).
Nothing absent from the file is deleted.

Column headers are Chinese, with English aliases (``COLUMNS``); row 1 is the header,
data rows are numbered as a spreadsheet shows them (the first data row is row 2).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol

from huren.domain.errors import Problem, ScopeCycle, ValidationFailed
from huren.domain.masterdata import (
    CATEGORY_LABELS,
    LEVEL_LABELS,
    QUALIFICATION_STATUS_LABELS,
    SCOPE_KIND_LABELS,
    Category,
    CodeMapping,
    Institution,
    Item,
    ItemListVersion,
    Qualification,
    QualificationBasis,
    QualityRequirements,
    Scope,
    ScopeGraph,
    SeriesRequirement,
    overlapping_versions,
)
from huren.services.catalog import MasterDataRecords
from huren.services.ports import Clock


class CatalogKind(StrEnum):
    SCOPES = "scopes"
    ITEMS = "items"
    ITEM_LISTS = "item_lists"
    INSTITUTIONS = "institutions"
    QUALIFICATIONS = "qualifications"
    CODE_MAPS = "code_maps"


KIND_LABELS: Mapping[CatalogKind, str] = {
    CatalogKind.SCOPES: "互认范围",
    CatalogKind.ITEMS: "互认项目",
    CatalogKind.ITEM_LISTS: "项目清单版本",
    CatalogKind.INSTITUTIONS: "医疗机构",
    CatalogKind.QUALIFICATIONS: "机构互认资质",
    CatalogKind.CODE_MAPS: "对码表",
}


@dataclass(frozen=True, slots=True)
class Column:
    key: str  # English name, also accepted as a header
    header: str  # Chinese header, as exported
    required: bool = False
    aliases: tuple[str, ...] = ()
    max_length: int = 0  # the width of its database column (0: not a text column)


COLUMNS: Mapping[CatalogKind, tuple[Column, ...]] = {
    CatalogKind.SCOPES: (
        Column("code", "编码", True, max_length=32),
        Column("name", "名称", True, max_length=100),
        Column("kind", "类型", True),
        Column("parent", "上级", aliases=("上级编码",), max_length=32),
        Column("member_scopes", "成员范围"),
        Column("member_institutions", "成员机构"),
        Column("abbreviation", "简称", max_length=16),
    ),
    CatalogKind.ITEMS: (
        Column("code", "项目编码", True, ("统一编码",), max_length=32),
        Column("name", "项目名称", True, max_length=200),
        Column("category", "类别", True),
        Column("group", "项目组", aliases=("group_code",), max_length=32),
        Column("modality", "设备类型", max_length=16),
        Column("body_part", "检查部位", max_length=64),
        Column("specimen", "标本类型", aliases=("标本",), max_length=64),
        Column("loinc", "LOINC编码", aliases=("LOINC",), max_length=32),
        Column("time_limit_hours", "参考时限(小时)", True, ("参考时限（小时）",)),
        Column("price_fen", "价格(分)", aliases=("价格（分）",)),
        Column("quality", "质量要求"),
    ),
    CatalogKind.ITEM_LISTS: (
        Column("jurisdiction", "辖区", True, max_length=32),
        Column("version", "版本", True, max_length=32),
        Column("effective_from", "生效日期", True),
        Column("effective_to", "失效日期"),
        Column("item_code", "项目编码", True, max_length=32),
    ),
    CatalogKind.INSTITUTIONS: (
        Column("code", "机构编码", True, max_length=32),
        Column("name", "机构名称", True, max_length=200),
        Column("level", "等级", True, ("医院等级",)),
        Column("public", "公立"),
        Column("jurisdiction", "所在辖区", True, ("辖区",), max_length=32),
        Column("address", "地址", max_length=300),
    ),
    CatalogKind.QUALIFICATIONS: (
        Column("institution", "机构编码", True, max_length=32),
        Column("item", "项目编码", max_length=32),
        Column("group", "项目组", max_length=32),
        Column("scope", "互认范围", True, max_length=32),
        Column("basis", "依据", True),
        Column("valid_from", "有效期起", True),
        Column("valid_to", "有效期止"),
        Column("status", "状态", True),
    ),
    CatalogKind.CODE_MAPS: (
        Column("institution", "机构编码", True, max_length=32),
        Column("local_code", "本院编码", True, max_length=64),
        Column("unified_code", "统一编码", True, ("项目编码",), max_length=32),
        Column("local_name", "本院名称", max_length=200),
    ),
}

BASIS_LABELS: Mapping[QualificationBasis, str] = {
    QualificationBasis.QC_EVALUATION: "质控中心质量评价",
    QualificationBasis.EQA: "室间质评",
    QualificationBasis.ALLIANCE_COMPARISON: "医联体室间比对",
    QualificationBasis.SPOT_CHECK: "放射影像质量抽查",
}

TRUE_WORDS = frozenset({"是", "公立", "true", "1", "yes", "y"})
FALSE_WORDS = frozenset({"否", "民营", "非公立", "false", "0", "no", "n"})
LIST_SPLIT = re.compile(r"[|,，、;；\s]+")
LOINC_PATTERN = re.compile(r"^\d{1,7}-\d$")
# Control characters other than tab and line breaks: PostgreSQL refuses NUL in text, and
# none of them belongs in a catalog cell.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_INTEGER = 2**31 - 1  # an INTEGER column (价格(分))
MAX_TIME_LIMIT_HOURS = 100 * 366 * 24  # 参考时限: a century is beyond any real one
MAX_ACTOR_LENGTH = 64  # qualification_event.actor
MAX_MIN_IMAGES = 10_000


# ---------------------------------------------------------------- ports
@dataclass(frozen=True, slots=True)
class TableData:
    """A table as read from a file: header cells and data rows with their row numbers."""

    headers: list[str]
    rows: list[tuple[int, list[str]]]


class TabularCodec(Protocol):
    """Reads and writes CSV / XLSX (``huren.adapters.tabular``)."""

    def read(self, data: bytes, filename: str) -> TableData: ...

    def write(
        self, headers: Sequence[str], rows: Sequence[Sequence[str]], filename: str
    ) -> bytes: ...


@dataclass
class ImportChanges:
    """What an accepted file changes; applied by the store in one transaction."""

    scopes: list[Scope] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    item_lists: list[ItemListVersion] = field(default_factory=list)
    institutions: list[Institution] = field(default_factory=list)
    qualifications: list[Qualification] = field(default_factory=list)
    code_maps: list[CodeMapping] = field(default_factory=list)


class CatalogStore(Protocol):
    def load_master_data(self) -> MasterDataRecords: ...

    def apply(self, changes: ImportChanges, at: datetime, actor: str) -> None:
        """Upsert everything in ``changes`` in one transaction."""
        ...


@dataclass(frozen=True, slots=True)
class ImportReport:
    kind: CatalogKind
    rows: int
    created: int
    updated: int
    remapped: int = 0  # results stored unmapped that an import of code maps re-mapped


# ---------------------------------------------------------------- value parsing
class _RowError(Exception):
    def __init__(self, column: str, reason: str) -> None:
        self.column = column
        self.reason = reason


def parse_date(text: str) -> date:
    """2026-01-31, 2026/1/31, 20260131 or 2026年1月31日."""
    t = text.strip()
    for pattern in (
        r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T]00:00(?::00)?)?$",
        r"^(\d{4})/(\d{1,2})/(\d{1,2})$",
        r"^(\d{4})(\d{2})(\d{2})$",
        r"^(\d{4})年(\d{1,2})月(\d{1,2})日$",
        r"^(\d{4})\.(\d{1,2})\.(\d{1,2})$",
    ):
        m = re.match(pattern, t)
        if m:
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    raise ValueError(t)


def _enum(text: str, labels: Mapping[Any, str], column: str) -> Any:
    t = text.strip()
    for value, label in labels.items():
        if t in (label, str(value.value), value.name.lower(), value.name):
            return value
    allowed = "、".join(labels.values())
    raise _RowError(column, f"无法识别“{t}”，应为: {allowed}")


def quality_text(q: QualityRequirements) -> str:
    """The 质量要求 cell: plain text, or JSON when there is a machine-checkable part."""
    if not q.required_series and not q.min_images and q.requires_report:
        return q.text
    return json.dumps(
        {
            "text": q.text,
            "min_images": q.min_images,
            "requires_report": q.requires_report,
            "required_series": [
                {
                    "name": s.name,
                    "slice_thickness_max_mm": s.slice_thickness_max_mm,
                    "slice_thickness_min_mm": s.slice_thickness_min_mm,
                    "description_keywords": list(s.description_keywords),
                    "derived": s.derived,
                }
                for s in q.required_series
            ],
        },
        ensure_ascii=False,
    )


def parse_quality(text: str) -> QualityRequirements:
    """The 质量要求 cell; raises ValueError naming what is wrong with its JSON."""
    t = text.strip()
    if not t.startswith("{"):
        return QualityRequirements(text=t)
    try:
        data = json.loads(t, parse_constant=_no_constant)
    except RecursionError as exc:
        raise ValueError("JSON 嵌套层次过深") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"不是有效的 JSON（第 {exc.pos + 1} 个字符: {exc.msg}）") from exc
    if not isinstance(data, dict):
        raise ValueError("应为 JSON 对象")
    series = data.get("required_series", [])
    if not isinstance(series, list):
        raise ValueError("required_series 应为数组")
    return QualityRequirements(
        text=_json_str(data.get("text", ""), "text"),
        min_images=_json_int(data.get("min_images", 0), "min_images", MAX_MIN_IMAGES),
        requires_report=_json_bool(data.get("requires_report", True), "requires_report"),
        required_series=tuple(_series(s, k) for k, s in enumerate(series)),
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"不允许 {name}")


def _series(s: Any, k: int) -> SeriesRequirement:
    where = f"required_series[{k}]"
    if not isinstance(s, dict):
        raise ValueError(f"{where} 应为 JSON 对象")
    if not isinstance(s.get("name"), str) or not s["name"].strip():
        raise ValueError(f"{where}.name 应为非空文本")
    keywords = s.get("description_keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(x, str) for x in keywords):
        raise ValueError(f"{where}.description_keywords 应为文本数组")
    return SeriesRequirement(
        name=s["name"],
        slice_thickness_max_mm=_json_mm(
            s.get("slice_thickness_max_mm"), f"{where}.slice_thickness_max_mm"
        ),
        slice_thickness_min_mm=_json_mm(
            s.get("slice_thickness_min_mm"), f"{where}.slice_thickness_min_mm"
        ),
        description_keywords=tuple(keywords),
        derived=_json_bool(s.get("derived", False), f"{where}.derived"),
    )


def _json_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} 应为文本")
    return value


def _json_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} 应为 true 或 false")
    return value


def _json_int(value: Any, where: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} 应为整数")
    if not 0 <= value <= maximum or value != int(value):
        raise ValueError(f"{where} 应为 0–{maximum} 之间的整数")
    return int(value)


def _json_mm(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1000:
        raise ValueError(f"{where} 应为 0–1000 之间的层厚（毫米）")
    return float(value)


# ---------------------------------------------------------------- the service
class CatalogIO:
    """``container.catalog_io``: import and export of the catalog lists."""

    def __init__(
        self,
        store: CatalogStore,
        codec: TabularCodec,
        clock: Clock,
        on_change: Callable[[], None],
        *,
        remap: Callable[[Iterable[tuple[str, str]]], int],
    ) -> None:
        """``on_change`` after every import (the catalog cache drops what it holds);
        ``remap`` after an import of code maps, with the (institution, local code) of
        each mapping in the file (``IntakeService.remap_codes``)."""
        self._store = store
        self._codec = codec
        self._clock = clock
        self._on_change = on_change
        self._remap = remap

    # -- export
    def export_rows(self, kind: CatalogKind) -> tuple[list[str], list[list[str]]]:
        rec = self._store.load_master_data()
        headers = [c.header for c in COLUMNS[kind]]
        return headers, _export_rows(kind, rec)

    def export_file(self, kind: CatalogKind, filename: str) -> bytes:
        """The list as a CSV (UTF-8 with BOM) or XLSX file, chosen by ``filename``."""
        headers, rows = self.export_rows(kind)
        return self._codec.write(headers, rows, filename)

    # -- import
    def validate_file(self, kind: CatalogKind, data: bytes, filename: str) -> ImportChanges:
        """Every row checked; raises ValidationFailed listing (row, column, reason)."""
        table = self._codec.read(data, filename)
        rec = self._store.load_master_data()
        return _Validator(kind, table, rec).run()

    def import_file(
        self, kind: CatalogKind, data: bytes, filename: str, *, actor: str = "catalog-import"
    ) -> ImportReport:
        if len(actor) > MAX_ACTOR_LENGTH or CONTROL_CHARS.search(actor):
            raise ValidationFailed(
                "操作人无效",
                problems=[Problem("actor", f"操作人应为不超过 {MAX_ACTOR_LENGTH} 个字符的文本")],
            )
        changes = self.validate_file(kind, data, filename)
        rec = self._store.load_master_data()
        created, updated = _count(kind, changes, rec)
        self._store.apply(changes, self._clock.now(), actor)
        self._on_change()
        # Issue 7 §3: when the map is fixed later, stored results are re-mapped.
        remapped = self._remap((m.institution, m.local_code) for m in changes.code_maps)
        rows = sum(
            len(x)
            for x in (
                changes.scopes,
                changes.items,
                changes.institutions,
                changes.qualifications,
                changes.code_maps,
            )
        ) + sum(len(v.item_codes) for v in changes.item_lists)
        return ImportReport(kind, rows, created, updated, remapped)


def _count(kind: CatalogKind, ch: ImportChanges, rec: MasterDataRecords) -> tuple[int, int]:
    keys: set[Any]
    new: list[Any]
    if kind is CatalogKind.SCOPES:
        keys, new = {s.code for s in rec.scopes}, [s.code for s in ch.scopes]
    elif kind is CatalogKind.ITEMS:
        keys, new = {i.code for i in rec.items}, [i.code for i in ch.items]
    elif kind is CatalogKind.INSTITUTIONS:
        keys, new = {i.code for i in rec.institutions}, [i.code for i in ch.institutions]
    elif kind is CatalogKind.ITEM_LISTS:
        keys = {(v.jurisdiction, v.version) for v in rec.item_lists}
        new = [(v.jurisdiction, v.version) for v in ch.item_lists]
    elif kind is CatalogKind.QUALIFICATIONS:
        keys = {qualification_key(q) for q in rec.qualifications}
        new = [qualification_key(q) for q in ch.qualifications]
    else:
        keys = {(m.institution, m.local_code) for m in rec.code_maps}
        new = [(m.institution, m.local_code) for m in ch.code_maps]
    updated = sum(1 for k in new if k in keys)
    return len(new) - updated, updated


def qualification_key(q: Qualification) -> tuple[str, str, str, str, date]:
    return (q.institution, q.item, q.group, q.scope, q.valid_from)


def _d(value: date | None) -> str:
    return value.isoformat() if value else ""


def _export_rows(kind: CatalogKind, rec: MasterDataRecords) -> list[list[str]]:
    if kind is CatalogKind.SCOPES:
        return [
            [
                s.code,
                s.name,
                SCOPE_KIND_LABELS[s.kind],
                s.parent or "",
                "|".join(sorted(s.member_scopes)),
                "|".join(sorted(s.member_institutions)),
                s.abbreviation,
            ]
            for s in sorted(rec.scopes, key=lambda s: s.code)
        ]
    if kind is CatalogKind.ITEMS:
        return [
            [
                i.code,
                i.name,
                CATEGORY_LABELS[i.category],
                i.group,
                i.modality,
                i.body_part,
                i.specimen,
                i.loinc,
                str(int(i.time_limit.total_seconds() // 3600)),
                str(i.price_fen),
                quality_text(i.quality),
            ]
            for i in sorted(rec.items, key=lambda i: i.code)
        ]
    if kind is CatalogKind.ITEM_LISTS:
        return [
            [v.jurisdiction, v.version, _d(v.effective_from), _d(v.effective_to), code]
            for v in sorted(rec.item_lists, key=lambda v: (v.jurisdiction, v.effective_from))
            for code in sorted(v.item_codes)
        ]
    if kind is CatalogKind.INSTITUTIONS:
        return [
            [
                i.code,
                i.name,
                LEVEL_LABELS[i.level],
                "是" if i.public else "否",
                i.jurisdiction,
                i.address,
            ]
            for i in sorted(rec.institutions, key=lambda i: i.code)
        ]
    if kind is CatalogKind.QUALIFICATIONS:
        return [
            [
                q.institution,
                q.item,
                q.group,
                q.scope,
                BASIS_LABELS[q.basis],
                _d(q.valid_from),
                _d(q.valid_to),
                QUALIFICATION_STATUS_LABELS[q.status],
            ]
            for q in sorted(
                rec.qualifications, key=lambda q: (*qualification_key(q), q.status.value)
            )
        ]
    return [
        [m.institution, m.local_code, m.unified_code, m.local_name]
        for m in sorted(rec.code_maps, key=lambda m: (m.institution, m.local_code))
    ]


class _Validator:
    def __init__(self, kind: CatalogKind, table: TableData, rec: MasterDataRecords) -> None:
        self.kind = kind
        self.table = table
        self.rec = rec
        self.problems: list[Problem] = []
        self.header_of: dict[str, str] = {}  # key → header as written in the file
        self.index: dict[str, int] = {}

    def problem(self, row: int, column: str, reason: str) -> None:
        self.problems.append(Problem(f"row {row}: {column}", reason))

    def _map_headers(self) -> None:
        lookup: dict[str, Column] = {}
        for c in COLUMNS[self.kind]:
            for name in (c.header, c.key, *c.aliases):
                lookup[_norm_header(name)] = c
        for pos, raw in enumerate(self.table.headers):
            if not raw.strip():
                continue
            col = lookup.get(_norm_header(raw))
            if col is None:
                self.problem(
                    1,
                    raw,
                    f"未知的列名（{KIND_LABELS[self.kind]}可用列: {'、'.join(c.header for c in COLUMNS[self.kind])}）",
                )
                continue
            if col.key in self.index:
                self.problem(1, raw, "列名重复")
                continue
            self.index[col.key] = pos
            self.header_of[col.key] = raw.strip()
        for c in COLUMNS[self.kind]:
            if c.required and c.key not in self.index:
                self.problem(1, c.header, "缺少必填列")

    def run(self) -> ImportChanges:
        self._map_headers()
        if self.problems:
            raise ValidationFailed(
                f"{KIND_LABELS[self.kind]}文件的表头有误", problems=self.problems
            )
        if not self.table.rows:
            raise ValidationFailed(
                "文件中没有数据行", problems=[Problem("row 2", "文件中没有数据行")]
            )
        changes = ImportChanges()
        parser = getattr(self, f"_parse_{self.kind.value}")
        parsed: list[tuple[int, Any]] = []
        for number, cells in self.table.rows:
            if not self._cells_ok(number, cells):
                continue
            get = self._getter(cells)
            try:
                parsed.append((number, parser(number, get)))
            except _RowError as err:
                self.problem(
                    number,
                    self.header_of.get(err.column, _header(self.kind, err.column)),
                    err.reason,
                )
        getattr(self, f"_check_{self.kind.value}")(parsed, changes)
        if self.problems:
            raise ValidationFailed(
                f"{KIND_LABELS[self.kind]}文件有 {len(self.problems)} 处错误，未导入任何数据",
                problems=self.problems,
            )
        return changes

    def _cells_ok(self, number: int, cells: list[str]) -> bool:
        """No cell of the row holds a control character or is wider than its column."""
        ok = True
        for c in COLUMNS[self.kind]:
            pos = self.index.get(c.key)
            cell = cells[pos].strip() if pos is not None and pos < len(cells) else ""
            if CONTROL_CHARS.search(cell):
                self.problem(number, self.col(c.key), "含有控制字符（如 NUL），请删除后再导入")
                ok = False
            elif c.max_length and len(cell) > c.max_length:
                self.problem(
                    number, self.col(c.key), f"过长: {len(cell)} 个字符，最多 {c.max_length} 个"
                )
                ok = False
        return ok

    def _getter(self, cells: list[str]) -> Callable[[str], str]:
        def get(key: str) -> str:
            pos = self.index.get(key)
            if pos is None or pos >= len(cells):
                return ""
            return cells[pos].strip()

        return get

    def col(self, key: str) -> str:
        return self.header_of.get(key, _header(self.kind, key))

    # -- field helpers
    @staticmethod
    def required(get: Callable[[str], str], key: str) -> str:
        value = get(key)
        if not value:
            raise _RowError(key, "必填，不能为空")
        return value

    @staticmethod
    def date_of(get: Callable[[str], str], key: str, required: bool) -> date | None:
        value = get(key)
        if not value:
            if required:
                raise _RowError(key, "必填，不能为空")
            return None
        try:
            return parse_date(value)
        except ValueError as exc:
            raise _RowError(key, f"日期格式错误“{value}”，应为 YYYY-MM-DD") from exc

    @staticmethod
    def int_of(
        get: Callable[[str], str],
        key: str,
        required: bool,
        minimum: int = 0,
        maximum: int = MAX_INTEGER,
    ) -> int:
        value = get(key)
        if not value:
            if required:
                raise _RowError(key, "必填，不能为空")
            return 0
        try:
            number = Decimal(value)
        except InvalidOperation as exc:
            raise _RowError(key, f"应为整数，实际为“{value}”") from exc
        if not number.is_finite() or not minimum <= number <= maximum:
            raise _RowError(key, f"应为 {minimum}–{maximum} 之间的整数，实际为“{value}”")
        if number != number.to_integral_value():
            raise _RowError(key, f"应为不小于 {minimum} 的整数，实际为“{value}”")
        return int(number)

    # -- scopes
    def _parse_scopes(self, _row: int, get: Callable[[str], str]) -> Scope:
        return Scope(
            code=self.required(get, "code"),
            name=self.required(get, "name"),
            kind=_enum(self.required(get, "kind"), SCOPE_KIND_LABELS, "kind"),
            parent=get("parent") or None,
            member_scopes=frozenset(x for x in LIST_SPLIT.split(get("member_scopes")) if x),
            member_institutions=frozenset(
                x for x in LIST_SPLIT.split(get("member_institutions")) if x
            ),
            abbreviation=get("abbreviation"),
        )

    def _check_scopes(self, parsed: list[tuple[int, Scope]], ch: ImportChanges) -> None:
        rows = self._unique(parsed, lambda s: s.code, "code")
        known = {s.code for s in self.rec.scopes} | set(rows)
        institutions = {i.code for i in self.rec.institutions}
        for code, (row, s) in rows.items():
            if s.parent and s.parent not in known:
                self.problem(row, self.col("parent"), f"未知的上级范围编码“{s.parent}”")
            if s.parent == code:
                self.problem(row, self.col("parent"), "上级不能是自身")
            for m in sorted(s.member_scopes - known):
                self.problem(row, self.col("member_scopes"), f"未知的成员范围编码“{m}”")
            for m in sorted(s.member_institutions - institutions):
                self.problem(row, self.col("member_institutions"), f"未知的成员机构编码“{m}”")
        merged = {s.code: s for s in self.rec.scopes}
        merged.update({code: s for code, (_, s) in rows.items()})
        try:
            ScopeGraph(merged.values(), self.rec.institutions)
        except ScopeCycle as exc:
            cycle = exc.problems[0].message if exc.problems else ""
            members = cycle.split(" → ")
            row = next((rows[c][0] for c in members if c in rows), 2)
            self.problem(row, self.col("parent"), f"互认范围存在循环: {cycle}")
        ch.scopes = [s for _, s in rows.values()]

    # -- items
    def _parse_items(self, _row: int, get: Callable[[str], str]) -> Item:
        category = _enum(self.required(get, "category"), CATEGORY_LABELS, "category")
        loinc = get("loinc")
        if loinc and not _loinc_ok(loinc):
            raise _RowError("loinc", f"LOINC 编码“{loinc}”格式或校验位错误")
        hours = self.int_of(get, "time_limit_hours", True, minimum=1, maximum=MAX_TIME_LIMIT_HOURS)
        try:
            quality = parse_quality(get("quality"))
        except ValueError as exc:
            raise _RowError("quality", f"质量要求不是有效的 JSON 对象: {exc}") from exc
        item = Item(
            code=self.required(get, "code"),
            name=self.required(get, "name"),
            category=category,
            time_limit=timedelta(hours=hours),
            price_fen=self.int_of(get, "price_fen", False),
            group=get("group"),
            modality=get("modality"),
            body_part=get("body_part"),
            specimen=get("specimen"),
            loinc=loinc,
            quality=quality,
        )
        if category is Category.IMAGING and not item.modality:
            raise _RowError("modality", "影像检查项目必须填写设备类型")
        if category is Category.LAB and not item.specimen:
            raise _RowError("specimen", "检验项目必须填写标本类型")
        return item

    def _check_items(self, parsed: list[tuple[int, Item]], ch: ImportChanges) -> None:
        ch.items = [i for _, i in self._unique(parsed, lambda i: i.code, "code").values()]

    # -- item lists
    def _parse_item_lists(
        self, _row: int, get: Callable[[str], str]
    ) -> tuple[str, str, date, date | None, str]:
        start = self.date_of(get, "effective_from", True)
        end = self.date_of(get, "effective_to", False)
        assert start is not None
        if end is not None and end <= start:
            raise _RowError("effective_to", "失效日期必须晚于生效日期")
        return (
            self.required(get, "jurisdiction"),
            self.required(get, "version"),
            start,
            end,
            self.required(get, "item_code"),
        )

    def _check_item_lists(
        self, parsed: list[tuple[int, tuple[str, str, date, date | None, str]]], ch: ImportChanges
    ) -> None:
        scopes = {s.code for s in self.rec.scopes}
        items = {i.code for i in self.rec.items}
        versions: dict[tuple[str, str], tuple[int, date, date | None, set[str]]] = {}
        for row, (jur, ver, start, end, code) in parsed:
            if jur not in scopes:
                self.problem(row, self.col("jurisdiction"), f"未知的辖区编码“{jur}”")
            if code not in items:
                self.problem(row, self.col("item_code"), f"未知的项目编码“{code}”")
            key = (jur, ver)
            if key not in versions:
                versions[key] = (row, start, end, {code})
                continue
            first_row, s0, e0, codes = versions[key]
            if (s0, e0) != (start, end):
                self.problem(
                    row,
                    self.col("effective_from"),
                    f"同一版本 {ver} 的生效/失效日期与第 {first_row} 行不一致",
                )
            if code in codes:
                self.problem(row, self.col("item_code"), f"重复行: 版本 {ver} 已包含项目“{code}”")
            codes.add(code)
        new = [
            ItemListVersion(jur, ver, start, end, frozenset(codes))
            for (jur, ver), (_, start, end, codes) in versions.items()
        ]
        replaced = set(versions)
        merged = [
            v for v in self.rec.item_lists if (v.jurisdiction, v.version) not in replaced
        ] + new
        if not versions:  # no row could be read: their problems are reported
            return
        first_row = min(r for r, *_ in versions.values())
        for p in overlapping_versions(merged):
            jur, _, ver = p.field.split(":")[0].partition("/")
            # an overlap with a version not in the file is reported at the file's first row
            row = versions[(jur, ver)][0] if (jur, ver) in versions else first_row
            self.problem(row, self.col("effective_from"), p.message)
        ch.item_lists = new

    # -- institutions
    def _parse_institutions(self, _row: int, get: Callable[[str], str]) -> Institution:
        public_text = get("public").lower()
        if public_text and public_text not in TRUE_WORDS | FALSE_WORDS:
            raise _RowError("public", f"应为 是/否，实际为“{get('public')}”")
        return Institution(
            code=self.required(get, "code"),
            name=self.required(get, "name"),
            level=_enum(self.required(get, "level"), LEVEL_LABELS, "level"),
            public=public_text not in FALSE_WORDS,
            jurisdiction=self.required(get, "jurisdiction"),
            address=get("address"),
        )

    def _check_institutions(self, parsed: list[tuple[int, Institution]], ch: ImportChanges) -> None:
        rows = self._unique(parsed, lambda i: i.code, "code")
        scopes = {s.code for s in self.rec.scopes}
        for row, inst in rows.values():
            if inst.jurisdiction not in scopes:
                self.problem(row, self.col("jurisdiction"), f"未知的辖区编码“{inst.jurisdiction}”")
        ch.institutions = [i for _, i in rows.values()]

    # -- qualifications
    def _parse_qualifications(self, _row: int, get: Callable[[str], str]) -> Qualification:
        item, group = get("item"), get("group")
        if not item and not group:
            raise _RowError("item", "项目编码与项目组至少填写一项")
        if item and group:
            raise _RowError("group", "项目编码与项目组只能填写一项")
        start = self.date_of(get, "valid_from", True)
        end = self.date_of(get, "valid_to", False)
        assert start is not None
        if end is not None and end < start:
            raise _RowError("valid_to", "有效期止不能早于有效期起")
        return Qualification(
            institution=self.required(get, "institution"),
            scope=self.required(get, "scope"),
            basis=_enum(self.required(get, "basis"), BASIS_LABELS, "basis"),
            valid_from=start,
            valid_to=end,
            status=_enum(self.required(get, "status"), QUALIFICATION_STATUS_LABELS, "status"),
            item=item,
            group=group,
        )

    def _check_qualifications(
        self, parsed: list[tuple[int, Qualification]], ch: ImportChanges
    ) -> None:
        rows = self._unique(parsed, qualification_key, "institution")
        institutions = {i.code for i in self.rec.institutions}
        scopes = {s.code for s in self.rec.scopes}
        items = {i.code for i in self.rec.items}
        groups = {i.group for i in self.rec.items if i.group}
        for row, q in rows.values():
            if q.institution not in institutions:
                self.problem(
                    row,
                    self.col("institution"),
                    f"未知的机构编码“{q.institution}”（不在机构清单中）",
                )
            if q.scope not in scopes:
                self.problem(row, self.col("scope"), f"未知的互认范围编码“{q.scope}”")
            if q.item and q.item not in items:
                self.problem(row, self.col("item"), f"未知的项目编码“{q.item}”")
            if q.group and q.group not in groups:
                self.problem(row, self.col("group"), f"未知的项目组“{q.group}”")
        ch.qualifications = [q for _, q in rows.values()]

    # -- code maps
    def _parse_code_maps(self, _row: int, get: Callable[[str], str]) -> CodeMapping:
        return CodeMapping(
            institution=self.required(get, "institution"),
            local_code=self.required(get, "local_code"),
            unified_code=self.required(get, "unified_code"),
            local_name=get("local_name"),
        )

    def _check_code_maps(self, parsed: list[tuple[int, CodeMapping]], ch: ImportChanges) -> None:
        rows = self._unique(parsed, lambda m: (m.institution, m.local_code), "local_code")
        institutions = {i.code for i in self.rec.institutions}
        items = {i.code for i in self.rec.items}
        for row, m in rows.values():
            if m.institution not in institutions:
                self.problem(row, self.col("institution"), f"未知的机构编码“{m.institution}”")
            if m.unified_code not in items:
                self.problem(row, self.col("unified_code"), f"未知的统一项目编码“{m.unified_code}”")
        ch.code_maps = [m for _, m in rows.values()]

    def _unique(
        self, parsed: Iterable[tuple[int, Any]], key: Callable[[Any], Any], column: str
    ) -> dict[Any, tuple[int, Any]]:
        seen: dict[Any, tuple[int, Any]] = {}
        for row, value in parsed:
            k = key(value)
            if k in seen:
                self.problem(row, self.col(column), f"重复行: 与第 {seen[k][0]} 行的键相同")
                continue
            seen[k] = (row, value)
        return seen


def _header(kind: CatalogKind, key: str) -> str:
    return next((c.header for c in COLUMNS[kind] if c.key == key), key)


def _norm_header(text: str) -> str:
    return re.sub(r"[\s*＊]", "", text).replace("（", "(").replace("）", ")").lower()


def _loinc_ok(code: str) -> bool:
    """LOINC codes end in a mod-10 check digit (LOINC Users' Guide, Appendix: the check digit)."""
    if not LOINC_PATTERN.match(code):
        return False
    number, check = code.split("-")
    total = 0
    for pos, ch in enumerate(reversed(number)):
        d = int(ch)
        if pos % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10 == int(check)


def loinc_well_formed(code: str) -> bool:
    return _loinc_ok(code)
