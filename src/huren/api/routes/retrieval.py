"""Cross-institution retrieval (调阅): REST API under /api/v1/retrieval, audit queries
under /api/v1/audit, and the clinician's pages /retrieval.

Identifiers travel in request bodies (POST), never in URLs, so they do not land in access
logs or browser history."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError

from huren.adapters.db.results import StoredDocument
from huren.api.auth import (
    NotAuthenticated,
    current_principal,
    optional_principal,
    require_roles,
    viewer_cookie_redirect,
)
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.bootstrap import Container
from huren.domain.accounts import ROLE_LABELS, Principal, Role
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import (
    DomainError,
    Forbidden,
    NotFound,
    Problem,
    Unauthorized,
    ValidationFailed,
)
from huren.domain.identity import IDENTIFIER_LABELS, IdentifierKind, PatientIdentifier
from huren.domain.results import STATUS_LABELS, ResultStatus, StoredResult
from huren.domain.sharing import (
    RETRIEVAL_ROLES,
    may_read_audit_of_institution,
    may_read_audit_of_jurisdiction,
)
from huren.services.intake import DOCUMENT_KINDS
from huren.services.retrieval import AuditQuery, AuditRow, Report, ResultFilter

router = APIRouter(tags=["调阅"], route_class=PageRoute)

Readers = Annotated[Principal, Depends(require_roles(*RETRIEVAL_ROLES))]
Services = Annotated[Container, Depends(container)]


# ---------------------------------------------------------------- schemas
class SearchIn(BaseModel):
    identifier_kind: Literal["national_id", "insurance", "health_card"] = Field(
        description="标识类型: national_id 居民身份证, insurance 医保号, health_card 电子健康卡"
    )
    identifier: str = Field(min_length=1, max_length=64, description="标识号码")
    purpose: str = Field(description="调阅目的代码，见 GET /api/v1/retrieval/purposes")
    item_codes: list[str] = Field(default_factory=list, description="互认项目编码（空 = 全部）")
    institutions: list[str] = Field(default_factory=list, description="出具机构编码（空 = 全部）")
    date_from: date | None = Field(default=None, description="检查检验日期起（含）")
    date_to: date | None = Field(default=None, description="检查检验日期止（含）")


class PurposeOut(BaseModel):
    code: str
    label: str


class PatientOut(BaseModel):
    name: str = Field(description="姓名（列表中脱敏）")
    sex: str
    birth_year: int | None
    identifiers: list[dict[str, str]] = Field(description="标识（脱敏）")


class ResultSummaryOut(BaseModel):
    id: int
    institution: str
    institution_name: str
    department: str
    report_no: str
    item_code: str | None
    item_name: str
    category: str
    status: str
    status_label: str
    performed_at: datetime
    issued_at: datetime
    version: int
    mark: str | None
    mark_scope: str | None
    has_images: bool
    url: str


class SearchOut(BaseModel):
    patient: PatientOut | None = Field(description="无结果时为 null（不区分患者是否存在）")
    results: list[ResultSummaryOut]
    purpose: str


class ObservationOut(BaseModel):
    code: str
    name: str
    loinc: str
    value: str
    value_num: float | None
    unit: str
    ref_low: float | None
    ref_high: float | None
    ref_text: str
    flag: str
    comment: str = Field("", description="送检机构对该结果的备注（HL7 NTE、FHIR Observation.note）")


class VersionOut(BaseModel):
    version: int
    status: str
    recorded_at: datetime
    reason: str


class DocumentOut(BaseModel):
    seq: int
    content_type: str
    title: str
    size: int = Field(description="字节数")
    sha256: str
    url: str = Field(description="GET 取回文档本身（与调阅报告同样授权并审计）")


class ReportOut(ResultSummaryOut):
    patient: PatientOut
    performer: str
    signer: str
    findings: str = Field(description="检查所见 / 检验结果（互认的是结果）")
    conclusion: str = Field(description="诊断结论（共享但不属于互认内容）")
    accession_number: str
    study_uid: str
    observations: list[ObservationOut]
    comment: str = Field("", description="送检机构对整份报告的备注（HL7 OBR 后的 NTE）")
    versions: list[VersionOut]
    shown_version: int
    open_corrections: int
    image_url: str | None
    documents: list[DocumentOut] = Field(
        default_factory=list, description="所示版本的原始报告文档（PDF/图片，HL7 OBX ED）"
    )


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_name: str
    role: str
    institution: str | None
    patient_id: int | None
    result_id: int | None
    item_name: str
    action: str
    purpose: str
    outcome: str


# ---------------------------------------------------------------- view helpers
def image_url(request: Request, study_uid: str) -> str | None:
    """The imaging area's viewer page when it is installed, else DICOMweb metadata."""
    if not study_uid:
        return None
    from huren.api.routes import ROUTERS  # at call time: this module is one of them

    paths = {getattr(r, "path", "") for router in ROUTERS for r in router.routes}
    for candidate in ("/imaging/studies/{study_uid}", "/imaging/viewer/{study_uid}"):
        if candidate in paths:
            return candidate.replace("{study_uid}", study_uid)
    if "/dicomweb/studies/{study_uid}/metadata" in paths:
        return f"/dicomweb/studies/{study_uid}/metadata"
    return None


