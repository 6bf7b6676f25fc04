"""Error correction and feedback (纠错反馈): API under /api/v1/corrections and the
institution administrator's queue /corrections."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from huren.api.auth import optional_principal, require_roles
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.api.routes.retrieval import local, report_out
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.corrections import FILING_ROLES, CorrectionStatus, corrected_comment
from huren.domain.errors import DomainError, Problem, ProblemCollector, ValidationFailed
from huren.domain.results import MAX_OBSERVATION_COMMENT, MAX_REPORT_COMMENT
from huren.domain.text import is_digits
from huren.services.corrections import CorrectionEdit, CorrectionRecord, ObservationEdit

router = APIRouter(tags=["纠错反馈"], route_class=PageRoute)

Services = Annotated[Container, Depends(container)]
Filers = Annotated[Principal, Depends(require_roles(*FILING_ROLES))]
Admins = Annotated[Principal, Depends(require_roles(Role.INSTITUTION_ADMIN))]
Regulators = Annotated[Principal, Depends(require_roles(Role.REGULATOR, Role.OPERATOR))]


class CorrectionIn(BaseModel):
    result_id: int
    text: str = Field(max_length=2000, description="哪里有误（中文说明）")


MAX_FLAG = 8
MAX_REASON = 2000


class ObservationEditIn(BaseModel):
    code: str
    value_num: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="更正后的数值；与 value_text 同时给出时须一致",
    )
    value_text: str | None = Field(
        default=None,
        description="更正后的结果文字；数值按所填写的数字显示（如 8.10），也可只填数字",
    )
    flag: str | None = Field(default=None, max_length=MAX_FLAG)
    comment: str | None = Field(
        default=None,
        max_length=MAX_OBSERVATION_COMMENT,
        description="该结果的备注（如“标本溶血”）；空字符串为删除备注，不填为不变",
    )


class AcceptIn(BaseModel):
    reason: str = Field(max_length=MAX_REASON, description="更正理由")
    findings: str | None = None
    conclusion: str | None = None
    observations: list[ObservationEditIn] = Field(default_factory=list)
    comment: str | None = Field(
        default=None,
        max_length=MAX_REPORT_COMMENT,
        description="整份报告的备注；空字符串为删除备注，不填为不变",
    )


class RejectIn(BaseModel):
    reason: str = Field(max_length=2000, description="不予更正的理由（发送给申请人）")


class CorrectionOut(BaseModel):
    id: int
    filed_at: datetime
    requester_role: str
    requester_institution: str | None
    result_id: int
    result_version: int
    report_no: str
    item_name: str
    producing_institution: str
    text: str
    status: str
    status_label: str
    due_at: datetime
    overdue: bool
    resolved_at: datetime | None
    resolution: str
    new_version: int | None


class BacklogOut(BaseModel):
    jurisdiction: str
    open: int
    overdue: int
    accepted: int
    rejected: int


def out(c: Container, rec: CorrectionRecord) -> CorrectionOut:
    return CorrectionOut(
        id=rec.id,
        filed_at=local(rec.filed_at),
        requester_role=rec.requester_role,
        requester_institution=rec.requester_institution,
        result_id=rec.result_id,
        result_version=rec.result_version,
        report_no=rec.report_no,
        item_name=rec.item_name,
        producing_institution=rec.producing_institution,
        text=rec.text,
        status=str(rec.status),
        status_label=rec.status_label,
        due_at=local(rec.due_at),
        overdue=rec.overdue(c.clock.now()),
        resolved_at=local(rec.resolved_at) if rec.resolved_at else None,
        resolution=rec.resolution,
        new_version=rec.new_version,
    )


def _edit(body: AcceptIn) -> CorrectionEdit:
    return CorrectionEdit(
        findings=body.findings,
        conclusion=body.conclusion,
        observations=tuple(
            ObservationEdit(o.code, o.value_num, o.value_text, o.flag, o.comment)
            for o in body.observations
        ),
        comment=body.comment,
    )


# ---------------------------------------------------------------- API
@router.post(
    "/api/v1/corrections", response_model=CorrectionOut, status_code=201, summary="提交纠错申请"
)
def file_request(body: CorrectionIn, principal: Filers, c: Services) -> CorrectionOut:
    """接诊医师、机构管理员、患者. Goes to the producing institution's queue."""
    return out(c, c.sharing.corrections.file(principal, body.result_id, body.text))


