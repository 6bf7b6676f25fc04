"""Error correction and feedback (纠错反馈, R7), ``container.corrections``.

国卫医政发〔2024〕37号 三(三), 沪卫医〔2024〕135号 五(四): 建立互通共享数据问题纠错及反馈机制.

- A clinician, patient or institution files a request on a shared result it can read.
- The request goes to the producing institution's queue (its institution_admin accounts
  are notified) with a due date ``deadline_working_days`` working days away
  (``data/purposes.json`` → ``correction``; default 5, Monday–Friday, no holiday calendar).
- Review: *corrected* — a new version of the result is stored THROUGH THE INTAKE SERVICE
  (``container.intake.receive`` with channel ``manual`` and status ``corrected``), so
  versioning, marks and the outbox are intake's; nothing is deleted and the old version
  stays readable — or *rejected* with a reason for the requester.
- Everyone who read the old version (``audit_event``) or accepted it (``decision``) is
  notified in their inbox (plus one ``outbox`` row per notification).
- ``open_corrections(result_ids)`` tells the recognition area which results are under an
  open request; ``correction_backlog(jurisdiction)`` gives the regulator's counts.

Consistency: intake stores the new version in its own transaction (it owns versioning);
the request is closed and the notifications written in a second one. Should the second
fail, the result keeps its new version (visible in its history, reason "corrected") and
the request stays open for the reviewer to close — nothing is lost or deleted either way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from huren.domain.accounts import Principal, Role
from huren.domain.corrections import (
    CORRECTION_STATUS_LABELS,
    FILING_ROLES,
    CorrectionState,
    CorrectionStatus,
    corrected_comment,
    corrected_value,
    due_at,
    require_open,
    require_reason,
    require_reviewer,
    validate_request_text,
)
from huren.domain.errors import Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.identity import PatientIdentifier
from huren.domain.results import (
    MAX_OBSERVATION_COMMENT,
    MAX_REPORT_COMMENT,
    ObservationValue,
    PatientDemographics,
    ResultStatus,
    ResultSubmission,
    StoredResult,
)
from huren.domain.sharing import NOT_FOUND_MESSAGE, may_read_result
from huren.domain.text import id_problem, text_problems
from huren.services.catalog import CatalogCache
from huren.services.intake import Channel, InboundMessage, ReceiveOutcome
from huren.services.ports import Clock, IdentifierVault


@dataclass(frozen=True, slots=True)
class CorrectionRecord:
    id: int
    filed_at: datetime
    requester_account_id: int
    requester_role: str
    requester_institution: str | None
    result_id: int
    result_version: int
    producing_institution: str
    text: str
    status: CorrectionStatus
    due_at: datetime
    resolved_at: datetime | None = None
    resolver_account_id: int | None = None
    resolution: str = ""
    new_version: int | None = None
    report_no: str = ""
    item_name: str = ""

    def state(self) -> CorrectionState:
        return CorrectionState(
            self.id,
            self.status,
            self.producing_institution,
            self.result_id,
            self.result_version,
            self.due_at,
        )

    def overdue(self, now: datetime) -> bool:
        return self.state().overdue(now)

    @property
    def status_label(self) -> str:
        return CORRECTION_STATUS_LABELS[self.status]


@dataclass(frozen=True, slots=True)
class Notice:
    account_id: int
    kind: str  # correction_filed | correction_accepted | correction_rejected | result_corrected
    title: str
    body: str
    result_id: int | None = None
    correction_id: int | None = None


@dataclass(frozen=True, slots=True)
class ObservationEdit:
    """A value's changes (None: as it was). The value: a number with the numerals typed
    ("8.10", shown so), or text (``domain.corrections.corrected_value``); the comment:
    the sender's 备注 ("标本溶血"), "" to clear it."""

    code: str  # the observation's local code
    value_num: float | None = None
    value_text: str | None = None
    flag: str | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class CorrectionEdit:
    """What the producing institution changes; unset fields stay as they were.
    ``comment``: the report's comment (``ResultSubmission.comment``), "" to clear it."""

    findings: str | None = None
    conclusion: str | None = None
    observations: tuple[ObservationEdit, ...] = ()
    comment: str | None = None