def local(at: datetime) -> datetime:
    """Times on pages and in the API are shown in China Standard Time."""
    return at.astimezone(CHINA_TZ)


def summary(
    c: Container, r: StoredResult, purpose: str, *, url_prefix: str = "/retrieval/results"
) -> ResultSummaryOut:
    catalog = c.catalog.get()
    item = catalog.items.get(r.item_code or "")
    inst = catalog.institutions.get(r.institution)
    return ResultSummaryOut(
        id=r.id,
        institution=r.institution,
        institution_name=inst.name if inst else r.institution,
        department=r.department,
        report_no=r.report_no,
        item_code=r.item_code,
        item_name=item.name if item else r.local_name,
        category=str(r.category),
        status=str(r.status),
        status_label=STATUS_LABELS.get(ResultStatus(r.status), str(r.status)),
        performed_at=local(r.performed_at),
        issued_at=local(r.issued_at),
        version=r.version,
        mark=r.mark_symbol,
        mark_scope=r.mark_scope,
        has_images=bool(r.study_uid),
        url=f"{url_prefix}/{r.id}?purpose={purpose}" if purpose else f"{url_prefix}/{r.id}",
    )


def patient_out(p: Any) -> PatientOut:
    return PatientOut(
        name=p.name,
        sex={"M": "男", "F": "女"}.get(p.sex, p.sex),
        birth_year=p.birth_year,
        identifiers=[
            {"kind": k, "label": IDENTIFIER_LABELS.get(IdentifierKind(k), k), "value": v}
            for k, v in p.identifiers
            if k in IdentifierKind._value2member_map_
        ],
    )


def report_out(
    c: Container,
    request: Request,
    rep: Report,
    purpose: str,
    url_prefix: str = "/retrieval/results",
) -> ReportOut:
    r = rep.result
    base = summary(c, r, purpose, url_prefix=url_prefix).model_dump()
    base["version"] = max((v.version for v in rep.versions), default=r.version)  # the newest
    return ReportOut(
        **base,
        patient=patient_out(rep.patient),
        performer=r.performer,
        signer=r.signer,
        findings=r.findings,
        conclusion=r.conclusion,
        accession_number=r.accession_number,
        study_uid=r.study_uid,
        observations=[
            ObservationOut(
                code=o.code,
                name=o.name,
                loinc=o.loinc,
                value=o.shown_value(),
                value_num=o.value_num,
                unit=o.unit,
                ref_low=o.ref_low,
                ref_high=o.ref_high,
                ref_text=o.ref_text,
                flag=o.flag,
                comment=o.comment,
            )
            for o in r.observations
        ],
        comment=r.comment,
        versions=[
            VersionOut(
                version=v.version,
                status=v.status,
                recorded_at=local(v.recorded_at),
                reason=v.reason,
            )
            for v in rep.versions
        ],
        shown_version=rep.shown_version,
        open_corrections=rep.open_corrections,
        image_url=image_url(request, r.study_uid),
        documents=documents_out(c, r.id, rep.shown_version, purpose),
    )


