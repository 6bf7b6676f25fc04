"""Point-of-care recognition (R5): the reminder while the clinician orders, and the
clinician's decision afterwards. Every reminder shown and every decision is recorded
(冀卫医政函〔2025〕7号 二(三); 甘卫医政函〔2025〕16号: 统计互认项次).

``check`` answers, per ordered item (local or unified code, mapped through 对码), the
recognizable prior results best first, the near-misses with their reasons and the other
prior results as information; an unmapped or unknown code is reported, never dropped.
``decide`` records an accept (EMR text, money saved) or a decline (negative-list reason,
patient explanation), also for a report the patient brought from an institution that is
not connected (冀 二(三): 参考患者提供的…完整检验检查报告单和相应影像资料).

Channels (CDS Hooks, REST, the workbench page) are adapters over these two use cases."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from huren.domain.accounts import Principal
from huren.domain.china_time import in_china_time, local_time
from huren.domain.decisions import (
    ACTION_LABELS,
    Action,
    Explanation,
    ReportForRecord,
    choose_reason,
    emr_text,
    patient_explanation,
    saved_fen,
)
from huren.domain.errors import Conflict, Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier, validate_identifier
from huren.domain.masterdata import Category, Item, NegativeReason
from huren.domain.recognition import (
    CLINICIAN_MAX,
    CODE_MAX,
    DEPARTMENT_MAX,
    REQUEST_ID_MAX,
    ItemRecognition,
    PriorResult,
    RetestInterval,
    StudyState,
    exclusions_in_force,
    recognizable_priors,
)
from huren.domain.results import ResultStatus, StoredResult, plausible_result_time
from huren.domain.text import id_problems, text_problems
from huren.services.catalog import Catalog, CatalogCache
from huren.services.ports import Clock, IdentifierVault

# How many prior results per ordered item are read (newest first). Older ones exist and
# are reachable from the full history; the reminder shows the newest few.
PRIORS_PER_ITEM = 5

# Identifier precedence for finding the patient: strongest first (R4).
_PRECEDENCE = {
    IdentifierKind.NATIONAL_ID: 0,
    IdentifierKind.INSURANCE: 1,
    IdentifierKind.HEALTH_CARD: 2,
    IdentifierKind.MRN: 3,
}

CHANNELS = frozenset({"cds-hooks", "rest", "workbench"})
# How long a decision on an ordered item stands for the same patient, item and prior at
# the same institution: an order opened again that day shows it instead of asking again,
# and a second decision on the same prior is refused (it would count twice in 互认项次).
DECISION_WINDOW = timedelta(hours=24)
T = TypeVar("T")


# ---------------------------------------------------------------- records written
@dataclass(frozen=True, slots=True)
class ReminderRecord:
    at: datetime
    channel: str
    institution_code: str
    department: str
    clinician: str
    patient_id: int | None
    item_code: str | None
    local_code: str
    candidates: int
    recognizable: int
    request_id: str


@dataclass(frozen=True, slots=True)
class CheckWrites:
    """What one check records: a reminder row per ordered item, the records of the CDS
    Hooks cards made from it (their ``reminder_id``: the position of their item's row in
    ``reminders``, until written) and its audit row."""

    reminders: tuple[ReminderRecord, ...]
    cards: tuple[CardRecord, ...]
    audit: AuditRecord


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    reminder_id: int | None
    at: datetime
    institution_code: str
    department: str
    clinician: str
    patient_id: int | None
    item_code: str
    result_id: int | None
    result_version: int | None
    action: str
    reason_code: str
    reason_text: str
    saved_fen: int
    emr_text: str
    patient_explanation: str
    external_report: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PriorDecision:
    """A decision already recorded on an ordered item (shown when the order is opened
    again, so that it is not decided twice)."""

    id: int
    at: datetime
    clinician: str
    item_code: str
    result_id: int | None
    action: str  # accepted | declined
    reason_code: str
    saved_fen: int
    emr_text: str
    patient_explanation: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    account_id: int | None
    actor: str
    role: str
    institution_code: str | None
    patient_id: int | None
    result_id: int | None
    action: str
    purpose: str
    outcome: str = "ok"


@dataclass(frozen=True, slots=True)
class CardRecord:
    """A CDS Hooks card handed out, for its feedback."""

    uuid: str
    reminder_id: int | None
    at: datetime
    service_id: str
    hook_instance: str
    institution_code: str
    department: str
    clinician: str
    patient_id: int | None
    item_code: str | None
    draft_order: str
    result_id: int | None
    result_version: int | None
    suggestion_uuid: str | None


@dataclass(frozen=True, slots=True)
class StoredCard:
    uuid: str
    reminder_id: int | None
    at: datetime
    service_id: str
    hook_instance: str
    institution_code: str
    department: str
    clinician: str
    patient_id: int | None
    item_code: str | None
    draft_order: str
    result_id: int | None
    result_version: int | None
    suggestion_uuid: str | None
    decision_id: int | None


# ---------------------------------------------------------------- ports
class RecognitionTx(Protocol):
    def family_by_keys(self, keys: Sequence[tuple[str, str, str]]) -> list[int] | None:
        """``patient_family`` of the patient (survivor of merges) holding the first of
        ``keys`` (strongest first) that is known; None when none is."""
        ...

    def patient_family(self, patient_id: int) -> list[int] | None: ...

    def family_and_priors(
        self,
        patient: int | Sequence[tuple[str, str, str]],
        item_codes: Sequence[str],
        limit: int,
    ) -> tuple[list[int] | None, dict[str, list[PriorRow]]]:
        """``patient_family`` (``patient`` a platform id) or ``family_by_keys`` (identifier
        keys), and ``priors`` of that family (``{}`` when it is None): what a check reads,
        in as few round trips as the backend allows."""
        ...

    def priors(
        self, patient_ids: Sequence[int], item_codes: Sequence[str], limit: int
    ) -> dict[str, list[PriorRow]]:
        """Per item code, the newest ``limit`` results of these patients with their
        observations, newest first."""
        ...

    def result(self, result_id: int) -> StoredResult | None: ...

    def record_check(self, writes: CheckWrites) -> list[int]:
        """Write one check's rows; the ids of its reminder rows, in the order given. On a
        ``RecognitionStore.reading`` connection the rows are committed when this returns
        (possibly in one transaction with the rows of concurrent checks: a group
        commit); in a ``transaction`` they commit with it."""
        ...

    def reminder_institution(self, reminder_id: int) -> str | None: ...

    def decisions_since(
        self,
        institution: str,
        patient_ids: Sequence[int],
        item_codes: Sequence[str],
        since: datetime,
    ) -> list[PriorDecision]:
        """The accept / decline decisions this institution recorded since ``since`` for these
        patients and items, oldest first."""
        ...

    def record_decision(self, row: DecisionRecord) -> int: ...

    def record_audit(self, row: AuditRecord) -> None: ...

    def record_cards(self, cards: Sequence[CardRecord]) -> None: ...

    def card(self, uuid: str) -> StoredCard | None: ...

    def link_card_decision(self, uuid: str, decision_id: int) -> None: ...


class RecognitionStore(Protocol):
    def transaction(self) -> AbstractContextManager[RecognitionTx]: ...

    def reading(self) -> AbstractContextManager[RecognitionTx]:
        """A connection for reads only (no writes are made through it)."""
        ...


class StudyStates(Protocol):
    """Completeness of the imaging studies behind imaging results (the imaging area
    implements it from the DICOM it received; see ``domain.recognition.StudyCompleteness``).
    Results it says nothing about are ``UNKNOWN``."""

    def study_states(self, results: Sequence[StoredResult]) -> Mapping[int, StudyState]: ...

    def states_without_study(self, results: Sequence[StoredResult]) -> Mapping[int, StudyState]:
        """The states of imaging results for which no study has arrived (the caller
        knows: ``PriorRow.study_arrived``), without looking studies up."""
        ...


class NoImagingData:
    """The ``StudyStates`` of a node without imaging data: every study ``UNKNOWN``."""

    def study_states(self, results: Sequence[StoredResult]) -> Mapping[int, StudyState]:
        return {}

    def states_without_study(self, results: Sequence[StoredResult]) -> Mapping[int, StudyState]:
        return {}


class PriorRow(NamedTuple):
    """A prior result as the check reads it."""

    result: StoredResult
    open_corrections: int
    # False when no imaging study that could be this result's (same institution, and its
    # Study Instance UID or else its accession number) has arrived.
    study_arrived: bool


# ---------------------------------------------------------------- inputs and outputs
@dataclass(frozen=True, slots=True)
class PatientRef:
    """The patient as the caller knows them: the platform's id, or identifiers."""

    patient_id: int | None = None
    identifiers: tuple[PatientIdentifier, ...] = ()


