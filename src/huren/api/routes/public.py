"""Published lists, no login needed (沪 五(六): 加强公示公开，便于医疗机构和社会公众查询了解):
the half-yearly institution list (甘卫医政函〔2025〕16号 四(一): 每半年公布互认医疗机构清单)
and the current item list per jurisdiction with effective dates; as pages and as CSV /
Excel downloads."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from huren.api.deps import container, templates
from huren.api.routes.monitoring import export
from huren.bootstrap import Container
from huren.domain.china_time import CHINA_TZ
from huren.domain.masterdata import (
    CATEGORY_LABELS,
    LEVEL_LABELS,
    QUALIFICATION_STATUS_LABELS,
    InstitutionLevel,
    ItemListVersion,
    QualificationBasis,
    ScopeKind,
)
from huren.services.qc import half_year_of

router = APIRouter(tags=["公示"])
Services = Annotated[Container, Depends(container)]

BASIS_LABELS = {
    QualificationBasis.QC_EVALUATION.value: "质控中心质量评价",
    QualificationBasis.EQA.value: "室间质评",
    QualificationBasis.ALLIANCE_COMPARISON.value: "医联体室间比对",
    QualificationBasis.SPOT_CHECK.value: "放射影像质量抽查",
}


def _jurisdictions(c: Container) -> list[tuple[str, str]]:
    cat = c.catalog.get()
    return [
        (code, s.name)
        for code, s in sorted(cat.graph.scopes.items())
        if s.kind is ScopeKind.PROVINCE
    ]


def _time_limit(hours: float) -> str:
    return f"{int(hours // 24)} 天" if hours >= 24 and hours % 24 == 0 else f"{int(hours)} 小时"


@router.get(
    "/public/institutions", response_class=HTMLResponse, summary="互认医疗机构清单（半年公布）"
)
def institutions(
    request: Request,
    c: Services,
    jurisdiction: str = "",
    half: str = "",
    format: str = "html",
) -> Response:
    today = c.clock.now().astimezone(CHINA_TZ).date()
    jur = jurisdiction or c.settings.jurisdiction
    period = half or half_year_of(today)
    entries = c.qc.published_institutions(jur, period)
    cat = c.catalog.get()
    name = cat.graph.scopes[jur].name
    rows: list[list[Any]] = [
        [
            e.institution,
            e.institution_name,
            LEVEL_LABELS.get(InstitutionLevel(e.level), e.level),
            e.target,
            e.target_name,
            e.scope_name,
            BASIS_LABELS.get(e.basis, e.basis),
            e.valid_from.isoformat(),
            e.valid_to.isoformat() if e.valid_to else "长期",
            QUALIFICATION_STATUS_LABELS[e.status],
        ]
        for e in entries
    ]
    headers = [
        "机构编码",
        "机构名称",
        "等级",
        "项目/项目组",
        "项目名称",
        "互认范围",
        "依据",
        "有效期自",
        "有效期至",
        "状态",
    ]
    if format in ("csv", "xlsx"):
        return export(
            format, f"{name}互认医疗机构清单-{period}.{format}", "互认医疗机构清单", headers, rows
        )
    return templates.TemplateResponse(
        request,
        "public/institutions.html",
        {
            "user": None,
            "jurisdiction": jur,
            "jurisdiction_name": name,
            "jurisdictions": _jurisdictions(c),
            "half": period,
            "halves": _recent_halves(today),
            "headers": headers,
            "rows": rows,
        },
    )


def _recent_halves(today: date) -> list[str]:
    out, y, h = [], today.year, 1 if today.month <= 6 else 2
    for _ in range(6):
        out.append(f"{y}H{h}")
        y, h = (y, 1) if h == 2 else (y - 1, 2)
    return out


def _versions(c: Container, jur: str) -> list[ItemListVersion]:
    return sorted(
        (v for v in c.catalog.get().item_lists if v.jurisdiction == jur),
        key=lambda v: v.effective_from,
        reverse=True,
    )


@router.get("/public/items", response_class=HTMLResponse, summary="互认项目清单（现行）")
def items(request: Request, c: Services, jurisdiction: str = "", format: str = "html") -> Response:
    today = c.clock.now().astimezone(CHINA_TZ).date()
    jur = jurisdiction or c.settings.jurisdiction
    cat = c.catalog.get()
    if jur not in cat.graph.scopes:
        from huren.domain.errors import NotFound

        raise NotFound(f"未找到辖区 {jur}")
    versions = _versions(c, jur)
    current = next((v for v in versions if v.in_force(today)), None)
    upcoming = [v for v in versions if v.effective_from > today]
    rows: list[list[Any]] = []
    if current is not None:
        for code in sorted(current.item_codes):
            item = cat.items.get(code)
            if item is None:
                continue
            rows.append(
                [
                    item.code,
                    item.name,
                    CATEGORY_LABELS[item.category],
                    item.modality or item.specimen,
                    item.body_part,
                    item.loinc,
                    _time_limit(item.time_limit.total_seconds() / 3600),
                    f"{item.price_fen / 100:.2f}",
                    current.version,
                    current.effective_from.isoformat(),
                    current.effective_to.isoformat() if current.effective_to else "",
                ]
            )
    headers = [
        "统一编码",
        "项目名称",
        "类别",
        "设备/标本",
        "部位",
        "LOINC",
        "参考时限",
        "价格（元）",
        "清单版本",
        "生效日期",
        "失效日期",
    ]
    name = cat.graph.scopes[jur].name
    if format in ("csv", "xlsx"):
        return export(
            format, f"{name}互认项目清单-{today:%Y%m%d}.{format}", "互认项目清单", headers, rows
        )
    return templates.TemplateResponse(
        request,
        "public/items.html",
        {
            "user": None,
            "jurisdiction": jur,
            "jurisdiction_name": name,
            "jurisdictions": _jurisdictions(c),
            "current": current,
            "upcoming": upcoming,
            "headers": headers,
            "rows": rows,
            "today": today,
        },
    )
