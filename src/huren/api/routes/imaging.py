"""Imaging REST API under /api/v1/imaging: completeness of a result's study, the insurer's
confirmation that a billed study exists (冀卫医政函〔2025〕7号 三(四)), the patient's
download, and the DICOM event log for integration engineers. Also starts the DICOM
network service with the app when ``settings.start_dicom``."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from huren.adapters.dicom.scp import DicomNetworkService
from huren.api.auth import require_roles
from huren.api.deps import container
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.errors import Forbidden, Problem, ValidationFailed
from huren.domain.imaging import ImagingConfirmation, StudyStatus
from huren.services.imaging import AuditRecord

router = APIRouter(prefix="/api/v1/imaging", tags=["影像"])

insurer = require_roles(Role.INSURER)
clinical_reader = require_roles(
    Role.CLINICIAN, Role.INSTITUTION_ADMIN, Role.INTEGRATION, Role.OPERATOR
)
downloader = require_roles(Role.PATIENT, Role.CLINICIAN)
engineer = require_roles(Role.INTEGRATION, Role.INSTITUTION_ADMIN, Role.OPERATOR)

Services = Annotated[Container, Depends(container)]


class StudyStatusOut(BaseModel):
    """完整性: 影像与报告是否都已到达, 是否满足项目的序列要求."""

    result_id: int
    complete: bool
    missing: list[str]
    study_uid: str
    series_count: int
    instance_count: int

    @classmethod
    def of(cls, result_id: int, s: StudyStatus) -> StudyStatusOut:
        return cls(
            result_id=result_id,
            complete=s.complete,
            missing=list(s.missing),
            study_uid=s.study_uid,
            series_count=s.series_count,
            instance_count=s.instance_count,
        )


class SeriesConfirmationOut(BaseModel):
    modality: str
    series_number: int | None
    instance_count: int
    received_at: datetime


class ConfirmationOut(BaseModel):
    """医保核验: 检查是否存在、序列与图像数量、时间、设备类型 — 不含图像与报告内容."""

    exists: bool
    study_uid: str = ""
    accession_number: str = ""
    institution: str = ""
    study_date: date | None = None
    modalities: list[str] = []
    series_count: int = 0
    instance_count: int = 0
    received_at: datetime | None = None
    series: list[SeriesConfirmationOut] = []

    @classmethod
    def of(cls, c: ImagingConfirmation) -> ConfirmationOut:
        return cls(
            exists=c.exists,
            study_uid=c.study_uid,
            accession_number=c.accession_number,
            institution=c.institution,
            study_date=c.study_date,
            modalities=list(c.modalities),
            series_count=c.series_count,
            instance_count=c.instance_count,
            received_at=c.received_at,
            series=[
                SeriesConfirmationOut(
                    modality=s.modality,
                    series_number=s.series_number,
                    instance_count=s.instance_count,
                    received_at=s.first_received_at,
                )
                for s in c.series
            ],
        )


class DicomEventOut(BaseModel):
    at: datetime
    channel: str
    kind: str
    calling_ae: str
    peer: str
    institution: str | None
    sop_uid: str
    status: str
    message: str


def _audit(
    c: Container, p: Principal, action: str, result_id: int | None = None, purpose: str = ""
) -> None:
    c.imaging.audit(
        AuditRecord(
            at=c.clock.now(),
            actor=p.username,
            role=p.role.value,
            action=action,
            account_id=p.account_id,
            institution=p.institution,
            patient_id=p.patient_id,
            result_id=result_id,
            purpose=purpose,
        )
    )


@router.get("/results/{result_id}/status", response_model=StudyStatusOut, summary="影像完整性")
def result_status(
    result_id: int, principal: Annotated[Principal, Depends(clinical_reader)], c: Services
) -> StudyStatusOut:
    return StudyStatusOut.of(result_id, c.imaging.study_status(result_id))


@router.get("/confirm", response_model=ConfirmationOut, summary="医保核验影像检查是否存在")
def confirm(
    principal: Annotated[Principal, Depends(insurer)],
    c: Services,
    patient: Annotated[str, Query(min_length=1, description="DICOM 患者ID (PatientID)")],
    accession: str = "",
    study: str = "",
    on: Annotated[date | None, Query(alias="date", description="检查日期 YYYY-MM-DD")] = None,
) -> ConfirmationOut:
    if not accession and not study:
        raise ValidationFailed(
            "须提供检查号 accession 或检查实例UID study",
            problems=[Problem("accession", "accession 与 study 至少提供一个")],
        )
    result = c.imaging.confirm(patient_id=patient, accession=accession, study_uid=study, on=on)
    _audit(c, principal, "imaging_confirm", purpose="医保核验")
    return ConfirmationOut.of(result)


def _zip(name: str, data: bytes) -> Response:
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/results/{result_id}/export.zip", summary="下载报告与影像（患者）")
async def export_result(
    result_id: int, principal: Annotated[Principal, Depends(downloader)], c: Services
) -> Response:
    reports = c.imaging.index.reports([result_id])
    if principal.role is Role.PATIENT and (
        not reports or reports[0].patient_id != principal.patient_id
    ):
        raise Forbidden("只能下载本人的检查", problems=[Problem("result_id", str(result_id))])
    study_uid = c.imaging.study_of_result(result_id)
    _, data = await run_in_threadpool(c.imaging.export_study, study_uid)
    _audit(c, principal, "imaging_export", result_id, "下载")
    return _zip(f"study-{result_id}.zip", data)


@router.get("/events", response_model=list[DicomEventOut], summary="DICOM 接收异常日志")
def events(
    principal: Annotated[Principal, Depends(engineer)],
    c: Services,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DicomEventOut]:
    rows = c.imaging.index.events(limit)
    if principal.role is not Role.OPERATOR:
        rows = [r for r in rows if r.institution in (principal.institution, None)]
    return [
        DicomEventOut(
            at=r.at,
            channel=r.channel.value,
            kind=r.kind.value,
            calling_ae=r.calling_ae,
            peer=r.peer,
            institution=r.institution,
            sop_uid=r.sop_uid,
            status=f"0x{r.status:04X}" if r.status is not None else "",
            message=r.message,
        )
        for r in rows
    ]


def install_dicom_listener(app: FastAPI) -> None:
    """Start the DICOM SCP with the app (``huren serve``) and stop it on shutdown."""
    state: dict[str, Any] = {}

    async def start(app: FastAPI) -> None:
        c: Container = app.state.container
        s = c.settings
        scp = DicomNetworkService(
            c.imaging, ae_title=s.dicom_ae_title, host=s.dicom_host, port=s.dicom_port
        )
        await run_in_threadpool(scp.start)
        state["scp"] = scp
        app.state.dicom = scp

    async def stop(app: FastAPI) -> None:
        scp = state.pop("scp", None)
        if scp is not None:
            await run_in_threadpool(scp.stop)

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
