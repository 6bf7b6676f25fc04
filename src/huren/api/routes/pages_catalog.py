"""Web pages for the master-data lists (Jinja2 + vendored htmx): items, institutions,
qualifications with their marks, the negative list; and the landing page. Every page
requires login (redirect to /login); every role may read them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from huren.api.auth import optional_principal
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.bootstrap import Container
from huren.domain.accounts import ROLE_LABELS, Principal, Role
from huren.domain.masterdata import (
    CATEGORY_LABELS,
    LEVEL_LABELS,
    QUALIFICATION_STATUS_LABELS,
    SCOPE_KIND_LABELS,
    Category,
    InstitutionLevel,
    ScopeKind,
)

router = APIRouter(include_in_schema=False, route_class=PageRoute)

PAGE_SIZE = 50
Viewer = Annotated[Principal | None, Depends(optional_principal)]
Ctr = Annotated[Container, Depends(container)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Text = Annotated[str, Query(max_length=100)]

BASIS_LABELS = {
    "qc_evaluation": "质控中心质量评价",
    "eqa": "室间质评",
    "alliance_comparison": "医联体室间比对",
    "spot_check": "质量抽查",
}


def _render(
    request: Request, user: Principal, full: str, partial: str, context: dict[str, Any]
) -> Response:
    """The whole page, or only the table when htmx asks for it (filtering, paging)."""
    name = partial if request.headers.get("hx-request") == "true" else full
    return templates.TemplateResponse(request, name, {"user": user, **context})


def _provinces(c: Container) -> list[tuple[str, str]]:
    scopes = c.catalog.get().graph.scopes.values()
    return sorted((s.code, s.name) for s in scopes if s.kind is ScopeKind.PROVINCE)


def _bound_to(c: Container, user: Principal) -> str:
    """The institution or jurisdiction an account acts for, by name (not its code)."""
    cat = c.catalog.get()
    if user.institution:
        inst = cat.institutions.get(user.institution)
        return inst.name if inst else user.institution
    if user.jurisdiction:
        scope = cat.graph.scopes.get(user.jurisdiction)
        return scope.name if scope else user.jurisdiction
    return ""


def _area(href: str, title: str, text: str) -> dict[str, str]:
    return {"href": href, "title": title, "text": text}


_MONTHLY_REPORT = _area("/dashboard/report", "月度报告", "可打印的月度工作报告")
# Where each role works, shown first on the home page (an area without ``href`` is not a
# page of the platform: the workbench opens from the HIS).
WORK_AREAS: Mapping[Role, tuple[dict[str, str], ...]] = {
    Role.CLINICIAN: (
        _area(
            "",
            "互认工作台",
            "在 HIS 开具检查检验医嘱时自动打开：显示患者在其他医院的既往结果及互认标识，"
            "接受互认即生成病历记载文本，不予互认须选择理由并向患者说明。",
        ),
        _area(
            "/retrieval",
            "跨机构调阅",
            "按患者证件号查询其在各医疗机构的检查检验结果（须说明调阅目的，均记录审计）",
        ),
        _area("/inbox", "消息", "纠错申请的处理结果、结果更正通知"),
    ),
    Role.INSTITUTION_ADMIN: (
        _area("/integration/messages", "接口消息", "本机构上传的消息、拒收消息及错误原因"),
        _area(
            "/integration/unmapped",
            "连接状态与未对码项目",
            "接口是否在线、错误率，以及尚未映射到统一编码的本地项目",
        ),
        _area("/corrections", "纠错队列", "患者和其他医院对本机构结果提出的纠错申请"),
        _area("/patient-bindings", "患者账号绑定", "核验证件后为患者开通患者端"),
        _area("/dashboard", "互认统计", "本机构的提醒、互认项次与节约费用，按科室、医师下钻"),
        _area("/retrieval", "跨机构调阅", "按患者证件号查询检查检验结果"),
    ),
    Role.REGULATOR: (
        _area(
            "/dashboard",
            "监管驾驶舱",
            "互认项次、互认比例、节约费用，按地市 → 机构 → 科室 → 医师下钻；"
            "偏离平均水平的机构、质控状态与目标进展",
        ),
        _MONTHLY_REPORT,
        _area("/retrieval", "跨机构调阅", "监督检查时查询结果（须说明目的）"),
    ),
    Role.QC_CENTRE: (
        _area("/dashboard", "监管驾驶舱", "互认情况、质控状态（暂停建议、资质到期）与目标进展"),
        _MONTHLY_REPORT,
        _area("/retrieval", "跨机构调阅", "质控核查时查询结果（须说明目的）"),
    ),
    Role.INSURER: (_area("/insurer", "医保核查", "核查结算明细中的重复检查、重复收费疑点"),),
    Role.OPERATOR: (
        _area("/dashboard", "监管驾驶舱", "全平台的互认情况与质控状态"),
        _area("/integration/unmapped", "接口状态", "各机构的连接状态与未对码项目"),
        _area("/integration/messages", "接口消息", "所有机构上传的消息与拒收原因"),
        _area("/corrections", "纠错队列", "待处理的纠错申请"),
    ),
    Role.INTEGRATION: (
        _area("/docs", "接口文档", "FHIR、HL7 v2、CDS Hooks 与 REST 接口（OpenAPI）"),
    ),
}


@router.get("/", response_class=HTMLResponse)
def index(request: Request, user: Viewer, c: Ctr) -> Response:
    if user is None:
        return login_redirect(request)
    if user.role is Role.PATIENT:
        # A patient who signed in with a password lands on their own results, not on the
        # staff's lists.
        return RedirectResponse("/patient", status_code=303)
    areas = [
        {"href": "/catalog/items", "title": "互认项目", "text": "项目目录、清单版本与参考时限"},
        {
            "href": "/catalog/institutions",
            "title": "医疗机构",
            "text": "机构清单：等级、辖区、科室",
        },
        {
            "href": "/catalog/qualifications",
            "title": "互认资质",
            "text": "机构 × 项目 × 范围与互认标识",
        },
        {
            "href": "/catalog/negative-list",
            "title": "负面清单",
            "text": "可不予互认的情形及文件出处",
        },
    ]
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "user": user,
            "role_label": ROLE_LABELS[user.role],
            "binding": _bound_to(c, user) if user.role is not Role.OPERATOR else "",
            "work": WORK_AREAS.get(user.role, ()),
            "areas": areas,
        },
    )


@router.get("/catalog/items", response_class=HTMLResponse)
def items_page(
    request: Request,
    user: Viewer,
    c: Ctr,
    category: Annotated[Category | None, Query()] = None,
    q: Text = "",
    offset: Offset = 0,
) -> Response:
    if user is None:
        return login_redirect(request)
    page = c.masterdata_admin.items(
        category=category, search=q or None, limit=PAGE_SIZE, offset=offset
    )
    return _render(
        request,
        user,
        "catalog/items.html",
        "catalog/_items_table.html",
        {
            "page": page,
            "offset": offset,
            "size": PAGE_SIZE,
            "category": category.value if category else "",
            "q": q,
            "categories": CATEGORY_LABELS,
        },
    )


@router.get("/catalog/institutions", response_class=HTMLResponse)
def institutions_page(
    request: Request,
    user: Viewer,
    c: Ctr,
    province: Annotated[str, Query(max_length=32)] = "",
    level: Annotated[InstitutionLevel | None, Query()] = None,
    q: Text = "",
    offset: Offset = 0,
) -> Response:
    if user is None:
        return login_redirect(request)
    page = c.masterdata_admin.institutions(
        province=province or None, level=level, search=q or None, limit=PAGE_SIZE, offset=offset
    )
    cat = c.catalog.get()
    scopes = cat.graph.scopes
    return _render(
        request,
        user,
        "catalog/institutions.html",
        "catalog/_institutions_table.html",
        {
            "page": page,
            "offset": offset,
            "size": PAGE_SIZE,
            "province": province,
            "level": level.value if level else "",
            "q": q,
            "provinces": _provinces(c),
            "levels": LEVEL_LABELS,
            "province_of": cat.province_of,
            "scope_name": lambda code: scopes[code].name if code in scopes else code,
        },
    )


@router.get("/catalog/qualifications", response_class=HTMLResponse)
def qualifications_page(
    request: Request,
    user: Viewer,
    c: Ctr,
    institution: Annotated[str, Query(max_length=32)] = "",
    item: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    admin = c.masterdata_admin
    cat = c.catalog.get()
    now = c.clock.now()
    rows = []
    for sq in admin.qualifications(institution=institution or None, item=item or None):
        q = sq.qualification
        own, effective = admin.qualification_marks(q, now)
        inst = cat.institutions.get(q.institution)
        it = cat.items.get(q.item) if q.item else None
        scope = cat.graph.scopes.get(q.scope)
        rows.append(
            {
                "id": sq.id,
                "institution": q.institution,
                "institution_name": inst.name if inst else q.institution,
                "item": q.item,
                "item_name": it.name if it else "",
                "group": q.group,
                "scope": q.scope,
                "scope_name": scope.name if scope else q.scope,
                "scope_kind": SCOPE_KIND_LABELS[scope.kind] if scope else "",
                "basis": BASIS_LABELS.get(q.basis.value, q.basis.value),
                "valid_from": q.valid_from,
                "valid_to": q.valid_to,
                "status": q.status.value,
                "status_label": QUALIFICATION_STATUS_LABELS[q.status],
                "mark": own,
                "effective": effective,
            }
        )
    return _render(
        request,
        user,
        "catalog/qualifications.html",
        "catalog/_qualifications_table.html",
        {
            "rows": rows,
            "institution": institution,
            "item": item,
            "institutions": sorted(cat.institutions.values(), key=lambda i: i.code),
            "items": sorted(cat.items.values(), key=lambda i: i.code),
            "today": now.date(),
        },
    )


@router.get("/catalog/negative-list", response_class=HTMLResponse)
def negative_list_page(
    request: Request,
    user: Viewer,
    c: Ctr,
    jurisdiction: Annotated[str, Query(max_length=32)] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    cat = c.catalog.get()
    have = sorted(cat.negative_reasons)
    chosen = jurisdiction or _home_jurisdiction(user, c, have)
    scopes = cat.graph.scopes
    return _render(
        request,
        user,
        "catalog/negative_list.html",
        "catalog/_negative_list_table.html",
        {
            "jurisdiction": chosen,
            "jurisdictions": [
                (code, scopes[code].name if code in scopes else code) for code in have
            ],
            "reasons": c.masterdata_admin.negative_list(chosen),
            "exclusions": [e for e in cat.exclusions if e.jurisdiction == chosen],
        },
    )


def _home_jurisdiction(user: Principal, c: Container, have: list[str]) -> str:
    cat = c.catalog.get()
    candidates = []
    if user.institution:
        candidates.append(cat.province_of(user.institution))
    if user.jurisdiction:
        candidates += [user.jurisdiction, *cat.graph.ancestors(user.jurisdiction)]
    candidates.append(c.settings.jurisdiction)
    for code in candidates:
        if code in have:
            return code
    return have[0] if have else ""
