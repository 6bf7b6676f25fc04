"""Cross-institution retrieval (调阅, R6) with an audit row for every read.

A clinician (or institution administrator, regulator, QC centre) looks a patient up by
居民身份证, 医保号 or 电子健康卡 — by keyed hash, never by name — states a purpose of use,
and sees the shared results in reach; opens full reports and earlier versions.

Every read writes ``audit_event`` rows in the SAME transaction as the read (design.md:
每次读取患者结果都在同一事务中写审计): a lookup writes one ``search`` row, a list one ``list``
row per result shown, a report one ``view`` row. A refused read is refused AND logged
(``outcome="denied"``), committed before the refusal is raised.

No enumeration: an unknown identifier and a known patient with nothing in reach give the
same answer, and a result id that does not exist and one out of reach the same refusal.
Lookups are rate limited per account (``huren.services.ratelimit``; counted in the
database, so the limit holds across server processes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from huren.domain.accounts import Principal, Role
from huren.domain.errors import Forbidden, NotFound, Problem, ValidationFailed
from huren.domain.identity import (
    IdentifierKind,
    PatientIdentifier,
    validate_identifier,
)
from huren.domain.results import ObservationValue, ResultStatus, StoredResult
from huren.domain.sharing import (
    NOT_FOUND_MESSAGE,
    RETRIEVAL_ROLES,
    AuditAction,
    AuditOutcome,
    PurposeList,
    RateLimit,
    may_read_result,
)
from huren.services.catalog import CatalogCache
from huren.services.patients import IdentifierKey, PatientMatcher
from huren.services.ports import Clock, IdentifierVault
from huren.services.ratelimit import Limiter, MemoryRateCounters, RateCounters

# Identifiers a reader may look a patient up by (never by name alone; an MRN belongs to one
# hospital and is not a cross-institution key).
LOOKUP_KINDS = frozenset(
    {IdentifierKind.NATIONAL_ID, IdentifierKind.INSURANCE, IdentifierKind.HEALTH_CARD}
)

# Statuses never listed: not yet reported, or withdrawn before release.
HIDDEN_STATUSES = frozenset({ResultStatus.REGISTERED, ResultStatus.CANCELLED})

DEFAULT_LOOKUP_LIMIT = RateLimit(limit=30, window=timedelta(minutes=1))


# ---------------------------------------------------------------- views
@dataclass(frozen=True, slots=True)
class ResultFilter:
    item_codes: frozenset[str] = frozenset()  # empty: every item
    institutions: frozenset[str] = frozenset()  # empty: every institution in reach
    date_from: date | None = None  # performed on or after
    date_to: date | None = None  # performed on or before


@dataclass(frozen=True, slots=True)
class PatientView:
    """What a reader is told about the patient: masked unless the role needs more."""

    patient_id: int
    name: str  # masked in lists; in full on a clinician's report view
    sex: str
    birth_year: int | None
    identifiers: tuple[tuple[str, str], ...]  # (kind, masked value)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    status: str
    recorded_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class AuditEvent:
    at: datetime
    account_id: int | None
    actor: str
    role: str
    institution: str | None
    patient_id: int | None
    result_id: int | None
    action: str
    purpose: str
    outcome: str


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    """The answer to a lookup. ``patient`` is None when nothing in reach was found —
    whether or not the patient exists."""

    patient: PatientView | None
    results: tuple[StoredResult, ...]
    purpose: str


@dataclass(frozen=True, slots=True)
class Report:
    result: StoredResult  # with observations
    patient: PatientView
    versions: tuple[VersionInfo, ...]
    shown_version: int  # == result.version unless an earlier version was opened
    open_corrections: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """An audit row joined with what a reader of the audit needs."""

    id: int
    at: datetime
    actor: str
    actor_name: str
    role: str
    institution: str | None
    patient_id: int | None
    result_id: int | None
    item_name: str
    action: str
    purpose: str
    outcome: str


@dataclass(frozen=True, slots=True)
class AuditQuery:
    patient_id: int | None = None
    institutions: frozenset[str] | None = None  # reader's or producer's institution in this set
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 200


# ---------------------------------------------------------------- ports
class SharingReadTx(Protocol):
    """Reads and audit writes of one transaction."""

    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]: ...

    def patient(self, patient_id: int) -> dict[str, Any] | None:
        """name_enc, name_masked, sex, birth_date, identifiers [(kind, masked)]."""
        ...

    def results_of_patient(
        self, patient_id: int, flt: ResultFilter, institutions: frozenset[str] | None
    ) -> list[StoredResult]:
        """Newest first, without observations; ``institutions`` None = any."""
        ...

    def result(self, result_id: int, *, observations: bool = True) -> StoredResult | None: ...

    def versions(self, result_id: int) -> list[VersionInfo]: ...

    def version_snapshot(self, result_id: int, version: int) -> dict[str, Any] | None: ...

    def open_correction_counts(self, result_ids: Iterable[int]) -> dict[int, int]: ...

    def write_audit(self, events: Sequence[AuditEvent]) -> None: ...

    def audit_rows(self, query: AuditQuery) -> list[AuditRow]: ...


class SharingStore(Protocol):
    def transaction(self) -> AbstractContextManager[SharingReadTx]: ...


# ---------------------------------------------------------------- the service
def audit_event(
    principal: Principal,
    at: datetime,
    action: AuditAction,
    purpose: str,
    *,
    patient_id: int | None = None,
    result_id: int | None = None,
    outcome: AuditOutcome = AuditOutcome.OK,
) -> AuditEvent:
    return AuditEvent(
        at=at,
        account_id=principal.account_id,
        actor=principal.username[:64],
        role=str(principal.role),
        institution=principal.institution,
        patient_id=patient_id,
        result_id=result_id,
        action=str(action),
        purpose=purpose,
        outcome=str(outcome),
    )


def observations_from_snapshot(snapshot: dict[str, Any]) -> tuple[ObservationValue, ...]:
    from huren.domain.results import ValueType

    out = []
    for o in snapshot.get("observations", []) or []:
        out.append(
            ObservationValue(
                code=str(o.get("code", "")),
                name=str(o.get("name", "")),
                value_type=ValueType(o.get("value_type", "ST")),
                value_num=o.get("value_num"),
                value_text=str(o.get("value_text", "")),
                unit=str(o.get("unit", "")),
                ref_low=o.get("ref_low"),
                ref_high=o.get("ref_high"),
                ref_text=str(o.get("ref_text", "")),
                flag=str(o.get("flag", "")),
                loinc=str(o.get("loinc", "")),
                comment=str(o.get("comment", "")),  # none in snapshots before 0004
            )
        )
    return tuple(out)


class RetrievalService:
    """``container.retrieval``."""

    def __init__(
        self,
        store: SharingStore,
        catalog: CatalogCache,
        vault: IdentifierVault,
        clock: Clock,
        purposes: PurposeList,
        lookup_limit: RateLimit = DEFAULT_LOOKUP_LIMIT,
        counters: RateCounters | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._vault = vault
        self._matcher = PatientMatcher(vault)
        self._clock = clock
        self.purposes = purposes
        self._limiter = Limiter(lookup_limit, counters or MemoryRateCounters())

    # -- helpers
    def _reach(self, principal: Principal) -> frozenset[str] | None:
        """Institutions whose results ``principal`` may read (None: decided per result)."""
        graph = self._catalog.get().graph
        return frozenset(
            code
            for code in self._catalog.get().institutions
            if may_read_result(principal, code, principal.patient_id or -1, graph)
        )

    def _deny(self, principal: Principal, action: AuditAction, purpose: str, **kw: Any) -> None:
        with self._store.transaction() as tx:
            tx.write_audit(
                [
                    audit_event(
                        principal,
                        self._clock.now(),
                        action,
                        purpose,
                        outcome=AuditOutcome.DENIED,
                        **kw,
                    )
                ]
            )

    def _require_retrieval_role(
        self, principal: Principal, action: AuditAction, purpose: str, **kw: Any
    ) -> None:
        if principal.role not in RETRIEVAL_ROLES:
            self._deny(principal, action, purpose, **kw)
            raise Forbidden("当前角色无权调阅患者的检查检验结果")

    def patient_view(self, tx: SharingReadTx, patient_id: int, *, full_name: bool) -> PatientView:
        p = tx.patient(patient_id) or {}
        name = str(p.get("name_masked", ""))
        if full_name and p.get("name_enc"):
            name = self._vault.decrypt(str(p["name_enc"]))
        birth = p.get("birth_date")
        return PatientView(
            patient_id=patient_id,
            name=name,
            sex=str(p.get("sex", "")),
            birth_year=birth.year if isinstance(birth, date) else None,
            identifiers=tuple(p.get("identifiers", ())),
        )

    def lookup_key(self, identifier: PatientIdentifier) -> IdentifierKey:
        if identifier.kind not in LOOKUP_KINDS:
            raise ValidationFailed(
                "只能按居民身份证、医保号或电子健康卡查询",
                problems=[
                    Problem(
                        "identifier_kind", "不支持的标识类型（不可按姓名或院内病历号跨机构查询）"
                    )
                ],
            )
        ident = validate_identifier(identifier, "identifier")
        return self._matcher.lookup_key(ident)

    # -- lookup
    def search(
        self,
        principal: Principal,
        identifier: PatientIdentifier,
        purpose: str | None,
        flt: ResultFilter = ResultFilter(),
    ) -> SearchOutcome:
        """Look a patient up and list the shared results in the reader's reach."""
        now = self._clock.now()
        self._require_retrieval_role(principal, AuditAction.SEARCH, purpose or "")
        p = self.purposes.require(purpose, principal.role)
        self._limiter.hit(f"lookup:{principal.account_id}", now)
        key = self.lookup_key(identifier)
        reach = self._reach(principal)
        with self._store.transaction() as tx:
            found = tx.patients_by_identifier([key])
            patient_id = found.get(key)
            results: list[StoredResult] = []
            if patient_id is not None and reach:
                allowed = reach if not flt.institutions else reach & flt.institutions
                if allowed:
                    results = [
                        r
                        for r in tx.results_of_patient(patient_id, flt, allowed)
                        if r.status not in HIDDEN_STATUSES
                    ]
            events = [
                audit_event(principal, now, AuditAction.SEARCH, p.code, patient_id=patient_id)
            ]
            events += [
                audit_event(
                    principal,
                    now,
                    AuditAction.LIST,
                    p.code,
                    patient_id=r.patient_id,
                    result_id=r.id,
                )
                for r in results
            ]
            tx.write_audit(events)
            view = (
                self.patient_view(tx, patient_id, full_name=False)
                if results and patient_id is not None
                else None
            )
        return SearchOutcome(view, tuple(results), p.code)

    # -- one report
    def open_report(
        self,
        principal: Principal,
        result_id: int,
        purpose: str | None,
        version: int | None = None,
        *,
        document: bool = False,
    ) -> Report:
        """The full report (findings and conclusion apart, observations with units,
        ranges and flags, status, mark, versions); ``version`` opens an earlier one;
        ``document``: opened for its original report document, recorded as such."""
        now = self._clock.now()
        action = (
            AuditAction.DOCUMENT
            if document
            else AuditAction.VIEW
            if version is None
            else AuditAction.VERSION
        )
        if principal.role is not Role.PATIENT:
            self._require_retrieval_role(principal, action, purpose or "", result_id=result_id)
            p = self.purposes.require(purpose, principal.role)
        else:
            p = self.purposes.require(purpose or "self_access", principal.role)
        graph = self._catalog.get().graph
        denied_patient: int | None = None
        denied = False
        with self._store.transaction() as tx:
            stored = tx.result(result_id)
            if (
                stored is None
                or stored.status in HIDDEN_STATUSES
                or not may_read_result(principal, stored.institution, stored.patient_id, graph)
            ):
                denied = True
                denied_patient = stored.patient_id if stored is not None else None
                tx.write_audit(
                    [
                        audit_event(
                            principal,
                            now,
                            action,
                            p.code,
                            patient_id=denied_patient,
                            result_id=result_id,
                            outcome=AuditOutcome.DENIED,
                        )
                    ]
                )
            else:
                versions = tuple(tx.versions(result_id))
                snapshot: dict[str, Any] = {}
                shown = stored
                if version is not None and version != stored.version:
                    snap = tx.version_snapshot(result_id, version)
                    if snap is None:
                        raise NotFound(
                            f"该结果没有第 {version} 版",
                            problems=[Problem("version", "版本不存在")],
                        )
                    snapshot = snap
                    shown = stored_from_snapshot(stored, version, snap)
                tx.write_audit(
                    [
                        audit_event(
                            principal,
                            now,
                            action,
                            p.code,
                            patient_id=stored.patient_id,
                            result_id=result_id,
                        )
                    ]
                )
                full = principal.role in (Role.CLINICIAN, Role.PATIENT)
                report = Report(
                    result=shown,
                    patient=self.patient_view(tx, stored.patient_id, full_name=full),
                    versions=versions,
                    shown_version=shown.version,
                    open_corrections=tx.open_correction_counts([result_id]).get(result_id, 0),
                    snapshot=snapshot,
                )
        if denied:
            raise NotFound(NOT_FOUND_MESSAGE, problems=[Problem("result_id", NOT_FOUND_MESSAGE)])
        return report

    # -- audit queries
    def audit_trail(self, principal: Principal, query: AuditQuery) -> list[AuditRow]:
        """Read the audit: the patient their own, an institution admin their
        institution's, a regulator their jurisdiction's (reach decided by the caller via
        ``AuditQuery``). Reading the audit of a patient is itself audited."""
        now = self._clock.now()
        with self._store.transaction() as tx:
            rows = tx.audit_rows(query)
            tx.write_audit(
                [
                    audit_event(
                        principal,
                        now,
                        AuditAction.AUDIT_QUERY,
                        "self_access" if principal.role is Role.PATIENT else "supervision",
                        patient_id=query.patient_id,
                    )
                ]
            )
        return rows