@dataclass(frozen=True, slots=True)
class CheckRequest:
    principal: Principal
    patient: PatientRef
    codes: tuple[str, ...]
    channel: str
    department: str = ""
    clinician: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ItemAnswer:
    requested: str  # the code as ordered (local or unified)
    item: Item | None
    recognition: ItemRecognition | None
    reminder_id: int
    problem: str = ""  # why nothing can be said about this code (unmapped, unknown)
    listed: bool = True  # on the item list in force where the order is placed

    @property
    def item_code(self) -> str | None:
        return self.item.code if self.item is not None else None


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    request_id: str
    institution: str
    patient_id: int | None
    patient_known: bool
    items: tuple[ItemAnswer, ...]
    reasons: tuple[NegativeReason, ...]  # the decline reasons valid here
    notice: str = ""


@dataclass(frozen=True, slots=True)
class ExternalReport:
    """A report the patient brought from an institution not connected to the platform."""

    institution_name: str
    report_no: str
    performed_at: datetime
    result: str
    has_images: bool = False


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    principal: Principal
    item: str  # local or unified code
    action: Action
    patient: PatientRef = field(default_factory=PatientRef)
    result_id: int | None = None
    result_version: int | None = None
    reason_code: str = ""
    free_text: str = ""
    inpatient: bool = False
    reminder_id: int | None = None
    external: ExternalReport | None = None
    department: str = ""
    clinician: str = ""
    # A CDS Hooks card overridden without an override reason (allowed by CDS Hooks 2.0
    # §Overridden guidance): recorded as a decline with no reason, so that monitoring
    # sees declines without a recorded negative-list reason.
    without_reason: bool = False


