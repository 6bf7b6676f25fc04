"""Input/output models of the plain REST recognition API (R5) for HIS vendors that do not
speak CDS Hooks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from huren.domain.identity import IdentifierKind


class IdentifierIn(BaseModel):
    kind: IdentifierKind = Field(description="national_id | insurance | health_card | mrn")
    value: str = Field(min_length=1, max_length=64)
    assigner: str = Field("", description="院内病历号的发放机构；缺省为本机构")


class PatientIn(BaseModel):
    id: int | None = Field(None, description="平台患者 id")
    identifiers: list[IdentifierIn] = Field(default_factory=list, max_length=10)


class CheckIn(BaseModel):
    patient: PatientIn
    items: list[str] = Field(
        min_length=1, max_length=50, description="医嘱项目代码：本机构代码（经对码）或统一代码"
    )
    department: str = Field("", max_length=100)
    clinician: str = Field("", max_length=64, description="接诊医师；缺省为当前账号")
    request_id: str = Field("", max_length=64)


class ReasonOut(BaseModel):
    code: str
    effect: Literal["supports", "blocks", "caution"]
    text: str


class ObservationOut(BaseModel):
    code: str
    name: str
    value: str
    unit: str
    ref_low: float | None
    ref_high: float | None
    ref_text: str
    flag: str
    loinc: str
    comment: str = Field("", description="送检机构对该结果的备注（HL7 NTE、FHIR Observation.note）")


class PriorOut(BaseModel):
    result_id: int
    version: int
    standing: Literal["recognizable", "near_miss", "information"]
    standing_label: str
    institution: str
    institution_name: str
    department: str
    report_no: str
    status: str
    performed_at: datetime
    issued_at: datetime
    mark_scope: str | None
    mark_symbol: str | None
    age_days: float
    time_limit_days: float
    within_time_limit: bool
    observations: list[ObservationOut]
    findings: str
    conclusion: str = Field(description="报告医师的诊断结论：共享但不属于互认内容")
    comment: str = Field("", description="送检机构对整份报告的备注（HL7 OBR 后的 NTE）")
    reasons: list[ReasonOut]
    report_url: str


class RetestIntervalOut(BaseModel):
    label: str
    days: float
    source: str


class ItemOut(BaseModel):
    requested: str
    item_code: str | None
    item_name: str | None
    category: str | None
    price_fen: int | None
    listed: bool
    problem: str
    reminder_id: int
    candidates: list[PriorOut]
    near_misses: list[PriorOut]
    information: list[PriorOut]
    retest_interval: RetestIntervalOut | None
    retest_notes: list[ReasonOut]


class NegativeReasonOut(BaseModel):
    code: str
    number: int
    text: str
    source: str
    imaging_only: bool
    requires_free_text: bool


class CheckOut(BaseModel):
    request_id: str
    institution: str
    patient_id: int | None
    patient_known: bool
    notice: str
    items: list[ItemOut]
    decline_reasons: list[NegativeReasonOut]


class ExternalReportIn(BaseModel):
    institution_name: str = Field(max_length=200, description="检查检验单位")
    report_no: str = Field(max_length=64, description="报告单编号")
    performed_at: datetime = Field(description="检查检验时间")
    result: str = Field(max_length=4000, description="检查检验结果")
    has_images: bool = Field(False, description="患者同时提供了相应影像资料")


class DecisionIn(BaseModel):
    item: str = Field(min_length=1, max_length=64)
    action: Literal["accepted", "declined"]
    patient: PatientIn | None = None
    result_id: int | None = None
    result_version: int | None = None
    reason_code: str = Field("", max_length=32)
    free_text: str = Field("", max_length=1000)
    inpatient: bool = False
    reminder_id: int | None = None
    external_report: ExternalReportIn | None = None
    department: str = Field("", max_length=100)
    clinician: str = Field("", max_length=64)


class DecisionOut(BaseModel):
    id: int
    action: str
    item_code: str
    item_name: str
    result_id: int | None
    result_version: int | None
    saved_fen: int
    reason_code: str
    reason_text: str
    emr_text: str
    patient_explanation: str
