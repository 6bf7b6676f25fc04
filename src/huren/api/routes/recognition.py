"""Plain REST recognition API (R5): ``POST /api/v1/recognition/check`` and
``POST /api/v1/recognition/decisions``, for clinicians and the HIS interface account of
the ordering institution."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from huren.api.auth import require_roles
from huren.api.deps import container
from huren.api.schemas.recognition import (
    CheckIn,
    CheckOut,
    DecisionIn,
    DecisionOut,
    ItemOut,
    NegativeReasonOut,
    ObservationOut,
    PatientIn,
    PriorOut,
    ReasonOut,
    RetestIntervalOut,
)
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.decisions import Action
from huren.domain.identity import PatientIdentifier
from huren.domain.masterdata import Institution
from huren.domain.recognition import STANDING_LABELS, Assessment, Reason
from huren.services.recognition import (
    CheckOutcome,
    CheckRequest,
    DecisionOutcome,
    DecisionRequest,
    ExternalReport,
    PatientRef,
)

router = APIRouter(prefix="/api/v1/recognition", tags=["互认提醒"])
Caller = Annotated[Principal, Depends(require_roles(Role.CLINICIAN, Role.INTEGRATION))]
DAY = 86400.0


def patient_ref(p: PatientIn | None) -> PatientRef:
    if p is None:
        return PatientRef()
    return PatientRef(
        patient_id=p.id,
        identifiers=tuple(PatientIdentifier(i.kind, i.value, i.assigner) for i in p.identifiers),
    )


def _reason(r: Reason) -> ReasonOut:
    return ReasonOut(code=str(r.code), effect=r.effect.value, text=r.text)


def prior_out(a: Assessment, institutions: dict[str, Institution], base: str) -> PriorOut:
    r = a.result
    inst = institutions.get(r.institution)
    return PriorOut(
        result_id=r.id,
        version=r.version,
        standing=a.standing.value,
        standing_label=STANDING_LABELS[a.standing],
        institution=r.institution,
        institution_name=inst.name if inst else r.institution,
        department=r.department,
        report_no=r.report_no,
        status=str(r.status),
        performed_at=r.performed_at,
        issued_at=r.issued_at,
        mark_scope=r.mark_scope,
        mark_symbol=r.mark_symbol,
        age_days=round(a.age.total_seconds() / DAY, 2),
        time_limit_days=round(a.time_limit.total_seconds() / DAY, 2),
        within_time_limit=a.within_time_limit,
        observations=[
            ObservationOut(
                code=o.code,
                name=o.name,
                value=o.shown_value(),
                unit=o.unit,
                ref_low=o.ref_low,
                ref_high=o.ref_high,
                ref_text=o.ref_text,
                flag=o.flag,
                loinc=o.loinc,
                comment=o.comment,
            )
            for o in r.observations
        ],
        findings=r.findings,
        conclusion=r.conclusion,
        comment=r.comment,
        reasons=[_reason(x) for x in a.reasons],
        report_url=f"{base}/workbench/results/{r.id}",
    )


def check_out(outcome: CheckOutcome, institutions: dict[str, Institution], base: str) -> CheckOut:
    items = []
    for ans in outcome.items:
        rec = ans.recognition
        items.append(
            ItemOut(
                requested=ans.requested,
                item_code=ans.item_code,
                item_name=ans.item.name if ans.item else None,
                category=str(ans.item.category) if ans.item else None,
                price_fen=ans.item.price_fen if ans.item else None,
                listed=ans.listed,
                problem=ans.problem,
                reminder_id=ans.reminder_id,
                candidates=[prior_out(a, institutions, base) for a in rec.candidates]
                if rec
                else [],
                near_misses=[prior_out(a, institutions, base) for a in rec.near_misses]
                if rec
                else [],
                information=[prior_out(a, institutions, base) for a in rec.information]
                if rec
                else [],
                retest_interval=RetestIntervalOut(
                    label=rec.retest_interval.label,
                    days=rec.retest_interval.days,
                    source=rec.retest_interval.source,
                )
                if rec and rec.retest_interval
                else None,
                retest_notes=[_reason(x) for x in rec.retest_reasons] if rec else [],
            )
        )
    return CheckOut(
        request_id=outcome.request_id,
        institution=outcome.institution,
        patient_id=outcome.patient_id,
        patient_known=outcome.patient_known,
        notice=outcome.notice,
        items=items,
        decline_reasons=[
            NegativeReasonOut(
                code=r.code,
                number=r.number,
                text=r.text,
                source=r.source,
                imaging_only=r.imaging_only,
                requires_free_text=r.requires_free_text,
            )
            for r in outcome.reasons
        ],
    )


def decision_out(d: DecisionOutcome) -> DecisionOut:
    return DecisionOut(
        id=d.id,
        action=str(d.action),
        item_code=d.item.code,
        item_name=d.item.name,
        result_id=d.result_id,
        result_version=d.result_version,
        saved_fen=d.saved_fen,
        reason_code=d.reason.code if d.reason else "",
        reason_text=d.reason.text if d.reason else "",
        emr_text=d.emr_text,
        patient_explanation=d.patient_explanation,
    )


def _base(c: Container, request: Request) -> str:
    return (c.settings.base_url or str(request.base_url)).rstrip("/")


@router.post("/check", response_model=CheckOut, summary="开具医嘱时查询可互认的既往结果")
def check(
    body: CheckIn,
    request: Request,
    principal: Caller,
    c: Annotated[Container, Depends(container)],
) -> CheckOut:
    outcome = c.recognition.check(
        CheckRequest(
            principal=principal,
            patient=patient_ref(body.patient),
            codes=tuple(body.items),
            channel="rest",
            department=body.department,
            clinician=body.clinician,
            request_id=body.request_id,
        )
    )
    return check_out(outcome, c.recognition.catalog().institutions, _base(c, request))


def external(body: DecisionIn) -> ExternalReport | None:
    e = body.external_report
    if e is None:
        return None
    return ExternalReport(e.institution_name, e.report_no, e.performed_at, e.result, e.has_images)


@router.post(
    "/decisions",
    response_model=DecisionOut,
    status_code=201,
    summary="记录互认或不予互认的判断，返回病历记载文本或给患者的解释",
)
def decide(
    body: DecisionIn,
    principal: Caller,
    c: Annotated[Container, Depends(container)],
) -> DecisionOut:
    outcome = c.recognition.decide(
        DecisionRequest(
            principal=principal,
            item=body.item,
            action=Action(body.action),
            patient=patient_ref(body.patient),
            result_id=body.result_id,
            result_version=body.result_version,
            reason_code=body.reason_code,
            free_text=body.free_text,
            inpatient=body.inpatient,
            reminder_id=body.reminder_id,
            external=external(body),
            department=body.department,
            clinician=body.clinician,
        )
    )
    return decision_out(outcome)