def document_url(result_id: int, seq: int, version: int, purpose: str, token: str = "") -> str:
    """The document of a version: the version and the read's purpose go along (the
    document is read — and audited — like the report); in token mode the token too."""
    query = {"version": str(version), "purpose": purpose, "token": token}
    rest = urlencode([(k, v) for k, v in query.items() if v])
    return f"/api/v1/results/{result_id}/documents/{seq}?{rest}"


def documents_out(
    c: Container, result_id: int, version: int, purpose: str, token: str = ""
) -> list[DocumentOut]:
    return [
        DocumentOut(
            seq=d.seq,
            content_type=d.content_type,
            title=d.title,
            size=d.size,
            sha256=d.sha256,
            url=document_url(result_id, d.seq, version, purpose, token),
        )
        for d in c.results.documents(result_id, version)
    ]


def audit_out(rows: list[AuditRow]) -> list[AuditOut]:
    return [AuditOut(**{k: getattr(r, k) for k in AuditOut.model_fields}) for r in rows]


def _identifier(kind: str, value: str) -> PatientIdentifier:
    return PatientIdentifier(IdentifierKind(kind), value)


# ---------------------------------------------------------------- API
@router.get("/api/v1/retrieval/purposes", response_model=list[PurposeOut], summary="调阅目的代码表")
def purposes(principal: Readers, c: Services) -> list[PurposeOut]:
    return [
        PurposeOut(code=p.code, label=p.label)
        for p in c.sharing.retrieval.purposes.for_role(principal.role)
    ]


@router.post("/api/v1/retrieval/search", response_model=SearchOut, summary="按患者标识调阅共享结果")
def search(
    body: SearchIn, principal: Annotated[Principal, Depends(require_roles(*Role))], c: Services
) -> SearchOut:
    """接诊医师、机构管理员、卫生健康行政部门、质控中心. Each result shown and the lookup
    itself are audited; an unknown identifier answers like a patient with no results.
    Other roles are refused (403) and the refusal is audited too."""
    return _search(c, principal, body, "/api/v1/retrieval/results")


def _search(c: Container, principal: Principal, body: SearchIn, url_prefix: str) -> SearchOut:
    out = c.sharing.retrieval.search(
        principal,
        _identifier(body.identifier_kind, body.identifier),
        body.purpose,
        ResultFilter(
            item_codes=frozenset(body.item_codes),
            institutions=frozenset(body.institutions),
            date_from=body.date_from,
            date_to=body.date_to,
        ),
    )
    return SearchOut(
        patient=patient_out(out.patient) if out.patient else None,
        results=[summary(c, r, out.purpose, url_prefix=url_prefix) for r in out.results],
        purpose=out.purpose,
    )


@router.get(
    "/api/v1/retrieval/results/{result_id}",
    response_model=ReportOut,
    summary="完整报告（可指定历史版本）",
)
def report(
    result_id: int,
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(*Role))],
    c: Services,
    purpose: Annotated[str, Query(description="调阅目的代码")] = "",
    version: Annotated[int | None, Query(ge=1, description="历史版本号")] = None,
) -> ReportOut:
    rep = c.sharing.retrieval.open_report(principal, result_id, purpose or None, version)
    return report_out(c, request, rep, purpose, url_prefix="/api/v1/retrieval/results")


