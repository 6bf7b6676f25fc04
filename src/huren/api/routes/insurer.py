"""Insurer verification (医保核查): claim lines as JSON, or a CSV / .xlsx batch file;
answers as JSON or a downloadable CSV / .xlsx report. And the insurer's page
(``/insurer``): upload a batch file or enter one claim line, see the verdicts as a table,
download the same report — all through the same parser, service and report builder."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from huren.adapters.claims_file import (
    parse_claims_numbered,
    report_csv,
    report_rows,
    report_xlsx,
)
from huren.api.auth import optional_principal, require_roles
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import DomainError, Forbidden, Problem, ProblemCollector, ValidationFailed
from huren.domain.identity import IDENTIFIER_LABELS, IdentifierKind, PatientIdentifier
from huren.domain.insurer import COLUMNS, ClaimLine, claim_line_from_row
from huren.services.insurer import verdict_json

router = APIRouter(tags=["医保核查"], route_class=PageRoute)

Insurer = Annotated[Principal, Depends(require_roles(Role.INSURER))]
Services = Annotated[Container, Depends(container)]

MAX_UPLOAD = 10 * 1024 * 1024


class ClaimLineIn(BaseModel):
    claim_no: str = Field(min_length=1, max_length=64, description="结算单号")
    line_no: str = Field(default="1", max_length=32, description="明细序号")
    id_kind: Literal["national_id", "insurance", "health_card"] = "national_id"
    id_value: str = Field(min_length=1, max_length=64, description="证件号码")
    institution: str = Field(description="定点医疗机构编码")
    item_code: str = Field(default="", description="互认项目编码（统一编码）")
    local_code: str = Field(default="", description="院内项目编码（按机构对码）")
    service_date: date
    report_no: str = Field(default="", description="该明细对应的报告单编号（如有）")
    bundled_items: list[str] = Field(default_factory=list, description="打包项目包含的互认项目编码")


class VerifyIn(BaseModel):
    lines: list[ClaimLineIn] = Field(min_length=1, max_length=5000)


class VerdictOut(BaseModel):
    claim_no: str
    line_no: str
    patient: str
    institution: str
    institution_name: str
    item_code: str
    item_name: str
    service_date: str
    order_time: str
    recognizable_prior: dict[str, Any] | None
    other_priors: int
    reminder_shown: bool
    reminder_at: str | None
    decision: dict[str, Any] | None
    flags: list[str]
    flag_labels: list[str]
    summary: str


class VerifyOut(BaseModel):
    lines: list[VerdictOut]
    flagged: int
    total: int


def _lines(body: VerifyIn) -> list[ClaimLine]:
    return [
        ClaimLine(
            claim_no=x.claim_no,
            line_no=x.line_no,
            identifier=PatientIdentifier(IdentifierKind(x.id_kind), x.id_value),
            institution=x.institution,
            service_date=x.service_date,
            item_code=x.item_code,
            local_code=x.local_code,
            report_no=x.report_no,
            bundled_items=tuple(x.bundled_items),
        )
        for x in body.lines
    ]


def _verify(c: Container, principal: Principal, lines: list[ClaimLine]) -> list[dict[str, Any]]:
    names = {code: i.name for code, i in c.catalog.get().institutions.items()}
    return [verdict_json(v, names) for v in c.sharing.insurer.verify(principal, lines)]


def _respond(verdicts: list[dict[str, Any]], fmt: str) -> Response | VerifyOut:
    if fmt == "csv":
        return Response(
            report_csv(verdicts),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="claim-verification.csv"'},
        )
    if fmt == "xlsx":
        return Response(
            report_xlsx(verdicts),
            media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"Content-Disposition": 'attachment; filename="claim-verification.xlsx"'},
        )
    return VerifyOut(
        lines=[VerdictOut(**v) for v in verdicts],
        flagged=sum(1 for v in verdicts if v["flags"]),
        total=len(verdicts),
    )


Fmt = Annotated[
    Literal["json", "csv", "xlsx"], Query(alias="format", description="json / csv / xlsx")
]


@router.post("/api/v1/insurer/verify", response_model=VerifyOut, summary="核查结算明细（JSON）")
def verify(body: VerifyIn, principal: Insurer, c: Services, fmt: Fmt = "json") -> Any:
    """医保部门（按辖区）. The whole request is refused when a line is invalid."""
    return _respond(_verify(c, principal, _lines(body)), fmt)


@router.post(
    "/api/v1/insurer/verify/batch",
    response_model=VerifyOut,
    summary="核查结算明细文件（CSV / Excel）",
)
async def verify_batch(
    principal: Insurer,
    c: Services,
    file: Annotated[UploadFile, File(description=".csv 或 .xlsx")],
    fmt: Fmt = "json",
) -> Any:
    numbered = await _read_batch(file)
    # Verifying reads the database line by line: off the event loop.
    verdicts = await run_in_threadpool(_verify_numbered, c, principal, numbered)
    return _respond(verdicts, fmt)


async def _read_batch(file: UploadFile) -> list[tuple[int, ClaimLine]]:
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise ValidationFailed("文件过大（上限 10 MB）", problems=[Problem("file", "文件过大")])
    if not data and not file.filename:
        raise ValidationFailed("请选择要上传的文件", problems=[Problem("file", "未选择文件")])
    return parse_claims_numbered(file.filename or "", file.content_type or "", data)


_LINE_FIELD = re.compile(r"^lines\[(\d+)\]\.?(.*)$")
_FILE_COLUMN = {"identifier": "id_value"}  # the service's field name → the file's column


def _relabel(exc: ValidationFailed, rows: Sequence[str]) -> ValidationFailed:
    """The service names a bad line ``lines[i].field``; say which row and column of the
    upload (or which field of the form) it is."""
    problems = []
    for p in exc.problems:
        m = _LINE_FIELD.match(p.field)
        if m and int(m.group(1)) < len(rows):
            column = m.group(2).split(".", 1)[0]
            column = _FILE_COLUMN.get(column, column)
            where = rows[int(m.group(1))]
            problems.append(Problem(f"{where}: {column}" if where else column, p.message))
        else:
            problems.append(p)
    return type(exc)(exc.message, problems=problems)


def _verify_numbered(
    c: Container, principal: Principal, numbered: Sequence[tuple[int, ClaimLine]]
) -> list[dict[str, Any]]:
    try:
        return _verify(c, principal, [line for _, line in numbered])
    except ValidationFailed as exc:
        raise _relabel(exc, [f"第 {n} 行" for n, _ in numbered]) from exc


# ---------------------------------------------------------------- pages
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _data_url(media_type: str, data: bytes) -> str:
    """The report as a ``data:`` URL: the download is the report of what the page shows,
    without verifying (and auditing) the lines a second time or keeping it on the server."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _render(
    request: Request,
    c: Container,
    user: Principal,
    *,
    form: dict[str, str] | None = None,
    verdicts: list[dict[str, Any]] | None = None,
    source: str = "",
    error: DomainError | None = None,
    status_code: int = 200,
) -> Response:
    allowed = user.role is Role.INSURER and bool(user.jurisdiction)
    catalog = c.catalog.get()
    institutions = (
        sorted(
            (
                i
                for i in catalog.institutions.values()
                if catalog.graph.contains(user.jurisdiction or "", i.code)
            ),
            key=lambda i: i.code,
        )
        if allowed
        else []
    )
    report: dict[str, Any] | None = None
    if verdicts is not None:
        rows = report_rows(verdicts)
        stamp = c.clock.now().astimezone(CHINA_TZ).strftime("%Y%m%d-%H%M")
        report = {
            "header": rows[0],
            "rows": list(zip(verdicts, rows[1:], strict=True)),
            "total": len(verdicts),
            "flagged": sum(1 for v in verdicts if v["flags"]),
            "csv": _data_url("text/csv;charset=utf-8", report_csv(verdicts)),
            "xlsx": _data_url(XLSX_TYPE, report_xlsx(verdicts)),
            "name": f"医保核查报告-{stamp}",
            "source": source,
        }
    return templates.TemplateResponse(
        request,
        "insurer/verify.html",
        {
            "user": user,
            "allowed": allowed,
            "institutions": institutions,
            "items": sorted(catalog.items.values(), key=lambda i: i.code),
            "kinds": [
                (str(k), IDENTIFIER_LABELS[k])
                for k in (
                    IdentifierKind.NATIONAL_ID,
                    IdentifierKind.INSURANCE,
                    IdentifierKind.HEALTH_CARD,
                )
            ],
            "columns": [(key, names[1:]) for key, names in COLUMNS.items()],
            "form": form or {},
            "report": report,
            "error": error,
        },
        status_code=status_code,
        headers={"Cache-Control": "no-store"},
    )


