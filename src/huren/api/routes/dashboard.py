"""Regulator dashboard (R9): trend, drill-down 省 → 市 → 机构 → 科室 → 医师 (htmx partials),
outliers with the statistic explained, QC status, correction backlog, target progress,
and a printable monthly report."""

from __future__ import annotations

import json
from html import escape
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from huren.api.auth import optional_principal
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.monitoring import MONITOR_ROLES, pct, yuan
from huren.api.routes.page_errors import PageRoute, error_page
from huren.bootstrap import Container
from huren.domain.accounts import ROLE_LABELS, Principal, Role
from huren.domain.china_time import local_date, local_time
from huren.domain.errors import DomainError, Forbidden
from huren.domain.masterdata import ScopeKind
from huren.domain.monitoring import Metric, Progress, TargetMetric, month_label
from huren.domain.qc import EXPIRY_LABELS, PROPOSAL_STATUS_LABELS, SUSPENSION_REASON_LABELS
from huren.services.monitoring import LEVEL_NAMES, Level, Period, StatTable

router = APIRouter(include_in_schema=False, route_class=PageRoute)
Services = Annotated[Container, Depends(container)]
MaybeUser = Annotated[Principal | None, Depends(optional_principal)]


def _allowed(user: Principal) -> None:
    if user.role not in MONITOR_ROLES:
        raise Forbidden(f"当前角色（{ROLE_LABELS[user.role]}）无权查看监管驾驶舱")


def _error(request: Request, user: Principal | None, exc: DomainError) -> Response:
    """A whole page (the site's error page, with its header and way back) for a page the
    browser opened; for an htmx request (the drill-down panel) the message alone, with
    status 200, since htmx swaps no error response and the click would seem to do nothing.
    The message (and each problem) escaped: they may repeat what the request said."""
    if request.headers.get("hx-request") != "true":
        return error_page(request, exc)
    problems = "".join(f"<li>{escape(p.message)}</li>" for p in exc.problems)
    return HTMLResponse(
        f"<div role='alert'><p class='bad'>无法显示：{escape(exc.message)}</p>"
        + (f"<ul class='bad'>{problems}</ul>" if problems else "")
        + "</div>"
    )


# Targets measured as a share (the rest count scopes or items against a threshold).
SHARE_METRICS = frozenset(
    {TargetMetric.ALLIANCES_ALL_ITEMS, TargetMetric.CONNECTED_SHARE, TargetMetric.ITEMS_PER_SCOPE}
)


def _target_value(p: Progress) -> str:
    """What a target's measure came to: a share in percent, or a count."""
    if p.value is None:
        return ""
    return pct(p.value) if p.target.metric in SHARE_METRICS else str(int(p.value))


def _target_share(p: Progress) -> float:
    """How far a target has come, for its bar: the share itself, or the count against
    its threshold (a target without a threshold: all the way)."""
    if p.value is None:
        return 0.0
    if p.target.metric in SHARE_METRICS:
        return p.value
    return p.value / p.target.threshold if p.target.threshold else 1


def _crumbs(
    c: Container, level: Level, scope: str, institution: str, department: str | None
) -> list[dict[str, str]]:
    """Breadcrumb of the drill-down: 全部 › 省 › 市 › 机构 › 科室."""
    cat = c.catalog.get()
    crumbs = [{"label": "全部", "level": Level.PROVINCE.value}]
    chain: list[str] = []
    if institution and institution in cat.institutions:
        jur = cat.institutions[institution].jurisdiction
        chain = [*reversed(cat.graph.ancestors(jur)), jur]
    elif scope:
        chain = [*reversed(cat.graph.ancestors(scope)), scope]
    for code in chain:
        s = cat.graph.scopes.get(code)
        if s is None:
            continue
        nxt = Level.CITY if s.kind is ScopeKind.PROVINCE else Level.INSTITUTION
        crumbs.append({"label": s.name, "level": nxt.value, "scope": code})
    if institution and institution in cat.institutions:
        crumbs.append(
            {
                "label": cat.institutions[institution].name,
                "level": Level.DEPARTMENT.value,
                "institution": institution,
            }
        )
        if level is Level.CLINICIAN:
            crumbs.append(
                {
                    "label": department or "（未填科室）",
                    "level": Level.CLINICIAN.value,
                    "institution": institution,
                    "department": department or "",
                }
            )
    return crumbs


