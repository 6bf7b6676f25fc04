"""QC lifecycle API (R8): QC centres record evaluations and EQA rounds in their
jurisdiction and accept rectifications; regulators confirm or reject suspension proposals,
suspend and reinstate by hand with a reason; spot checks (双随机一公开) are drawn and their
outcomes recorded."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from huren.api.auth import require_roles
from huren.api.deps import container
from huren.api.routes.monitoring import export
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.qc import (
    KIND_LABELS,
    ORGANISER_LABELS,
    PROPOSAL_STATUS_LABELS,
    SUSPENSION_REASON_LABELS,
    EvaluationKind,
    Inspector,
    Organiser,
    ProposalStatus,
    SuspensionReason,
    TargetKind,
)
from huren.services.qc import (
    EvaluationInput,
    EvaluationRecord,
    ProposalRecord,
    SpotCheckRecord,
)

router = APIRouter(prefix="/api/v1/qc", tags=["质控"])

Services = Annotated[Container, Depends(container)]
QcCentre = Annotated[Principal, Depends(require_roles(Role.QC_CENTRE, Role.OPERATOR))]
Authority = Annotated[Principal, Depends(require_roles(Role.REGULATOR, Role.OPERATOR))]
Governance = Annotated[
    Principal, Depends(require_roles(Role.REGULATOR, Role.QC_CENTRE, Role.OPERATOR))
]


class EvaluationIn(BaseModel):
    institution: str = Field(description="机构编码")
    kind: EvaluationKind = Field(
        description="evaluation 质量评价 | eqa_round 室间质评 | spot_check 抽查 | alliance_comparison 室间比对"
    )
    organiser: Organiser
    organiser_name: str = ""
    evaluated_on: date
    passed: bool
    item: str = ""
    group: str = ""
    scope: str = Field("", description="资质范围；默认机构所在省（室间比对须为医联体）")
    round_id: str = ""
    score: float | None = None
    notes: str = ""


class EvaluationOut(BaseModel):
    id: int
    institution: str
    item: str
    group: str
    scope: str
    kind: EvaluationKind
    kind_label: str
    organiser: Organiser
    organiser_label: str
    suggested_organiser: str
    evaluated_on: date
    passed: bool
    round_id: str
    score: float | None
    notes: str
    rectification: str
    rectification_accepted_on: date | None
    removed_qualifications: list[int]
    proposal_id: int | None
    recorded_by: str

    @classmethod
    def of(cls, r: EvaluationRecord) -> EvaluationOut:
        return cls(
            id=r.id,
            institution=r.institution,
            item=r.item,
            group=r.group,
            scope=r.scope,
            kind=r.kind,
            kind_label=KIND_LABELS[r.kind],
            organiser=r.organiser,
            organiser_label=ORGANISER_LABELS[r.organiser],
            suggested_organiser=r.suggested_organiser,
            evaluated_on=r.evaluated_on,
            passed=r.passed,
            round_id=r.round_id,
            score=r.score,
            notes=r.notes,
            rectification=r.rectification,
            rectification_accepted_on=r.rectification_accepted_on,
            removed_qualifications=list(r.removed_qualifications),
            proposal_id=r.proposal_id,
            recorded_by=r.recorded_by,
        )


class EvaluationRecordedOut(BaseModel):
    evaluation: EvaluationOut
    suggested_organiser: Organiser | None
    organiser_differs: bool = Field(description="与“原则上”的组织单位不同（允许，仅提示）")
    renewed_until: date | None
    qualification_id: int | None
    marks_removed: list[int]
    proposal_id: int | None
    notes: list[str]


class RectificationIn(BaseModel):
    rectification: str = Field(min_length=1, description="整改情况")


class ProposalIn(BaseModel):
    institution: str
    target_kind: TargetKind
    code: str = Field("", description="项目或项目组编码；laboratory 时留空")
    reason_code: SuspensionReason
    reason_text: str = Field(min_length=1)
    confirm_now: bool = Field(False, description="卫生健康行政部门直接决定暂停")


class NoteIn(BaseModel):
    note: str = ""


class ReasonIn(BaseModel):
    reason: str = Field(min_length=1)


class ProposalOut(BaseModel):
    id: int
    institution: str
    target_kind: TargetKind
    item: str
    group: str
    origin: str
    reason_code: SuspensionReason
    reason_label: str
    reason_text: str
    evidence: list[int]
    status: ProposalStatus
    status_label: str
    raised_by: str
    raised_at: datetime
    decided_by: str
    decided_at: datetime | None
    decision_note: str
    affected: list[int]
    reinstated_by: str
    reinstated_at: datetime | None
    reinstate_reason: str

    @classmethod
    def of(cls, p: ProposalRecord) -> ProposalOut:
        return cls(
            id=p.id,
            institution=p.institution,
            target_kind=p.target_kind,
            item=p.item,
            group=p.group,
            origin=p.origin,
            reason_code=p.reason,
            reason_label=SUSPENSION_REASON_LABELS[p.reason],
            reason_text=p.reason_text,
            evidence=list(p.evidence),
            status=p.status,
            status_label=PROPOSAL_STATUS_LABELS[p.status],
            raised_by=p.raised_by,
            raised_at=p.raised_at,
            decided_by=p.decided_by,
            decided_at=p.decided_at,
            decision_note=p.decision_note,
            affected=list(p.affected),
            reinstated_by=p.reinstated_by,
            reinstated_at=p.reinstated_at,
            reinstate_reason=p.reinstate_reason,
        )


class ExpiringOut(BaseModel):
    qualification_id: int
    institution: str
    item: str
    group: str
    scope: str
    valid_to: date | None
    state: str
    days_left: int
    rule: str


class InspectorIn(BaseModel):
    name: str = Field(min_length=1)
    institution: str = Field(description="检查人员所在机构（回避本机构）")
    conflicts: list[str] = Field(default_factory=list, description="另需回避的机构")


class DrawIn(BaseModel):
    jurisdiction: str
    period: str = Field(description="抽查期次，如 2026H1")
    count: int = Field(ge=1, le=1000)
    inspectors_per_check: int = Field(2, ge=1, le=20)
    inspectors: list[InspectorIn] = Field(min_length=1)
    seed: int | None = Field(None, ge=0, description="留空则随机生成并记录")


class DrawOut(BaseModel):
    id: int
    jurisdiction: str
    period: str
    seed: str
    institution_count: int
    inspectors_per_check: int
    candidates: list[str]
    drawn: list[dict[str, Any]]
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, d: SpotCheckRecord) -> DrawOut:
        return cls(
            id=d.id,
            jurisdiction=d.jurisdiction,
            period=d.period,
            seed=str(d.seed),
            institution_count=d.institution_count,
            inspectors_per_check=d.inspectors_per_check,
            candidates=list(d.candidates),
            drawn=list(d.drawn),
            created_by=d.created_by,
            created_at=d.created_at,
        )


class OutcomeIn(BaseModel):
    institution: str
    passed: bool
    notes: str = ""
    item: str = ""
    group: str = ""


class ClosedOut(BaseModel):
    expired: int


# ---------------------------------------------------------------- evaluations


@router.post(
    "/evaluations",
    response_model=EvaluationRecordedOut,
    status_code=201,
    summary="记录质量评价/室间质评/抽查/室间比对",
)
def record_evaluation(body: EvaluationIn, user: QcCentre, c: Services) -> EvaluationRecordedOut:
    out = c.qc.record_evaluation(user, EvaluationInput(**body.model_dump()))
    return EvaluationRecordedOut(
        evaluation=EvaluationOut.of(out.evaluation),
        suggested_organiser=out.suggested_organiser,
        organiser_differs=out.organiser_differs,
        renewed_until=out.renewed_until,
        qualification_id=out.qualification_id,
        marks_removed=list(out.marks_removed),
        proposal_id=out.proposal_id,
        notes=list(out.notes),
    )


@router.get("/evaluations", response_model=list[EvaluationOut], summary="评价记录")
def list_evaluations(
    user: Governance, c: Services, limit: Annotated[int, Query(ge=1, le=5000)] = 200
) -> list[EvaluationOut]:
    return [EvaluationOut.of(r) for r in c.qc.evaluations(user, limit)]


@router.post(
    "/evaluations/{evaluation_id}/rectification", response_model=EvaluationOut, summary="整改验收"
)
def accept_rectification(
    evaluation_id: int, body: RectificationIn, user: QcCentre, c: Services
) -> EvaluationOut:
    return EvaluationOut.of(c.qc.accept_rectification(user, evaluation_id, body.rectification))


# ---------------------------------------------------------------- proposals


@router.get("/proposals", response_model=list[ProposalOut], summary="暂停建议")
def list_proposals(
    user: Governance, c: Services, status: ProposalStatus | None = None
) -> list[ProposalOut]:
    return [ProposalOut.of(p) for p in c.qc.proposals(user, [status] if status else None)]


@router.post(
    "/proposals", response_model=ProposalOut, status_code=201, summary="人工提出（或直接决定）暂停"
)
def raise_proposal(body: ProposalIn, user: Governance, c: Services) -> ProposalOut:
    return ProposalOut.of(
        c.qc.raise_manual(
            user,
            body.institution,
            body.target_kind,
            body.code,
            body.reason_code,
            body.reason_text,
            confirm_now=body.confirm_now,
        )
    )


@router.get("/proposals/{proposal_id}", response_model=ProposalOut, summary="暂停建议详情")
def get_proposal(proposal_id: int, user: Governance, c: Services) -> ProposalOut:
    return ProposalOut.of(c.qc.proposal(user, proposal_id))


@router.post("/proposals/{proposal_id}/confirm", response_model=ProposalOut, summary="确认暂停")
def confirm(proposal_id: int, body: NoteIn, user: Authority, c: Services) -> ProposalOut:
    return ProposalOut.of(c.qc.confirm(user, proposal_id, body.note))


@router.post("/proposals/{proposal_id}/reject", response_model=ProposalOut, summary="不予暂停")
def reject(proposal_id: int, body: NoteIn, user: Authority, c: Services) -> ProposalOut:
    return ProposalOut.of(c.qc.reject(user, proposal_id, body.note))


@router.post(
    "/proposals/{proposal_id}/reinstate", response_model=ProposalOut, summary="恢复互认资质"
)
def reinstate(proposal_id: int, body: ReasonIn, user: Authority, c: Services) -> ProposalOut:
    return ProposalOut.of(c.qc.reinstate(user, proposal_id, body.reason))


# ---------------------------------------------------------------- expiry


@router.get("/expiring", response_model=list[ExpiringOut], summary="即将到期与已过期的互认资质")
def expiring(user: Governance, c: Services, format: str = "json") -> Any:
    rows = [
        ExpiringOut(
            qualification_id=w.qualification_id,
            institution=w.qualification.institution,
            item=w.qualification.item,
            group=w.qualification.group,
            scope=w.qualification.scope,
            valid_to=w.qualification.valid_to,
            state=w.state.value,
            days_left=w.days_left,
            rule=w.policy.source,
        )
        for w in c.qc.expiring(user)
    ]
    if format in ("csv", "xlsx"):
        return export(
            format,
            f"互认资质到期提醒.{format}",
            "到期提醒",
            ["资质", "机构", "项目", "项目组", "范围", "有效期至", "剩余天数", "复评依据"],
            [
                [
                    r.qualification_id,
                    r.institution,
                    r.item,
                    r.group,
                    r.scope,
                    str(r.valid_to),
                    r.days_left,
                    r.rule,
                ]
                for r in rows
            ],
        )
    return rows


@router.post("/expire", response_model=ClosedOut, summary="关闭已过期的互认资质（每日任务）")
def close_expired(_: Authority, c: Services) -> ClosedOut:
    return ClosedOut(expired=c.qc.close_expired())


# ---------------------------------------------------------------- spot checks


@router.post("/spot-checks", response_model=DrawOut, status_code=201, summary="双随机抽取")
def draw(body: DrawIn, user: Governance, c: Services) -> DrawOut:
    inspectors = [Inspector(i.name, i.institution, frozenset(i.conflicts)) for i in body.inspectors]
    return DrawOut.of(
        c.qc.draw(
            user,
            body.jurisdiction,
            body.period,
            body.count,
            body.inspectors_per_check,
            inspectors,
            seed=body.seed,
        )
    )


@router.get("/spot-checks", response_model=list[DrawOut], summary="抽查记录")
def list_draws(_: Governance, c: Services, jurisdiction: str | None = None) -> list[DrawOut]:
    return [DrawOut.of(d) for d in c.qc.draws(jurisdiction)]


@router.get("/spot-checks/{draw_id}", response_model=DrawOut, summary="抽查详情")
def get_draw(draw_id: int, _: Governance, c: Services) -> DrawOut:
    return DrawOut.of(c.qc.get_draw(draw_id))


@router.post("/spot-checks/{draw_id}/outcomes", response_model=DrawOut, summary="记录抽查结果")
def record_outcome(draw_id: int, body: OutcomeIn, user: Governance, c: Services) -> DrawOut:
    return DrawOut.of(
        c.qc.record_spot_check_outcome(
            user, draw_id, body.institution, body.passed, body.notes, body.item, body.group
        )
    )
