"""The embeddable workbench page (R5): ``/workbench?patient=…&items=…&institution=…``.

A HIS opens it in a frame with the patient and the order in the URL, authenticated by the
clinician's session cookie or by a ``token`` query parameter (an access token from
``POST /api/v1/auth/token``). In token mode the page sends the same token as a bearer
header with its htmx requests, since a framed page of another site gets no cookies.
Framing is allowed to the origins in ``HUREN_WORKBENCH_FRAME_ANCESTORS`` (CSP
``frame-ancestors``) instead of being forbidden outright.

``patient`` is the platform's patient id, or ``kind:value`` with kind one of
national_id, insurance, health_card, mrn (an MRN of the ordering institution)."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from huren.api.auth import optional_principal
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.recognition import prior_out
from huren.api.routes.retrieval import document_url, documents_out
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.china_time import local_time
from huren.domain.decisions import ACTION_LABELS, Action
from huren.domain.errors import DomainError, Forbidden, Problem, Unauthorized, ValidationFailed
from huren.domain.identity import (
    IDENTIFIER_LABELS,
    SEX_LABELS,
    IdentifierKind,
    PatientIdentifier,
)
from huren.domain.masterdata import Category
from huren.domain.recognition import format_span
from huren.domain.results import STATUS_LABELS, StoredResult
from huren.domain.text import id_problem, is_digits
from huren.services.intake import DOCUMENT_KINDS
from huren.services.recognition import CheckRequest, DecisionRequest, PatientRef

router = APIRouter(tags=["互认工作台"], include_in_schema=False)
ALLOWED = frozenset({Role.CLINICIAN, Role.INTEGRATION})


def _headers(c: Container) -> dict[str, str]:
    return {
        "Content-Security-Policy": f"frame-ancestors {c.settings.workbench_frame_ancestors}",
        "Referrer-Policy": "no-referrer",  # the URL may carry a token
        "Cache-Control": "no-store",
    }


def _who(request: Request, c: Container, token: str) -> Principal | None:
    principal = c.accounts.principal_from_token(token) if token else optional_principal(request)
    if principal is not None and principal.role not in ALLOWED:
        raise Forbidden("只有接诊医师或医院接口账号可以使用互认工作台")
    return principal


def parse_patient(value: str, institution: str) -> PatientRef:
    value = value.strip()
    if is_digits(value):
        patient_id = int(value)
        why = id_problem(patient_id)
        if why is not None:
            raise ValidationFailed(
                "患者参数无效", problems=[Problem("patient", f"平台患者 id {why}")]
            )
        return PatientRef(patient_id=patient_id)
    kind, sep, ident = value.partition(":")
    try:
        k = IdentifierKind(kind)
    except ValueError:
        k = None
    if not sep or k is None or not ident:
        raise ValidationFailed(
            "患者参数无效",
            problems=[
                Problem(
                    "patient",
                    "应为平台患者 id，或 标识类型:值（national_id、insurance、health_card、mrn）",
                )
            ],
        )
    assigner = institution if k is IdentifierKind.MRN else ""
    return PatientRef(identifiers=(PatientIdentifier(k, ident, assigner),))


def _error_page(request: Request, c: Container, exc: DomainError) -> Response:
    return templates.TemplateResponse(
        request,
        "workbench/error.html",
        {"message": exc.message, "problems": exc.problems},
        status_code=exc.status,
        headers=_headers(c),
    )


def viewer_url(result: StoredResult, token: str = "") -> str | None:
    """The image viewer of an imaging result (issue 4 §5): the report, the completeness
    verdict with what is missing, the series and the stack viewer. In token mode the token
    goes along, since a page opened from a frame has no session cookie."""
    if result.category is not Category.IMAGING:
        return None
    url = f"/imaging/results/{result.id}"
    return f"{url}?{urlencode({'token': token})}" if token else url


@router.get("/workbench", response_class=HTMLResponse)
def workbench(
    request: Request,
    c: Annotated[Container, Depends(container)],
    patient: Annotated[str, Query(max_length=100)] = "",
    items: Annotated[str, Query(max_length=2000)] = "",
    institution: Annotated[str, Query(max_length=32)] = "",
    token: Annotated[str, Query(max_length=4000)] = "",
) -> Response:
    try:
        principal = _who(request, c, token)
        if principal is None:
            return login_redirect(request)
        if institution and institution != principal.institution:
            raise Forbidden(
                "工作台的机构与当前账号不符",
                problems=[Problem("institution", f"当前账号属于 {principal.institution}")],
            )
        codes = tuple(x for x in (s.strip() for s in items.split(",")) if x)
        if not patient or not codes:
            raise ValidationFailed(
                "请在地址中提供患者和医嘱项目",
                problems=[
                    Problem("patient / items", "例如 ?patient=national_id:…&items=CT0101,LIS-LFT")
                ],
            )
        outcome = c.recognition.check(
            CheckRequest(
                principal=principal,
                patient=parse_patient(patient, principal.institution or ""),
                codes=codes,
                channel="workbench",
            )
        )
    except Unauthorized as exc:
        return _error_page(request, c, exc)
    except DomainError as exc:
        return _error_page(request, c, exc)
    catalog = c.recognition.catalog()
    base = ""
    views: list[dict[str, Any]] = []
    # Decisions already recorded today on these items (the order opened again): shown in
    # place of the buttons, so that nothing is decided, and counted, twice.
    decided = {
        (d.item_code, d.result_id): d
        for d in (
            c.recognition.decisions_today(
                principal, outcome.patient_id, [a.item.code for a in outcome.items if a.item]
            )
            if outcome.patient_id is not None
            else ()
        )
    }
    # The laboratory's own report documents of every prior shown, in one statement.
    documents = c.results.documents_of(
        [
            (a.result.id, a.result.version)
            for ans in outcome.items
            for a in (ans.recognition.all() if ans.recognition else ())
        ]
    )
    for ans in outcome.items:
        rec = ans.recognition
        reasons = [
            r
            for r in outcome.reasons
            if ans.item is not None
            and (not r.imaging_only or ans.item.category is Category.IMAGING)
        ]
        views.append(
            {
                "answer": ans,
                "priors": [
                    {
                        "out": prior_out(a, catalog.institutions, base),
                        "assessment": a,
                        "performed": local_time(a.result.performed_at),
                        "age": format_span(a.age),
                        "limit": format_span(a.time_limit),
                        "images": viewer_url(a.result, token),
                        "decided": decided.get((a.result.item_code or "", a.result.id)),
                        "documents": [
                            (
                                DOCUMENT_KINDS[d.content_type].label,
                                document_url(d.result_id, d.seq, d.version, "recognition", token),
                            )
                            for d in documents.get((a.result.id, a.result.version), ())
                        ],
                    }
                    for a in (rec.all() if rec else ())
                ],
                "reasons": reasons,
                "rec": rec,
            }
        )
    inst = catalog.institutions.get(outcome.institution)
    hx_headers = json.dumps({"Authorization": f"Bearer {token}"}) if token else ""
    # Whose priors these are, masked (R4), for the clinician to check against the order:
    # a frame opened with the wrong patient in its URL shows someone else's results.
    who = c.results.patient(outcome.patient_id) if outcome.patient_id is not None else None
    return templates.TemplateResponse(
        request,
        "workbench/page.html",
        {
            "outcome": outcome,
            "views": views,
            "institution_name": inst.name if inst else outcome.institution,
            "principal": principal,
            "hx_headers": hx_headers,
            "token": token,
            "patient": who,
            "patient_ids": [
                (IDENTIFIER_LABELS[kind], masked) for kind, _, masked in who.identifiers[:2]
            ]
            if who is not None
            else [],
            "sex": SEX_LABELS.get(who.sex, "") if who is not None else "",
            # keyed by Action, a StrEnum: the stored "accepted" finds its label
            "action_labels": ACTION_LABELS,
            "local_time": local_time,
        },
        headers=_headers(c),
    )


@router.post("/workbench/decisions", response_class=HTMLResponse)
def decide(
    request: Request,
    c: Annotated[Container, Depends(container)],
    item: Annotated[str, Form(max_length=64)],
    action: Annotated[str, Form(max_length=16)],
    patient_id: Annotated[int | None, Form()] = None,
    result_id: Annotated[int | None, Form()] = None,
    result_version: Annotated[int | None, Form()] = None,
    reminder_id: Annotated[int | None, Form()] = None,
    reason_code: Annotated[str, Form(max_length=32)] = "",
    free_text: Annotated[str, Form(max_length=1000)] = "",
    inpatient: Annotated[str, Form(max_length=8)] = "",
) -> Response:
    """htmx: record the decision and return the EMR text or the patient explanation."""
    try:
        principal = _who(request, c, "")
        if principal is None:
            raise Unauthorized("尚未登录或令牌无效，请重新打开工作台")
        try:
            act = Action(action)
        except ValueError as exc:
            raise ValidationFailed(
                "未知的操作", problems=[Problem("action", "应为 accepted 或 declined")]
            ) from exc
        outcome = c.recognition.decide(
            DecisionRequest(
                principal=principal,
                item=item,
                action=act,
                patient=PatientRef(patient_id=patient_id),
                result_id=result_id,
                result_version=result_version,
                reason_code=reason_code,
                free_text=free_text,
                inpatient=inpatient in ("1", "on", "true"),
                reminder_id=reminder_id,
            )
        )
    except DomainError as exc:
        headers = _headers(c)
        if result_id is not None:
            # Into the prior's error slot, not over its forms: the clinician corrects the
            # reason (or the text) and submits again instead of reloading the page.
            headers["HX-Retarget"] = f"#decision-error-{result_id}"
            headers["HX-Reswap"] = "innerHTML"
        return templates.TemplateResponse(
            request,
            "workbench/_error.html",
            {"message": exc.message, "problems": exc.problems},
            headers=headers,
        )
    return templates.TemplateResponse(
        request,
        "workbench/_decided.html",
        {"d": outcome, "label": ACTION_LABELS[outcome.action]},
        headers=_headers(c),
    )


@router.get("/workbench/results/{result_id}", response_class=HTMLResponse)
def full_report(
    request: Request,
    result_id: int,
    c: Annotated[Container, Depends(container)],
    token: Annotated[str, Query(max_length=4000)] = "",
) -> Response:
    """The full prior report: findings and the physician's conclusion shown apart."""
    try:
        principal = _who(request, c, token)
        if principal is None:
            return login_redirect(request)
        r = c.recognition.view_result(principal, result_id)
    except DomainError as exc:
        return _error_page(request, c, exc)
    catalog = c.recognition.catalog()
    inst = catalog.institutions.get(r.institution)
    item = catalog.items.get(r.item_code or "")
    return templates.TemplateResponse(
        request,
        "workbench/report.html",
        {
            "r": r,
            "institution_name": inst.name if inst else r.institution,
            "item": item,
            "performed": local_time(r.performed_at),
            "issued": local_time(r.issued_at),
            "status_label": STATUS_LABELS.get(r.status, r.status.value),
            "images": viewer_url(r, token),
            # The laboratory's own report documents, read for recognition (互认核对).
            "documents": documents_out(c, r.id, r.version, "recognition", token),
        },
        headers=_headers(c),
    )