@router.get(
    "/api/v1/results/{result_id}/documents/{seq}",
    response_class=Response,
    summary="原始报告文档（检查检验机构发送的 PDF/图片报告单）",
    responses={200: {"content": {kind: {} for kind in DOCUMENT_KINDS}}},
)
def result_document(
    result_id: int,
    seq: int,
    request: Request,
    c: Services,
    purpose: Annotated[str, Query(max_length=64, description="调阅目的代码")] = "",
    version: Annotated[int | None, Query(ge=1, description="历史版本号（默认最新版）")] = None,
    token: Annotated[str, Query(max_length=4000, description="HIS 框架中的访问令牌")] = "",
) -> Response:
    """The document as the laboratory sent it, authorised and audited like opening the
    report (``open_report``: who may read the result, the purpose, an audit record of
    the read, refusals included). Served inline with its own type, ``nosniff`` and a CSP
    that allows nothing to run or load: only PDF, JPEG and PNG are ever stored."""
    if token:
        return _document_session_from_token(request, c, token)
    # In a HIS frame the viewer cookie that ``?token=`` set authenticates this GET
    # (api/auth.py ``VIEWER_COOKIE_PATHS``), as it does the image viewer.
    principal = current_principal(request)
    rep = c.sharing.retrieval.open_report(
        principal, result_id, purpose or None, version, document=True
    )
    doc = c.results.document(result_id, rep.shown_version, seq)
    if doc is None:
        message = f"结果 {result_id} 第 {rep.shown_version} 版没有第 {seq} 份原始报告文档"
        raise NotFound(message, problems=[Problem("seq", message)])
    return document_response(c, doc)


def _document_session_from_token(request: Request, c: Container, token: str) -> Response:
    """Opened from the workbench in token mode (a HIS frame has no session cookie): as
    the image viewer does (``routes/viewer.py``), the token becomes the viewer cookie and
    the document reloads without the token in its address (history, Referer)."""
    try:
        c.accounts.principal_from_token(token)
    except Unauthorized as exc:
        raise NotAuthenticated(exc.message) from exc
    return viewer_cookie_redirect(request, c, token)


def document_response(c: Container, doc: StoredDocument) -> Response:
    """A document's bytes as sent, inline, allowed to run and load nothing."""
    ext = DOCUMENT_KINDS[doc.content_type].extension
    filename = f"result-{doc.result_id}-v{doc.version}-{doc.seq}.{ext}"
    return Response(
        content=doc.data,
        media_type=doc.content_type,
        headers={
            "Content-Disposition": f'inline; filename="{filename}"',
            "X-Content-Type-Options": "nosniff",
            # Nothing inside may run, load or submit anything; it may be shown in the
            # HIS frames the workbench is allowed in.
            "Content-Security-Policy": (
                "default-src 'none'; base-uri 'none'; form-action 'none'; "
                f"frame-ancestors {c.settings.workbench_frame_ancestors}"
            ),
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "private, no-store",
            "ETag": f'"{doc.sha256}"',
        },
    )


@router.get(
    "/api/v1/audit/institutions/{institution}",
    response_model=list[AuditOut],
    summary="机构的调阅审计记录（本机构读取的和被读取的）",
)
def audit_of_institution(
    institution: str,
    principal: Annotated[
        Principal, Depends(require_roles(Role.INSTITUTION_ADMIN, Role.REGULATOR, Role.OPERATOR))
    ],
    c: Services,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditOut]:
    if not may_read_audit_of_institution(principal, institution, c.catalog.get().graph):
        raise Forbidden(f"无权查看机构 {institution} 的调阅记录")
    q = AuditQuery(institutions=frozenset({institution}), since=since, until=until, limit=limit)
    return audit_out(c.sharing.retrieval.audit_trail(principal, q))


@router.get(
    "/api/v1/audit/jurisdictions/{jurisdiction}",
    response_model=list[AuditOut],
    summary="辖区内的调阅审计记录（卫生健康行政部门）",
)
def audit_of_jurisdiction(
    jurisdiction: str,
    principal: Annotated[Principal, Depends(require_roles(Role.REGULATOR, Role.OPERATOR))],
    c: Services,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditOut]:
    graph = c.catalog.get().graph
    if not may_read_audit_of_jurisdiction(principal, jurisdiction, graph):
        raise Forbidden(f"无权查看辖区 {jurisdiction} 的调阅记录")
    q = AuditQuery(institutions=graph.coverage(jurisdiction), since=since, until=until, limit=limit)
    return audit_out(c.sharing.retrieval.audit_trail(principal, q))


# ---------------------------------------------------------------- pages
def _page_principal(request: Request, user: Principal | None) -> Principal | Response:
    if user is None:
        return login_redirect(request)
    return user


