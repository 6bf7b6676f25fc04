"""Insurer verification (医保核查): claim lines as JSON, or a CSV / .xlsx batch file;
answers as JSON or a downloadable CSV / .xlsx report."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field

from huren.adapters.claims_file import parse_claims, report_csv, report_xlsx
from huren.api.auth import require_roles
from huren.api.deps import container
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.insurer import ClaimLine
from huren.services.insurer import verdict_json

router = APIRouter(tags=["医保核查"])

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
    data = await file.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        from huren.domain.errors import Problem, ValidationFailed

        raise ValidationFailed("文件过大（上限 10 MB）", problems=[Problem("file", "文件过大")])
    lines = parse_claims(file.filename or "", file.content_type or "", data)
    return _respond(_verify(c, principal, lines), fmt)
