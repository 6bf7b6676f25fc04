"""Patient portal (患者端): mobile-first pages under /patient and a JSON API under
/api/v1/patient — the browser and API equivalent of the 公众号 / 小程序 / APP the sources
name (甘卫医政函〔2025〕16号 三(二)3).

Login: identifier → one-time code to the mobile an institution bound at the counter →
the same signed session token every other role uses (``huren_session`` cookie or Bearer).
Report download: print-ready HTML (no PDF library: the browser's 打印 / 另存为 PDF gives a
PDF without a dependency)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from huren.api.auth import SESSION_COOKIE, optional_principal, require_roles
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.corrections import CorrectionOut
from huren.api.routes.corrections import out as correction_out
from huren.api.routes.page_errors import PageRoute
from huren.api.routes.retrieval import ReportOut, ResultSummaryOut, local, report_out, summary
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.errors import DomainError, Forbidden, Problem, ValidationFailed
from huren.domain.identity import IDENTIFIER_LABELS, IdentifierKind, PatientIdentifier
from huren.services.insurer import DecisionFact
from huren.services.portal import BindingListEntry, BindingOutcome, ReaderEntry

router = APIRouter(tags=["患者端"], route_class=PageRoute)

Services = Annotated[Container, Depends(container)]
Patient = Annotated[Principal, Depends(require_roles(Role.PATIENT))]
InstitutionAdmin = Annotated[Principal, Depends(require_roles(Role.INSTITUTION_ADMIN))]

KINDS = (IdentifierKind.NATIONAL_ID, IdentifierKind.INSURANCE, IdentifierKind.HEALTH_CARD)
KindField = Literal["national_id", "insurance", "health_card"]


class CodeRequestIn(BaseModel):
    identifier_kind: KindField = "national_id"
    identifier: str = Field(min_length=1, max_length=64)


class CodeVerifyIn(CodeRequestIn):
    code: str = Field(min_length=4, max_length=8)


class MessageOut(BaseModel):
    message: str


class PatientTokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105  (OAuth2 token type, not a secret)
    expires_in: int


class BindIn(CodeRequestIn):
    phone: str = Field(description="患者本人手机号（现场核验身份证件后绑定）")


class BindOut(BaseModel):
    account_id: int
    phone_masked: str
    name_masked: str
    identifier_masked: str
    rebound: bool = Field(description="账号已存在，本次为改绑手机")


class BindingListOut(BaseModel):
    account_id: int
    bound_at: datetime
    name_masked: str
    identifier_kind: str
    identifier_label: str
    identifier_masked: str
    phone_masked: str
    bound_by: str


class DecisionOut(BaseModel):
    at: datetime
    institution: str
    institution_name: str
    action: str
    action_label: str
    reason: str
    explanation: str


class MyResultOut(ResultSummaryOut):
    decisions: list[DecisionOut]
    open_corrections: int


class MyReportOut(ReportOut):
    decisions: list[DecisionOut]


class ReaderOut(BaseModel):
    at: datetime
    reader: str
    institution_name: str
    item_name: str
    action: str
    purpose: str
    outcome: str


class PatientCorrectionIn(BaseModel):
    result_id: int
    text: str = Field(max_length=2000)


def _ident(kind: str, value: str) -> PatientIdentifier:
    return PatientIdentifier(IdentifierKind(kind), value)


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def decisions_out(
    c: Container, facts: list[DecisionFact] | tuple[DecisionFact, ...]
) -> list[DecisionOut]:
    catalog = c.catalog.get()
    labels = {r.code: r.text for rs in catalog.negative_reasons.values() for r in rs}
    out = []
    for d in facts:
        inst = catalog.institutions.get(d.institution)
        accepted = d.action == "accepted"
        # The recorded text is the reason's own text and what the clinician added
        # ("理由：具体原因", services/recognition.py); the code's label when none was recorded.
        reason = "" if accepted else d.reason_text or labels.get(d.reason_code, d.reason_code)
        out.append(
            DecisionOut(
                at=local(d.at),
                institution=d.institution,
                institution_name=inst.name if inst else d.institution,
                action=d.action,
                action_label="已互认（未重复检查）" if accepted else "未互认（重新检查）",
                reason=reason,
                explanation=d.patient_explanation,
            )
        )
    return out


def _set_session(response: Response, request: Request, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


# ---------------------------------------------------------------- API
@router.post(
    "/api/v1/patient/bindings",
    response_model=BindOut,
    status_code=201,
    summary="为患者开通账号并绑定手机（机构管理员，现场核验证件）",
)
def bind(body: BindIn, principal: InstitutionAdmin, c: Services) -> BindOut:
    b = c.sharing.portal.bind(principal, _ident(body.identifier_kind, body.identifier), body.phone)
    return _bind_out(b)


def _bind_out(b: BindingOutcome) -> BindOut:
    return BindOut(
        account_id=b.account_id,
        phone_masked=b.phone_masked,
        name_masked=b.name_masked,
        identifier_masked=b.identifier_masked,
        rebound=b.rebound,
    )


@router.get(
    "/api/v1/patient/bindings",
    response_model=list[BindingListOut],
    summary="本机构办理的患者账号绑定（脱敏）",
)
def bindings(principal: InstitutionAdmin, c: Services) -> list[BindingListOut]:
    return _bindings_out(c.sharing.portal.bindings_made_here(principal))


def _bindings_out(entries: list[BindingListEntry]) -> list[BindingListOut]:
    labels = {str(k): v for k, v in IDENTIFIER_LABELS.items()}
    return [
        BindingListOut(
            account_id=e.account_id,
            bound_at=local(e.bound_at),
            name_masked=e.name_masked,
            identifier_kind=e.identifier_kind,
            identifier_label=labels.get(e.identifier_kind, e.identifier_kind),
            identifier_masked=e.identifier_masked,
            phone_masked=e.phone_masked,
            bound_by=e.bound_by,
        )
        for e in entries
    ]


@router.post("/api/v1/patient/otp", response_model=MessageOut, summary="获取登录验证码")
def request_code(body: CodeRequestIn, request: Request, c: Services) -> MessageOut:
    """The same answer whether or not the identifier is bound (no enumeration)."""
    msg = c.sharing.portal.request_code(
        _ident(body.identifier_kind, body.identifier), _client(request)
    )
    return MessageOut(message=msg)


@router.post(
    "/api/v1/patient/token", response_model=PatientTokenOut, summary="验证码登录，获取访问令牌"
)
def token(body: CodeVerifyIn, request: Request, c: Services) -> JSONResponse:
    principal = c.sharing.portal.verify_code(
        _ident(body.identifier_kind, body.identifier), body.code, _client(request)
    )
    issued = c.accounts.issue_token(principal)
    return JSONResponse(
        PatientTokenOut(
            access_token=issued.access_token, expires_in=issued.expires_in
        ).model_dump(),
        headers={"Cache-Control": "no-store"},
    )


@router.get("/api/v1/patient/results", response_model=list[MyResultOut], summary="我的检查检验结果")
def my_results(principal: Patient, c: Services) -> list[MyResultOut]:
    return [
        MyResultOut(
            **summary(c, m.result, "", url_prefix="/api/v1/patient/results").model_dump(),
            decisions=decisions_out(c, m.decisions),
            open_corrections=m.open_corrections,
        )
        for m in c.sharing.portal.my_results(principal)
    ]


@router.get("/api/v1/patient/results/{result_id}", response_model=MyReportOut, summary="报告详情")
def my_report(result_id: int, request: Request, principal: Patient, c: Services) -> MyReportOut:
    rep = c.sharing.portal.my_report(principal, result_id)
    out = report_out(c, request, rep, "", url_prefix="/api/v1/patient/results").model_dump()
    out["image_url"] = None  # the image viewer is for clinicians; patients get the report
    return MyReportOut(
        **out,
        decisions=decisions_out(c, c.sharing.portal.my_decisions(principal, result_id)),
    )


@router.get(
    "/api/v1/patient/results/{result_id}/download",
    response_class=HTMLResponse,
    summary="下载报告（可打印 HTML）",
)
def download_api(result_id: int, request: Request, principal: Patient, c: Services) -> Response:
    return _download(result_id, request, principal, c)


@router.get("/api/v1/patient/audit", response_model=list[ReaderOut], summary="谁调阅了我的结果")
def who_read(principal: Patient, c: Services) -> list[ReaderOut]:
    return [ReaderOut(**_fields(e)) for e in c.sharing.portal.who_read_my_results(principal)]


@router.post(
    "/api/v1/patient/corrections",
    response_model=CorrectionOut,
    status_code=201,
    summary="对我的结果提交纠错申请",
)
def file_correction(body: PatientCorrectionIn, principal: Patient, c: Services) -> CorrectionOut:
    return correction_out(c, c.sharing.corrections.file(principal, body.result_id, body.text))


def _fields(e: ReaderEntry) -> dict[str, object]:
    out = {k: getattr(e, k) for k in ReaderOut.model_fields}
    out["at"] = local(e.at)
    return out


def _download(result_id: int, request: Request, principal: Principal, c: Container) -> Response:
    rep = c.sharing.portal.my_report(principal, result_id, download=True)
    r = report_out(c, request, rep, "")
    response = templates.TemplateResponse(
        request,
        "patient/print.html",
        {
            "r": r,
            "now": local(c.clock.now()),
            "decisions": decisions_out(c, c.sharing.portal.my_decisions(principal, result_id)),
        },
    )
    response.headers["Content-Disposition"] = f'attachment; filename="report-{result_id}.html"'
    response.headers["Cache-Control"] = "no-store"
    return response


# ---------------------------------------------------------------- pages
def _patient_or_login(user: Principal | None) -> Principal | None:
    return user if user is not None and user.role is Role.PATIENT else None


def _to_login() -> Response:
    return RedirectResponse("/patient/login", status_code=303)


def _kinds() -> list[tuple[str, str]]:
    return [(str(k), IDENTIFIER_LABELS[k]) for k in KINDS]


@router.get("/patient/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request) -> Response:
    return templates.TemplateResponse(
        request,
        "patient/login.html",
        {"user": None, "kinds": _kinds(), "step": "identify", "form": {}},
    )


@router.post("/patient/login/code", response_class=HTMLResponse, include_in_schema=False)
def login_code(
    request: Request,
    c: Services,
    identifier_kind: Annotated[str, Form()] = "national_id",
    identifier: Annotated[str, Form()] = "",
) -> Response:
    form = {"identifier_kind": identifier_kind, "identifier": identifier}
    try:
        if identifier_kind not in {str(k) for k in KINDS}:
            raise DomainError("证件类型无效")
        msg = c.sharing.portal.request_code(_ident(identifier_kind, identifier), _client(request))
    except DomainError as exc:
        return templates.TemplateResponse(
            request,
            "patient/login.html",
            {"user": None, "kinds": _kinds(), "step": "identify", "form": form, "error": exc},
            status_code=exc.status,
        )
    return templates.TemplateResponse(
        request,
        "patient/login.html",
        {"user": None, "kinds": _kinds(), "step": "code", "form": form, "message": msg},
    )


@router.post("/patient/login/verify", response_class=HTMLResponse, include_in_schema=False)
def login_verify(
    request: Request,
    c: Services,
    identifier_kind: Annotated[str, Form()] = "national_id",
    identifier: Annotated[str, Form()] = "",
    code: Annotated[str, Form()] = "",
) -> Response:
    form = {"identifier_kind": identifier_kind, "identifier": identifier}
    try:
        principal = c.sharing.portal.verify_code(
            _ident(identifier_kind, identifier), code, _client(request)
        )
    except (DomainError, ValueError) as exc:
        err = exc if isinstance(exc, DomainError) else DomainError("证件类型无效")
        return templates.TemplateResponse(
            request,
            "patient/login.html",
            {"user": None, "kinds": _kinds(), "step": "code", "form": form, "error": err},
            status_code=err.status,
        )
    issued = c.accounts.issue_token(principal)
    response = RedirectResponse("/patient", status_code=303)
    _set_session(response, request, issued.access_token, issued.expires_in)
    return response


@router.get("/patient", response_class=HTMLResponse, include_in_schema=False)
def home(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    me = _patient_or_login(user)
    if me is None:
        return _to_login()
    results = my_results(me, c)
    return templates.TemplateResponse(
        request,
        "patient/home.html",
        {
            "user": me,
            "name": c.sharing.portal.display_name(me),
            "results": results,
            "unread": c.sharing.corrections.unread(me),
        },
    )


@router.get("/patient/results/{result_id}", response_class=HTMLResponse, include_in_schema=False)
def report_page(
    result_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    me = _patient_or_login(user)
    if me is None:
        return _to_login()
    try:
        rep = my_report(result_id, request, me, c)
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "patient/error.html", {"user": me, "error": exc}, status_code=exc.status
        )
    return templates.TemplateResponse(request, "patient/report.html", {"user": me, "r": rep})


@router.get("/patient/results/{result_id}/download", include_in_schema=False)
def download_page(
    result_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    me = _patient_or_login(user)
    if me is None:
        return _to_login()
    try:
        return _download(result_id, request, me, c)
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "patient/error.html", {"user": me, "error": exc}, status_code=exc.status
        )


@router.post(
    "/patient/results/{result_id}/correction", response_class=HTMLResponse, include_in_schema=False
)
def correction_page(
    result_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    text: Annotated[str, Form()] = "",
) -> Response:
    me = _patient_or_login(user)
    if me is None:
        return _to_login()
    try:
        rec = c.sharing.corrections.file(me, result_id, text)
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "patient/error.html", {"user": me, "error": exc}, status_code=exc.status
        )
    return templates.TemplateResponse(
        request, "patient/filed.html", {"user": me, "c": correction_out(c, rec)}, status_code=201
    )


@router.get("/patient/audit", response_class=HTMLResponse, include_in_schema=False)
def audit_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    me = _patient_or_login(user)
    if me is None:
        return _to_login()
    return templates.TemplateResponse(
        request,
        "patient/audit.html",
        {
            "user": me,
            "rows": [ReaderOut(**_fields(e)) for e in c.sharing.portal.who_read_my_results(me)],
        },
    )


# ---------------------------------------------------------------- binding at the counter
def _render_bindings(
    request: Request,
    c: Container,
    user: Principal,
    *,
    form: dict[str, str] | None = None,
    outcome: BindOut | None = None,
    error: DomainError | None = None,
    status_code: int = 200,
) -> Response:
    allowed = user.role is Role.INSTITUTION_ADMIN and bool(user.institution)
    rows = _bindings_out(c.sharing.portal.bindings_made_here(user)) if allowed else []
    inst = c.catalog.get().institutions.get(user.institution or "")
    return templates.TemplateResponse(
        request,
        "bindings/bindings.html",
        {
            "user": user,
            "allowed": allowed,
            "institution_name": inst.name if inst else (user.institution or ""),
            "kinds": _kinds(),
            "form": form or {},
            "outcome": outcome,
            "error": error,
            "rows": rows,
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


@router.get("/patient-bindings", response_class=HTMLResponse, include_in_schema=False)
def bindings_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    allowed = user.role is Role.INSTITUTION_ADMIN and bool(user.institution)
    return _render_bindings(request, c, user, status_code=200 if allowed else 403)


@router.post("/patient-bindings", response_class=HTMLResponse, include_in_schema=False)
def bindings_submit(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    identifier_kind: Annotated[str, Form()] = "national_id",
    identifier: Annotated[str, Form()] = "",
    phone: Annotated[str, Form()] = "",
    verified: Annotated[str, Form()] = "",
) -> Response:
    """The identifier and the mobile are not echoed back into the form."""
    if user is None:
        return login_redirect(request)
    form = {"identifier_kind": identifier_kind}
    try:
        if user.role is not Role.INSTITUTION_ADMIN or not user.institution:
            raise Forbidden("只有医疗机构管理员可以为患者绑定账号（需现场核验身份证件）")
        problems = []
        if identifier_kind not in {str(k) for k in KINDS}:
            problems.append(Problem("identifier_kind", "证件类型无效"))
        if not identifier.strip():
            problems.append(Problem("identifier", "请输入证件号码"))
        if verified != "yes":
            problems.append(Problem("verified", "请先核验患者本人有效身份证件原件，并勾选确认"))
        if problems:
            raise ValidationFailed("绑定信息不完整，未办理", problems=problems)
        b = c.sharing.portal.bind(user, _ident(identifier_kind, identifier), phone)
    except DomainError as exc:
        return _render_bindings(request, c, user, form=form, error=exc, status_code=exc.status)
    return _render_bindings(request, c, user, form=form, outcome=_bind_out(b), status_code=201)