@router.get("/api/v1/corrections", response_model=list[CorrectionOut], summary="本机构纠错队列")
def queue(
    principal: Admins,
    c: Services,
    status: Annotated[
        CorrectionStatus | None, Query(description="open / accepted / rejected；空 = 全部")
    ] = CorrectionStatus.OPEN,
) -> list[CorrectionOut]:
    return [out(c, r) for r in c.sharing.corrections.queue(principal, status)]


@router.get(
    "/api/v1/corrections/mine", response_model=list[CorrectionOut], summary="我提交的纠错申请"
)
def mine(principal: Filers, c: Services) -> list[CorrectionOut]:
    return [out(c, r) for r in c.sharing.corrections.filed_by(principal)]


@router.get(
    "/api/v1/corrections/overdue",
    response_model=list[CorrectionOut],
    summary="逾期未处理的纠错申请（监管）",
)
def overdue(
    principal: Regulators, c: Services, jurisdiction: str | None = None
) -> list[CorrectionOut]:
    return [out(c, r) for r in c.sharing.corrections.overdue(principal, jurisdiction)]


@router.get(
    "/api/v1/corrections/backlog", response_model=BacklogOut, summary="纠错申请统计（监管看板）"
)
def backlog(principal: Regulators, c: Services, jurisdiction: str | None = None) -> BacklogOut:
    scope = jurisdiction or principal.jurisdiction or c.settings.jurisdiction
    c.sharing.corrections.overdue(principal, scope)  # reach check
    b = c.sharing.corrections.correction_backlog(scope)
    return BacklogOut(
        jurisdiction=scope, open=b.open, overdue=b.overdue, accepted=b.accepted, rejected=b.rejected
    )


@router.get(
    "/api/v1/corrections/{correction_id}", response_model=CorrectionOut, summary="纠错申请详情"
)
def get_one(
    correction_id: int, principal: Annotated[Principal, Depends(require_roles(*Role))], c: Services
) -> CorrectionOut:
    return out(c, c.sharing.corrections.get(principal, correction_id))


@router.post(
    "/api/v1/corrections/{correction_id}/accept",
    response_model=CorrectionOut,
    summary="更正（生成新版本）",
)
def accept(correction_id: int, body: AcceptIn, principal: Admins, c: Services) -> CorrectionOut:
    rec = c.sharing.corrections.accept(principal, correction_id, _edit(body), body.reason)
    return out(c, rec)


@router.post(
    "/api/v1/corrections/{correction_id}/reject",
    response_model=CorrectionOut,
    summary="不予更正（理由告知申请人）",
)
def reject(correction_id: int, body: RejectIn, principal: Admins, c: Services) -> CorrectionOut:
    return out(c, c.sharing.corrections.reject(principal, correction_id, body.reason))


# ---------------------------------------------------------------- pages
@router.post("/corrections/new", response_class=HTMLResponse, include_in_schema=False)
def file_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    result_id: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
) -> Response:
    """``result_id`` is the report page's hidden field: read here, so that a tampered
    value gets this page's answer, not the API's."""
    if user is None:
        return login_redirect(request)
    try:
        if not is_digits(result_id.strip()):
            raise ValidationFailed(
                "结果编号无效", problems=[Problem("result_id", "结果编号（result_id）应为正整数")]
            )
        rec = c.sharing.corrections.file(user, int(result_id), text)
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "retrieval/error.html", {"user": user, "error": exc}, status_code=exc.status
        )
    return templates.TemplateResponse(
        request, "corrections/filed.html", {"user": user, "c": out(c, rec)}, status_code=201
    )


@router.get("/corrections", response_class=HTMLResponse, include_in_schema=False)
def queue_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    status: str = "open",
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        st = CorrectionStatus(status) if status else None
        rows = [out(c, r) for r in c.sharing.corrections.queue(user, st)]
    except (DomainError, ValueError) as exc:
        err = exc if isinstance(exc, DomainError) else ValidationFailed("状态参数无效")
        return templates.TemplateResponse(
            request, "retrieval/error.html", {"user": user, "error": err}, status_code=err.status
        )
    return templates.TemplateResponse(
        request, "corrections/queue.html", {"user": user, "rows": rows, "status": status}
    )


