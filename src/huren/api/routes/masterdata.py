"""Master-data REST API under /api/v1 (issue 3 §7). Every authenticated role reads;
regulators, QC centres and the operator edit lists within their jurisdiction;
institution administrators edit their own institution's departments and code maps.
Each route names who may call it in its ``require_roles``."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from huren.api.auth import ALL_ROLES, LIST_EDITORS, require_roles
from huren.api.deps import container
from huren.api.schemas.masterdata import (
    CODE_PATTERN,
    CodeMapIn,
    CodeMapOut,
    DepartmentIn,
    DepartmentOut,
    InstitutionIn,
    InstitutionOut,
    InstitutionPage,
    InstitutionUpdateIn,
    ItemExclusionOut,
    ItemIn,
    ItemListVersionIn,
    ItemListVersionOut,
    ItemOut,
    ItemPage,
    ItemsInForceOut,
    ItemUpdateIn,
    MarkOut,
    MarkSymbolOut,
    NegativeListOut,
    NegativeReasonIn,
    NegativeReasonOut,
    QualificationEventOut,
    QualificationIn,
    QualificationOut,
    QualificationStatusIn,
    ScopeIn,
    ScopeOut,
    ScopeUpdateIn,
)
from huren.api.schemas.problems import PROBLEM_RESPONSES
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.marks import Mark
from huren.domain.masterdata import Category, InstitutionLevel, Scope
from huren.services.masterdata_admin import Department, MasterDataAdmin, StoredQualification

router = APIRouter(prefix="/api/v1", tags=["主数据"], responses=PROBLEM_RESPONSES)

Reader = Annotated[Principal, Depends(require_roles(*ALL_ROLES))]
ListEditor = Annotated[Principal, Depends(require_roles(*LIST_EDITORS))]
DepartmentEditor = Annotated[
    Principal, Depends(require_roles(Role.INSTITUTION_ADMIN, *LIST_EDITORS))
]
CodeMapEditor = Annotated[Principal, Depends(require_roles(Role.INSTITUTION_ADMIN, Role.OPERATOR))]
Ctr = Annotated[Container, Depends(container)]

CodePath = Annotated[str, Path(min_length=1, max_length=32, pattern=CODE_PATTERN)]
LocalCodePath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00/]+$")]
IdPath = Annotated[int, Path(ge=1, le=2**53)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Search = Annotated[str | None, Query(max_length=100, description="代码、名称或 LOINC")]
OptCode = Annotated[str | None, Query(max_length=32)]


def _admin(c: Container) -> MasterDataAdmin:
    return c.masterdata_admin


def _mark(m: Mark | None) -> MarkOut | None:
    return MarkOut(scope=m.scope, symbol=m.symbol, symbol_en=m.symbol_en) if m else None


def _scope_out(c: Container, s: Scope) -> ScopeOut:
    graph = c.catalog.get().graph
    children = sorted(x.code for x in graph.scopes.values() if x.parent == s.code)
    return ScopeOut.of(s, children, graph.breadth(s.code))


def _institution_out(c: Container, code: str, with_departments: bool = False) -> InstitutionOut:
    admin = _admin(c)
    inst = admin.institution(code)
    depts = (
        [DepartmentOut(code=d.code, name=d.name) for d in admin.departments(code)]
        if with_departments
        else None
    )
    return InstitutionOut.of(inst, c.catalog.get().province_of(code), depts)


def _qualification_out(
    c: Container, sq: StoredQualification, with_history: bool = False
) -> QualificationOut:
    admin = _admin(c)
    q = sq.qualification
    own, effective = admin.qualification_marks(q, c.clock.now())
    history = (
        [
            QualificationEventOut(
                at=e.at,
                actor=e.actor,
                old_status=e.old_status,
                new_status=e.new_status,
                reason=e.reason,
            )
            for e in admin.qualification_history(sq.id)
        ]
        if with_history
        else None
    )
    return QualificationOut(
        id=sq.id,
        institution=q.institution,
        item=q.item,
        group=q.group,
        scope=q.scope,
        basis=q.basis,
        valid_from=q.valid_from,
        valid_to=q.valid_to,
        status=q.status,
        updated_at=sq.updated_at,
        mark=_mark(own),
        effective_mark=_mark(effective),
        history=history,
    )


# ---------------------------------------------------------------- scopes
@router.get("/scopes", response_model=list[ScopeOut], summary="互认范围与辖区（层级与成员）")
def list_scopes(_: Reader, c: Ctr) -> list[ScopeOut]:
    """Every authenticated role."""
    return [_scope_out(c, s) for s in _admin(c).scopes()]


@router.get("/scopes/{code}", response_model=ScopeOut, summary="一个互认范围")
def get_scope(code: CodePath, _: Reader, c: Ctr) -> ScopeOut:
    """Every authenticated role."""
    return _scope_out(c, _admin(c).scope(code))


@router.post("/scopes", response_model=ScopeOut, status_code=201, summary="新建互认范围")
def create_scope(body: ScopeIn, who: ListEditor, c: Ctr) -> ScopeOut:
    """Regulators and QC centres under a parent within their jurisdiction; operator."""
    scope = _admin(c).save_scope(who, body.to_domain(), create=True)
    return _scope_out(c, scope)


@router.put("/scopes/{code}", response_model=ScopeOut, summary="修改互认范围")
def update_scope(code: CodePath, body: ScopeUpdateIn, who: ListEditor, c: Ctr) -> ScopeOut:
    """Regulators and QC centres within their jurisdiction; operator."""
    scope = _admin(c).save_scope(who, body.to_domain(code), create=False)
    return _scope_out(c, scope)


# ---------------------------------------------------------------- institutions
@router.get("/institutions", response_model=InstitutionPage, summary="医疗机构清单")
def list_institutions(
    _: Reader,
    c: Ctr,
    province: OptCode = None,
    level: InstitutionLevel | None = None,
    scope: OptCode = None,
    q: Search = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> InstitutionPage:
    """Every authenticated role. Filter by province, level, a scope covering them, text."""
    page = _admin(c).institutions(
        province=province, level=level, scope=scope, search=q, limit=limit, offset=offset
    )
    cat = c.catalog.get()
    return InstitutionPage(
        total=page.total,
        limit=limit,
        offset=offset,
        items=[InstitutionOut.of(i, cat.province_of(i.code)) for i in page.rows],
    )


@router.get("/institutions/{code}", response_model=InstitutionOut, summary="一个医疗机构及科室")
def get_institution(code: CodePath, _: Reader, c: Ctr) -> InstitutionOut:
    """Every authenticated role."""
    return _institution_out(c, code, with_departments=True)


@router.post(
    "/institutions", response_model=InstitutionOut, status_code=201, summary="新建医疗机构"
)
def create_institution(body: InstitutionIn, who: ListEditor, c: Ctr) -> InstitutionOut:
    """Regulators and QC centres for institutions located in their jurisdiction; operator."""
    depts = [Department(d.code, d.name) for d in body.departments]
    inst = _admin(c).save_institution(who, body.to_domain(), depts, create=True)
    return _institution_out(c, inst.code, with_departments=True)


@router.put("/institutions/{code}", response_model=InstitutionOut, summary="修改医疗机构")
def update_institution(
    code: CodePath, body: InstitutionUpdateIn, who: ListEditor, c: Ctr
) -> InstitutionOut:
    """Regulators and QC centres within their jurisdiction; operator."""
    _admin(c).save_institution(who, body.to_domain(code), create=False)
    return _institution_out(c, code, with_departments=True)


@router.get("/institutions/{code}/departments", response_model=list[DepartmentOut], summary="科室")
def list_departments(code: CodePath, _: Reader, c: Ctr) -> list[DepartmentOut]:
    """Every authenticated role."""
    return [DepartmentOut(code=d.code, name=d.name) for d in _admin(c).departments(code)]


@router.put(
    "/institutions/{code}/departments/{department}",
    response_model=DepartmentOut,
    summary="新增或修改科室",
)
def put_department(
    code: CodePath, department: CodePath, body: DepartmentIn, who: DepartmentEditor, c: Ctr
) -> DepartmentOut:
    """The institution's own administrator; regulators and QC centres within their
    jurisdiction; operator. The code in the path wins over the body's."""
    d = _admin(c).put_department(who, code, Department(department, body.name))
    return DepartmentOut(code=d.code, name=d.name)