def stored_from_snapshot(head: StoredResult, version: int, snap: dict[str, Any]) -> StoredResult:
    """An earlier version as a ``StoredResult``, from the intake snapshot (intake's
    ``ResultWrite.snapshot``)."""

    def when(key: str, default: datetime) -> datetime:
        value = snap.get(key)
        return datetime.fromisoformat(value) if isinstance(value, str) else default

    return StoredResult(
        id=head.id,
        patient_id=head.patient_id,
        institution=str(snap.get("institution", head.institution)),
        report_no=str(snap.get("report_no", head.report_no)),
        local_code=str(snap.get("local_code", head.local_code)),
        local_name=str(snap.get("local_name", head.local_name)),
        item_code=snap.get("item_code", head.item_code),
        category=head.category,
        status=ResultStatus(snap.get("status", head.status)),
        performed_at=when("performed_at", head.performed_at),
        issued_at=when("issued_at", head.issued_at),
        version=version,
        mark_scope=snap.get("mark_scope"),
        mark_symbol=snap.get("mark_symbol"),
        department=str(snap.get("department", "")),
        performer=str(snap.get("performer", "")),
        signer=str(snap.get("signer", "")),
        findings=str(snap.get("findings", "")),
        conclusion=str(snap.get("conclusion", "")),
        accession_number=str(snap.get("accession_number", "")),
        study_uid=str(snap.get("study_uid", "")),
        observations=observations_from_snapshot(snap),
        comment=str(snap.get("comment", "")),
    )