@router.get("/corrections/{correction_id}", response_class=HTMLResponse, include_in_schema=False)
def review_page(
    correction_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        rec = c.sharing.corrections.get(user, correction_id)
        rep = (
            c.sharing.retrieval.open_report(user, rec.result_id, "correction")
            if user.role is Role.INSTITUTION_ADMIN
            else None
        )
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "retrieval/error.html", {"user": user, "error": exc}, status_code=exc.status
        )
    return templates.TemplateResponse(
        request,
        "corrections/review.html",
        {
            "user": user,
            "c": out(c, rec),
            "r": report_out(c, request, rep, "correction") if rep else None,
            "can_review": user.role is Role.INSTITUTION_ADMIN
            and rec.status is CorrectionStatus.OPEN,
            "max_obs_comment": MAX_OBSERVATION_COMMENT,
            "max_report_comment": MAX_REPORT_COMMENT,
        },
    )


@router.post("/corrections/{correction_id}/accept", include_in_schema=False)
async def accept_page(
    correction_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    form = await request.form()
    edits: list[ObservationEditIn] = []
    try:
        too_long = ProblemCollector()
        for key, value in form.multi_items():
            if key.startswith("obs:") and str(value).strip():
                # As typed: numerals are the number they write, shown as typed ("8.10");
                # other text is the value's text (domain.corrections.corrected_value).
                edits.append(ObservationEditIn(code=key[4:], value_text=str(value).strip()))
            elif key.startswith("comment:"):
                code = key[8:]
                comment = corrected_comment(str(value)) or ""
                if len(comment) > MAX_OBSERVATION_COMMENT:
                    too_long.add(
                        key,
                        f"检验项目 {code[:32]} 的备注过长：最多 {MAX_OBSERVATION_COMMENT} 个字符",
                    )
                    continue
                edits.append(ObservationEditIn(code=code, comment=comment))
            elif key.startswith("flag:"):
                code = key[5:]
                flag = str(value).strip()
                if len(flag) > MAX_FLAG:
                    too_long.add(
                        key, f"检验项目 {code[:32]} 的异常标识过长：最多 {MAX_FLAG} 个字符"
                    )
                    continue
                edits.append(ObservationEditIn(code=code, flag=flag))
        if len(str(form.get("reason", ""))) > MAX_REASON:
            too_long.add("reason", f"更正理由过长：最多 {MAX_REASON} 个字符")
        report_comment = corrected_comment(str(form["comment"])) if "comment" in form else None
        if report_comment is not None and len(report_comment) > MAX_REPORT_COMMENT:
            too_long.add("comment", f"报告备注过长：最多 {MAX_REPORT_COMMENT} 个字符")
        too_long.raise_if_any(
            too_long.problems[0].message if len(too_long.problems) == 1 else "更正内容过长"
        )
        merged: dict[str, ObservationEditIn] = {}
        for e in edits:
            prev = merged.get(e.code)
            merged[e.code] = (
                prev.model_copy(update={k: v for k, v in e.model_dump().items() if v is not None})
                if prev
                else e
            )
        body = AcceptIn(
            reason=str(form.get("reason", "")),
            findings=str(form["findings"]) if "findings" in form else None,
            conclusion=str(form["conclusion"]) if "conclusion" in form else None,
            observations=list(merged.values()),
            comment=report_comment,
        )
        c.sharing.corrections.accept(user, correction_id, _edit(body), body.reason)
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "retrieval/error.html", {"user": user, "error": exc}, status_code=exc.status
        )
    return RedirectResponse(f"/corrections/{correction_id}", status_code=303)


@router.post("/corrections/{correction_id}/reject", include_in_schema=False)
def reject_page(
    correction_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
    reason: Annotated[str, Form()] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        c.sharing.corrections.reject(user, correction_id, reason)
    except DomainError as exc:
        return templates.TemplateResponse(
            request, "retrieval/error.html", {"user": user, "error": exc}, status_code=exc.status
        )
    return RedirectResponse(f"/corrections/{correction_id}", status_code=303)


__all__ = ["Problem", "router"]
