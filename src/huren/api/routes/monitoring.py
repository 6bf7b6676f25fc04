"""Monitoring API (R9): statistics by region, institution, department, clinician, item
and month; outliers among peers with the statistic explained; target progress; exports to
CSV and Excel. Also the aggregate refresh / full recompute for operators."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from pydantic import BaseModel

from huren.api.auth import require_roles
from huren.api.deps import container
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.monitoring import Counters, Finding, Metric, Progress
from huren.services.monitoring import LEVEL_NAMES, Level, StatRow

router = APIRouter(prefix="/api/v1/monitoring", tags=["监测"])

Services = Annotated[Container, Depends(container)]
MONITOR_ROLES = (Role.REGULATOR, Role.QC_CENTRE, Role.OPERATOR, Role.INSTITUTION_ADMIN)
Monitor = Annotated[Principal, Depends(require_roles(*MONITOR_ROLES))]
Operator = Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.REGULATOR))]
Format = Literal["json", "csv", "xlsx"]

# ---------------------------------------------------------------- exports


def export(
    fmt: str, filename: str, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Response:
    """CSV (UTF-8 with BOM, so that Excel shows Chinese correctly) or .xlsx."""
    ascii_name = filename.encode("ascii", "ignore").decode() or "export"
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(headers)
        writer.writerows(rows)
        return Response(
            ("\ufeff" + buf.getvalue()).encode("utf-8"),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": disposition},
        )
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = title[:31]
    ws.append(list(headers))
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in rows:
        ws.append(list(row))
    for index, col in enumerate(ws.columns, start=1):
        width = max(len(str(c.value or "")) for c in col)
        ws.column_dimensions[get_column_letter(index)].width = min(60, max(10, width * 2))
    out = io.BytesIO()
    wb.save(out)
    return Response(
        out.getvalue(),
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": disposition},
    )


def pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def yuan(fen: int) -> str:
    return f"{fen / 100:,.2f}"


COUNTER_HEADERS = [
    "提醒项次",
    "可互认提醒项次",
    "互认项次",
    "未互认项次",
    "互认比例",
    "时限内重复检查且无记录",
    "节约费用（元）",
]


def counter_cells(c: Counters) -> list[Any]:
    return [
        c.reminders,
        c.reminders_recognizable,
        c.accepted,
        c.declined,
        pct(c.recognition_ratio),
        c.repeats_unrecorded,
        round(c.saved_fen / 100, 2),
    ]


# ---------------------------------------------------------------- schemas


class CountersOut(BaseModel):
    reminders: int
    reminders_recognizable: int
    accepted: int
    declined: int
    recognition_ratio: float | None
    repeats_unrecorded: int
    saved_fen: int

    @classmethod
    def of(cls, c: Counters) -> CountersOut:
        return cls(**c.as_dict(), recognition_ratio=c.recognition_ratio)


class StatRowOut(BaseModel):
    key: str
    label: str
    counters: CountersOut
    drill: dict[str, str] | None = None

    @classmethod
    def of(cls, r: StatRow) -> StatRowOut:
        return cls(key=r.key, label=r.label, counters=CountersOut.of(r.counters), drill=r.drill)


class StatTableOut(BaseModel):
    level: Level
    level_name: str
    title: str
    period: str
    rows: list[StatRowOut]
    total: CountersOut


class FindingOut(BaseModel):
    key: str
    label: str
    metric: Metric
    value: float
    peer_group: str
    peer_count: int
    peer_median: float
    peer_mean: float
    spread: float
    z: float
    flagged: bool
    explanation: str

    @classmethod
    def of(cls, f: Finding) -> FindingOut:
        return cls(
            key=f.key,
            label=f.label,
            metric=f.metric,
            value=f.value,
            peer_group=f.peer_group,
            peer_count=f.peer_count,
            peer_median=f.peer_median,
            peer_mean=f.peer_mean,
            spread=f.spread,
            z=round(f.z, 3),
            flagged=f.flagged,
            explanation=f.explanation,
        )


class ProgressOut(BaseModel):
    id: str
    jurisdiction: str
    deadline: str
    text: str
    source: str
    measured: str
    value: float | None
    threshold: float
    met: bool | None
    note: str
    details: list[tuple[str, str]]

    @classmethod
    def of(cls, p: Progress) -> ProgressOut:
        t = p.target
        return cls(
            id=t.id,
            jurisdiction=t.jurisdiction,
            deadline=t.deadline.isoformat(),
            text=t.text,
            source=t.source,
            measured=p.measured,
            value=p.value,
            threshold=t.threshold,
            met=p.met,
            note=p.note,
            details=list(p.details),
        )


class RefreshOut(BaseModel):
    reminders: int
    decisions: int
    results: int
    repeats_found: int


# ---------------------------------------------------------------- routes


@router.get("/statistics", response_model=StatTableOut, summary="分级统计（省→市→机构→科室→医师）")
def statistics(
    user: Monitor,
    c: Services,
    level: Level = Level.PROVINCE,
    scope: str = "",
    institution: str = "",
    department: str | None = None,
    month_from: Annotated[str | None, Query(description="YYYY-MM")] = None,
    month_to: Annotated[str | None, Query(description="YYYY-MM")] = None,
    format: Format = "json",
) -> Any:
    period = c.monitoring.period(month_from, month_to)
    table = c.monitoring.drill(
        user, level, period, scope=scope, institution=institution, department=department
    )
    if format != "json":
        return export(
            format,
            f"互认统计-{LEVEL_NAMES[level]}-{period.start:%Y%m}-{period.end:%Y%m}.{format}",
            f"{LEVEL_NAMES[level]}统计",
            ["编码", LEVEL_NAMES[level], *COUNTER_HEADERS],
            [[r.key, r.label, *counter_cells(r.counters)] for r in table.rows],
        )
    return StatTableOut(
        level=level,
        level_name=LEVEL_NAMES[level],
        title=table.title,
        period=period.label,
        rows=[StatRowOut.of(r) for r in table.rows],
        total=CountersOut.of(table.total),
    )


@router.get("/items", response_model=list[StatRowOut], summary="按互认项目统计")
def items(
    user: Monitor,
    c: Services,
    scope: str = "",
    month_from: str | None = None,
    month_to: str | None = None,
    format: Format = "json",
) -> Any:
    period = c.monitoring.period(month_from, month_to)
    rows = c.monitoring.by_item(user, period, scope)
    return _stat_rows(
        rows,
        format,
        f"互认统计-项目-{period.start:%Y%m}-{period.end:%Y%m}",
        "项目统计",
        ("项目编码", "项目名称"),
    )


@router.get("/trend", response_model=list[StatRowOut], summary="按月趋势")
def trend(
    user: Monitor,
    c: Services,
    scope: str = "",
    month_from: str | None = None,
    month_to: str | None = None,
    format: Format = "json",
) -> Any:
    period = c.monitoring.period(month_from, month_to)
    rows = c.monitoring.trend(user, period, scope)
    return _stat_rows(
        rows,
        format,
        f"互认趋势-{period.start:%Y%m}-{period.end:%Y%m}",
        "按月趋势",
        ("月份", "月份"),
    )


def _stat_rows(
    rows: Sequence[StatRow], format: Format, filename: str, sheet: str, heads: tuple[str, str]
) -> Any:
    """The rows as JSON, or as a CSV / Excel download with the counters' Chinese headers."""
    if format != "json":
        return export(
            format,
            f"{filename}.{format}",
            sheet,
            [*heads, *COUNTER_HEADERS],
            [[r.key, r.label, *counter_cells(r.counters)] for r in rows],
        )
    return [StatRowOut.of(r) for r in rows]


