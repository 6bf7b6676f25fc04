"""QC lifecycle use cases (R8): QC centres record evaluations and EQA rounds; the platform
renews qualifications, removes marks (甘) or raises suspension proposals; the authority
confirms or rejects them, suspends and reinstates by hand; spot checks are drawn and their
outcomes recorded; expiring qualifications are warned about and expired ones closed.

Every qualification status change writes a ``qualification_event`` (actor, reason) and
invalidates the catalog snapshot, so that results issued afterwards get their mark from
the new status while results issued earlier keep the mark stored on them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from huren.domain.accounts import Principal, Role, can_act_in_scope, can_see_institution
from huren.domain.errors import Conflict, Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.masterdata import (
    Category,
    Qualification,
    QualificationStatus,
    ScopeKind,
)
from huren.domain.qc import (
    KIND_LABELS,
    KIND_TO_BASIS,
    SUSPENSION_REASON_LABELS,
    Assessment,
    DrawnCheck,
    Evaluation,
    EvaluationKind,
    ExpiryState,
    Inspector,
    Organiser,
    ProposalStatus,
    ReevaluationPolicy,
    SuspensionReason,
    TargetKind,
    assess_evaluation,
    check_transition,
    draw_spot_checks,
    expiry_state,
    qualifications_for_target,
    suggested_organiser,
)
from huren.domain.text import id_problem, text_problem
from huren.services.catalog import Catalog, CatalogCache
from huren.services.ports import Clock

SYSTEM_ACTOR = "system:qc"


# ---------------------------------------------------------------- records and ports


@dataclass(frozen=True, slots=True)
class EvaluationRecord:
    """A row of ``qc_evaluation`` as the service reads and writes it."""

    institution: str
    scope: str
    kind: EvaluationKind
    organiser: Organiser
    evaluated_on: date
    passed: bool
    recorded_by: str
    recorded_at: datetime
    item: str = ""
    group: str = ""
    organiser_name: str = ""
    suggested_organiser: str = ""
    round_id: str = ""
    score: float | None = None
    notes: str = ""
    rectification: str = ""
    rectification_accepted_on: date | None = None
    rectification_accepted_by: str = ""
    spot_check_draw_id: int | None = None
    removed_qualifications: tuple[int, ...] = ()
    proposal_id: int | None = None
    id: int = 0

    def as_evaluation(self) -> Evaluation:
        return Evaluation(
            id=self.id,
            institution=self.institution,
            kind=self.kind,
            evaluated_on=self.evaluated_on,
            passed=self.passed,
            item=self.item,
            group=self.group,
            rectification_accepted_on=self.rectification_accepted_on,
        )


@dataclass(frozen=True, slots=True)
class ProposalRecord:
    institution: str
    target_kind: TargetKind
    origin: str  # auto | manual
    reason: SuspensionReason
    reason_text: str
    status: ProposalStatus
    raised_by: str
    raised_at: datetime
    item: str = ""
    group: str = ""
    evidence: tuple[int, ...] = ()
    decided_by: str = ""
    decided_at: datetime | None = None
    decision_note: str = ""
    affected: tuple[int, ...] = ()
    reinstated_by: str = ""
    reinstated_at: datetime | None = None
    reinstate_reason: str = ""
    id: int = 0

    @property
    def target_code(self) -> str:
        return self.item or self.group


@dataclass(frozen=True, slots=True)
class StoredQualification:
    id: int
    qualification: Qualification


@dataclass(frozen=True, slots=True)
class SpotCheckRecord:
    jurisdiction: str
    period: str
    seed: int
    institution_count: int
    inspectors_per_check: int
    candidates: tuple[str, ...]
    inspectors: tuple[Inspector, ...]
    drawn: tuple[
        dict[str, Any], ...
    ]  # {institution, inspectors:[{name,institution}], outcome, notes}
    created_by: str
    created_at: datetime
    id: int = 0


class QcTx(Protocol):
    def add_evaluation(self, rec: EvaluationRecord) -> int: ...
    def evaluation(self, evaluation_id: int) -> EvaluationRecord | None: ...
    def evaluations_for_target(
        self, institution: str, item: str, group: str
    ) -> list[EvaluationRecord]: ...
    def update_evaluation(self, evaluation_id: int, **values: Any) -> None: ...
    def list_evaluations(
        self, institutions: Sequence[str] | None, limit: int
    ) -> list[EvaluationRecord]: ...

    def qualifications_of(self, institution: str) -> list[StoredQualification]: ...
    def qualifications_by_ids(self, ids: Sequence[int]) -> list[StoredQualification]: ...
    def add_qualification(self, q: Qualification, at: datetime) -> int: ...
    def update_qualification(self, qualification_id: int, at: datetime, **values: Any) -> None: ...
    def transition_qualification(
        self,
        qualification_id: int,
        at: datetime,
        old: QualificationStatus,
        new: QualificationStatus,
    ) -> bool:
        """Sets the status to ``new`` only if it is still ``old``; whether it did."""
        ...

    def add_qualification_event(
        self,
        qualification_id: int,
        at: datetime,
        actor: str,
        old: QualificationStatus | None,
        new: QualificationStatus,
        reason: str,
    ) -> None: ...
    def active_expiring(self, before: date) -> list[StoredQualification]: ...
    def status_history(self, ids: Sequence[int]) -> dict[int, list[tuple[datetime, str, str]]]: ...

    def add_proposal(self, rec: ProposalRecord) -> int: ...
    def proposal(self, proposal_id: int, *, for_update: bool = False) -> ProposalRecord | None: ...
    def open_proposal(self, institution: str, target: TargetKind, code: str) -> int | None: ...
    def update_proposal(self, proposal_id: int, **values: Any) -> None: ...
    def list_proposals(
        self, statuses: Sequence[ProposalStatus] | None, institutions: Sequence[str] | None
    ) -> list[ProposalRecord]: ...

    def add_draw(self, rec: SpotCheckRecord) -> int: ...
    def draw(self, draw_id: int, *, for_update: bool = False) -> SpotCheckRecord | None: ...
    def update_draw(self, draw_id: int, drawn: Sequence[dict[str, Any]]) -> None: ...
    def list_draws(self, jurisdiction: str | None) -> list[SpotCheckRecord]: ...

    def add_outbox(self, at: datetime, topic: str, payload: dict[str, Any]) -> None: ...


class QcStore(Protocol):
    def transaction(self) -> AbstractContextManager[QcTx]: ...


# ---------------------------------------------------------------- commands and outcomes


@dataclass(frozen=True, slots=True)
class EvaluationInput:
    institution: str
    kind: EvaluationKind
    organiser: Organiser
    evaluated_on: date
    passed: bool
    item: str = ""
    group: str = ""
    scope: str = ""  # default: the institution's province (alliance for 室间比对)
    organiser_name: str = ""
    round_id: str = ""
    score: float | None = None
    notes: str = ""
    spot_check_draw_id: int | None = None


@dataclass(frozen=True, slots=True)
class EvaluationOutcome:
    evaluation: EvaluationRecord
    suggested_organiser: Organiser | None
    organiser_differs: bool
    renewed_until: date | None
    qualification_id: int | None
    marks_removed: tuple[int, ...]
    proposal_id: int | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ExpiryWarning:
    qualification_id: int
    qualification: Qualification
    state: ExpiryState
    days_left: int
    policy: ReevaluationPolicy


@dataclass(frozen=True, slots=True)
class QcOverview:
    expiring: list[ExpiryWarning]
    awaiting: list[ProposalRecord]
    suspended: list[ProposalRecord]
    failed_pending_rectification: list[EvaluationRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PublishedEntry:
    institution: str
    institution_name: str
    level: str
    target: str  # item or group code
    target_name: str
    scope: str
    scope_name: str
    basis: str
    valid_from: date
    valid_to: date | None
    status: QualificationStatus


def half_year_start(period: str) -> date:
    """'2026H1' → 2026-01-01; '2026H2' → 2026-07-01."""
    try:
        year_s, half = period.upper().split("H")
        year, h = int(year_s), int(half)
        if h not in (1, 2):
            raise ValueError(period)
    except ValueError as exc:
        raise ValidationFailed(
            "半年度格式应为 2026H1 或 2026H2", problems=[Problem("half", f"无效的半年度: {period}")]
        ) from exc
    return date(year, 1 if h == 1 else 7, 1)


def half_year_of(day: date) -> str:
    return f"{day.year}H{1 if day.month <= 6 else 2}"


# ---------------------------------------------------------------- the service


class QcService:
    def __init__(
        self,
        store: QcStore,
        catalog: CatalogCache,
        clock: Clock,
        policies: Mapping[str, ReevaluationPolicy],
        default_policy: ReevaluationPolicy,
        seed_source: Callable[[], int],
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._policies = policies
        self._default = default_policy
        self._seed_source = seed_source

    # -------------------------------------------------------- helpers
    def policy_for(self, institution: str, catalog: Catalog | None = None) -> ReevaluationPolicy:
        cat = catalog or self._catalog.get()
        return self._policies.get(cat.province_of(institution), self._default)

    def _today(self) -> date:
        return self._clock.now().date()

    @staticmethod
    def _actor(principal: Principal) -> str:
        return f"{principal.role.value}:{principal.username}"

    def _require_institution(self, principal: Principal, institution: str, cat: Catalog) -> None:
        if institution not in cat.institutions:
            raise NotFound(
                f"未找到医疗机构 {institution}",
                problems=[Problem("institution", f"机构编码 {institution} 不存在")],
            )
        if not can_see_institution(principal, institution, cat.graph):
            raise Forbidden(f"机构 {institution} 不在您的辖区内")

    def _set_status(
        self,
        tx: QcTx,
        sq: StoredQualification,
        new: QualificationStatus,
        actor: str,
        reason: str,
        at: datetime,
        *,
        unless_changed: bool = False,
    ) -> bool:
        """The status change and its event, if the status is still the one read: two
        transactions that read the same qualification (two nodes' expiry jobs, a job and
        a person) record the change once. Otherwise a conflict, or with
        ``unless_changed`` nothing; whether this one changed it."""
        if not tx.transition_qualification(sq.id, at, sq.qualification.status, new):
            if unless_changed:
                return False
            raise Conflict(
                "资质状态已被更改，请刷新后重试",
                problems=[
                    Problem("qualification", f"资质 {sq.id} 已不是 {sq.qualification.status.value}")
                ],
            )
        tx.add_qualification_event(sq.id, at, actor, sq.qualification.status, new, reason)
        return True

    # -------------------------------------------------------- evaluations
    def record_evaluation(self, principal: Principal, cmd: EvaluationInput) -> EvaluationOutcome:
        """A QC centre records an evaluation, an EQA round, a spot-check result or an
        alliance comparison for an institution × item (or item group)."""
        cat = self._catalog.get()
        self._require_institution(principal, cmd.institution, cat)
        problems: list[Problem] = []
        if bool(cmd.item) == bool(cmd.group):
            problems.append(Problem("item", "请指定互认项目编码或项目组之一"))
        category: Category | None = None
        if cmd.item:
            item = cat.items.get(cmd.item)
            if item is None:
                problems.append(Problem("item", f"互认项目 {cmd.item} 不存在"))
            else:
                category = item.category
        if cmd.group:
            in_group = [i for i in cat.items.values() if i.group == cmd.group]
            if not in_group:
                problems.append(Problem("group", f"项目组 {cmd.group} 不存在"))
            else:
                category = in_group[0].category
        inst = cat.institutions[cmd.institution]
        scope = cmd.scope or cat.province_of(cmd.institution)
        if scope not in cat.graph.scopes:
            problems.append(Problem("scope", f"互认范围 {scope} 不存在"))
        elif not cat.graph.contains(scope, cmd.institution):
            problems.append(Problem("scope", f"机构 {cmd.institution} 不在互认范围 {scope} 内"))
        elif cmd.kind is EvaluationKind.ALLIANCE_COMPARISON and (
            cat.graph.scopes[scope].kind is not ScopeKind.ALLIANCE
        ):
            problems.append(Problem("scope", "室间比对的互认范围应为医联体"))
        if cmd.evaluated_on > self._today():
            problems.append(Problem("evaluated_on", "评价日期不能晚于今天"))
        if cmd.score is not None and not (0 <= cmd.score <= 100):
            problems.append(Problem("score", "得分应在 0–100 之间"))
        if problems:
            raise ValidationFailed("质量评价记录有误", problems=problems)
        assert category is not None
        suggestion = suggested_organiser(inst, category, cmd.kind)
        now = self._clock.now()
        actor = self._actor(principal)
        policy = self.policy_for(cmd.institution, cat)
        changed = False
        with self._store.transaction() as tx:
            rec = EvaluationRecord(
                institution=cmd.institution,
                scope=scope,
                kind=cmd.kind,
                organiser=cmd.organiser,
                evaluated_on=cmd.evaluated_on,
                passed=cmd.passed,
                recorded_by=actor,
                recorded_at=now,
                item=cmd.item,
                group=cmd.group,
                organiser_name=cmd.organiser_name,
                suggested_organiser=suggestion.value if suggestion else "",
                round_id=cmd.round_id,
                score=cmd.score,
                notes=cmd.notes,
                spot_check_draw_id=cmd.spot_check_draw_id,
            )
            eid = tx.add_evaluation(rec)
            rec = _with_id(rec, eid)
            history = [
                e.as_evaluation()
                for e in tx.evaluations_for_target(cmd.institution, cmd.item, cmd.group)
            ]
            assessment = assess_evaluation(rec.as_evaluation(), history, policy)
            qid = None
            if assessment.renew_until is not None:
                qid = self._renew(tx, rec, assessment.renew_until, actor, now)
                changed = True
            removed: tuple[int, ...] = ()
            if assessment.remove_mark:
                removed = self._remove_marks(tx, rec, cat, actor, now)
                changed = changed or bool(removed)
            proposal_id = None
            if assessment.proposal is not None:
                proposal_id = self._raise_auto(tx, rec, assessment, now)
            if removed or proposal_id:
                tx.update_evaluation(
                    eid, removed_qualifications=list(removed), proposal_id=proposal_id
                )
            if removed:
                tx.add_outbox(
                    now,
                    "qc.mark_removed",
                    {
                        "institution": cmd.institution,
                        "item": cmd.item,
                        "group": cmd.group,
                        "evaluation_id": eid,
                        "qualification_ids": list(removed),
                        "reason": policy.failure_source,
                    },
                )
        if changed:
            self._catalog.invalidate()
        return EvaluationOutcome(
            evaluation=rec,
            suggested_organiser=suggestion,
            organiser_differs=suggestion is not None and suggestion is not cmd.organiser,
            renewed_until=assessment.renew_until,
            qualification_id=qid,
            marks_removed=removed,
            proposal_id=proposal_id,
            notes=assessment.notes,
        )

    def _renew(
        self, tx: QcTx, rec: EvaluationRecord, until: date, actor: str, now: datetime
    ) -> int:
        """A passed evaluation creates or extends the qualification in its scope. A
        qualification the authority suspended or revoked stays so (only it reinstates)."""
        for sq in tx.qualifications_of(rec.institution):
            q = sq.qualification
            if (q.item, q.group, q.scope) != (rec.item, rec.group, rec.scope):
                continue
            new_to = until if q.valid_to is None or until > q.valid_to else q.valid_to
            tx.update_qualification(sq.id, now, valid_to=new_to)
            if q.status in (QualificationStatus.EXPIRED, QualificationStatus.FAILED):
                self._set_status(
                    tx,
                    sq,
                    QualificationStatus.ACTIVE,
                    actor,
                    f"{rec.evaluated_on.isoformat()} {KIND_LABELS[rec.kind]}合格（评价记录 {rec.id}），有效期至 {new_to.isoformat()}",
                    now,
                )
            return sq.id
        q = Qualification(
            institution=rec.institution,
            scope=rec.scope,
            basis=KIND_TO_BASIS[rec.kind],
            valid_from=rec.evaluated_on,
            valid_to=until,
            status=QualificationStatus.ACTIVE,
            item=rec.item,
            group=rec.group,
        )
        qid = tx.add_qualification(q, now)
        tx.add_qualification_event(
            qid,
            now,
            actor,
            None,
            QualificationStatus.ACTIVE,
            f"{rec.evaluated_on.isoformat()} {KIND_LABELS[rec.kind]}合格（评价记录 {rec.id}），取得互认资质",
        )
        return qid

    def _remove_marks(
        self, tx: QcTx, rec: EvaluationRecord, cat: Catalog, actor: str, now: datetime
    ) -> tuple[int, ...]:
        target = TargetKind.ITEM if rec.item else TargetKind.GROUP
        stored = tx.qualifications_of(rec.institution)
        ids = qualifications_for_target(
            target,
            rec.institution,
            rec.item or rec.group,
            [(s.id, s.qualification) for s in stored],
            cat.items,
        )
        by_id = {s.id: s for s in stored}
        for qid in ids:
            self._set_status(
                tx,
                by_id[qid],
                QualificationStatus.FAILED,
                actor,
                f"{KIND_LABELS[rec.kind]}不合格（评价记录 {rec.id}），整改经省级质控中心验收合格前不得标注（甘卫医政函〔2025〕16号 三(二)4）",
                now,
            )
        return tuple(ids)

    def _raise_auto(
        self, tx: QcTx, rec: EvaluationRecord, assessment: Assessment, now: datetime
    ) -> int | None:
        draft = assessment.proposal
        assert draft is not None
        target = TargetKind.ITEM if rec.item else TargetKind.GROUP
        if tx.open_proposal(rec.institution, target, rec.item or rec.group) is not None:
            return None
        pid = tx.add_proposal(
            ProposalRecord(
                institution=rec.institution,
                target_kind=target,
                item=rec.item,
                group=rec.group,
                origin="auto",
                reason=draft.reason,
                reason_text=draft.text,
                evidence=draft.evidence,
                status=ProposalStatus.PROPOSED,
                raised_by=SYSTEM_ACTOR,
                raised_at=now,
            )
        )
        tx.add_outbox(
            now,
            "qc.suspension_proposed",
            {"proposal_id": pid, "institution": rec.institution, "reason": draft.reason.value},
        )
        return pid

    def accept_rectification(
        self, principal: Principal, evaluation_id: int, rectification: str
    ) -> EvaluationRecord:
        """The QC centre accepts the institution's rectification of a failed evaluation.
        Where a failure removed the mark (甘), it comes back — only on acceptance by the
        provincial QC centre (经省级质控中心验收合格方可标注)."""
        if not rectification.strip():
            raise ValidationFailed(
                "请填写整改情况", problems=[Problem("rectification", "整改情况不能为空")]
            )
        cat = self._catalog.get()
        now = self._clock.now()
        actor = self._actor(principal)
        restored = False
        with self._store.transaction() as tx:
            rec = tx.evaluation(evaluation_id)
            if rec is None:
                raise NotFound(f"未找到评价记录 {evaluation_id}")
            self._require_institution(principal, rec.institution, cat)
            if rec.passed:
                raise Conflict("该评价为合格，无需整改验收")
            if rec.rectification_accepted_on is not None:
                raise Conflict("该评价的整改已验收")
            if rec.removed_qualifications:
                province = cat.province_of(rec.institution)
                if principal.role is not Role.OPERATOR and principal.jurisdiction != province:
                    raise Forbidden("整改须经省级质控中心验收（甘卫医政函〔2025〕16号 三(二)4）")
            tx.update_evaluation(
                evaluation_id,
                rectification=rectification.strip(),
                rectification_accepted_on=now.date(),
                rectification_accepted_by=actor,
            )
            for sq in tx.qualifications_by_ids(rec.removed_qualifications):
                if sq.qualification.status is QualificationStatus.FAILED:
                    self._set_status(
                        tx,
                        sq,
                        QualificationStatus.ACTIVE,
                        actor,
                        f"整改经省级质控中心验收合格（评价记录 {evaluation_id}），恢复标注",
                        now,
                    )
                    restored = True
            if restored:
                tx.add_outbox(
                    now,
                    "qc.mark_restored",
                    {"institution": rec.institution, "evaluation_id": evaluation_id},
                )
            out = tx.evaluation(evaluation_id)
            assert out is not None
        if restored:
            self._catalog.invalidate()
        return out

    def evaluations(self, principal: Principal, limit: int = 200) -> list[EvaluationRecord]:
        cat = self._catalog.get()
        visible = [c for c in cat.institutions if can_see_institution(principal, c, cat.graph)]
        with self._store.transaction() as tx:
            return tx.list_evaluations(visible, limit)

    # -------------------------------------------------------- suspension
    def raise_manual(
        self,
        principal: Principal,
        institution: str,
        target: TargetKind,
        code: str,
        reason: SuspensionReason,
        text: str,
        *,
        confirm_now: bool = False,
    ) -> ProposalRecord:
        """A regulator (or QC centre) proposes a suspension by hand — serious quality
        problems and dishonest conduct need a person's judgement. A regulator may decide
        at once (``confirm_now``)."""
        cat = self._catalog.get()
        self._require_institution(principal, institution, cat)
        problems: list[Problem] = []
        if not text.strip():
            problems.append(Problem("reason_text", "请填写暂停理由"))
        elif problem := text_problem(text):
            problems.append(Problem("reason_text", f"暂停理由{problem}"))
        if target is TargetKind.ITEM and code not in cat.items:
            problems.append(Problem("code", f"互认项目 {code} 不存在"))
        if target is TargetKind.GROUP and not any(i.group == code for i in cat.items.values()):
            problems.append(Problem("code", f"项目组 {code} 不存在"))
        if problems:
            raise ValidationFailed("暂停建议有误", problems=problems)
        if confirm_now and principal.role not in (Role.REGULATOR, Role.OPERATOR):
            raise Forbidden(
                "暂停互认资质须由卫生健康行政部门决定（沪卫医〔2024〕135号 五(二): 可暂停）"
            )
        now = self._clock.now()
        with self._store.transaction() as tx:
            key = code if target is not TargetKind.LABORATORY else ""
            if tx.open_proposal(institution, target, key) is not None:
                raise Conflict("该机构该项目已有待确认或已生效的暂停")
            pid = tx.add_proposal(
                ProposalRecord(
                    institution=institution,
                    target_kind=target,
                    item=code if target is TargetKind.ITEM else "",
                    group=code if target is TargetKind.GROUP else "",
                    origin="manual",
                    reason=reason,
                    reason_text=text.strip(),
                    status=ProposalStatus.PROPOSED,
                    raised_by=self._actor(principal),
                    raised_at=now,
                )
            )
        if confirm_now:
            return self.confirm(principal, pid, "立即暂停")
        return self.proposal(principal, pid)

    def proposal(self, principal: Principal, proposal_id: int) -> ProposalRecord:
        cat = self._catalog.get()
        with self._store.transaction() as tx:
            p = tx.proposal(proposal_id)
        if p is None:
            raise NotFound(f"未找到暂停建议 {proposal_id}")
        self._require_institution(principal, p.institution, cat)
        return p

    def proposals(
        self, principal: Principal, statuses: Sequence[ProposalStatus] | None = None
    ) -> list[ProposalRecord]:
        cat = self._catalog.get()
        visible = [c for c in cat.institutions if can_see_institution(principal, c, cat.graph)]
        with self._store.transaction() as tx:
            return tx.list_proposals(statuses, visible)

    def _decide(
        self, principal: Principal, proposal_id: int, text: str, field: str, label: str
    ) -> None:
        """Who may decide, and whether the proposal id and the note can be recorded."""
        if principal.role not in (Role.REGULATOR, Role.OPERATOR):
            raise Forbidden("暂停、恢复互认资质须由卫生健康行政部门决定")
        if id_problem(proposal_id):
            raise NotFound(f"未找到暂停建议 {proposal_id}")
        problem = text_problem(text)
        if problem:
            message = f"{label}{problem}"
            raise ValidationFailed(message, problems=[Problem(field, message)])

    def confirm(self, principal: Principal, proposal_id: int, note: str = "") -> ProposalRecord:
        """The authority confirms: the target's qualifications become 暂停, marks drop from
        results issued from now on, the institution is notified (outbox)."""
        self._decide(principal, proposal_id, note, "note", "确认说明")
        cat = self._catalog.get()
        now = self._clock.now()
        actor = self._actor(principal)
        with self._store.transaction() as tx:
            p = tx.proposal(proposal_id, for_update=True)
            if p is None:
                raise NotFound(f"未找到暂停建议 {proposal_id}")
            self._require_institution(principal, p.institution, cat)
            check_transition(p.status, ProposalStatus.CONFIRMED)
            stored = tx.qualifications_of(p.institution)
            ids = qualifications_for_target(
                p.target_kind,
                p.institution,
                p.target_code,
                [(s.id, s.qualification) for s in stored],
                cat.items,
            )
            by_id = {s.id: s for s in stored}
            reason = f"暂停互认资质: {SUSPENSION_REASON_LABELS[p.reason]} — {p.reason_text}（暂停建议 {p.id}）"
            for qid in ids:
                self._set_status(tx, by_id[qid], QualificationStatus.SUSPENDED, actor, reason, now)
            tx.update_proposal(
                proposal_id,
                status=ProposalStatus.CONFIRMED.value,
                decided_by=actor,
                decided_at=now,
                decision_note=note,
                affected=ids,
            )
            tx.add_outbox(
                now,
                "qc.qualification_suspended",
                {
                    "proposal_id": proposal_id,
                    "institution": p.institution,
                    "target_kind": p.target_kind.value,
                    "target": p.target_code,
                    "reason_code": p.reason.value,
                    "reason": p.reason_text,
                    "qualification_ids": ids,
                    "message": f"贵机构{_target_words(p)}的互认资质已暂停: {SUSPENSION_REASON_LABELS[p.reason]}。此后出具的结果不再标注互认标识。",
                },
            )
        self._catalog.invalidate()
        return self.proposal(principal, proposal_id)

    def reject(self, principal: Principal, proposal_id: int, note: str) -> ProposalRecord:
        self._decide(principal, proposal_id, note, "note", "不予暂停的理由")
        if not note.strip():
            raise ValidationFailed(
                "请填写不予暂停的理由", problems=[Problem("note", "理由不能为空")]
            )
        cat = self._catalog.get()
        now = self._clock.now()
        with self._store.transaction() as tx:
            p = tx.proposal(proposal_id, for_update=True)
            if p is None:
                raise NotFound(f"未找到暂停建议 {proposal_id}")
            self._require_institution(principal, p.institution, cat)
            check_transition(p.status, ProposalStatus.REJECTED)
            tx.update_proposal(
                proposal_id,
                status=ProposalStatus.REJECTED.value,
                decided_by=self._actor(principal),
                decided_at=now,
                decision_note=note.strip(),
            )
        return self.proposal(principal, proposal_id)

    def reinstate(self, principal: Principal, proposal_id: int, reason: str) -> ProposalRecord:
        """Lift a suspension: the qualifications it suspended become active again."""
        self._decide(principal, proposal_id, reason, "reason", "恢复理由")
        if not reason.strip():
            raise ValidationFailed(
                "请填写恢复理由", problems=[Problem("reason", "恢复理由不能为空")]
            )
        cat = self._catalog.get()
        now = self._clock.now()
        actor = self._actor(principal)
        with self._store.transaction() as tx:
            p = tx.proposal(proposal_id, for_update=True)
            if p is None:
                raise NotFound(f"未找到暂停建议 {proposal_id}")
            self._require_institution(principal, p.institution, cat)
            check_transition(p.status, ProposalStatus.REINSTATED)
            for sq in tx.qualifications_by_ids(p.affected):
                if sq.qualification.status is QualificationStatus.SUSPENDED:
                    self._set_status(
                        tx,
                        sq,
                        QualificationStatus.ACTIVE,
                        actor,
                        f"恢复互认资质: {reason.strip()}（暂停建议 {p.id}）",
                        now,
                    )
            tx.update_proposal(
                proposal_id,
                status=ProposalStatus.REINSTATED.value,
                reinstated_by=actor,
                reinstated_at=now,
                reinstate_reason=reason.strip(),
            )
            tx.add_outbox(
                now,
                "qc.qualification_reinstated",
                {
                    "proposal_id": proposal_id,
                    "institution": p.institution,
                    "target": p.target_code,
                    "message": f"贵机构{_target_words(p)}的互认资质已恢复: {reason.strip()}",
                },
            )
        self._catalog.invalidate()
        return self.proposal(principal, proposal_id)

    # -------------------------------------------------------- expiry
    def expiring(
        self, principal: Principal | None = None, today: date | None = None
    ) -> list[ExpiryWarning]:
        """Active qualifications inside their province's warning window or past
        ``valid_to`` (not yet closed by ``close_expired``)."""
        cat = self._catalog.get()
        day = today or self._today()
        longest = max([self._default.warn_days, *(p.warn_days for p in self._policies.values())])
        with self._store.transaction() as tx:
            rows = tx.active_expiring(day + timedelta(days=longest))
        out: list[ExpiryWarning] = []
        for sq in rows:
            q = sq.qualification
            if principal is not None and not can_see_institution(
                principal, q.institution, cat.graph
            ):
                continue
            policy = self.policy_for(q.institution, cat)
            state = expiry_state(q.valid_to, day, policy)
            if state is ExpiryState.VALID or q.valid_to is None:
                continue
            out.append(ExpiryWarning(sq.id, q, state, (q.valid_to - day).days, policy))
        out.sort(key=lambda w: w.days_left)
        return out

    def close_expired(self, today: date | None = None) -> int:
        """Set active qualifications past ``valid_to`` to 过期 (their marks already stop at
        ``valid_to``; this makes the lists say so). Run daily."""
        day = today or self._today()
        now = self._clock.now()
        n = 0
        with self._store.transaction() as tx:
            for sq in tx.active_expiring(day):
                q = sq.qualification
                if q.valid_to is not None and q.valid_to < day:
                    policy = self.policy_for(q.institution)
                    n += self._set_status(
                        tx,
                        sq,
                        QualificationStatus.EXPIRED,
                        SYSTEM_ACTOR,
                        f"超过复评期限未复评（有效期至 {q.valid_to.isoformat()}；{policy.source}）",
                        now,
                        unless_changed=True,
                    )
        if n:
            self._catalog.invalidate()
        return n

    def overview(self, principal: Principal) -> QcOverview:
        props = self.proposals(principal, [ProposalStatus.PROPOSED, ProposalStatus.CONFIRMED])
        return QcOverview(
            expiring=self.expiring(principal),
            awaiting=[p for p in props if p.status is ProposalStatus.PROPOSED],
            suspended=[p for p in props if p.status is ProposalStatus.CONFIRMED],
        )

    # -------------------------------------------------------- spot checks
    def draw(
        self,
        principal: Principal,
        jurisdiction: str,
        period: str,
        count: int,
        per_check: int,
        inspectors: Sequence[Inspector],
        seed: int | None = None,
    ) -> SpotCheckRecord:
        """双随机一公开: draw institutions (those holding an active qualification in the
        jurisdiction) and inspectors; the seed is recorded so anyone can repeat the draw."""
        cat = self._catalog.get()
        if jurisdiction not in cat.graph.scopes:
            raise ValidationFailed(
                "辖区不存在", problems=[Problem("jurisdiction", f"辖区 {jurisdiction} 不存在")]
            )
        if not can_act_in_scope(principal, jurisdiction, cat.graph):
            raise Forbidden(f"无权在辖区 {jurisdiction} 组织抽查")
        if not period.strip():
            raise ValidationFailed("请填写抽查期次", problems=[Problem("period", "期次不能为空")])
        covered = cat.graph.coverage(jurisdiction)
        candidates = sorted(
            code
            for code, quals in cat.qualifications.items()
            if code in covered and any(q.status is QualificationStatus.ACTIVE for q in quals)
        )
        used_seed = seed if seed is not None else self._seed_source()
        drawn = draw_spot_checks(candidates, inspectors, count, per_check, used_seed)
        rec = SpotCheckRecord(
            jurisdiction=jurisdiction,
            period=period.strip(),
            seed=used_seed,
            institution_count=count,
            inspectors_per_check=per_check,
            candidates=tuple(candidates),
            inspectors=tuple(inspectors),
            drawn=tuple(_drawn_row(d) for d in drawn),
            created_by=self._actor(principal),
            created_at=self._clock.now(),
        )
        with self._store.transaction() as tx:
            did = tx.add_draw(rec)
        return _with_draw_id(rec, did)

    def draws(self, jurisdiction: str | None = None) -> list[SpotCheckRecord]:
        with self._store.transaction() as tx:
            return tx.list_draws(jurisdiction)

    def get_draw(self, draw_id: int) -> SpotCheckRecord:
        with self._store.transaction() as tx:
            d = tx.draw(draw_id)
        if d is None:
            raise NotFound(f"未找到抽查记录 {draw_id}")
        return d

    def record_spot_check_outcome(
        self,
        principal: Principal,
        draw_id: int,
        institution: str,
        passed: bool,
        notes: str = "",
        item: str = "",
        group: str = "",
    ) -> SpotCheckRecord:
        """Record how a drawn check went. With an item or group it is also recorded as a
        spot-check evaluation (and a failure has the evaluation's consequences)."""
        with self._store.transaction() as tx:
            d = tx.draw(draw_id, for_update=True)
            if d is None:
                raise NotFound(f"未找到抽查记录 {draw_id}")
            rows = [dict(r) for r in d.drawn]
            hit = [r for r in rows if r["institution"] == institution]
            if not hit:
                raise ValidationFailed(
                    "该机构不在本次抽查名单中",
                    problems=[Problem("institution", f"{institution} 未被抽中")],
                )
            hit[0]["outcome"] = "passed" if passed else "failed"
            hit[0]["notes"] = notes
            tx.update_draw(draw_id, rows)
        if item or group:
            self.record_evaluation(
                principal,
                EvaluationInput(
                    institution=institution,
                    kind=EvaluationKind.SPOT_CHECK,
                    organiser=Organiser.PROVINCIAL_CENTRE,
                    evaluated_on=self._today(),
                    passed=passed,
                    item=item,
                    group=group,
                    notes=notes,
                    round_id=f"{d.period}#{draw_id}",
                    spot_check_draw_id=draw_id,
                ),
            )
        return self.get_draw(draw_id)

    # -------------------------------------------------------- published lists
    def published_institutions(self, jurisdiction: str, half: str) -> list[PublishedEntry]:
        """每半年公布互认医疗机构清单 (甘卫医政函〔2025〕16号 四(一)): the qualifications of
        the jurisdiction's institutions in force on the first day of the half-year, with
        their status on that day (reconstructed from the status history)."""
        cat = self._catalog.get()
        if jurisdiction not in cat.graph.scopes:
            raise NotFound(f"未找到辖区 {jurisdiction}")
        on = half_year_start(half)
        covered = cat.graph.coverage(jurisdiction)
        with self._store.transaction() as tx:
            stored = [
                sq
                for inst in sorted(covered)
                for sq in tx.qualifications_of(inst)
                if sq.qualification.valid_from <= on
                and (sq.qualification.valid_to is None or on <= sq.qualification.valid_to)
            ]
            history = tx.status_history([sq.id for sq in stored])
        out: list[PublishedEntry] = []
        for sq in stored:
            status = _status_on(sq.qualification.status, history.get(sq.id, []), on)
            if status is not QualificationStatus.ACTIVE:
                continue
            q = sq.qualification
            inst = cat.institutions[q.institution]
            target_name = cat.items[q.item].name if q.item in cat.items else f"{q.group}类项目"
            scope = cat.graph.scopes.get(q.scope)
            out.append(
                PublishedEntry(
                    institution=q.institution,
                    institution_name=inst.name,
                    level=inst.level.value,
                    target=q.item or q.group,
                    target_name=target_name,
                    scope=q.scope,
                    scope_name=scope.name if scope else q.scope,
                    basis=q.basis.value,
                    valid_from=q.valid_from,
                    valid_to=q.valid_to,
                    status=status,
                )
            )
        return out


def _status_on(
    current: QualificationStatus, events: Sequence[tuple[datetime, str, str]], on: date
) -> QualificationStatus:
    """A qualification's status at the start of ``on`` from its events (at, old, new)."""
    before = [e for e in events if e[0].date() < on]
    if before:
        return QualificationStatus(before[-1][2])
    if events:
        first_old = events[0][1]
        return QualificationStatus(first_old) if first_old else QualificationStatus.ACTIVE
    return current


def _target_words(p: ProposalRecord) -> str:
    if p.target_kind is TargetKind.LABORATORY:
        return "临床实验室"
    return f"项目 {p.target_code} "


def _drawn_row(d: DrawnCheck) -> dict[str, Any]:
    return {
        "institution": d.institution,
        "inspectors": [{"name": i.name, "institution": i.institution} for i in d.inspectors],
        "outcome": "",
        "notes": "",
    }


def _with_id(rec: EvaluationRecord, eid: int) -> EvaluationRecord:
    return replace(rec, id=eid)


def _with_draw_id(rec: SpotCheckRecord, did: int) -> SpotCheckRecord:
    return replace(rec, id=did)


def iter_labels() -> Iterator[tuple[str, str]]:
    """Reason codes and their Chinese labels (for forms)."""
    for r, label in SUSPENSION_REASON_LABELS.items():
        yield r.value, label