NO_REASON_TEXT = "未说明理由（提醒卡片被关闭）"


@dataclass(frozen=True, slots=True)
class DecisionOutcome:
    id: int
    action: Action
    item: Item
    result_id: int | None
    result_version: int | None
    saved_fen: int
    emr_text: str
    patient_explanation: str
    reason: NegativeReason | None


@dataclass(frozen=True, slots=True)
class Feedback:
    """One CDS Hooks feedback entry, already parsed."""

    card: str
    outcome: str  # accepted | overridden
    accepted_suggestions: tuple[str, ...] = ()
    reason_system: str = ""
    reason_code: str = ""
    comment: str = ""


REASON_SYSTEM_PREFIX = "urn:huren:negative-reason:"


def reason_system(jurisdiction: str) -> str:
    return f"{REASON_SYSTEM_PREFIX}{jurisdiction}"


# ---------------------------------------------------------------- the service
class RecognitionService:
    def __init__(
        self,
        store: RecognitionStore,
        catalog: CatalogCache,
        clock: Clock,
        vault: IdentifierVault,
        *,
        retest_intervals: Sequence[RetestInterval] = (),
        explanations: Mapping[str, Explanation] | None = None,
        studies: StudyStates | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._vault = vault
        self._intervals = tuple(retest_intervals)
        self._explanations = dict(explanations or {})
        self.studies: StudyStates = studies or NoImagingData()
        self._scope_names: tuple[Catalog, dict[str, str]] | None = None

    # -- helpers
    @staticmethod
    def _institution(principal: Principal) -> str:
        if not principal.institution:
            raise Forbidden(
                "只有医疗机构的账号可以使用互认提醒",
                problems=[Problem("institution", "当前账号未绑定医疗机构")],
            )
        return principal.institution

    def _keys(self, ref: PatientRef, institution: str, where: str) -> list[tuple[str, str, str]]:
        idents: list[PatientIdentifier] = []
        for i, ident in enumerate(ref.identifiers):
            if ident.kind is IdentifierKind.MRN and not ident.assigner:
                ident = PatientIdentifier(ident.kind, ident.value, institution)
            idents.append(validate_identifier(ident, f"{where}.identifiers[{i}]"))
        idents.sort(key=lambda i: _PRECEDENCE[i.kind])
        return [
            (str(i.kind), i.assigner, self._vault.lookup_hash(str(i.kind), i.assigner, i.value))
            for i in idents
        ]

    def _patient(
        self, ref: PatientRef, institution: str, where: str
    ) -> int | list[tuple[str, str, str]]:
        """The platform id the reference names, or else its identifiers' lookup keys."""
        if ref.patient_id is not None:
            return ref.patient_id
        if not ref.identifiers:
            raise ValidationFailed(
                "缺少患者标识", problems=[Problem(where, "请提供患者 id 或至少一个患者标识")]
            )
        return self._keys(ref, institution, where)

    def _family(
        self, tx: RecognitionTx, ref: PatientRef, institution: str, where: str
    ) -> list[int] | None:
        """The patient's ids (survivor first) or None when the identifiers match nobody.
        An explicit platform id that does not exist is an error."""
        patient = self._patient(ref, institution, where)
        if isinstance(patient, int):
            family = tx.patient_family(patient)
            if family is None:
                raise _unknown_patient(patient, where)
            return family
        return tx.family_by_keys(patient)

    def _family_and_priors(
        self, tx: RecognitionTx, ref: PatientRef, institution: str, item_codes: Sequence[str]
    ) -> tuple[list[int] | None, dict[str, list[PriorRow]]]:
        """``_family`` of the ordering patient and the newest priors of each item."""
        patient = self._patient(ref, institution, "patient")
        family, priors = tx.family_and_priors(patient, item_codes, PRIORS_PER_ITEM)
        if family is None and isinstance(patient, int):
            raise _unknown_patient(patient, "patient")
        return family, priors

    def _resolve(self, catalog: Catalog, institution: str, code: str) -> Item | None:
        unified = catalog.unified_code(institution, code.strip())
        return catalog.items.get(unified) if unified else None

    # -- check
    def check(self, req: CheckRequest) -> CheckOutcome:
        outcome, _ = self._check(req, None)
        return outcome

    def check_with_cards(
        self, req: CheckRequest, cards: Callable[[CheckOutcome], tuple[T, Sequence[CardRecord]]]
    ) -> tuple[CheckOutcome, T]:
        """``check``, and the CDS Hooks cards made from its outcome by ``cards``: the
        cards' records are written in the same transaction as the reminders."""
        outcome, made = self._check(req, cards)
        assert made is not None
        return outcome, made

    def _derived(self, catalog: Catalog) -> dict[str, str]:
        """Scope names of a catalog snapshot, computed once per snapshot."""
        cached = self._scope_names
        if cached is not None and cached[0] is catalog:
            return cached[1]
        names = {code: s.name for code, s in catalog.graph.scopes.items()}
        self._scope_names = (catalog, names)
        return names

    def _check(
        self,
        req: CheckRequest,
        cards: Callable[[CheckOutcome], tuple[T, Sequence[CardRecord]]] | None,
    ) -> tuple[CheckOutcome, T | None]:
        institution = self._institution(req.principal)
        if req.channel not in CHANNELS:
            raise ValidationFailed("未知的渠道", problems=[Problem("channel", req.channel)])
        codes = [c.strip() for c in req.codes]
        problems = [Problem(f"items[{i}]", "项目代码为空") for i, c in enumerate(codes) if not c]
        problems += text_problems(
            (f"items[{i}]", "项目代码", c, CODE_MAX) for i, c in enumerate(codes)
        )
        if not codes:
            problems.append(Problem("items", "至少需要一个医嘱项目"))
        if problems:
            raise ValidationFailed("医嘱项目无效", problems=problems)
        _raise_unrecordable(
            [
                *text_problems(
                    (
                        ("department", "科室", req.department, DEPARTMENT_MAX),
                        ("clinician", "接诊医师", req.clinician, CLINICIAN_MAX),
                        ("request_id", "请求标识", req.request_id, REQUEST_ID_MAX),
                    )
                ),
                *_patient_problems(req.patient, "patient"),
            ]
        )
        now = self._clock.now()
        catalog = self._catalog.get()
        province = catalog.province_of(institution)
        listed_codes = catalog.items_in_force(province, now)
        reasons = tuple(catalog.reasons_for(institution))
        scope_names = self._derived(catalog)
        request_id = req.request_id or str(uuid.uuid4())
        clinician = req.clinician or req.principal.username
        department = req.department or req.principal.department or ""

        resolved = [(code, self._resolve(catalog, institution, code)) for code in codes]
        item_codes = list(dict.fromkeys(it.code for _, it in resolved if it is not None))

        def assess(studies: Mapping[int, StudyState]) -> _Assessed[T]:
            recognitions: dict[str, ItemRecognition] = {}
            for code in item_codes:
                item = catalog.items[code]
                recognitions[code] = recognizable_priors(
                    item,
                    institution,
                    now,
                    [
                        PriorResult(
                            p.result, studies.get(p.result.id, _NO_STUDY), p.open_corrections
                        )
                        for p in priors.get(code, ())
                    ],
                    catalog.graph,
                    exclusions_in_force(item, (province, "NATIONAL"), catalog.exclusions),
                    self._intervals,
                    scope_names,
                )
            patient_id = family[0] if family else None
            rows = []
            answers: list[ItemAnswer] = []
            for n, (code, found) in enumerate(resolved):
                rec = recognitions[found.code] if found is not None else None
                rows.append(
                    ReminderRecord(
                        at=now,
                        channel=req.channel,
                        institution_code=institution,
                        department=department,
                        clinician=clinician,
                        patient_id=patient_id,
                        item_code=found.code if found is not None else None,
                        local_code=code,
                        candidates=len(rec.all()) if rec else 0,
                        recognizable=len(rec.candidates) if rec else 0,
                        request_id=request_id,
                    )
                )
                # reminder_id is the position until the rows are written (below).
                answers.append(_answer(code, found, rec, n, listed_codes))
            outcome = CheckOutcome(
                request_id=request_id,
                institution=institution,
                patient_id=patient_id,
                patient_known=family is not None,
                items=tuple(answers),
                reasons=reasons,
                notice=(
                    ""
                    if family
                    else "平台上没有找到该患者的共享检查检验结果（患者标识未匹配到任何患者）"
                ),
            )
            made, records = cards(outcome) if cards is not None else (None, ())
            audit = AuditRecord(
                at=now,
                account_id=req.principal.account_id,
                actor=req.principal.username,
                role=str(req.principal.role),
                institution_code=institution,
                patient_id=patient_id,
                result_id=None,
                action="recognition_check",
                purpose="互认提醒（开具医嘱时调阅既往检查检验结果）",
            )
            return _Assessed(outcome, made, CheckWrites(tuple(rows), tuple(records), audit))

        # One pooled connection for the reads (the family, then every prior of every
        # ordered item with its observations, open corrections and whether a study may
        # have arrived: one statement; on PostgreSQL one with the family) and the writes,
        # committed before the answer is given (the cards handed out must be found by
        # their feedback; concurrent checks share a commit). When an imaging study may
        # have arrived, the imaging service links it on its own connections: this one is
        # given back first, so that a check never holds two pooled connections at once
        # (concurrent checks would otherwise exhaust the pool waiting for each other).
        with self._store.reading() as tx:
            family, priors = self._family_and_priors(tx, req.patient, institution, item_codes)
            arrived: list[StoredResult] = []
            absent: list[StoredResult] = []
            for rows_of_item in priors.values():
                for p in rows_of_item:
                    if p.result.category is Category.IMAGING:
                        (arrived if p.study_arrived else absent).append(p.result)
            studies: dict[int, StudyState] = {}
            if absent:
                studies.update(self.studies.states_without_study(absent))
            if not arrived:
                done = assess(studies)
                reminder_ids = tx.record_check(done.writes)
        if arrived:
            studies.update(self.studies.study_states(arrived))
            done = assess(studies)
            with self._store.reading() as tx:
                reminder_ids = tx.record_check(done.writes)
        final = replace(
            done.outcome,
            items=tuple(
                replace(a, reminder_id=rid)
                for a, rid in zip(done.outcome.items, reminder_ids, strict=True)
            ),
        )
        return final, done.made

    # -- decisions
    def decisions_today(
        self, principal: Principal, patient_id: int, item_codes: Sequence[str]
    ) -> list[PriorDecision]:
        """The decisions this institution recorded within ``DECISION_WINDOW`` on these
        items of this patient, oldest first."""
        institution = self._institution(principal)
        if not item_codes:
            return []
        with self._store.reading() as tx:
            return tx.decisions_since(
                institution, [patient_id], item_codes, self._clock.now() - DECISION_WINDOW
            )

    def decide(self, req: DecisionRequest, *, card: str | None = None) -> DecisionOutcome:
        institution = self._institution(req.principal)
        _raise_unrecordable(
            [
                *text_problems(
                    (
                        ("item", "项目代码", req.item, CODE_MAX),
                        ("reason_code", "理由代码", req.reason_code, None),
                        ("free_text", "补充说明", req.free_text, None),
                        ("department", "科室", req.department, DEPARTMENT_MAX),
                        ("clinician", "接诊医师", req.clinician, CLINICIAN_MAX),
                    )
                ),
                *id_problems(
                    (
                        ("result_id", "结果 id ", req.result_id),
                        ("result_version", "结果版本", req.result_version),
                        ("reminder_id", "提醒记录 id ", req.reminder_id),
                    )
                ),
                *_patient_problems(req.patient, "patient"),
            ]
        )
        catalog = self._catalog.get()
        now = self._clock.now()
        item = self._resolve(catalog, institution, req.item)
        if item is None:
            raise ValidationFailed(
                f"项目代码 {req.item} 未对码",
                problems=[Problem("item", f"项目代码 {req.item} 不是统一项目代码，本机构也未对码")],
            )
        if req.action is Action.ACCEPTED and (req.result_id is None) == (req.external is None):
            raise ValidationFailed(
                "接受互认须指明一份结果",
                problems=[
                    Problem(
                        "result_id",
                        "请提供平台上的结果 result_id，或患者提供的外院报告 external_report（二者选一）",
                    )
                ],
            )
        if req.external is not None:
            req = replace(req, external=_checked_external(req.external))
        reasons = catalog.reasons_for(institution)
        reason: NegativeReason | None = None
        if req.action is Action.DECLINED and not req.without_reason:
            reason = choose_reason(reasons, req.reason_code, item, req.free_text)
        clinician = req.clinician or req.principal.username
        department = req.department or req.principal.department or ""

        with self._store.transaction() as tx:
            stored: StoredResult | None = None
            patient_id: int | None = None
            if req.result_id is not None:
                stored = tx.result(req.result_id)
                if stored is None:
                    raise NotFound(
                        f"结果 {req.result_id} 不存在",
                        problems=[Problem("result_id", "平台上没有该结果")],
                    )
                if stored.item_code != item.code:
                    raise ValidationFailed(
                        "结果与医嘱项目不一致",
                        problems=[
                            Problem(
                                "result_id",
                                f"结果 {stored.id} 是 {stored.item_code or stored.local_code}，"
                                f"不是 {item.code}（{item.name}）",
                            )
                        ],
                    )
                if req.result_version is not None and req.result_version != stored.version:
                    raise Conflict(
                        "该结果已有新版本，请刷新后重新判断",
                        problems=[
                            Problem(
                                "result_version",
                                f"当前为第 {stored.version} 版，提交的是第 {req.result_version} 版",
                            )
                        ],
                    )
                if req.action is Action.ACCEPTED and stored.status is ResultStatus.ENTERED_IN_ERROR:
                    raise Conflict(
                        "结果已被标记为录入错误，不能接受互认",
                        problems=[Problem("result_id", "结果已被标记为录入错误")],
                    )
                patient_id = stored.patient_id
            if req.patient.patient_id is not None or req.patient.identifiers:
                family = self._family(tx, req.patient, institution, "patient")
                if family is None:
                    if stored is not None:
                        raise ValidationFailed(
                            "结果不属于该患者",
                            problems=[Problem("patient", "患者标识未匹配到该结果的患者")],
                        )
                else:
                    if stored is not None and stored.patient_id not in family:
                        raise ValidationFailed(
                            "结果不属于该患者",
                            problems=[Problem("result_id", "该结果属于另一名患者")],
                        )
                    patient_id = family[0]
            if stored is not None and patient_id is not None and card is None:
                earlier = next(
                    (
                        d
                        for d in tx.decisions_since(
                            institution, [patient_id], [item.code], now - DECISION_WINDOW
                        )
                        if d.result_id == stored.id
                    ),
                    None,
                )
                if earlier is not None:
                    label = ACTION_LABELS[Action(earlier.action)]
                    raise Conflict(
                        "该结果已记录过决定，不重复记录",
                        problems=[
                            Problem(
                                "result_id",
                                f"{local_time(earlier.at)} 已由 {earlier.clinician} 记录为“{label}”"
                                "（同一医嘱的同一既往结果只记录一次）",
                            )
                        ],
                    )
            if req.reminder_id is not None:
                owner = tx.reminder_institution(req.reminder_id)
                if owner != institution:
                    raise ValidationFailed(
                        "提醒记录无效",
                        problems=[Problem("reminder_id", "没有本机构的该条提醒记录")],
                    )

            text = ""
            explanation = ""
            if req.action is Action.ACCEPTED:
                if stored is not None:
                    inst = catalog.institutions.get(stored.institution)
                    report = ReportForRecord.of(
                        stored, item, inst.name if inst else stored.institution
                    )
                else:
                    assert req.external is not None
                    report = ReportForRecord(
                        item_name=item.name,
                        result=req.external.result,
                        institution_name=req.external.institution_name,
                        performed_at=req.external.performed_at,
                        report_no=req.external.report_no,
                        brought_by_patient=True,
                    )
                text = emr_text(report, inpatient=req.inpatient)
            elif reason is not None:
                prior_inst = ""
                if stored is not None:
                    inst = catalog.institutions.get(stored.institution)
                    prior_inst = inst.name if inst else ""
                elif req.external is not None:
                    prior_inst = req.external.institution_name
                explanation = patient_explanation(
                    reason,
                    item,
                    self._explanations,
                    free_text=req.free_text,
                    prior_institution=prior_inst,
                )
            external = (
                {
                    "institution_name": req.external.institution_name,
                    "report_no": req.external.report_no,
                    "performed_at": req.external.performed_at.isoformat(),
                    "result": req.external.result,
                    "has_images": req.external.has_images,
                }
                if req.external is not None
                else None
            )
            record = DecisionRecord(
                reminder_id=req.reminder_id,
                at=now,
                institution_code=institution,
                department=department,
                clinician=clinician,
                patient_id=patient_id,
                item_code=item.code,
                result_id=stored.id if stored is not None else None,
                result_version=stored.version if stored is not None else None,
                action=str(req.action),
                reason_code=reason.code if reason is not None else "",
                reason_text=(
                    (reason.text + (f"：{req.free_text.strip()}" if req.free_text.strip() else ""))
                    if reason is not None
                    else NO_REASON_TEXT
                    if req.without_reason
                    else ""
                ),
                saved_fen=saved_fen(item, req.action),
                emr_text=text,
                patient_explanation=explanation,
                external_report=external,
            )
            decision_id = tx.record_decision(record)
            if card is not None:
                tx.link_card_decision(card, decision_id)
            tx.record_audit(
                AuditRecord(
                    at=now,
                    account_id=req.principal.account_id,
                    actor=req.principal.username,
                    role=str(req.principal.role),
                    institution_code=institution,
                    patient_id=patient_id,
                    result_id=record.result_id,
                    action=f"recognition_{req.action}",
                    purpose="互认判断",
                )
            )
        return DecisionOutcome(
            id=decision_id,
            action=req.action,
            item=item,
            result_id=record.result_id,
            result_version=record.result_version,
            saved_fen=record.saved_fen,
            emr_text=text,
            patient_explanation=explanation,
            reason=reason,
        )

    def reasons_for(self, institution: str) -> list[NegativeReason]:
        return self._catalog.get().reasons_for(institution)

    def catalog(self) -> Catalog:
        return self._catalog.get()

    # -- reading one result for the full report page
    def view_result(self, principal: Principal, result_id: int) -> StoredResult:
        """A result for the clinician's full-report view, audited (design: every read of a
        patient's results writes an audit record in the same transaction)."""
        institution = self._institution(principal)
        _raise_unrecordable(id_problems((("result_id", "结果 id ", result_id),)))
        with self._store.transaction() as tx:
            stored = tx.result(result_id)
            if stored is None:
                raise NotFound(f"结果 {result_id} 不存在")
            tx.record_audit(
                AuditRecord(
                    at=self._clock.now(),
                    account_id=principal.account_id,
                    actor=principal.username,
                    role=str(principal.role),
                    institution_code=institution,
                    patient_id=stored.patient_id,
                    result_id=stored.id,
                    action="view_result",
                    purpose="互认提醒：调阅完整报告",
                )
            )
        return stored

    # -- CDS Hooks cards and feedback
    def remember_cards(self, cards: Sequence[CardRecord]) -> None:
        with self._store.transaction() as tx:
            tx.record_cards(cards)

    def feedback(self, principal: Principal, entries: Sequence[Feedback]) -> list[int]:
        """Record CDS Hooks feedback as decisions. A card already decided is not recorded
        twice (the client may send feedback for a card more than once)."""
        institution = self._institution(principal)
        catalog = self._catalog.get()
        decided: list[int] = []
        for n, entry in enumerate(entries):
            where = f"feedback[{n}]"
            _raise_unrecordable(text_problems(((f"{where}.card", "卡片 uuid", entry.card, None),)))
            with self._store.transaction() as tx:
                card = tx.card(entry.card)
            if card is None or card.institution_code != institution:
                raise NotFound(
                    "未知的卡片", problems=[Problem(f"{where}.card", f"没有卡片 {entry.card}")]
                )
            if card.decision_id is not None:
                decided.append(card.decision_id)
                continue
            if card.item_code is None:
                raise ValidationFailed(
                    "该卡片不涉及互认结果",
                    problems=[Problem(f"{where}.card", "该卡片只是提示信息，无需反馈")],
                )
            if entry.outcome == "accepted":
                if card.suggestion_uuid is None or card.suggestion_uuid not in (
                    entry.accepted_suggestions
                ):
                    raise ValidationFailed(
                        "接受的建议与卡片不符",
                        problems=[
                            Problem(f"{where}.acceptedSuggestions", "未包含该卡片的建议 uuid")
                        ],
                    )
                req = DecisionRequest(
                    principal=principal,
                    item=card.item_code,
                    action=Action.ACCEPTED,
                    patient=PatientRef(card.patient_id),
                    result_id=card.result_id,
                    result_version=card.result_version,
                    reminder_id=card.reminder_id,
                    department=card.department,
                    clinician=card.clinician,
                )
            elif entry.outcome == "overridden":
                jurisdiction = next((r.jurisdiction for r in catalog.reasons_for(institution)), "")
                if entry.reason_system and entry.reason_system != reason_system(jurisdiction):
                    raise ValidationFailed(
                        "不予互认理由的代码系统不符",
                        problems=[
                            Problem(
                                f"{where}.overrideReason.reason.system",
                                f"应为 {reason_system(jurisdiction)}",
                            )
                        ],
                    )
                req = DecisionRequest(
                    principal=principal,
                    item=card.item_code,
                    action=Action.DECLINED,
                    patient=PatientRef(card.patient_id),
                    result_id=card.result_id,
                    reason_code=entry.reason_code,
                    free_text=entry.comment,
                    reminder_id=card.reminder_id,
                    department=card.department,
                    clinician=card.clinician,
                    without_reason=not entry.reason_code,
                )
            else:
                raise ValidationFailed(
                    "未知的反馈结果",
                    problems=[Problem(f"{where}.outcome", "应为 accepted 或 overridden")],
                )
            try:
                outcome = self.decide(req, card=card.uuid)
            except ValidationFailed as exc:
                raise ValidationFailed(
                    exc.message,
                    problems=[
                        Problem(
                            f"{where}.overrideReason.userComment"
                            if p.field == "free_text"
                            else f"{where}.overrideReason.reason.code"
                            if p.field == "reason_code"
                            else f"{where}.{p.field}",
                            p.message,
                        )
                        for p in exc.problems
                    ],
                ) from exc
            decided.append(outcome.id)
        return decided


def _patient_problems(ref: PatientRef, where: str) -> list[Problem]:
    problems = id_problems(((f"{where}.id", "平台患者 id ", ref.patient_id),))
    for i, ident in enumerate(ref.identifiers):
        problems += text_problems(
            (
                (f"{where}.identifiers[{i}].value", "患者标识", ident.value, None),
                (f"{where}.identifiers[{i}].assigner", "发放机构", ident.assigner, None),
            )
        )
    return problems


def _raise_unrecordable(problems: list[Problem]) -> None:
    if problems:
        fields = "、".join(dict.fromkeys(p.field for p in problems))
        raise ValidationFailed(f"请求中的值无法处理：{fields}", problems=problems)


def _checked_external(ext: ExternalReport) -> ExternalReport:
    """``ext`` with its time in China time when it came without a zone (the patient's
    paper report and the form it is typed into say 09:00, meaning 09:00 in China; read as
    UTC it became 17:00 in the EMR text), or a refusal naming the fields."""
    problems = [
        Problem(f"external_report.{name}", f"{label}不能为空")
        for name, label, value in (
            ("institution_name", "检查检验单位", ext.institution_name),
            ("report_no", "报告单编号", ext.report_no),
            ("result", "检查检验结果", ext.result),
        )
        if not value.strip()
    ]
    problems += text_problems(
        (f"external_report.{name}", label, value, None)
        for name, label, value in (
            ("institution_name", "检查检验单位", ext.institution_name),
            ("report_no", "报告单编号", ext.report_no),
            ("result", "检查检验结果", ext.result),
        )
    )
    # 0001-01-01 or 9999-12-31 (a placeholder or a typing error) cannot even be written
    # in China time for the EMR text (year 0 / 10000).
    at = in_china_time(ext.performed_at)
    if not plausible_result_time(at):
        problems.append(
            Problem(
                "external_report.performed_at",
                f"检查检验时间超出可接受的范围（1900–2199 年）: {ext.performed_at.isoformat()}",
            )
        )
    if problems:
        incomplete = all(p.message.endswith("不能为空") for p in problems)
        raise ValidationFailed(
            "患者提供的外院报告信息" + ("不完整" if incomplete else "无效"), problems=problems
        )
    return replace(ext, performed_at=at)


_NO_STUDY = StudyState()


def _unknown_patient(patient_id: int, where: str) -> NotFound:
    """An explicit platform id that does not exist is an error."""
    return NotFound(
        f"患者 {patient_id} 不存在", problems=[Problem(f"{where}.id", "平台上没有该患者")]
    )


@dataclass(frozen=True, slots=True)
class _Assessed(Generic[T]):
    """What a check writes and answers, reminder ids still to be assigned."""

    outcome: CheckOutcome  # reminder_id of each item = its position
    made: T | None
    writes: CheckWrites


def _answer(
    code: str,
    found: Item | None,
    rec: ItemRecognition | None,
    reminder_id: int,
    listed_codes: frozenset[str],
) -> ItemAnswer:
    if found is None or rec is None:
        return ItemAnswer(
            requested=code,
            item=None,
            recognition=None,
            reminder_id=reminder_id,
            problem=(
                f"项目代码 {code} 未对码：本机构尚未将该代码对应到统一互认项目代码，"
                "无法查询互认结果，请联系信息科完成对码"
            ),
            listed=False,
        )
    return ItemAnswer(
        requested=code,
        item=found,
        recognition=rec,
        reminder_id=reminder_id,
        listed=found.code in listed_codes,
    )


def iter_candidates(outcome: CheckOutcome) -> Iterator[tuple[ItemAnswer, ItemRecognition]]:
    for answer in outcome.items:
        if answer.recognition is not None:
            yield answer, answer.recognition