PageUser = Annotated[Principal | None, Depends(optional_principal)]


def _require_insurer(user: Principal) -> None:
    if user.role is not Role.INSURER or not user.jurisdiction:
        raise Forbidden("只有医保部门可以核查结算明细")


@router.get("/insurer", response_class=HTMLResponse, include_in_schema=False)
def insurer_page(request: Request, user: PageUser, c: Services) -> Response:
    if user is None:
        return login_redirect(request)
    allowed = user.role is Role.INSURER and bool(user.jurisdiction)
    return _render(request, c, user, status_code=200 if allowed else 403)


@router.get("/insurer/template.csv", include_in_schema=False)
def batch_template() -> Response:
    """An empty batch file with the accepted column headers (the Chinese names)."""
    header = ",".join(names[1] for names in COLUMNS.values())
    return Response(
        f"{header}\r\n".encode("utf-8-sig"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="claim-lines-template.csv"'},
    )


@router.post("/insurer/file", response_class=HTMLResponse, include_in_schema=False)
async def insurer_file(
    request: Request,
    user: PageUser,
    c: Services,
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    if user is None:
        return login_redirect(request)
    try:
        _require_insurer(user)
        if file is None:
            raise ValidationFailed("请选择要上传的文件", problems=[Problem("file", "未选择文件")])
        numbered = await _read_batch(file)
    except DomainError as exc:
        return _render(request, c, user, error=exc, status_code=exc.status)
    # Verifying reads the database line by line, and the reports are built for the page:
    # off the event loop.
    return await run_in_threadpool(_file_page, request, c, user, numbered, file.filename or "")


def _file_page(
    request: Request,
    c: Container,
    user: Principal,
    numbered: list[tuple[int, ClaimLine]],
    source: str,
) -> Response:
    try:
        verdicts = _verify_numbered(c, user, numbered)
    except DomainError as exc:
        return _render(request, c, user, error=exc, status_code=exc.status)
    return _render(request, c, user, verdicts=verdicts, source=source)


@router.post("/insurer/line", response_class=HTMLResponse, include_in_schema=False)
def insurer_line(
    request: Request,
    user: PageUser,
    c: Services,
    claim_no: Annotated[str, Form()] = "",
    line_no: Annotated[str, Form()] = "1",
    id_kind: Annotated[str, Form()] = "national_id",
    id_value: Annotated[str, Form()] = "",
    institution: Annotated[str, Form()] = "",
    item_code: Annotated[str, Form()] = "",
    local_code: Annotated[str, Form()] = "",
    service_date: Annotated[str, Form()] = "",
    report_no: Annotated[str, Form()] = "",
    bundled_items: Annotated[str, Form()] = "",
) -> Response:
    if user is None:
        return login_redirect(request)
    values = {
        "claim_no": claim_no,
        "line_no": line_no or "1",
        "id_kind": id_kind,
        "id_value": id_value,
        "institution": institution,
        "item_code": item_code,
        "local_code": local_code,
        "service_date": service_date,
        "report_no": report_no,
        "bundled_items": bundled_items,
    }
    form = {k: v for k, v in values.items() if k != "id_value"}  # never echo the ID back
    try:
        _require_insurer(user)
        errors = ProblemCollector()
        line = claim_line_from_row(values, "", errors)
        errors.problems = [Problem(p.field.removeprefix(": "), p.message) for p in errors.problems]
        errors.raise_if_any("结算明细未通过校验，未作核查")
        assert line is not None
        try:
            verdicts = _verify(c, user, [line])
        except ValidationFailed as exc:
            raise _relabel(exc, [""]) from exc
    except DomainError as exc:
        return _render(request, c, user, form=form, error=exc, status_code=exc.status)
    return _render(request, c, user, form=form, verdicts=verdicts, source="逐条核查")