def _chart(table: StatTable) -> str:
    top = table.rows[:15]
    return json.dumps(
        {
            "labels": [r.label for r in top],
            "accepted": [r.counters.accepted for r in top],
            "declined": [r.counters.declined for r in top],
            "ratio": [round((r.counters.recognition_ratio or 0) * 100, 1) for r in top],
        },
        ensure_ascii=False,
    )


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(
    request: Request,
    user: MaybeUser,
    c: Services,
    month_from: str | None = None,
    month_to: str | None = None,
    scope: str = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        _allowed(user)
        mon, qc = c.monitoring, c.qc
        period = mon.period(month_from, month_to)
        trend = mon.trend(user, period, scope)
        total = trend[0].counters if trend else None
        for r in trend[1:]:
            assert total is not None
            total = total + r.counters
        outliers = mon.outliers(user, period, Metric.RECOGNITION_RATIO, scope=scope)
        outliers_count = mon.outliers(user, period, Metric.ACCEPTED, scope=scope)
        declines = mon.declines(user, period, scope)
        overview = qc.overview(user)
        backlog = mon.correction_backlog(user)
        targets = mon.targets(user.jurisdiction)
    except DomainError as exc:
        return _error(request, user, exc)
    cat = c.catalog.get()
    trend_json = json.dumps(
        {
            "months": [r.label for r in trend],
            "reminders": [r.counters.reminders for r in trend],
            "accepted": [r.counters.accepted for r in trend],
            "saved": [round(r.counters.saved_fen / 100, 2) for r in trend],
        },
        ensure_ascii=False,
    )
    provinces = [
        (code, s.name)
        for code, s in sorted(cat.graph.scopes.items())
        if s.kind in (ScopeKind.PROVINCE, ScopeKind.CITY)
        and (
            user.role is Role.OPERATOR
            or (
                user.jurisdiction
                and (code == user.jurisdiction or user.jurisdiction in cat.graph.ancestors(code))
            )
        )
    ]
    return templates.TemplateResponse(
        request,
        "dashboard/index.html",
        {
            "user": user,
            "period": period,
            "month_from": f"{period.start:%Y-%m}",
            "month_to": f"{period.end:%Y-%m}",
            "scope": scope,
            "scopes": provinces,
            "total": total,
            "trend_json": trend_json,
            "outliers": [*outliers, *outliers_count],
            "declines": declines,
            "overview": overview,
            "backlog": backlog,
            "targets": targets,
            "inst_names": {k: v.name for k, v in cat.institutions.items()},
            "pct": pct,
            "yuan": yuan,
            "expiry_labels": EXPIRY_LABELS,
            "reason_labels": SUSPENSION_REASON_LABELS,
            "status_labels": PROPOSAL_STATUS_LABELS,
            "local_date": local_date,
            "target_value": _target_value,
            "target_share": _target_share,
            "can_decide": user.role in (Role.REGULATOR, Role.OPERATOR),
            "report_month": f"{period.end:%Y-%m}",
        },
    )


@router.get("/dashboard/drill", response_class=HTMLResponse)
def drill(
    request: Request,
    user: MaybeUser,
    c: Services,
    level: Level = Level.PROVINCE,
    scope: str = "",
    institution: str = "",
    department: str | None = None,
    month_from: str | None = None,
    month_to: str | None = None,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        _allowed(user)
        period = c.monitoring.period(month_from, month_to)
        table = c.monitoring.drill(
            user, level, period, scope=scope, institution=institution, department=department
        )
    except DomainError as exc:
        return _error(request, user, exc)
    return templates.TemplateResponse(
        request,
        "dashboard/_drill.html",
        {
            "user": user,
            "table": table,
            "level_name": LEVEL_NAMES[level],
            "crumbs": _crumbs(c, level, scope, institution, department),
            "month_from": f"{period.start:%Y-%m}",
            "month_to": f"{period.end:%Y-%m}",
            "chart_json": _chart(table),
            "pct": pct,
            "yuan": yuan,
            "export_query": _export_query(level, scope, institution, department, period),
        },
    )


def _export_query(
    level: Level, scope: str, institution: str, department: str | None, period: Period
) -> str:
    from urllib.parse import urlencode

    q: dict[str, Any] = {
        "level": level.value,
        "month_from": f"{period.start:%Y-%m}",
        "month_to": f"{period.end:%Y-%m}",
    }
    if scope:
        q["scope"] = scope
    if institution:
        q["institution"] = institution
    if department is not None:
        q["department"] = department
    return urlencode(q)


@router.post("/dashboard/proposals/{proposal_id}/{action}")
def decide(
    proposal_id: int,
    action: str,
    request: Request,
    user: MaybeUser,
    c: Services,
    note: Annotated[str, Form()] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        if action == "confirm":
            c.qc.confirm(user, proposal_id, note)
        elif action == "reject":
            c.qc.reject(user, proposal_id, note)
        elif action == "reinstate":
            c.qc.reinstate(user, proposal_id, note)
        else:
            raise Forbidden("不支持的操作")
    except DomainError as exc:
        return _error(request, user, exc)
    return RedirectResponse("/dashboard#qc", status_code=303)


@router.get("/dashboard/report", response_class=HTMLResponse)
def monthly_report(
    request: Request, user: MaybeUser, c: Services, month: str | None = None, scope: str = ""
) -> Response:
    """Printable monthly report (print-ready HTML; the browser prints it to PDF)."""
    if user is None:
        return login_redirect(request)
    try:
        _allowed(user)
        mon = c.monitoring
        period = mon.period(month, month)
        previous = Period(_prev(period.start), _prev(period.start))
        # By city for a provincial account (its one province alone says nothing).
        cat = c.catalog.get()
        region_scope = scope
        own = cat.graph.scopes.get(user.jurisdiction or "")
        if not region_scope and own is not None and own.kind is ScopeKind.PROVINCE:
            region_scope = own.code
        level = Level.CITY if region_scope else Level.PROVINCE
        regions = mon.drill(user, level, period, scope=region_scope)
        before = mon.drill(user, level, previous, scope=region_scope)
        institutions = mon.drill(user, Level.INSTITUTION, period, scope=scope)
        items = mon.by_item(user, period, scope)[:15]
        declines = mon.declines(user, period, scope)
        outliers = mon.outliers(user, period, Metric.RECOGNITION_RATIO, scope=scope)
        overview = c.qc.overview(user)
        targets = mon.targets(user.jurisdiction)
    except DomainError as exc:
        return _error(request, user, exc)
    # Institutions without a reminder this month are counted, not listed one by one.
    active = [
        r
        for r in institutions.rows
        if r.counters.reminders or r.counters.accepted or r.counters.repeats_unrecorded
    ]
    return templates.TemplateResponse(
        request,
        "dashboard/report.html",
        {
            "user": user,
            "title": month_label(period.start),
            "period": period,
            "regions": regions,
            "before": before,
            "active_institutions": active,
            "idle_institutions": len(institutions.rows) - len(active),
            "items": items,
            "declines": declines,
            "outliers": outliers,
            "overview": overview,
            "targets": targets,
            "pct": pct,
            "yuan": yuan,
            "generated": local_time(c.clock.now()),
            "target_value": _target_value,
            "reason_labels": SUSPENSION_REASON_LABELS,
            "inst_names": {k: v.name for k, v in cat.institutions.items()},
        },
    )


def _prev(month: Any) -> Any:
    return (
        month.replace(year=month.year - 1, month=12)
        if month.month == 1
        else month.replace(month=month.month - 1)
    )