# ---------------------------------------------------------------- items and list versions
@router.get("/items", response_model=ItemPage, summary="互认项目目录")
def list_items(
    _: Reader,
    c: Ctr,
    category: Category | None = None,
    q: Search = None,
    jurisdiction: Annotated[
        str | None, Query(max_length=32, description="只列该辖区清单内项目")
    ] = None,
    on: Annotated[date | None, Query(description="清单生效日，默认今天")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> ItemPage:
    """Every authenticated role."""
    page = _admin(c).items(
        category=category, search=q, jurisdiction=jurisdiction, on=on, limit=limit, offset=offset
    )
    return ItemPage(
        total=page.total, limit=limit, offset=offset, items=[ItemOut.of(i) for i in page.rows]
    )


@router.get("/items/in-force", response_model=ItemsInForceOut, summary="某辖区某日有效的项目")
def items_in_force(
    jurisdiction: Annotated[str, Query(min_length=1, max_length=32)],
    _: Reader,
    c: Ctr,
    on: Annotated[date | None, Query(description="默认今天")] = None,
) -> ItemsInForceOut:
    """Every authenticated role."""
    day = on or c.clock.now().date()
    codes = _admin(c).items_in_force(jurisdiction, day)
    return ItemsInForceOut(jurisdiction=jurisdiction, on=day, items=sorted(codes))


@router.get("/items/{code}", response_model=ItemOut, summary="一个互认项目")
def get_item(code: CodePath, _: Reader, c: Ctr) -> ItemOut:
    """Every authenticated role."""
    return ItemOut.of(_admin(c).item(code))


@router.post("/items", response_model=ItemOut, status_code=201, summary="新增互认项目")
def create_item(body: ItemIn, who: ListEditor, c: Ctr) -> ItemOut:
    """Regulators, QC centres, operator (the item catalogue is shared)."""
    return ItemOut.of(_admin(c).save_item(who, body.to_domain(), create=True))


@router.put("/items/{code}", response_model=ItemOut, summary="修改互认项目")
def update_item(code: CodePath, body: ItemUpdateIn, who: ListEditor, c: Ctr) -> ItemOut:
    """Regulators and QC centres when every list containing the item is within their
    jurisdiction; operator."""
    return ItemOut.of(_admin(c).save_item(who, body.to_domain(code), create=False))


@router.get("/item-lists", response_model=list[ItemListVersionOut], summary="互认项目清单版本")
def list_item_lists(
    _: Reader,
    c: Ctr,
    jurisdiction: Annotated[str | None, Query(max_length=32)] = None,
) -> list[ItemListVersionOut]:
    """Every authenticated role."""
    today = c.clock.now().date()
    return [
        ItemListVersionOut.of(v.id, v.version, v.published_at, today)
        for v in _admin(c).list_versions(jurisdiction)
    ]


@router.post(
    "/item-lists",
    response_model=ItemListVersionOut,
    status_code=201,
    summary="发布互认项目清单新版本",
)
def create_item_list(body: ItemListVersionIn, who: ListEditor, c: Ctr) -> ItemListVersionOut:
    """Regulators and QC centres for their own jurisdiction; operator. Versions of one
    jurisdiction may not overlap in time."""
    version = body.to_domain()
    vid = _admin(c).create_list_version(who, version, body.items)
    stored = next(v for v in _admin(c).list_versions(version.jurisdiction) if v.id == vid)
    return ItemListVersionOut.of(vid, stored.version, stored.published_at, c.clock.now().date())


# ---------------------------------------------------------------- qualifications
@router.get(
    "/qualifications", response_model=list[QualificationOut], summary="互认资质（机构清单）与标识"
)
def list_qualifications(
    _: Reader,
    c: Ctr,
    institution: OptCode = None,
    item: OptCode = None,
    scope: OptCode = None,
) -> list[QualificationOut]:
    """Every authenticated role."""
    return [
        _qualification_out(c, sq)
        for sq in _admin(c).qualifications(institution=institution, item=item, scope=scope)
    ]


@router.get(
    "/qualifications/{qid}", response_model=QualificationOut, summary="一项互认资质及其历史"
)
def get_qualification(qid: IdPath, _: Reader, c: Ctr) -> QualificationOut:
    """Every authenticated role."""
    return _qualification_out(c, _admin(c).qualification(qid), with_history=True)


@router.post(
    "/qualifications", response_model=QualificationOut, status_code=201, summary="授予互认资质"
)
def create_qualification(body: QualificationIn, who: ListEditor, c: Ctr) -> QualificationOut:
    """Regulators and QC centres for scopes within their jurisdiction; operator."""
    qid = _admin(c).grant_qualification(who, body.to_domain(), body.reason)
    return _qualification_out(c, _admin(c).qualification(qid), with_history=True)


@router.post(
    "/qualifications/{qid}/status",
    response_model=QualificationOut,
    summary="变更资质状态（暂停、撤销、恢复…），记入历史",
)
def change_qualification_status(
    qid: IdPath, body: QualificationStatusIn, who: ListEditor, c: Ctr
) -> QualificationOut:
    """Regulators and QC centres for scopes within their jurisdiction; operator."""
    _admin(c).change_qualification_status(who, qid, body.status, body.reason)
    return _qualification_out(c, _admin(c).qualification(qid), with_history=True)


# ---------------------------------------------------------------- negative list, symbols
@router.get(
    "/negative-list/{jurisdiction}", response_model=NegativeListOut, summary="负面清单（按辖区）"
)
def get_negative_list(jurisdiction: CodePath, _: Reader, c: Ctr) -> NegativeListOut:
    """Every authenticated role. The jurisdiction's own reasons with their source, and
    item-level exclusions."""
    cat = c.catalog.get()
    return NegativeListOut(
        jurisdiction=jurisdiction,
        reasons=[NegativeReasonOut.of(r) for r in _admin(c).negative_list(jurisdiction)],
        exclusions=[
            ItemExclusionOut(item=e.item, reason=e.reason, only_within_scope=e.only_within_scope)
            for e in cat.exclusions
            if e.jurisdiction == jurisdiction
        ],
    )


@router.put(
    "/negative-list/{jurisdiction}/reasons/{code}",
    response_model=NegativeReasonOut,
    summary="新增或修改负面清单条目",
)
def put_negative_reason(
    jurisdiction: CodePath, code: CodePath, body: NegativeReasonIn, who: ListEditor, c: Ctr
) -> NegativeReasonOut:
    """Regulators and QC centres for their own jurisdiction; operator."""
    reason = _admin(c).put_negative_reason(who, body.to_domain(jurisdiction, code))
    return NegativeReasonOut.of(reason)


@router.get("/mark-symbols", response_model=list[MarkSymbolOut], summary="互认标识符号")
def list_mark_symbols(_: Reader, c: Ctr) -> list[MarkSymbolOut]:
    """Every authenticated role."""
    return [
        MarkSymbolOut(scope=s.scope, category=s.category, symbol=s.symbol, symbol_en=s.symbol_en)
        for s in _admin(c).mark_symbols()
    ]


# ---------------------------------------------------------------- code maps (对码)
@router.get("/institutions/{code}/code-maps", response_model=list[CodeMapOut], summary="机构对码表")
def list_code_maps(code: CodePath, _: Reader, c: Ctr) -> list[CodeMapOut]:
    """Every authenticated role."""
    return [
        CodeMapOut(
            institution=m.institution,
            local_code=m.local_code,
            unified_code=m.unified_code,
            local_name=m.local_name,
            updated_at=at,
        )
        for m, at in _admin(c).code_maps(code)
    ]


@router.put(
    "/institutions/{code}/code-maps/{local_code}",
    response_model=CodeMapOut,
    summary="新增或修改对码",
)
def put_code_map(
    code: CodePath, local_code: LocalCodePath, body: CodeMapIn, who: CodeMapEditor, c: Ctr
) -> CodeMapOut:
    """The institution's own administrator; operator."""
    change = _admin(c).put_code_map(who, body.to_domain(code, local_code))
    m = change.mapping
    return CodeMapOut(
        institution=m.institution,
        local_code=m.local_code,
        unified_code=m.unified_code,
        local_name=m.local_name,
        updated_at=c.clock.now(),
        remapped=change.remapped,
    )


@router.delete("/institutions/{code}/code-maps/{local_code}", status_code=204, summary="删除对码")
def delete_code_map(
    code: CodePath, local_code: LocalCodePath, who: CodeMapEditor, c: Ctr
) -> Response:
    """The institution's own administrator; operator."""
    _admin(c).delete_code_map(who, code, local_code)
    return Response(status_code=204)
