"""SQL side of sharing and trust: retrieval reads with their audit rows, correction
requests and inbox notifications, the patient portal's bindings and one-time codes, and
the insurer's reads of reminders and decisions.

One ``SqlSharingTx`` is one transaction: the audit rows a read writes commit (or roll
back) together with the read."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from huren.adapters import reference_data
from huren.adapters.db.results import SqlIntakeTx, _obs_from_row, _stored, utc
from huren.adapters.db.tables import (
    account,
    audit_event,
    decision,
    institution,
    item,
    observation,
    outbox,
    patient,
    patient_identifier,
    reminder,
    result,
    result_version,
)
from huren.adapters.db.tables_sharing import (
    correction_request,
    notification,
    otp_challenge,
    portal_binding,
)
from huren.domain.accounts import Role
from huren.domain.china_time import CHINA_TZ
from huren.domain.corrections import CorrectionStatus
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.results import StoredResult
from huren.domain.sharing import Purpose, PurposeList
from huren.services.corrections import CorrectionRecord, Notice
from huren.services.insurer import DecisionFact, ReminderFact
from huren.services.patients import IdentifierKey
from huren.services.portal import BindingListEntry, BindingRecord, Challenge
from huren.services.ports import IdentifierVault
from huren.services.retrieval import (
    AuditEvent,
    AuditQuery,
    AuditRow,
    ResultFilter,
    VersionInfo,
)


def load_purposes() -> PurposeList:
    data = reference_data.load_json("purposes.json")
    return PurposeList(
        Purpose(p["code"], p["label"], frozenset(Role(r) for r in p["roles"]))
        for p in data["purposes"]
    )


def correction_deadline_working_days() -> int:
    return int(reference_data.load_json("purposes.json")["correction"]["deadline_working_days"])


def _day_start(d: date) -> datetime:
    """Midnight of a calendar day in China Standard Time (dates in filters are local)."""
    return datetime(d.year, d.month, d.day, tzinfo=CHINA_TZ)


def open_corrections_in(conn: Connection, result_ids: Iterable[int]) -> dict[int, int]:
    """{result_id: number of open correction requests} for the given results, inside the
    caller's transaction (for the recognition area: ``PriorResult.open_corrections``)."""
    ids = list(dict.fromkeys(result_ids))
    if not ids:
        return {}
    out: dict[int, int] = {}
    for chunk in range(0, len(ids), 500):
        rows = conn.execute(
            select(correction_request.c.result_id, func.count())
            .where(
                correction_request.c.result_id.in_(ids[chunk : chunk + 500]),
                correction_request.c.status == str(CorrectionStatus.OPEN),
            )
            .group_by(correction_request.c.result_id)
        )
        out.update({int(r[0]): int(r[1]) for r in rows})
    return out


def _correction(r: Any) -> CorrectionRecord:
    return CorrectionRecord(
        id=r.id,
        filed_at=utc(r.filed_at),
        requester_account_id=r.requester_account_id,
        requester_role=r.requester_role,
        requester_institution=r.requester_institution,
        result_id=r.result_id,
        result_version=r.result_version,
        producing_institution=r.producing_institution,
        text=r.text,
        status=CorrectionStatus(r.status),
        due_at=utc(r.due_at),
        resolved_at=utc(r.resolved_at) if r.resolved_at else None,
        resolver_account_id=r.resolver_account_id,
        resolution=r.resolution,
        new_version=r.new_version,
        report_no=getattr(r, "report_no", "") or "",
        item_name=getattr(r, "item_name", "") or getattr(r, "local_name", "") or "",
    )