class DeclineOut(BaseModel):
    reason_code: str
    reason: str
    declined: int


@router.get("/declines", response_model=list[DeclineOut], summary="未互认原因分布")
def declines(
    user: Monitor,
    c: Services,
    scope: str = "",
    month_from: str | None = None,
    month_to: str | None = None,
) -> list[DeclineOut]:
    period = c.monitoring.period(month_from, month_to)
    return [
        DeclineOut(reason_code=code, reason=label, declined=n)
        for code, label, n in c.monitoring.declines(user, period, scope)
    ]


@router.get("/outliers", response_model=list[FindingOut], summary="明显偏离同组平均水平的机构/医师")
def outliers(
    user: Monitor,
    c: Services,
    metric: Metric = Metric.RECOGNITION_RATIO,
    scope: str = "",
    institution: str = "",
    all: bool = False,
    month_from: str | None = None,
    month_to: str | None = None,
    format: Format = "json",
) -> Any:
    period = c.monitoring.period(month_from, month_to)
    found = c.monitoring.outliers(
        user, period, metric, scope=scope, institution=institution, only_flagged=not all
    )
    if format != "json":
        return export(
            format,
            f"偏离监测-{period.start:%Y%m}-{period.end:%Y%m}.{format}",
            "偏离监测",
            [
                "编码",
                "名称",
                "指标",
                "数值",
                "同组",
                "同组数",
                "中位数",
                "平均",
                "稳健Z值",
                "判定",
                "说明",
            ],
            [
                [
                    f.key,
                    f.label,
                    f.metric.value,
                    round(f.value, 4),
                    f.peer_group,
                    f.peer_count,
                    round(f.peer_median, 4),
                    round(f.peer_mean, 4),
                    round(f.z, 2),
                    "明显偏离" if f.flagged else "正常",
                    f.explanation,
                ]
                for f in found
            ],
        )
    return [FindingOut.of(f) for f in found]


@router.get("/targets", response_model=list[ProgressOut], summary="目标进展")
def targets(
    user: Monitor, c: Services, jurisdiction: str | None = None, format: Format = "json"
) -> Any:
    progress = c.monitoring.targets(jurisdiction or user.jurisdiction)
    if format != "json":
        return export(
            format,
            f"目标进展.{format}",
            "目标进展",
            ["编号", "辖区", "期限", "目标", "依据", "测量", "当前值", "是否达成"],
            [
                [
                    p.target.id,
                    p.target.jurisdiction,
                    p.target.deadline.isoformat(),
                    p.target.text,
                    p.target.source,
                    p.measured,
                    "" if p.value is None else round(p.value, 4),
                    {True: "已达成", False: "未达成", None: "定性"}[p.met],
                ]
                for p in progress
            ],
        )
    return [ProgressOut.of(p) for p in progress]


@router.post("/refresh", response_model=RefreshOut, summary="增量汇总（定时任务亦调用）")
def refresh(_: Operator, c: Services) -> RefreshOut:
    r = c.monitoring.refresh()
    return RefreshOut(
        reminders=r.reminders,
        decisions=r.decisions,
        results=r.results,
        repeats_found=r.repeats_found,
    )


@router.post("/recompute", response_model=RefreshOut, summary="全量重算（修复用）")
def recompute(
    _: Annotated[Principal, Depends(require_roles(Role.OPERATOR))], c: Services
) -> RefreshOut:
    r = c.monitoring.recompute()
    return RefreshOut(
        reminders=r.reminders,
        decisions=r.decisions,
        results=r.results,
        repeats_found=r.repeats_found,
    )