@router.get("/retrieval", response_class=HTMLResponse, include_in_schema=False)
def retrieval_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    return _render_search(request, c, user, {}, None, None)


def _render_search(
    request: Request,
    c: Container,
    user: Principal,
    form: dict[str, Any],
    outcome: SearchOut | None,
    error: DomainError | None,
    status_code: int = 200,
) -> Response:
    catalog = c.catalog.get()
    return templates.TemplateResponse(
        request,
        "retrieval/search.html",
        {
            "user": user,
            "role_label": ROLE_LABELS[user.role],
            "allowed": user.role in RETRIEVAL_ROLES,
            "purposes": c.sharing.retrieval.purposes.for_role(user.role),
            "kinds": [
                (str(k), IDENTIFIER_LABELS[k])
                for k in (
                    IdentifierKind.NATIONAL_ID,
                    IdentifierKind.INSURANCE,
                    IdentifierKind.HEALTH_CARD,
                )
            ],
            "items": sorted(catalog.items.values(), key=lambda i: i.code),
            "institutions": sorted(catalog.institutions.values(), key=lambda i: i.code),
            "form": form,
            "outcome": outcome,
            "error": error,
        },
        status_code=status_code,
    )


@router.post("/retrieval", response_class=HTMLResponse, include_in_schema=False)
def retrieval_submit(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    identifier_kind: Annotated[str, Form()] = "national_id",
    identifier: Annotated[str, Form()] = "",
    purpose: Annotated[str, Form()] = "",
    item_code: Annotated[str, Form()] = "",
    institution: Annotated[str, Form()] = "",
    date_from: Annotated[str, Form()] = "",
    date_to: Annotated[str, Form()] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    form = {
        "identifier_kind": identifier_kind,
        "purpose": purpose,
        "item_code": item_code,
        "institution": institution,
        "date_from": date_from,
        "date_to": date_to,
    }
    try:
        body = SearchIn(
            identifier_kind=identifier_kind,
            identifier=identifier or " ",
            purpose=purpose,
            item_codes=[item_code] if item_code else [],
            institutions=[institution] if institution else [],
            date_from=_form_date(date_from, "date_from", "检查日期起"),
            date_to=_form_date(date_to, "date_to", "检查日期止"),
        )
        outcome = _search(c, user, body, "/retrieval/results")
    except DomainError as exc:
        return _render_search(request, c, user, form, None, exc, exc.status)
    except PydanticValidationError as exc:
        problems = [
            Problem(name, f"{SEARCH_FIELD_LABELS.get(name, name)}无效")
            for name in dict.fromkeys(str(e["loc"][0]) for e in exc.errors() if e["loc"])
        ]
        err = ValidationFailed(
            "查询条件无效：" + "、".join(p.message for p in problems), problems=problems
        )
        return _render_search(request, c, user, form, None, err, 422)
    return _render_search(request, c, user, form, outcome, None)


SEARCH_FIELD_LABELS = {
    "identifier_kind": "证件类型",
    "identifier": "证件号码（最多 64 个字符）",
    "purpose": "调阅目的",
}


def _form_date(value: str, name: str, label: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        message = f"{label}无效（日期格式 YYYY-MM-DD）"
        raise ValidationFailed(message, problems=[Problem(name, message)]) from exc


@router.get("/retrieval/results/{result_id}", response_class=HTMLResponse, include_in_schema=False)
def report_page(
    result_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    purpose: str = "",
    version: int | None = None,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        rep = c.sharing.retrieval.open_report(user, result_id, purpose or None, version)
    except DomainError as exc:
        return templates.TemplateResponse(
            request,
            "retrieval/error.html",
            {"user": user, "error": exc},
            status_code=exc.status,
        )
    return templates.TemplateResponse(
        request,
        "retrieval/report.html",
        {
            "user": user,
            "r": report_out(c, request, rep, purpose),
            "purpose": purpose,
            "purpose_label": c.sharing.retrieval.purposes.label(purpose),
            "can_file_correction": user.role in (Role.CLINICIAN, Role.INSTITUTION_ADMIN),
        },
    )
