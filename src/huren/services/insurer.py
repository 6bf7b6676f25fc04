"""Insurer verification (医保核查, R6), ``container.insurer``.

For each claim line (patient identifier, item by unified code or local code + 对码,
institution, service date): was a recognizable prior result available when the test was
ordered — decided by the recognition area's rules (``huren.domain.recognition``), not
re-implemented here — was a reminder shown, was it accepted or declined and why; and the
flags of ``huren.domain.insurer``.

"When the test was ordered": the first reminder for that patient, item and institution on
the service day or the day before (the order screen asked the platform); without one, the
start of the service day (China Standard Time).

Every prior result consulted is a read: one ``verify`` audit row each (and one per line
without priors), written in the same transaction as the reads."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from huren.domain.accounts import Principal, Role
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import Forbidden, ProblemCollector, ValidationFailed
from huren.domain.identity import validate_identifier
from huren.domain.insurer import (
    COLUMNS,
    FLAG_LABELS,
    MAX_LINES,
    ClaimLine,
    DecisionSummary,
    LineFacts,
    LineVerdict,
    PriorSummary,
    judge,
)
from huren.domain.recognition import (
    UNKNOWN_STUDY,
    Assessment,
    PriorResult,
    exclusions_in_force,
    recognizable_priors,
)
from huren.domain.results import StoredResult, plausible_date
from huren.domain.sharing import AuditAction
from huren.domain.text import text_problem
from huren.services.catalog import CatalogCache
from huren.services.patients import IdentifierKey, PatientMatcher
from huren.services.ports import Clock, IdentifierVault
from huren.services.recognition import StudyStates
from huren.services.retrieval import AuditEvent, audit_event


@dataclass(frozen=True, slots=True)
class DecisionFact:
    id: int
    at: datetime
    institution: str
    department: str
    clinician: str
    item_code: str
    result_id: int | None
    result_version: int | None
    action: str  # accepted | declined
    reason_code: str
    reason_text: str
    reminder_id: int | None = None
    patient_explanation: str = ""


@dataclass(frozen=True, slots=True)
class ReminderFact:
    id: int
    at: datetime
    candidates: int
    recognizable: int
    clinician: str


class InsurerTx(Protocol):
    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]: ...

    def item_results_before(
        self, patient_id: int, item_code: str, before: datetime
    ) -> list[StoredResult]: ...

    def results_by_report(self, institution_code: str, report_no: str) -> list[StoredResult]: ...

    def decisions_for(
        self,
        patient_id: int,
        item_code: str,
        institution_code: str,
        since: datetime,
        until: datetime,
    ) -> list[DecisionFact]: ...

    def reminders_for(
        self,
        patient_id: int,
        item_code: str,
        institution_code: str,
        since: datetime,
        until: datetime,
    ) -> list[ReminderFact]: ...

    def open_correction_counts(self, result_ids: Sequence[int]) -> dict[int, int]: ...

    def write_audit(self, events: Sequence[AuditEvent]) -> None: ...


class InsurerStore(Protocol):
    def transaction(self) -> AbstractContextManager[InsurerTx]: ...


def _prior(a: Assessment) -> PriorSummary:
    r = a.result
    return PriorSummary(
        result_id=r.id,
        institution=r.institution,
        report_no=r.report_no,
        performed_at=r.performed_at,
        mark_symbol=r.mark_symbol,
        standing=str(a.standing),
        reasons=tuple(x.text for x in a.reasons),
    )


# Text a claim line carries into the page, the report files (Excel refuses control
# characters) and the audit trail; a service date the lookback arithmetic can take.
_LINE_TEXT_FIELDS = ("claim_no", "line_no", "institution", "item_code", "local_code", "report_no")
_MAX_LINE_TEXT = 200


def _line_recordable(line: ClaimLine, where: str, errors: ProblemCollector) -> bool:
    """Add a problem for each field of ``line`` that cannot be checked or reported; True
    when there is none."""
    before = len(errors.problems)
    for name in _LINE_TEXT_FIELDS:
        value: str = getattr(line, name)
        problem = text_problem(value, _MAX_LINE_TEXT) or (
            "不能包含控制字符" if any(ch < " " for ch in value) else None
        )
        if problem:
            errors.add(f"{where}.{name}", f"{COLUMNS[name][1]}{problem}")
    for b in line.bundled_items:
        problem = text_problem(b, _MAX_LINE_TEXT)
        if problem:
            errors.add(f"{where}.bundled_items", f"{COLUMNS['bundled_items'][1]}{problem}")
            break
    if not plausible_date(line.service_date):
        errors.add(
            f"{where}.service_date",
            f"服务日期 {line.service_date.isoformat()} 超出范围（应在 1900-01-01 至 2199-12-31 之间）",
        )
    return len(errors.problems) == before


class InsurerService:
    def __init__(
        self,
        store: InsurerStore,
        catalog: CatalogCache,
        vault: IdentifierVault,
        clock: Clock,
        studies: StudyStates | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._matcher = PatientMatcher(vault)
        self._clock = clock
        # The same imaging completeness the clinician was shown: a CT without its images
        # was not recognizable, so it is no ground for flagging a repeat.
        self._studies = studies

    def verify(self, principal: Principal, lines: Sequence[ClaimLine]) -> list[LineVerdict]:
        """Verify claim lines; the whole batch is refused when any line is invalid."""
        if principal.role is not Role.INSURER or not principal.jurisdiction:
            raise Forbidden("只有医保部门可以核查结算明细")
        if not lines:
            raise ValidationFailed("没有结算明细", problems=[])
        if len(lines) > MAX_LINES:
            raise ValidationFailed(f"一次最多核查 {MAX_LINES} 条明细")
        catalog = self._catalog.get()
        graph = catalog.graph
        errors = ProblemCollector()
        prepared: list[tuple[ClaimLine, str, IdentifierKey]] = []
        for i, line in enumerate(lines):
            where = f"lines[{i}]"
            if not _line_recordable(line, where, errors):
                continue
            item_code = line.item_code or (
                catalog.unified_code(line.institution, line.local_code) if line.local_code else None
            )
            if line.institution not in catalog.institutions:
                errors.add(f"{where}.institution", f"未知的机构编码 {line.institution}")
            elif not graph.contains(principal.jurisdiction, line.institution):
                errors.add(f"{where}.institution", f"机构 {line.institution} 不在本医保辖区内")
            if item_code is None or item_code not in catalog.items:
                field = "item_code" if line.item_code else "local_code"
                errors.add(
                    f"{where}.{field}",
                    f"项目编码 {line.item_code or line.local_code} 无法对应互认项目（对码缺失）",
                )
            for b in line.bundled_items:
                if b not in catalog.items:
                    errors.add(f"{where}.bundled_items", f"打包项目编码 {b} 不是互认项目编码")
            try:
                ident = validate_identifier(line.identifier, f"{where}.identifier")
                key = self._matcher.lookup_key(ident)
            except ValidationFailed as exc:
                errors.problems.extend(exc.problems)
                continue
            if item_code is not None:
                prepared.append((line, item_code, key))
        errors.raise_if_any("结算明细未通过校验，未作核查")

        now = self._clock.now()
        reason_labels = {
            r.code: f"{r.number}. {r.text}" for rs in catalog.negative_reasons.values() for r in rs
        }
        facts: list[LineFacts] = []
        with self._store.transaction() as tx:
            patients = tx.patients_by_identifier(list(dict.fromkeys(k for _, _, k in prepared)))
            audit: list[AuditEvent] = []
            billed_keys: list[list[tuple[str, ...]]] = []
            for line, item_code, key in prepared:
                item = catalog.items[item_code]
                pid = patients.get(key)
                day = datetime(
                    line.service_date.year,
                    line.service_date.month,
                    line.service_date.day,
                    tzinfo=CHINA_TZ,
                )
                order_time = day
                reminders = (
                    tx.reminders_for(
                        pid,
                        item_code,
                        line.institution,
                        day - timedelta(days=1),
                        day + timedelta(days=1),
                    )
                    if pid is not None
                    else []
                )
                if reminders:
                    order_time = reminders[0].at
                decisions = (
                    tx.decisions_for(
                        pid,
                        item_code,
                        line.institution,
                        order_time - timedelta(days=1),
                        day + timedelta(days=2),
                    )
                    if pid is not None
                    else []
                )
                billed = (
                    [r.id for r in tx.results_by_report(line.institution, line.report_no)]
                    if line.report_no
                    else []
                )
                recognizable: PriorSummary | None = None
                others: list[PriorSummary] = []
                if pid is not None:
                    priors = [
                        r
                        for r in tx.item_results_before(pid, item_code, order_time)
                        if r.id not in billed
                    ]
                    counts = tx.open_correction_counts([r.id for r in priors])
                    states = self._studies.study_states(priors) if self._studies else {}
                    province = catalog.province_of(line.institution)
                    rec = recognizable_priors(
                        item,
                        line.institution,
                        order_time,
                        [
                            PriorResult(
                                r,
                                study=states.get(r.id, UNKNOWN_STUDY),
                                open_corrections=counts.get(r.id, 0),
                            )
                            for r in priors
                        ],
                        graph,
                        exclusions_in_force(item, (province, "NATIONAL"), catalog.exclusions),
                    )
                    best = rec.best
                    recognizable = _prior(best) if best is not None else None
                    others = [_prior(a) for a in rec.all() if best is None or a is not best]
                    audit += [
                        audit_event(
                            principal,
                            now,
                            AuditAction.VERIFY,
                            "claim_verification",
                            patient_id=pid,
                            result_id=r.id,
                        )
                        for r in priors
                    ]
                    if not priors:
                        audit.append(
                            audit_event(
                                principal,
                                now,
                                AuditAction.VERIFY,
                                "claim_verification",
                                patient_id=pid,
                            )
                        )
                else:
                    audit.append(
                        audit_event(principal, now, AuditAction.VERIFY, "claim_verification")
                    )
                accepted_items = set()
                for b in line.bundled_items:
                    if pid is None:
                        continue
                    if any(
                        d.action == "accepted"
                        for d in tx.decisions_for(
                            pid,
                            b,
                            line.institution,
                            day - timedelta(days=1),
                            day + timedelta(days=2),
                        )
                    ):
                        accepted_items.add(b)
                facts.append(
                    LineFacts(
                        line=line,
                        item_code=item_code,
                        item_name=item.name,
                        patient_known=pid is not None,
                        order_time=order_time,
                        recognizable=recognizable,
                        other_priors=tuple(others),
                        reminder_at=reminders[0].at if reminders else None,
                        decisions=tuple(
                            DecisionSummary(
                                d.at,
                                d.action,
                                d.reason_code,
                                d.reason_text,
                                d.result_id,
                                d.clinician,
                            )
                            for d in decisions
                        ),
                        billed_result_ids=tuple(billed),
                        bundled_recognized=tuple(sorted(accepted_items)),
                    )
                )
                # What the line bills, for "the same result billed twice": the named
                # report, and the (patient, institution, item, day) of the item itself and
                # of every item bundled into it (沪卫医〔2024〕135号 五(三) 打包).
                who = key[2]
                keys: list[tuple[str, ...]] = [
                    (who, line.institution, code, line.service_date.isoformat())
                    for code in (item_code, *line.bundled_items)
                ]
                if line.report_no:
                    keys.append(("report", line.institution, line.report_no, item_code))
                billed_keys.append(keys)
            tx.write_audit(audit)
        # Lines sharing a billed key, through an index of the keys (a batch of thousands of
        # lines must not compare every pair).
        by_key: dict[tuple[str, ...], list[int]] = {}
        for i, keys in enumerate(billed_keys):
            for k in dict.fromkeys(keys):
                by_key.setdefault(k, []).append(i)
        out: list[LineVerdict] = []
        for i, f in enumerate(facts):
            same = sorted({j for k in billed_keys[i] for j in by_key[k] if j != i})
            twins = tuple(facts[j].line.ref for j in same)
            out.append(judge(_with_twins(f, twins), reason_labels))
        return out


def _with_twins(f: LineFacts, twins: tuple[str, ...]) -> LineFacts:
    return replace(f, twin_lines=twins)


def verdict_json(v: LineVerdict, institution_names: dict[str, str] | None = None) -> dict[str, Any]:
    f = v.facts
    names = institution_names or {}
    d = v.decision
    return {
        "claim_no": f.line.claim_no,
        "line_no": f.line.line_no,
        "patient": v.patient_masked,
        "institution": f.line.institution,
        "institution_name": names.get(f.line.institution, ""),
        "item_code": f.item_code,
        "item_name": f.item_name,
        "service_date": f.line.service_date.isoformat(),
        "order_time": f.order_time.isoformat(),
        "recognizable_prior": None
        if f.recognizable is None
        else {
            "result_id": f.recognizable.result_id,
            "institution": f.recognizable.institution,
            "institution_name": names.get(f.recognizable.institution, ""),
            "report_no": f.recognizable.report_no,
            "performed_at": f.recognizable.performed_at.isoformat(),
            "mark": f.recognizable.mark_symbol,
            "reasons": list(f.recognizable.reasons),
        },
        "other_priors": len(f.other_priors),
        "reminder_shown": f.reminder_at is not None,
        "reminder_at": f.reminder_at.isoformat() if f.reminder_at else None,
        "decision": None
        if d is None
        else {
            "action": d.action,
            "at": d.at.isoformat(),
            "reason_code": d.reason_code,
            "reason": v.reason_labels.get(d.reason_code, d.reason_code),
            "reason_text": d.reason_text,
        },
        "flags": [str(x) for x in v.flags],
        "flag_labels": [FLAG_LABELS[x] for x in v.flags],
        "summary": v.summary,
    }
