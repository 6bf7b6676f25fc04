"""Results in SQL (SQLAlchemy Core): the intake write path (``SqlIntakeStore``, one
transaction per message, executemany for observations) and the read repository
(``SqlResultReader``) the other areas use.

Times are written as UTC. SQLite keeps them without a zone, so reads attach UTC again."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from huren.adapters.db.engine import is_sqlite
from huren.adapters.db.tables import (
    audit_event,
    inbound_message,
    observation,
    outbox,
    patient,
    patient_identifier,
    patient_link_event,
    result,
    result_version,
)
from huren.domain.accounts import Principal
from huren.domain.errors import NotFound
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.marks import Mark
from huren.domain.masterdata import Category
from huren.domain.results import ObservationValue, ResultStatus, StoredResult, ValueType
from huren.services.intake import (
    CurrentResult,
    MessageRecord,
    ResultWrite,
    TransientConflict,
    UnmappedCode,
    UnmappedResult,
)
from huren.services.patients import IdentifierKey, IdentifierRecord, LinkEvent, NewPatient
from huren.services.ports import Clock, IdentifierVault


def utc(value: datetime) -> datetime:
    """Aware UTC for writing and after reading (SQLite returns naive UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# ---------------------------------------------------------------- write path
_OBS_INSERT = insert(observation)
_VERSION_INSERT = insert(result_version)
_RESULT_INSERT = insert(result).returning(result.c.id, sort_by_parameter_order=True)
_RESULT_UPDATE = (
    update(result)
    .where(result.c.id == bindparam("b_id"))
    .values(
        {
            c: bindparam(c)
            for c in (
                "patient_id",
                "department",
                "local_name",
                "item_code",
                "category",
                "status",
                "performed_at",
                "issued_at",
                "performer",
                "signer",
                "findings",
                "conclusion",
                "accession_number",
                "study_uid",
                "mark_scope",
                "mark_symbol",
                "version",
                "content_hash",
                "source_message_id",
                "updated_at",
            )
        }
    )
)


def _result_row(w: ResultWrite, message_id: int, at: datetime) -> dict[str, Any]:
    s = w.submission
    return {
        "patient_id": w.patient_id,
        "institution_code": s.institution,
        "department": s.department,
        "report_no": s.report_no,
        "local_code": s.local_code,
        "local_name": s.local_name,
        "item_code": w.item_code,
        "category": str(w.category),
        "status": str(s.status),
        "performed_at": utc(s.performed_at),
        "issued_at": utc(s.issued_at),
        "performer": s.performer,
        "signer": s.signer,
        "findings": s.findings,
        "conclusion": s.conclusion,
        "accession_number": s.accession_number,
        "study_uid": s.study_uid,
        "mark_scope": w.mark.scope if w.mark else None,
        "mark_symbol": w.mark.symbol if w.mark else None,
        "version": w.version,
        "content_hash": w.content_hash,
        "source_message_id": message_id,
        "updated_at": at,
    }


class SqlIntakeTx:
    """Implements ``huren.services.intake.IntakeTx`` on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- messages
    def accepted_message(self, content_hash: str) -> tuple[int, str] | None:
        row = self.conn.execute(
            select(inbound_message.c.id, inbound_message.c.response)
            .where(
                inbound_message.c.content_hash == content_hash,
                inbound_message.c.status == "accepted",
            )
            .order_by(inbound_message.c.id)
            .limit(1)
        ).first()
        return None if row is None else (int(row.id), str(row.response))

    def insert_message(self, record: MessageRecord) -> int:
        inserted = self.conn.execute(
            insert(inbound_message).returning(inbound_message.c.id),
            {
                "received_at": utc(record.received_at),
                "channel": record.channel[:16],
                "institution_code": (record.institution or None) and record.institution[:32],
                "content_hash": record.content_hash,
                "control_id": record.control_id[:64],
                "status": record.status,
                "error": record.error,
                "response": record.response,
                "raw": record.raw,
            },
        ).scalar_one()
        return int(inserted)

    def set_response(self, message_id: int, response: str) -> None:
        self.conn.execute(
            update(inbound_message)
            .where(inbound_message.c.id == message_id)
            .values(response=response)
        )

    def emit(self, topic: str, payload: dict[str, object], at: datetime) -> None:
        self.conn.execute(insert(outbox), {"at": utc(at), "topic": topic, "payload": payload})

    # -- results
    def current_results(
        self, institution: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], CurrentResult]:
        if not keys:
            return {}
        wanted = set(keys)
        rows = self.conn.execute(
            select(
                result.c.id,
                result.c.report_no,
                result.c.local_code,
                result.c.version,
                result.c.content_hash,
                result.c.status,
            ).where(
                result.c.institution_code == institution,
                result.c.report_no.in_(sorted({k[0] for k in keys})),
            )
        )
        return {
            (r.report_no, r.local_code): CurrentResult(r.id, r.version, r.content_hash, r.status)
            for r in rows
            if (r.report_no, r.local_code) in wanted
        }

    def write_results(self, writes: Sequence[ResultWrite], message_id: int, at: datetime) -> None:
        if not writes:
            return
        at = utc(at)
        new = [w for w in writes if w.result_id is None]
        changed = [w for w in writes if w.result_id is not None]
        if new:
            ids = self.conn.execute(
                _RESULT_INSERT, [_result_row(w, message_id, at) for w in new]
            ).scalars()
            for w, rid in zip(new, ids, strict=True):
                w.result_id = int(rid)
        if changed:
            rows = []
            for w in changed:
                row = _result_row(w, message_id, at)
                del row["institution_code"], row["report_no"], row["local_code"]
                row["b_id"] = w.result_id
                rows.append(row)
            self.conn.execute(_RESULT_UPDATE, rows)
            self.conn.execute(
                delete(observation).where(
                    observation.c.result_id.in_([w.result_id for w in changed])
                )
            )
        self.conn.execute(
            _VERSION_INSERT,
            [
                {
                    "result_id": w.result_id,
                    "version": w.version,
                    "status": str(w.submission.status),
                    "recorded_at": at,
                    "reason": "" if w.version == 1 else f"{w.submission.status}",
                    "snapshot": w.snapshot(),
                }
                for w in writes
            ],
        )
        obs_rows = [
            {
                "result_id": w.result_id,
                "seq": seq,
                "code": o.code,
                "loinc": o.loinc,
                "name": o.name,
                "value_type": str(o.value_type),
                "value_num": o.value_num,
                "value_text": o.value_text,
                "unit": o.unit,
                "ref_low": o.ref_low,
                "ref_high": o.ref_high,
                "ref_text": o.ref_text,
                "flag": o.flag,
            }
            for w in writes
            for seq, o in enumerate(w.submission.observations, start=1)
        ]
        if obs_rows:
            self.conn.execute(_OBS_INSERT, obs_rows)

    def unmapped_results(self, institution: str, local_code: str) -> list[UnmappedResult]:
        rows = self.conn.execute(
            select(result.c.id, result.c.issued_at, result.c.category).where(
                result.c.institution_code == institution,
                result.c.local_code == local_code,
                result.c.item_code.is_(None),
            )
        )
        return [UnmappedResult(r.id, utc(r.issued_at), r.category) for r in rows]

    def set_mapping(
        self, result_id: int, item_code: str, category: str, mark: Mark | None, at: datetime
    ) -> None:
        self.conn.execute(
            update(result)
            .where(result.c.id == result_id)
            .values(
                item_code=item_code,
                category=category,
                mark_scope=mark.scope if mark else None,
                mark_symbol=mark.symbol if mark else None,
                updated_at=utc(at),
            )
        )

    # -- patients (huren.services.patients.PatientStore)
    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]:
        if not keys:
            return {}
        wanted = set(keys)
        rows = self.conn.execute(
            select(
                patient_identifier.c.kind,
                patient_identifier.c.assigner,
                patient_identifier.c.value_hash,
                patient.c.id,
                patient.c.merged_into,
            )
            .join(patient, patient.c.id == patient_identifier.c.patient_id)
            .where(patient_identifier.c.value_hash.in_([k[2] for k in keys]))
        ).all()
        found: dict[IdentifierKey, int] = {}
        for r in rows:
            key = (r.kind, r.assigner, r.value_hash)
            if key in wanted:
                found[key] = self._survivor(r.id, r.merged_into)
        return found

    def _survivor(self, patient_id: int, merged_into: int | None) -> int:
        seen = {patient_id}
        while merged_into is not None and merged_into not in seen:
            seen.add(merged_into)
            patient_id = merged_into
            merged_into = self.conn.execute(
                select(patient.c.merged_into).where(patient.c.id == patient_id)
            ).scalar_one_or_none()
        return patient_id

    def create_patient(self, new: NewPatient) -> int:
        return int(
            self.conn.execute(
                insert(patient).returning(patient.c.id),
                {
                    "name_enc": new.name_enc,
                    "name_masked": new.name_masked,
                    "sex": new.sex,
                    "birth_date": new.birth_date,
                    "created_at": utc(new.created_at),
                },
            ).scalar_one()
        )

    def add_identifiers(self, patient_id: int, records: Sequence[IdentifierRecord]) -> None:
        if records:
            self.conn.execute(
                insert(patient_identifier),
                [
                    {
                        "patient_id": patient_id,
                        "kind": r.kind,
                        "assigner": r.assigner,
                        "value_hash": r.value_hash,
                        "value_enc": r.value_enc,
                        "value_masked": r.value_masked,
                    }
                    for r in records
                ],
            )

    def record_link(self, event: LinkEvent) -> None:
        self.conn.execute(
            insert(patient_link_event),
            {
                "at": utc(event.at),
                "actor": event.actor[:64],
                "action": event.action,
                "from_patient": event.from_patient,
                "to_patient": event.to_patient,
                "reason": event.reason,
            },
        )


class SqlIntakeStore:
    """Implements ``huren.services.intake.IntakeStore``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = is_sqlite(str(engine.url))

    @contextmanager
    def transaction(self) -> Iterator[SqlIntakeTx]:
        with self._engine.connect() as conn:
            if self._sqlite:
                # Take the write lock at once so that the duplicate check and the writes
                # see the same state (no lost update between two writers).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield SqlIntakeTx(conn)
                conn.commit()
            except IntegrityError as exc:
                conn.rollback()
                raise TransientConflict(str(exc.orig)) from exc
            except BaseException:
                conn.rollback()
                raise

    def unmapped_codes(self, institution: str) -> list[UnmappedCode]:
        stmt = (
            select(
                result.c.local_code,
                func.max(result.c.local_name).label("local_name"),
                func.count().label("n"),
                func.min(result.c.issued_at).label("first"),
                func.max(result.c.issued_at).label("last"),
            )
            .where(result.c.institution_code == institution, result.c.item_code.is_(None))
            .group_by(result.c.local_code)
            .order_by(func.count().desc(), result.c.local_code)
        )
        with self._engine.connect() as conn:
            return [
                UnmappedCode(r.local_code, r.local_name or "", r.n, utc(r.first), utc(r.last))
                for r in conn.execute(stmt)
            ]


# ---------------------------------------------------------------- read repository
@dataclass(frozen=True, slots=True)
class VersionInfo:
    version: int
    status: ResultStatus
    recorded_at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class PatientView:
    """A patient for display: masked name and identifiers (R4)."""

    id: int
    name_masked: str
    sex: str
    birth_date: date | None
    identifiers: tuple[tuple[IdentifierKind, str, str], ...]  # (kind, assigner, masked)
    merged_into: int | None = None


@dataclass(frozen=True, slots=True)
class ResultQuery:
    """Search criteria (FHIR search and lists). All given criteria must hold."""

    patient_ids: Sequence[int] | None = None
    institution: str | None = None
    item_codes: Sequence[str] | None = None
    local_codes: Sequence[str] | None = None
    loinc: Sequence[str] | None = None  # observations with one of these LOINC codes
    performed_from: datetime | None = None
    performed_to: datetime | None = None
    updated_from: datetime | None = None
    updated_to: datetime | None = None
    report_no: str | None = None
    include_entered_in_error: bool = False
    limit: int = 100
    offset: int = 0


def _obs_from_row(r: Any) -> ObservationValue:
    return ObservationValue(
        code=r.code,
        name=r.name,
        value_type=ValueType(r.value_type),
        value_num=r.value_num,
        value_text=r.value_text,
        unit=r.unit,
        ref_low=r.ref_low,
        ref_high=r.ref_high,
        ref_text=r.ref_text,
        flag=r.flag,
        loinc=r.loinc,
    )


def _obs_from_json(d: dict[str, Any]) -> ObservationValue:
    return ObservationValue(
        code=d["code"],
        name=d["name"],
        value_type=ValueType(d["value_type"]),
        value_num=d["value_num"],
        value_text=d["value_text"],
        unit=d["unit"],
        ref_low=d["ref_low"],
        ref_high=d["ref_high"],
        ref_text=d["ref_text"],
        flag=d["flag"],
        loinc=d["loinc"],
    )


def _stored(r: Any, observations: Iterable[ObservationValue]) -> StoredResult:
    return StoredResult(
        id=r.id,
        patient_id=r.patient_id,
        institution=r.institution_code,
        report_no=r.report_no,
        local_code=r.local_code,
        local_name=r.local_name,
        item_code=r.item_code,
        category=Category(r.category),
        status=ResultStatus(r.status),
        performed_at=utc(r.performed_at),
        issued_at=utc(r.issued_at),
        version=r.version,
        mark_scope=r.mark_scope,
        mark_symbol=r.mark_symbol,
        department=r.department,
        performer=r.performer,
        signer=r.signer,
        findings=r.findings,
        conclusion=r.conclusion,
        accession_number=r.accession_number,
        study_uid=r.study_uid,
        observations=tuple(observations),
    )


class SqlResultReader:
    """Read access to stored results and patients (``container.results``).

    Reads here do not write audit records: a route that shows a patient's results to a
    person records the read itself (sharing area)."""

    def __init__(self, engine: Engine, vault: IdentifierVault, clock: Clock) -> None:
        self._engine = engine
        self._vault = vault
        self._clock = clock

    def record_access(
        self,
        principal: Principal,
        action: str,
        results: Sequence[StoredResult],
        *,
        patient_id: int | None = None,
        purpose: str = "",
    ) -> None:
        """Audit rows for a read (who, when, which result) — design.md: every read of a
        patient's results is recorded."""
        at = utc(self._clock.now())
        base = {
            "at": at,
            "account_id": principal.account_id,
            "actor": principal.username[:64],
            "role": str(principal.role),
            "institution_code": principal.institution,
            "action": action[:32],
            "purpose": purpose[:200],
            "outcome": "ok",
        }
        rows = [base | {"patient_id": r.patient_id, "result_id": r.id} for r in results]
        if not rows and patient_id is not None:
            rows = [base | {"patient_id": patient_id, "result_id": None}]
        if rows:
            with self._engine.begin() as conn:
                conn.execute(insert(audit_event), rows)

    def patient_ids(self, result_ids: Sequence[int]) -> dict[int, int]:
        """{result id: patient id}."""
        if not result_ids:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(result.c.id, result.c.patient_id).where(result.c.id.in_(list(result_ids)))
            )
            return {int(r.id): int(r.patient_id) for r in rows}

    def version_recorded_at(self, result_id: int, version: int) -> datetime:
        with self._engine.connect() as conn:
            at = conn.execute(
                select(result_version.c.recorded_at).where(
                    result_version.c.result_id == result_id, result_version.c.version == version
                )
            ).scalar_one_or_none()
        if at is None:
            raise NotFound(f"结果 {result_id} 没有第 {version} 版")
        return utc(at)

    def search_with_updated(self, query: ResultQuery) -> list[tuple[StoredResult, datetime]]:
        """``search`` with each result's last update time (FHIR meta.lastUpdated)."""
        with self._engine.connect() as conn:
            found = self._search(conn, query)
            if not found:
                return []
            rows = conn.execute(
                select(result.c.id, result.c.updated_at).where(
                    result.c.id.in_([r.id for r in found])
                )
            )
            updated = {int(r.id): utc(r.updated_at) for r in rows}
        return [(r, updated[r.id]) for r in found]

    # -- results
    def results_for_patient(
        self,
        patient_id: int,
        item_codes: Sequence[str] | None = None,
        *,
        include_entered_in_error: bool = False,
    ) -> list[StoredResult]:
        """The patient's current results (and those of patients merged into it), newest
        performed first. ``entered-in-error`` results are kept but left out unless asked."""
        with self._engine.connect() as conn:
            ids = self._patient_family(conn, patient_id)
            return self._search(
                conn,
                ResultQuery(
                    patient_ids=ids,
                    item_codes=item_codes,
                    include_entered_in_error=include_entered_in_error,
                    limit=10_000,
                ),
            )

    def get_result(self, result_id: int, version: int | None = None) -> StoredResult:
        """The current result, or one of its earlier versions. NotFound otherwise."""
        with self._engine.connect() as conn:
            row = conn.execute(select(result).where(result.c.id == result_id)).first()
            if row is None:
                raise NotFound(f"结果 {result_id} 不存在")
            if version is None or version == row.version:
                obs = conn.execute(
                    select(observation)
                    .where(observation.c.result_id == result_id)
                    .order_by(observation.c.seq)
                )
                return _stored(row, (_obs_from_row(o) for o in obs))
            snap = conn.execute(
                select(result_version.c.snapshot).where(
                    result_version.c.result_id == result_id, result_version.c.version == version
                )
            ).scalar_one_or_none()
        if snap is None:
            raise NotFound(f"结果 {result_id} 没有第 {version} 版")
        return self._from_snapshot(result_id, version, row, snap)

    @staticmethod
    def _from_snapshot(result_id: int, version: int, row: Any, snap: Any) -> StoredResult:
        d: dict[str, Any] = snap if isinstance(snap, dict) else json.loads(snap)
        return StoredResult(
            id=result_id,
            patient_id=d["patient_id"],
            institution=d["institution"],
            report_no=d["report_no"],
            local_code=d["local_code"],
            local_name=d["local_name"],
            item_code=d["item_code"] if d["item_code"] is not None else row.item_code,
            category=Category(d["category"]),
            status=ResultStatus(d["status"]),
            performed_at=utc(datetime.fromisoformat(d["performed_at"])),
            issued_at=utc(datetime.fromisoformat(d["issued_at"])),
            version=version,
            mark_scope=d["mark_scope"],
            mark_symbol=d["mark_symbol"],
            department=d["department"],
            performer=d["performer"],
            signer=d["signer"],
            findings=d["findings"],
            conclusion=d["conclusion"],
            accession_number=d["accession_number"],
            study_uid=d["study_uid"],
            observations=tuple(_obs_from_json(o) for o in d["observations"]),
        )

    def versions(self, result_id: int) -> list[VersionInfo]:
        """Every version of a result, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    result_version.c.version,
                    result_version.c.status,
                    result_version.c.recorded_at,
                    result_version.c.reason,
                )
                .where(result_version.c.result_id == result_id)
                .order_by(result_version.c.version)
            ).all()
        if not rows:
            raise NotFound(f"结果 {result_id} 不存在")
        return [
            VersionInfo(r.version, ResultStatus(r.status), utc(r.recorded_at), r.reason)
            for r in rows
        ]

    def history(
        self, since: datetime | None = None, limit: int = 100
    ) -> list[tuple[int, int, datetime]]:
        """(result_id, version, recorded_at) of recent versions, newest first."""
        stmt = select(
            result_version.c.result_id, result_version.c.version, result_version.c.recorded_at
        )
        if since is not None:
            stmt = stmt.where(result_version.c.recorded_at >= utc(since))
        stmt = stmt.order_by(
            result_version.c.recorded_at.desc(), result_version.c.result_id.desc()
        ).limit(limit)
        with self._engine.connect() as conn:
            return [(r.result_id, r.version, utc(r.recorded_at)) for r in conn.execute(stmt)]

    def search(self, query: ResultQuery) -> list[StoredResult]:
        with self._engine.connect() as conn:
            return self._search(conn, query)

    def updated_at(self, result_id: int) -> datetime:
        with self._engine.connect() as conn:
            at = conn.execute(
                select(result.c.updated_at).where(result.c.id == result_id)
            ).scalar_one_or_none()
        if at is None:
            raise NotFound(f"结果 {result_id} 不存在")
        return utc(at)

    def _search(self, conn: Connection, q: ResultQuery) -> list[StoredResult]:
        stmt = select(result)
        if q.patient_ids is not None:
            stmt = stmt.where(result.c.patient_id.in_(list(q.patient_ids)))
        if q.institution is not None:
            stmt = stmt.where(result.c.institution_code == q.institution)
        codes = []
        if q.item_codes is not None:
            codes.append(result.c.item_code.in_(list(q.item_codes)))
        if q.local_codes is not None:
            codes.append(result.c.local_code.in_(list(q.local_codes)))
        if q.loinc is not None:
            codes.append(
                result.c.id.in_(
                    select(observation.c.result_id).where(observation.c.loinc.in_(list(q.loinc)))
                )
            )
        if codes:
            stmt = stmt.where(or_(*codes))
        if q.performed_from is not None:
            stmt = stmt.where(result.c.performed_at >= utc(q.performed_from))
        if q.performed_to is not None:
            stmt = stmt.where(result.c.performed_at < utc(q.performed_to))
        if q.updated_from is not None:
            stmt = stmt.where(result.c.updated_at >= utc(q.updated_from))
        if q.updated_to is not None:
            stmt = stmt.where(result.c.updated_at < utc(q.updated_to))
        if q.report_no is not None:
            stmt = stmt.where(result.c.report_no == q.report_no)
        if not q.include_entered_in_error:
            stmt = stmt.where(result.c.status != str(ResultStatus.ENTERED_IN_ERROR))
        stmt = (
            stmt.order_by(result.c.performed_at.desc(), result.c.id.desc())
            .limit(q.limit)
            .offset(q.offset)
        )
        rows = conn.execute(stmt).all()
        if not rows:
            return []
        by_result: dict[int, list[ObservationValue]] = {r.id: [] for r in rows}
        obs_rows = conn.execute(
            select(observation)
            .where(observation.c.result_id.in_(list(by_result)))
            .order_by(observation.c.result_id, observation.c.seq)
        )
        for o in obs_rows:
            by_result[o.result_id].append(_obs_from_row(o))
        return [_stored(r, by_result[r.id]) for r in rows]

    # -- patients
    def _patient_family(self, conn: Connection, patient_id: int) -> list[int]:
        merged = conn.execute(select(patient.c.id).where(patient.c.merged_into == patient_id))
        return [patient_id, *(int(i) for i in merged.scalars())]

    def find_patients(self, identifier: PatientIdentifier) -> list[int]:
        """Patients holding ``identifier`` (normalized by the caller); at most one unless
        the data has an unresolved conflict."""
        h = self._vault.lookup_hash(str(identifier.kind), identifier.assigner, identifier.value)
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(patient.c.id, patient.c.merged_into)
                .join(patient_identifier, patient.c.id == patient_identifier.c.patient_id)
                .where(
                    and_(
                        patient_identifier.c.kind == str(identifier.kind),
                        patient_identifier.c.assigner == identifier.assigner,
                        patient_identifier.c.value_hash == h,
                    )
                )
            ).all()
            out = [SqlIntakeTx(conn)._survivor(r.id, r.merged_into) for r in rows]
        return sorted(set(out))

    def patient(self, patient_id: int) -> PatientView:
        with self._engine.connect() as conn:
            row = conn.execute(select(patient).where(patient.c.id == patient_id)).first()
            if row is None:
                raise NotFound(f"患者 {patient_id} 不存在")
            idents = conn.execute(
                select(
                    patient_identifier.c.kind,
                    patient_identifier.c.assigner,
                    patient_identifier.c.value_masked,
                )
                .where(patient_identifier.c.patient_id == patient_id)
                .order_by(patient_identifier.c.id)
            ).all()
        return PatientView(
            id=row.id,
            name_masked=row.name_masked,
            sex=row.sex,
            birth_date=row.birth_date,
            identifiers=tuple((IdentifierKind(i.kind), i.assigner, i.value_masked) for i in idents),
            merged_into=row.merged_into,
        )

    def patient_name(self, patient_id: int) -> str:
        """The full name, decrypted: only for views that may show it (own record, EMR)."""
        with self._engine.connect() as conn:
            enc = conn.execute(
                select(patient.c.name_enc).where(patient.c.id == patient_id)
            ).scalar_one_or_none()
        if enc is None:
            raise NotFound(f"患者 {patient_id} 不存在")
        return self._vault.decrypt(enc) if enc else ""

    def patient_identifiers(self, patient_id: int) -> list[PatientIdentifier]:
        """Decrypted identifiers (for FHIR Patient output to authorised callers)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(
                    patient_identifier.c.kind,
                    patient_identifier.c.assigner,
                    patient_identifier.c.value_enc,
                )
                .where(patient_identifier.c.patient_id == patient_id)
                .order_by(patient_identifier.c.id)
            ).all()
        return [
            PatientIdentifier(IdentifierKind(r.kind), self._vault.decrypt(r.value_enc), r.assigner)
            for r in rows
        ]