def require_recordable(
    message: str, *fields: tuple[str, str, str | None] | tuple[str, str, str | None, int]
) -> None:
    """Each ``(field, label, text[, maximum length])`` can be stored and shown (no NUL,
    no lone surrogate, not too long), or ValidationFailed naming every field that cannot
    — before anything is written."""
    problems = text_problems((f[0], f[1], f[2], f[3] if len(f) > 3 else None) for f in fields)
    if problems:
        raise ValidationFailed(
            problems[0].message if len(problems) == 1 else message, problems=problems
        )


def require_platform_id(value: int, message: str, field_name: str) -> None:
    """An id beyond 64 bits names nothing the platform stores: not found, like any other."""
    if id_problem(value):
        raise NotFound(message, problems=[Problem(field_name, message)])


class CorrectionTx(Protocol):
    def result(self, result_id: int, *, observations: bool = True) -> StoredResult | None: ...

    def patient(self, patient_id: int) -> dict[str, Any] | None: ...

    def patient_identifiers_enc(self, patient_id: int) -> list[tuple[str, str, str]]: ...

    def insert_correction(self, values: dict[str, Any]) -> int: ...

    def correction(
        self, correction_id: int, *, for_update: bool = False
    ) -> CorrectionRecord | None: ...

    def corrections(
        self,
        *,
        producing: Sequence[str] | None = None,
        requester: int | None = None,
        status: CorrectionStatus | None = None,
        overdue_at: datetime | None = None,
        limit: int = 500,
    ) -> list[CorrectionRecord]: ...

    def correction_counts(self, producing: Sequence[str], now: datetime) -> dict[str, int]: ...

    def resolve_correction(
        self,
        correction_id: int,
        status: CorrectionStatus,
        at: datetime,
        resolver: int,
        resolution: str,
        new_version: int | None,
    ) -> bool: ...

    def set_version_reason(self, result_id: int, version: int, reason: str) -> None: ...

    def institution_admins(self, institution_code: str) -> list[int]: ...

    def readers_of(self, result_id: int) -> list[int]: ...

    def accepters_of(self, result_id: int) -> list[tuple[str, str]]: ...

    def accounts_named(self, institution_code: str, usernames: Sequence[str]) -> list[int]: ...

    def notify(self, notices: Sequence[Notice], at: datetime) -> None: ...

    def inbox(
        self, account_id: int, *, unread_only: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def unread_count(self, account_id: int) -> int: ...

    def mark_read(self, account_id: int, notification_id: int, at: datetime) -> bool: ...


class CorrectionStore(Protocol):
    def transaction(self) -> AbstractContextManager[CorrectionTx]: ...

    def open_corrections(self, result_ids: Iterable[int]) -> dict[int, int]: ...


class ResultReviser(Protocol):
    """The intake service (``container.intake``): a corrected result is a new version."""

    def receive(self, message: InboundMessage) -> ReceiveOutcome: ...


@dataclass(frozen=True, slots=True)
class Backlog:
    open: int
    overdue: int
    accepted: int
    rejected: int


class CorrectionService:
    def __init__(
        self,
        store: CorrectionStore,
        reviser: Any,  # callable returning a ResultReviser (intake is built lazily)
        catalog: CatalogCache,
        vault: IdentifierVault,
        clock: Clock,
        deadline_working_days: int = 5,
    ) -> None:
        self._store = store
        self._reviser = reviser
        self._catalog = catalog
        self._vault = vault
        self._clock = clock
        self.deadline_working_days = deadline_working_days

    # -- for the recognition area and the dashboard
    def open_corrections(self, result_ids: Iterable[int]) -> set[int]:
        """Ids among ``result_ids`` with at least one open correction request."""
        return set(self._store.open_corrections(result_ids))

    def open_correction_counts(self, result_ids: Iterable[int]) -> dict[int, int]:
        return self._store.open_corrections(result_ids)

    def correction_backlog(self, jurisdiction: str) -> Backlog:
        """Counts over institutions in ``jurisdiction``; overdue = open past the due date."""
        producing = sorted(self._catalog.get().graph.coverage(jurisdiction))
        with self._store.transaction() as tx:
            c = tx.correction_counts(producing, self._clock.now())
        return Backlog(c["open"], c["overdue"], c["accepted"], c["rejected"])

    # -- filing
    def file(self, principal: Principal, result_id: int, text: str) -> CorrectionRecord:
        if principal.role not in FILING_ROLES:
            raise Forbidden("当前角色不能提交纠错申请")
        require_platform_id(result_id, NOT_FOUND_MESSAGE, "result_id")
        require_recordable("纠错说明无法保存", ("text", "纠错说明", text))
        body = validate_request_text(text)
        now = self._clock.now()
        graph = self._catalog.get().graph
        with self._store.transaction() as tx:
            stored = tx.result(result_id, observations=False)
            if stored is None or not may_read_result(
                principal, stored.institution, stored.patient_id, graph
            ):
                raise NotFound(
                    NOT_FOUND_MESSAGE, problems=[Problem("result_id", NOT_FOUND_MESSAGE)]
                )
            due = due_at(now, self.deadline_working_days)
            cid = tx.insert_correction(
                {
                    "filed_at": now,
                    "requester_account_id": principal.account_id,
                    "requester_role": str(principal.role),
                    "requester_institution": principal.institution,
                    "result_id": result_id,
                    "result_version": stored.version,
                    "producing_institution": stored.institution,
                    "text": body,
                    "status": str(CorrectionStatus.OPEN),
                    "due_at": due,
                }
            )
            name = self._item_name(stored)
            tx.notify(
                [
                    Notice(
                        admin,
                        "correction_filed",
                        f"新的纠错申请：{name}（报告单 {stored.report_no}）",
                        f"{body}\n处理时限：{due:%Y-%m-%d}",
                        result_id,
                        cid,
                    )
                    for admin in tx.institution_admins(stored.institution)
                ],
                now,
            )
            record = tx.correction(cid)
        assert record is not None
        return record

    # -- queues
    def queue(
        self, principal: Principal, status: CorrectionStatus | None = CorrectionStatus.OPEN
    ) -> list[CorrectionRecord]:
        """The producing institution's queue (institution_admin)."""
        if principal.role is not Role.INSTITUTION_ADMIN or not principal.institution:
            raise Forbidden("只有医疗机构管理员可以查看本机构的纠错队列")
        with self._store.transaction() as tx:
            return tx.corrections(producing=[principal.institution], status=status)

    def filed_by(self, principal: Principal) -> list[CorrectionRecord]:
        with self._store.transaction() as tx:
            return tx.corrections(requester=principal.account_id)

    def overdue(
        self, principal: Principal, jurisdiction: str | None = None
    ) -> list[CorrectionRecord]:
        """Overdue requests in the regulator's jurisdiction (R7: 逾期情况对监管可见)."""
        scope = jurisdiction or principal.jurisdiction
        if principal.role not in (Role.REGULATOR, Role.OPERATOR) or not scope:
            raise Forbidden("只有卫生健康行政部门可以查看逾期纠错申请")
        graph = self._catalog.get().graph
        if principal.role is Role.REGULATOR and principal.jurisdiction:
            from huren.domain.accounts import scope_within

            if not scope_within(graph, principal.jurisdiction, scope):
                raise Forbidden(f"无权查看辖区 {scope} 的纠错申请")
        producing = sorted(graph.coverage(scope))
        with self._store.transaction() as tx:
            return tx.corrections(producing=producing, overdue_at=self._clock.now())

    def get(self, principal: Principal, correction_id: int) -> CorrectionRecord:
        require_platform_id(correction_id, "未找到该纠错申请", "correction_id")
        with self._store.transaction() as tx:
            rec = tx.correction(correction_id)
        if rec is None or not (
            rec.requester_account_id == principal.account_id
            or (
                principal.role is Role.INSTITUTION_ADMIN
                and principal.institution == rec.producing_institution
            )
        ):
            raise NotFound("未找到该纠错申请")
        return rec

    # -- review
    def reject(self, principal: Principal, correction_id: int, reason: str) -> CorrectionRecord:
        require_platform_id(correction_id, "未找到该纠错申请", "correction_id")
        require_recordable("处理理由无法保存", ("reason", "处理理由", reason))
        why = require_reason(reason)
        now = self._clock.now()
        with self._store.transaction() as tx:
            rec = self._reviewable(tx, principal, correction_id)
            if not tx.resolve_correction(
                correction_id, CorrectionStatus.REJECTED, now, principal.account_id, why, None
            ):
                require_open(replace(rec.state(), status=CorrectionStatus.ACCEPTED))
            tx.notify(
                [
                    Notice(
                        rec.requester_account_id,
                        "correction_rejected",
                        f"纠错申请未予更正：{rec.item_name}（报告单 {rec.report_no}）",
                        f"处理意见：{why}",
                        rec.result_id,
                        rec.id,
                    )
                ],
                now,
            )
            out = tx.correction(correction_id)
        assert out is not None
        return out

    def accept(
        self, principal: Principal, correction_id: int, edit: CorrectionEdit, reason: str
    ) -> CorrectionRecord:
        """Correct the result: a new version through intake, then close and notify."""
        require_platform_id(correction_id, "未找到该纠错申请", "correction_id")
        edit = replace(
            edit,
            comment=corrected_comment(edit.comment),
            observations=tuple(
                replace(o, comment=corrected_comment(o.comment)) for o in edit.observations
            ),
        )
        # Comments are held to the lengths intake keeps (``MAX_*_COMMENT``), named here by
        # the fields the reviewer filled rather than by intake's.
        require_recordable(
            "更正内容无法保存",
            ("reason", "更正理由", reason),
            ("findings", "检查所见", edit.findings),
            ("conclusion", "诊断结论", edit.conclusion),
            ("comment", "报告备注", edit.comment, MAX_REPORT_COMMENT),
            *(
                field
                for o in edit.observations
                for field in (
                    (f"obs:{o.code}", f"检验项目 {o.code[:32]!r} 的代码", o.code),
                    (f"obs:{o.code}", f"检验项目 {o.code[:32]!r} 的结果", o.value_text),
                    (f"flag:{o.code}", f"检验项目 {o.code[:32]!r} 的异常标识", o.flag),
                    (
                        f"comment:{o.code}",
                        f"检验项目 {o.code[:32]!r} 的备注",
                        o.comment,
                        MAX_OBSERVATION_COMMENT,
                    ),
                )
            ),
        )
        why = require_reason(reason)
        with self._store.transaction() as tx:
            rec = self._reviewable(tx, principal, correction_id)
            stored = tx.result(rec.result_id)
            assert stored is not None
            p = tx.patient(stored.patient_id) or {}
            idents = [
                PatientIdentifier(kind, self._vault.decrypt(enc), assigner)  # type: ignore[arg-type]
                for kind, assigner, enc in tx.patient_identifiers_enc(stored.patient_id)
            ]
        submission = corrected_submission(
            stored,
            edit,
            PatientDemographics(
                identifiers=tuple(idents),
                name=self._vault.decrypt(p["name_enc"]) if p.get("name_enc") else "",
                sex=str(p.get("sex", "")),
                birth_date=p.get("birth_date"),
            ),
        )
        outcome = self._reviser().receive(
            InboundMessage(
                channel=Channel.MANUAL,
                institution=stored.institution,
                control_id=f"correction-{correction_id}",
                raw=f"纠错申请 #{correction_id}: {why}",
                submissions=(submission,),
            )
        )
        new_version = outcome.results[0].version
        now = self._clock.now()
        with self._store.transaction() as tx:
            tx.set_version_reason(rec.result_id, new_version, f"纠错申请 #{correction_id}：{why}")
            if not tx.resolve_correction(
                correction_id,
                CorrectionStatus.ACCEPTED,
                now,
                principal.account_id,
                why,
                new_version,
            ):
                require_open(replace(rec.state(), status=CorrectionStatus.ACCEPTED))
            tx.notify(self._correction_notices(tx, rec, principal, why, new_version), now)
            out = tx.correction(correction_id)
        assert out is not None
        return out

    def _correction_notices(
        self,
        tx: CorrectionTx,
        rec: CorrectionRecord,
        reviewer: Principal,
        why: str,
        new_version: int,
    ) -> list[Notice]:
        title = f"结果已更正：{rec.item_name}（报告单 {rec.report_no}，第 {new_version} 版）"
        body = (
            f"您曾调阅或互认的该结果已由出具机构更正（第 {rec.result_version} 版 → 第 {new_version} 版）。"
            f"更正理由：{why}。请核对原判断是否受影响。"
        )
        recipients: dict[int, Notice] = {
            rec.requester_account_id: Notice(
                rec.requester_account_id,
                "correction_accepted",
                f"纠错申请已更正：{rec.item_name}（报告单 {rec.report_no}）",
                f"处理意见：{why}；新版本：第 {new_version} 版",
                rec.result_id,
                rec.id,
            )
        }
        watchers = set(tx.readers_of(rec.result_id))
        by_inst: dict[str, list[str]] = {}
        for inst, clinician in tx.accepters_of(rec.result_id):
            by_inst.setdefault(inst, []).append(clinician)
        for inst, names in by_inst.items():
            found = tx.accounts_named(inst, names)
            # A decision by a clinician without a platform account (HIS user) reaches the
            # institution's administrators instead.
            watchers |= (
                set(found)
                if len(found) >= len(set(names))
                else set(found) | set(tx.institution_admins(inst))
            )
        for account_id in sorted(watchers):
            if account_id in recipients or account_id == reviewer.account_id:
                continue
            recipients[account_id] = Notice(
                account_id, "result_corrected", title, body, rec.result_id, rec.id
            )
        return list(recipients.values())

    def _reviewable(
        self, tx: CorrectionTx, principal: Principal, correction_id: int
    ) -> CorrectionRecord:
        rec = tx.correction(correction_id, for_update=True)
        if rec is None:
            raise NotFound("未找到该纠错申请")
        require_reviewer(principal, rec.state())
        require_open(rec.state())
        return rec

    def _item_name(self, stored: StoredResult) -> str:
        items = self._catalog.get().items
        item = items.get(stored.item_code or "")
        return item.name if item else stored.local_name

    # -- inbox
    def inbox(self, principal: Principal, unread_only: bool = False) -> list[dict[str, Any]]:
        with self._store.transaction() as tx:
            return tx.inbox(principal.account_id, unread_only=unread_only)

    def unread(self, principal: Principal) -> int:
        with self._store.transaction() as tx:
            return tx.unread_count(principal.account_id)

    def mark_read(self, principal: Principal, notification_id: int) -> None:
        if id_problem(notification_id):
            return  # like any other id that is not one of this account's notifications
        with self._store.transaction() as tx:
            tx.mark_read(principal.account_id, notification_id, self._clock.now())


def corrected_submission(
    stored: StoredResult, edit: CorrectionEdit, patient: PatientDemographics
) -> ResultSubmission:
    """The stored result with the edits applied, as a ``corrected`` submission (the
    edit's comments as ``accept`` wrote them down, ``corrected_comment``)."""
    by_code = {o.code: o for o in edit.observations}
    unknown = [c for c in by_code if c not in {o.code for o in stored.observations}]
    if unknown:
        raise ValidationFailed(
            "要更正的检验项目不在该报告中",
            problems=[Problem(f"observations.{c}", "报告中没有该检验项目") for c in unknown],
        )
    observations: list[ObservationValue] = []
    for o in stored.observations:
        e = by_code.get(o.code)
        if e is None:
            observations.append(o)
            continue
        observations.append(
            replace(
                corrected_value(o, e.value_num, e.value_text, f"obs:{o.code}"),
                flag=e.flag if e.flag is not None else o.flag,
                comment=e.comment if e.comment is not None else o.comment,
            )
        )
    findings = edit.findings if edit.findings is not None else stored.findings
    conclusion = edit.conclusion if edit.conclusion is not None else stored.conclusion
    report_comment = edit.comment if edit.comment is not None else stored.comment
    if (
        findings == stored.findings
        and conclusion == stored.conclusion
        and tuple(observations) == stored.observations
        and report_comment == stored.comment
    ):
        raise ValidationFailed(
            "更正内容与原结果相同", problems=[Problem("edit", "请至少修改一项内容")]
        )
    return ResultSubmission(
        institution=stored.institution,
        report_no=stored.report_no,
        local_code=stored.local_code,
        local_name=stored.local_name,
        patient=patient,
        status=ResultStatus.CORRECTED,
        performed_at=stored.performed_at,
        issued_at=stored.issued_at,
        category=stored.category,
        department=stored.department,
        performer=stored.performer,
        signer=stored.signer,
        observations=tuple(observations),
        findings=findings,
        conclusion=conclusion,
        accession_number=stored.accession_number,
        study_uid=stored.study_uid,
        comment=report_comment,
    )