class SqlSharingTx:
    """Implements the transaction ports of retrieval, corrections, portal and insurer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._families: dict[int, list[int]] = {}

    # ------------------------------------------------------------ patients
    def patients_by_identifier(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, int]:
        return SqlIntakeTx(self.conn).patients_by_identifier(keys)

    def _family(self, patient_id: int) -> list[int]:
        """The patient and those merged into them; read once per transaction (an insurer
        batch asks it three times per claim line)."""
        family = self._families.get(patient_id)
        if family is None:
            merged = self.conn.execute(
                select(patient.c.id).where(patient.c.merged_into == patient_id)
            )
            family = self._families[patient_id] = [patient_id, *(int(i) for i in merged.scalars())]
        return family

    def patient(self, patient_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(select(patient).where(patient.c.id == patient_id)).first()
        if row is None:
            return None
        idents = self.conn.execute(
            select(patient_identifier.c.kind, patient_identifier.c.value_masked)
            .where(patient_identifier.c.patient_id == patient_id)
            .order_by(patient_identifier.c.id)
        ).all()
        return {
            "name_enc": row.name_enc,
            "name_masked": row.name_masked,
            "sex": row.sex,
            "birth_date": row.birth_date,
            "identifiers": [(i.kind, i.value_masked) for i in idents],
        }

    def patient_identifiers_enc(self, patient_id: int) -> list[tuple[str, str, str]]:
        """(kind, assigner, value_enc) of a patient, for re-submitting a corrected result."""
        rows = self.conn.execute(
            select(
                patient_identifier.c.kind,
                patient_identifier.c.assigner,
                patient_identifier.c.value_enc,
            )
            .where(patient_identifier.c.patient_id == patient_id)
            .order_by(patient_identifier.c.id)
        ).all()
        return [(r.kind, r.assigner, r.value_enc) for r in rows]

    # ------------------------------------------------------------ results
    def results_of_patient(
        self, patient_id: int, flt: ResultFilter, institutions: frozenset[str] | None
    ) -> list[StoredResult]:
        stmt = select(result).where(result.c.patient_id.in_(self._family(patient_id)))
        if institutions is not None:
            stmt = stmt.where(result.c.institution_code.in_(sorted(institutions)))
        if flt.item_codes:
            stmt = stmt.where(result.c.item_code.in_(sorted(flt.item_codes)))
        if flt.date_from is not None:
            stmt = stmt.where(result.c.performed_at >= _day_start(flt.date_from))
        if flt.date_to is not None:
            stmt = stmt.where(result.c.performed_at < _day_start(flt.date_to + timedelta(days=1)))
        stmt = stmt.order_by(result.c.performed_at.desc(), result.c.id.desc())
        return [_stored(r, ()) for r in self.conn.execute(stmt)]

    def result(self, result_id: int, *, observations: bool = True) -> StoredResult | None:
        row = self.conn.execute(select(result).where(result.c.id == result_id)).first()
        if row is None:
            return None
        obs = (
            [
                _obs_from_row(o)
                for o in self.conn.execute(
                    select(observation)
                    .where(observation.c.result_id == result_id)
                    .order_by(observation.c.seq)
                )
            ]
            if observations
            else []
        )
        return _stored(row, obs)

    def results_by_report(self, institution_code: str, report_no: str) -> list[StoredResult]:
        rows = self.conn.execute(
            select(result).where(
                result.c.institution_code == institution_code, result.c.report_no == report_no
            )
        )
        return [_stored(r, ()) for r in rows]

    def item_results_before(
        self, patient_id: int, item_code: str, before: datetime
    ) -> list[StoredResult]:
        rows = self.conn.execute(
            select(result)
            .where(
                result.c.patient_id.in_(self._family(patient_id)),
                result.c.item_code == item_code,
                result.c.performed_at < utc(before),
            )
            .order_by(result.c.performed_at.desc())
            .limit(50)
        )
        return [_stored(r, ()) for r in rows]

    def versions(self, result_id: int) -> list[VersionInfo]:
        rows = self.conn.execute(
            select(
                result_version.c.version,
                result_version.c.status,
                result_version.c.recorded_at,
                result_version.c.reason,
            )
            .where(result_version.c.result_id == result_id)
            .order_by(result_version.c.version)
        )
        return [VersionInfo(r.version, r.status, utc(r.recorded_at), r.reason) for r in rows]

    def version_snapshot(self, result_id: int, version: int) -> dict[str, Any] | None:
        snap = self.conn.execute(
            select(result_version.c.snapshot).where(
                result_version.c.result_id == result_id, result_version.c.version == version
            )
        ).scalar_one_or_none()
        if snap is None:
            return None
        data: dict[str, Any] = snap if isinstance(snap, dict) else json.loads(snap)
        return data

    def set_version_reason(self, result_id: int, version: int, reason: str) -> None:
        self.conn.execute(
            update(result_version)
            .where(result_version.c.result_id == result_id, result_version.c.version == version)
            .values(reason=reason)
        )

    def open_correction_counts(self, result_ids: Iterable[int]) -> dict[int, int]:
        return open_corrections_in(self.conn, result_ids)

    # ------------------------------------------------------------ audit
    def write_audit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        self.conn.execute(
            insert(audit_event),
            [
                {
                    "at": utc(e.at),
                    "account_id": e.account_id,
                    "actor": e.actor,
                    "role": e.role,
                    "institution_code": e.institution,
                    "patient_id": e.patient_id,
                    "result_id": e.result_id,
                    "action": e.action,
                    "purpose": e.purpose,
                    "outcome": e.outcome,
                }
                for e in events
            ],
        )

    def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        producer = result.c.institution_code
        stmt = (
            select(
                audit_event,
                account.c.display_name,
                func.coalesce(item.c.name, result.c.local_name).label("item_name"),
            )
            .select_from(
                audit_event.outerjoin(account, account.c.id == audit_event.c.account_id)
                .outerjoin(result, result.c.id == audit_event.c.result_id)
                .outerjoin(item, item.c.code == result.c.item_code)
            )
            .order_by(audit_event.c.id.desc())
            .limit(query.limit)
        )
        if query.patient_id is not None:
            stmt = stmt.where(audit_event.c.patient_id.in_(self._family(query.patient_id)))
        if query.institutions is not None:
            codes = sorted(query.institutions)
            stmt = stmt.where(or_(audit_event.c.institution_code.in_(codes), producer.in_(codes)))
        if query.since is not None:
            stmt = stmt.where(audit_event.c.at >= utc(query.since))
        if query.until is not None:
            stmt = stmt.where(audit_event.c.at < utc(query.until))
        return [
            AuditRow(
                id=r.id,
                at=utc(r.at),
                actor=r.actor,
                actor_name=r.display_name or r.actor,
                role=r.role,
                institution=r.institution_code,
                patient_id=r.patient_id,
                result_id=r.result_id,
                item_name=r.item_name or "",
                action=r.action,
                purpose=r.purpose,
                outcome=r.outcome,
            )
            for r in self.conn.execute(stmt)
        ]

    # ------------------------------------------------------------ point of care (read)
    def decisions_for_results(self, result_ids: Sequence[int]) -> dict[int, list[DecisionFact]]:
        out: dict[int, list[DecisionFact]] = {}
        if not result_ids:
            return out
        rows = self.conn.execute(
            select(decision)
            .where(decision.c.result_id.in_(list(result_ids)))
            .order_by(decision.c.at)
        )
        for r in rows:
            out.setdefault(r.result_id, []).append(_decision(r))
        return out

    def decisions_for(
        self,
        patient_id: int,
        item_code: str,
        institution_code: str,
        since: datetime,
        until: datetime,
    ) -> list[DecisionFact]:
        rows = self.conn.execute(
            select(decision)
            .where(
                decision.c.patient_id.in_(self._family(patient_id)),
                decision.c.item_code == item_code,
                decision.c.institution_code == institution_code,
                decision.c.at >= utc(since),
                decision.c.at < utc(until),
            )
            .order_by(decision.c.at)
        )
        return [_decision(r) for r in rows]

    def reminders_for(
        self,
        patient_id: int,
        item_code: str,
        institution_code: str,
        since: datetime,
        until: datetime,
    ) -> list[ReminderFact]:
        rows = self.conn.execute(
            select(reminder)
            .where(
                reminder.c.patient_id.in_(self._family(patient_id)),
                reminder.c.item_code == item_code,
                reminder.c.institution_code == institution_code,
                reminder.c.at >= utc(since),
                reminder.c.at < utc(until),
            )
            .order_by(reminder.c.at)
        )
        return [
            ReminderFact(r.id, utc(r.at), r.candidates, r.recognizable, r.clinician) for r in rows
        ]

    # ------------------------------------------------------------ corrections
    def insert_correction(self, values: dict[str, Any]) -> int:
        return int(
            self.conn.execute(
                insert(correction_request).returning(correction_request.c.id), [values]
            ).scalar_one()
        )

    def _corrections_select(self) -> Any:
        return select(
            correction_request,
            result.c.report_no,
            func.coalesce(item.c.name, result.c.local_name).label("item_name"),
        ).select_from(
            correction_request.join(
                result, result.c.id == correction_request.c.result_id
            ).outerjoin(item, item.c.code == result.c.item_code)
        )

    def correction(
        self, correction_id: int, *, for_update: bool = False
    ) -> CorrectionRecord | None:
        stmt = self._corrections_select().where(correction_request.c.id == correction_id)
        if for_update and self.conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(of=correction_request)
        row = self.conn.execute(stmt).first()
        return _correction(row) if row is not None else None

    def corrections(
        self,
        *,
        producing: Sequence[str] | None = None,
        requester: int | None = None,
        status: CorrectionStatus | None = None,
        overdue_at: datetime | None = None,
        limit: int = 500,
    ) -> list[CorrectionRecord]:
        stmt = self._corrections_select().order_by(
            correction_request.c.due_at, correction_request.c.id
        )
        if producing is not None:
            stmt = stmt.where(correction_request.c.producing_institution.in_(list(producing)))
        if requester is not None:
            stmt = stmt.where(correction_request.c.requester_account_id == requester)
        if status is not None:
            stmt = stmt.where(correction_request.c.status == str(status))
        if overdue_at is not None:
            stmt = stmt.where(
                correction_request.c.status == str(CorrectionStatus.OPEN),
                correction_request.c.due_at < utc(overdue_at),
            )
        return [_correction(r) for r in self.conn.execute(stmt.limit(limit))]

    def correction_counts(self, producing: Sequence[str], now: datetime) -> dict[str, int]:
        rows = self.conn.execute(
            select(correction_request.c.status, func.count())
            .where(correction_request.c.producing_institution.in_(list(producing)))
            .group_by(correction_request.c.status)
        ).all()
        counts = {str(s): 0 for s in CorrectionStatus}
        counts.update({r[0]: int(r[1]) for r in rows})
        counts["overdue"] = int(
            self.conn.execute(
                select(func.count()).where(
                    correction_request.c.producing_institution.in_(list(producing)),
                    correction_request.c.status == str(CorrectionStatus.OPEN),
                    correction_request.c.due_at < utc(now),
                )
            ).scalar_one()
        )
        return counts

    def resolve_correction(
        self,
        correction_id: int,
        status: CorrectionStatus,
        at: datetime,
        resolver: int,
        resolution: str,
        new_version: int | None,
    ) -> bool:
        """Close an open request; False when it was closed meanwhile (a concurrent reviewer)."""
        res = self.conn.execute(
            update(correction_request)
            .where(
                correction_request.c.id == correction_id,
                correction_request.c.status == str(CorrectionStatus.OPEN),
            )
            .values(
                status=str(status),
                resolved_at=utc(at),
                resolver_account_id=resolver,
                resolution=resolution,
                new_version=new_version,
            )
        )
        return bool(res.rowcount)

    def institution_admins(self, institution_code: str) -> list[int]:
        return [
            int(i)
            for i in self.conn.execute(
                select(account.c.id).where(
                    account.c.role == str(Role.INSTITUTION_ADMIN),
                    account.c.institution_code == institution_code,
                    account.c.active.is_(True),
                )
            ).scalars()
        ]

    def readers_of(self, result_id: int) -> list[int]:
        """Accounts that read the result (any successful audited read)."""
        return [
            int(i)
            for i in self.conn.execute(
                select(audit_event.c.account_id)
                .where(
                    audit_event.c.result_id == result_id,
                    audit_event.c.outcome == "ok",
                    audit_event.c.account_id.is_not(None),
                )
                .distinct()
            ).scalars()
        ]

    def accepters_of(self, result_id: int) -> list[tuple[str, str]]:
        """(institution, clinician) of decisions that accepted the result."""
        rows = self.conn.execute(
            select(decision.c.institution_code, decision.c.clinician)
            .where(decision.c.result_id == result_id, decision.c.action == "accepted")
            .distinct()
        )
        return [(r.institution_code, r.clinician) for r in rows]

    def accounts_named(self, institution_code: str, usernames: Sequence[str]) -> list[int]:
        if not usernames:
            return []
        return [
            int(i)
            for i in self.conn.execute(
                select(account.c.id).where(
                    account.c.institution_code == institution_code,
                    account.c.username.in_(list(usernames)),
                )
            ).scalars()
        ]

    def notify(self, notices: Sequence[Notice], at: datetime) -> None:
        """Inbox rows, and one outbox event per notification (for mail/SMS/WeChat relays)."""
        for n in notices:
            nid = self.conn.execute(
                insert(notification).returning(notification.c.id),
                [
                    {
                        "account_id": n.account_id,
                        "created_at": utc(at),
                        "kind": n.kind,
                        "title": n.title,
                        "body": n.body,
                        "result_id": n.result_id,
                        "correction_id": n.correction_id,
                    }
                ],
            ).scalar_one()
            self.conn.execute(
                insert(outbox),
                [
                    {
                        "at": utc(at),
                        "topic": "notification.created",
                        "payload": {
                            "notification_id": int(nid),
                            "account_id": n.account_id,
                            "kind": n.kind,
                            "correction_id": n.correction_id,
                            "result_id": n.result_id,
                        },
                    }
                ],
            )

    def inbox(
        self, account_id: int, *, unread_only: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        stmt = (
            select(notification)
            .where(notification.c.account_id == account_id)
            .order_by(notification.c.id.desc())
            .limit(limit)
        )
        if unread_only:
            stmt = stmt.where(notification.c.read_at.is_(None))
        return [
            {
                "id": r.id,
                "created_at": utc(r.created_at),
                "kind": r.kind,
                "title": r.title,
                "body": r.body,
                "result_id": r.result_id,
                "correction_id": r.correction_id,
                "read_at": utc(r.read_at) if r.read_at else None,
            }
            for r in self.conn.execute(stmt)
        ]

    def unread_count(self, account_id: int) -> int:
        return int(
            self.conn.execute(
                select(func.count()).where(
                    notification.c.account_id == account_id, notification.c.read_at.is_(None)
                )
            ).scalar_one()
        )

    def mark_read(self, account_id: int, notification_id: int, at: datetime) -> bool:
        res = self.conn.execute(
            update(notification)
            .where(
                notification.c.id == notification_id,
                notification.c.account_id == account_id,
                notification.c.read_at.is_(None),
            )
            .values(read_at=utc(at))
        )
        return bool(res.rowcount)

    # ------------------------------------------------------------ portal
    def binding_by_identifier(self, identifier_hash: str) -> BindingRecord | None:
        r = self.conn.execute(
            select(portal_binding).where(portal_binding.c.identifier_hash == identifier_hash)
        ).first()
        return _binding(r) if r is not None else None

    def binding_by_account(self, account_id: int) -> BindingRecord | None:
        r = self.conn.execute(
            select(portal_binding).where(portal_binding.c.account_id == account_id)
        ).first()
        return _binding(r) if r is not None else None

    def upsert_binding(self, b: BindingRecord) -> None:
        values = {
            "patient_id": b.patient_id,
            "identifier_hash": b.identifier_hash,
            "phone_enc": b.phone_enc,
            "phone_masked": b.phone_masked,
            "bound_by": b.bound_by,
            "bound_institution": b.bound_institution,
            "bound_at": utc(b.bound_at),
        }
        done = self.conn.execute(
            update(portal_binding)
            .where(portal_binding.c.account_id == b.account_id)
            .values(**values)
        )
        if not done.rowcount:
            self.conn.execute(insert(portal_binding), [{"account_id": b.account_id, **values}])

    def bindings_made_at(self, institution_code: str, limit: int) -> list[BindingListEntry]:
        """Newest first; the identifier shown is the one bound, masked as stored."""
        staff_account = account.alias("staff")
        b, pi, staff = portal_binding.c, patient_identifier.c, staff_account.c
        rows = self.conn.execute(
            select(
                b.account_id,
                b.bound_at,
                b.phone_masked,
                patient.c.name_masked,
                pi.kind,
                pi.value_masked,
                staff.display_name,
            )
            .join(patient, patient.c.id == b.patient_id)
            .join(
                patient_identifier,
                (pi.value_hash == b.identifier_hash) & (pi.patient_id == b.patient_id),
                isouter=True,
            )
            .join(staff_account, staff.id == b.bound_by)
            .where(b.bound_institution == institution_code)
            .order_by(b.bound_at.desc(), b.account_id.desc())
            .limit(limit)
        ).all()
        return [
            BindingListEntry(
                account_id=r.account_id,
                bound_at=utc(r.bound_at),
                name_masked=r.name_masked,
                identifier_kind=r.kind or "",
                identifier_masked=r.value_masked or "",
                phone_masked=r.phone_masked,
                bound_by=r.display_name,
            )
            for r in rows
        ]

    def insert_challenge(self, c: Challenge) -> int:
        return int(
            self.conn.execute(
                insert(otp_challenge).returning(otp_challenge.c.id),
                [
                    {
                        "identifier_hash": c.identifier_hash,
                        "account_id": c.account_id,
                        "code_hash": c.code_hash,
                        "created_at": utc(c.created_at),
                        "expires_at": utc(c.expires_at),
                        "attempts": 0,
                    }
                ],
            ).scalar_one()
        )

    def set_challenge_hash(self, challenge_id: int, code_hash: str) -> None:
        self.conn.execute(
            update(otp_challenge)
            .where(otp_challenge.c.id == challenge_id)
            .values(code_hash=code_hash)
        )

    def challenges_since(self, identifier_hash: str, since: datetime) -> int:
        return int(
            self.conn.execute(
                select(func.count()).where(
                    otp_challenge.c.identifier_hash == identifier_hash,
                    otp_challenge.c.created_at >= utc(since),
                )
            ).scalar_one()
        )

    def latest_challenge(self, identifier_hash: str) -> Challenge | None:
        r = self.conn.execute(
            select(otp_challenge)
            .where(
                otp_challenge.c.identifier_hash == identifier_hash,
                otp_challenge.c.consumed_at.is_(None),
            )
            .order_by(otp_challenge.c.id.desc())
            .limit(1)
        ).first()
        if r is None:
            return None
        return Challenge(
            id=r.id,
            identifier_hash=r.identifier_hash,
            account_id=r.account_id,
            code_hash=r.code_hash,
            created_at=utc(r.created_at),
            expires_at=utc(r.expires_at),
            attempts=r.attempts,
        )

    def count_attempt(self, challenge_id: int) -> None:
        self.conn.execute(
            update(otp_challenge)
            .where(otp_challenge.c.id == challenge_id)
            .values(attempts=otp_challenge.c.attempts + 1)
        )

    def consume_challenge(self, challenge_id: int, at: datetime) -> bool:
        res = self.conn.execute(
            update(otp_challenge)
            .where(otp_challenge.c.id == challenge_id, otp_challenge.c.consumed_at.is_(None))
            .values(consumed_at=utc(at))
        )
        return bool(res.rowcount)

    # ------------------------------------------------------------ names
    def institution_names(self) -> dict[str, str]:
        return {
            r.code: r.name
            for r in self.conn.execute(select(institution.c.code, institution.c.name))
        }


def _decision(r: Any) -> DecisionFact:
    return DecisionFact(
        id=r.id,
        at=utc(r.at),
        institution=r.institution_code,
        department=r.department,
        clinician=r.clinician,
        item_code=r.item_code,
        result_id=r.result_id,
        result_version=r.result_version,
        action=r.action,
        reason_code=r.reason_code,
        reason_text=r.reason_text,
        reminder_id=r.reminder_id,
        patient_explanation=r.patient_explanation,
    )


def _binding(r: Any) -> BindingRecord:
    return BindingRecord(
        account_id=r.account_id,
        patient_id=r.patient_id,
        identifier_hash=r.identifier_hash,
        phone_enc=r.phone_enc,
        phone_masked=r.phone_masked,
        bound_by=r.bound_by,
        bound_institution=r.bound_institution,
        bound_at=utc(r.bound_at),
    )


class SqlSharing:
    """Implements ``SharingStore`` (and the corrections / portal / insurer stores)."""

    def __init__(self, engine: Engine, vault: IdentifierVault) -> None:
        self._engine = engine
        self._vault = vault

    @contextmanager
    def transaction(self) -> Iterator[SqlSharingTx]:
        with self._engine.begin() as conn:
            yield SqlSharingTx(conn)

    def open_corrections(self, result_ids: Iterable[int]) -> dict[int, int]:
        with self._engine.connect() as conn:
            return open_corrections_in(conn, result_ids)

    def decrypt_identifiers(self, rows: Sequence[tuple[str, str, str]]) -> list[PatientIdentifier]:
        return [PatientIdentifier(IdentifierKind(k), self._vault.decrypt(v), a) for k, a, v in rows]


__all__ = ["SqlSharing", "SqlSharingTx", "load_purposes", "open_corrections_in"]
