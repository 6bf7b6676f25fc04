"""SQL for the QC lifecycle and the monitoring aggregates (SQLAlchemy Core, one code path
for SQLite and PostgreSQL except the month bucket and the upsert dialect).

Monitoring queries read only the aggregate tables, never ``decision`` or ``reminder``:
region-wide and item statistics read ``monitoring_month_inst`` (month × institution ×
item) and ``monitoring_decline_inst`` (month × institution × reason), the department and
clinician drill-down reads ``monitoring_month`` / ``monitoring_decline`` through their
(institution, month) indexes. Both stay small relative to the decisions they count.
Also the data-file loaders for re-evaluation policies and targets."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from importlib import resources
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    Engine,
    MetaData,
    Select,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    not_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from huren.adapters.db import tables as t
from huren.adapters.db import tables_governance as g
from huren.adapters.db.accounts import SqlAccounts
from huren.adapters.db.masterdata import qualification_from_row, qualification_row
from huren.domain.accounts import Role
from huren.domain.masterdata import Qualification, QualificationStatus
from huren.domain.monitoring import COUNTER_NAMES, Counters, Target, TargetMetric
from huren.domain.qc import (
    EvaluationKind,
    Inspector,
    Organiser,
    ProposalStatus,
    ReevaluationPolicy,
    SuspensionReason,
    TargetKind,
)
from huren.services.monitoring import (
    COUNTED_ACTIONS,
    COUNTED_RESULT_STATUSES,
    DecisionFact,
    DeclineKey,
    Dimension,
    FineKey,
    ReminderFact,
    ResultFact,
)
from huren.services.qc import (
    EvaluationRecord,
    ProposalRecord,
    SpotCheckRecord,
    StoredQualification,
)

# ---------------------------------------------------------------- data files


def _load(name: str) -> Any:
    return json.loads(resources.files("huren.data").joinpath(name).read_text("utf-8"))


def _policy(jurisdiction: str, d: Mapping[str, Any]) -> ReevaluationPolicy:
    return ReevaluationPolicy(
        jurisdiction=jurisdiction,
        months=int(d["months"]),
        warn_days=int(d.get("warn_days", 30)),
        failure_removes_mark=bool(d.get("failure_removes_mark", False)),
        source=d["source"],
        failure_source=d.get("failure_source", ""),
    )


def reevaluation_policies() -> tuple[dict[str, ReevaluationPolicy], ReevaluationPolicy]:
    data = _load("reevaluation.json")
    return (
        {code: _policy(code, d) for code, d in data["jurisdictions"].items()},
        _policy("", data["default"]),
    )


def policy_targets() -> list[Target]:
    return [
        Target(
            id=d["id"],
            jurisdiction=d["jurisdiction"],
            deadline=date.fromisoformat(d["deadline"]),
            metric=TargetMetric(d["metric"]),
            text=d["text"],
            source=d["source"],
            threshold=float(d.get("threshold", 0)),
            comparator=d.get("comparator", "gt"),
            scope=d.get("scope", ""),
            scope_kind=d.get("scope_kind", ""),
            public_only=bool(d.get("public_only", True)),
        )
        for d in _load("targets.json")["targets"]
    ]


# ---------------------------------------------------------------- QC


def _evaluation(r: Any) -> EvaluationRecord:
    return EvaluationRecord(
        id=r.id,
        institution=r.institution_code,
        scope=r.scope_code,
        kind=EvaluationKind(r.kind),
        organiser=Organiser(r.organiser),
        evaluated_on=r.evaluated_on,
        passed=r.passed,
        recorded_by=r.recorded_by,
        recorded_at=r.recorded_at,
        item=r.item_code,
        group=r.group_code,
        organiser_name=r.organiser_name,
        suggested_organiser=r.suggested_organiser,
        round_id=r.round_id,
        score=r.score,
        notes=r.notes,
        rectification=r.rectification,
        rectification_accepted_on=r.rectification_accepted_on,
        rectification_accepted_by=r.rectification_accepted_by,
        spot_check_draw_id=r.spot_check_draw_id,
        removed_qualifications=tuple(r.removed_qualifications or ()),
        proposal_id=r.proposal_id,
    )


def _proposal(r: Any) -> ProposalRecord:
    return ProposalRecord(
        id=r.id,
        institution=r.institution_code,
        target_kind=TargetKind(r.target_kind),
        item=r.item_code,
        group=r.group_code,
        origin=r.origin,
        reason=SuspensionReason(r.reason_code),
        reason_text=r.reason_text,
        evidence=tuple(r.evidence or ()),
        status=ProposalStatus(r.status),
        raised_by=r.raised_by,
        raised_at=r.raised_at,
        decided_by=r.decided_by,
        decided_at=r.decided_at,
        decision_note=r.decision_note,
        affected=tuple(r.affected or ()),
        reinstated_by=r.reinstated_by,
        reinstated_at=r.reinstated_at,
        reinstate_reason=r.reinstate_reason,
    )


def _draw(r: Any) -> SpotCheckRecord:
    return SpotCheckRecord(
        id=r.id,
        jurisdiction=r.jurisdiction,
        period=r.period,
        seed=int(r.seed),
        institution_count=r.institution_count,
        inspectors_per_check=r.inspectors_per_check,
        candidates=tuple(r.candidates),
        inspectors=tuple(
            Inspector(i["name"], i["institution"], frozenset(i.get("conflicts", ())))
            for i in r.inspectors
        ),
        drawn=tuple(r.drawn),
        created_by=r.created_by,
        created_at=r.created_at,
    )


class SqlQcTx:
    def __init__(self, conn: Connection) -> None:
        self.c = conn

    # evaluations
    def add_evaluation(self, rec: EvaluationRecord) -> int:
        row = {
            "institution_code": rec.institution,
            "item_code": rec.item,
            "group_code": rec.group,
            "scope_code": rec.scope,
            "kind": rec.kind.value,
            "organiser": rec.organiser.value,
            "organiser_name": rec.organiser_name,
            "suggested_organiser": rec.suggested_organiser,
            "round_id": rec.round_id,
            "evaluated_on": rec.evaluated_on,
            "passed": rec.passed,
            "score": rec.score,
            "notes": rec.notes,
            "rectification": rec.rectification,
            "rectification_accepted_on": rec.rectification_accepted_on,
            "rectification_accepted_by": rec.rectification_accepted_by,
            "recorded_by": rec.recorded_by,
            "recorded_at": rec.recorded_at,
            "spot_check_draw_id": rec.spot_check_draw_id,
            "removed_qualifications": list(rec.removed_qualifications),
            "proposal_id": rec.proposal_id,
        }
        return int(self.c.execute(insert(g.qc_evaluation).values(**row)).inserted_primary_key[0])  # type: ignore[index]

    def evaluation(self, evaluation_id: int) -> EvaluationRecord | None:
        r = self.c.execute(
            select(g.qc_evaluation).where(g.qc_evaluation.c.id == evaluation_id)
        ).first()
        return _evaluation(r) if r is not None else None

    def evaluations_for_target(
        self, institution: str, item: str, group: str
    ) -> list[EvaluationRecord]:
        e = g.qc_evaluation.c
        rows = self.c.execute(
            select(g.qc_evaluation)
            .where(e.institution_code == institution, e.item_code == item, e.group_code == group)
            .order_by(e.evaluated_on, e.id)
        )
        return [_evaluation(r) for r in rows]

    def update_evaluation(self, evaluation_id: int, **values: Any) -> None:
        self.c.execute(
            update(g.qc_evaluation).where(g.qc_evaluation.c.id == evaluation_id).values(**values)
        )

    def list_evaluations(
        self, institutions: Sequence[str] | None, limit: int
    ) -> list[EvaluationRecord]:
        e = g.qc_evaluation.c
        q = select(g.qc_evaluation).order_by(e.evaluated_on.desc(), e.id.desc()).limit(limit)
        if institutions is not None:
            q = q.where(e.institution_code.in_(list(institutions)))
        return [_evaluation(r) for r in self.c.execute(q)]

    # qualifications
    def qualifications_of(self, institution: str) -> list[StoredQualification]:
        q = t.qualification.c
        rows = self.c.execute(
            select(t.qualification).where(q.institution_code == institution).order_by(q.id)
        )
        return [StoredQualification(r.id, qualification_from_row(r)) for r in rows]

    def qualifications_by_ids(self, ids: Sequence[int]) -> list[StoredQualification]:
        if not ids:
            return []
        rows = self.c.execute(
            select(t.qualification)
            .where(t.qualification.c.id.in_(list(ids)))
            .order_by(t.qualification.c.id)
        )
        return [StoredQualification(r.id, qualification_from_row(r)) for r in rows]

    def add_qualification(self, q: Qualification, at: datetime) -> int:
        res = self.c.execute(insert(t.qualification).values(**qualification_row(q, at)))
        return int(res.inserted_primary_key[0])  # type: ignore[index]

    def update_qualification(self, qualification_id: int, at: datetime, **values: Any) -> None:
        self.c.execute(
            update(t.qualification)
            .where(t.qualification.c.id == qualification_id)
            .values(updated_at=at, **values)
        )

    def transition_qualification(
        self,
        qualification_id: int,
        at: datetime,
        old: QualificationStatus,
        new: QualificationStatus,
    ) -> bool:
        res = self.c.execute(
            update(t.qualification)
            .where(t.qualification.c.id == qualification_id, t.qualification.c.status == old.value)
            .values(updated_at=at, status=new.value)
        )
        return res.rowcount == 1

    def add_qualification_event(
        self,
        qualification_id: int,
        at: datetime,
        actor: str,
        old: QualificationStatus | None,
        new: QualificationStatus,
        reason: str,
    ) -> None:
        self.c.execute(
            insert(t.qualification_event).values(
                qualification_id=qualification_id,
                at=at,
                actor=actor,
                old_status=old.value if old else None,
                new_status=new.value,
                reason=reason,
            )
        )

    def active_expiring(self, before: date) -> list[StoredQualification]:
        q = t.qualification.c
        rows = self.c.execute(
            select(t.qualification)
            .where(
                q.status == QualificationStatus.ACTIVE.value,
                q.valid_to.is_not(None),
                q.valid_to <= before,
            )
            .order_by(q.valid_to, q.id)
        )
        return [StoredQualification(r.id, qualification_from_row(r)) for r in rows]

    def status_history(self, ids: Sequence[int]) -> dict[int, list[tuple[datetime, str, str]]]:
        out: dict[int, list[tuple[datetime, str, str]]] = {}
        ev = t.qualification_event.c
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            for r in self.c.execute(
                select(t.qualification_event)
                .where(ev.qualification_id.in_(chunk))
                .order_by(ev.at, ev.id)
            ):
                out.setdefault(r.qualification_id, []).append(
                    (r.at, r.old_status or "", r.new_status)
                )
        return out

    # proposals
    def add_proposal(self, rec: ProposalRecord) -> int:
        res = self.c.execute(
            insert(g.suspension_proposal).values(
                institution_code=rec.institution,
                target_kind=rec.target_kind.value,
                item_code=rec.item,
                group_code=rec.group,
                origin=rec.origin,
                reason_code=rec.reason.value,
                reason_text=rec.reason_text,
                evidence=list(rec.evidence),
                status=rec.status.value,
                raised_by=rec.raised_by,
                raised_at=rec.raised_at,
                affected=list(rec.affected),
            )
        )
        return int(res.inserted_primary_key[0])  # type: ignore[index]

    def proposal(self, proposal_id: int, *, for_update: bool = False) -> ProposalRecord | None:
        q = select(g.suspension_proposal).where(g.suspension_proposal.c.id == proposal_id)
        if for_update:
            q = q.with_for_update()
        r = self.c.execute(q).first()
        return _proposal(r) if r is not None else None

    def open_proposal(self, institution: str, target: TargetKind, code: str) -> int | None:
        p = g.suspension_proposal.c
        q = select(p.id).where(
            p.institution_code == institution,
            p.target_kind == target.value,
            p.status.in_([ProposalStatus.PROPOSED.value, ProposalStatus.CONFIRMED.value]),
        )
        if target is TargetKind.ITEM:
            q = q.where(p.item_code == code)
        elif target is TargetKind.GROUP:
            q = q.where(p.group_code == code)
        found = self.c.execute(q.limit(1)).scalar()
        return int(found) if found is not None else None

    def update_proposal(self, proposal_id: int, **values: Any) -> None:
        self.c.execute(
            update(g.suspension_proposal)
            .where(g.suspension_proposal.c.id == proposal_id)
            .values(**values)
        )

    def list_proposals(
        self, statuses: Sequence[ProposalStatus] | None, institutions: Sequence[str] | None
    ) -> list[ProposalRecord]:
        p = g.suspension_proposal.c
        q = select(g.suspension_proposal).order_by(p.raised_at.desc(), p.id.desc())
        if statuses:
            q = q.where(p.status.in_([s.value for s in statuses]))
        if institutions is not None:
            q = q.where(p.institution_code.in_(list(institutions)))
        return [_proposal(r) for r in self.c.execute(q)]

    # spot checks
    def add_draw(self, rec: SpotCheckRecord) -> int:
        res = self.c.execute(
            insert(g.spot_check_draw).values(
                jurisdiction=rec.jurisdiction,
                period=rec.period,
                seed=str(rec.seed),
                institution_count=rec.institution_count,
                inspectors_per_check=rec.inspectors_per_check,
                candidates=list(rec.candidates),
                inspectors=[
                    {
                        "name": i.name,
                        "institution": i.institution,
                        "conflicts": sorted(i.conflicts),
                    }
                    for i in rec.inspectors
                ],
                drawn=list(rec.drawn),
                created_by=rec.created_by,
                created_at=rec.created_at,
            )
        )
        return int(res.inserted_primary_key[0])  # type: ignore[index]

    def draw(self, draw_id: int, *, for_update: bool = False) -> SpotCheckRecord | None:
        q = select(g.spot_check_draw).where(g.spot_check_draw.c.id == draw_id)
        if for_update:
            q = q.with_for_update()
        r = self.c.execute(q).first()
        return _draw(r) if r is not None else None

    def update_draw(self, draw_id: int, drawn: Sequence[dict[str, Any]]) -> None:
        self.c.execute(
            update(g.spot_check_draw)
            .where(g.spot_check_draw.c.id == draw_id)
            .values(drawn=list(drawn))
        )

    def list_draws(self, jurisdiction: str | None) -> list[SpotCheckRecord]:
        d = g.spot_check_draw.c
        q = select(g.spot_check_draw).order_by(d.created_at.desc(), d.id.desc())
        if jurisdiction:
            q = q.where(d.jurisdiction == jurisdiction)
        return [_draw(r) for r in self.c.execute(q)]

    def add_outbox(self, at: datetime, topic: str, payload: dict[str, Any]) -> None:
        self.c.execute(insert(t.outbox).values(at=at, topic=topic, payload=payload))


class SqlQcStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[SqlQcTx]:
        with self.engine.begin() as conn:
            yield SqlQcTx(conn)


# ---------------------------------------------------------------- monitoring

_FINE_KEYS = ("month", "institution_code", "department", "clinician", "item_code")
_INST_KEYS = ("month", "institution_code", "item_code")
_DECLINE_KEYS = (*_FINE_KEYS, "reason_code")
_DECLINE_INST_KEYS = ("month", "institution_code", "reason_code")


def month_bucket(conn: Connection, at: ColumnElement[Any]) -> ColumnElement[Any]:
    """First day of the China-time (UTC+8) calendar month of a stored UTC time, in SQL.
    Must agree with ``huren.domain.monitoring.month_of``."""
    if conn.dialect.name == "postgresql":
        return cast(
            func.date_trunc(
                "month", func.timezone("UTC", at) + literal_column("interval '8 hours'")
            ),
            Date,
        )
    # SQLite keeps DateTime as 'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC
    return func.date(at, "+8 hours", "start of month")


def _upsert(
    conn: Connection, table: Table, keys: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    if not rows:
        return
    counters = [c for c in rows[0] if c not in keys]
    ins: Any = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)
    stmt = ins.on_conflict_do_update(
        index_elements=list(keys),
        set_={c: table.c[c] + ins.excluded[c] for c in counters},
    )
    for i in range(0, len(rows), 1000):
        conn.execute(stmt, rows[i : i + 1000])


def _repeated_without_decision_statement() -> Select[tuple[bool]]:
    """A result repeats a prior of the same item for the same patient at another
    institution within the time limit, with no decision recorded at its own institution."""
    r, d = t.result.c, t.decision.c
    prior = select(r.id).where(
        r.patient_id == bindparam("patient_id"),
        r.item_code == bindparam("item"),
        r.performed_at >= bindparam("since"),
        r.performed_at < bindparam("performed_at"),
        r.institution_code != bindparam("institution"),
        r.status.in_(sorted(COUNTED_RESULT_STATUSES)),
    )
    recorded = select(d.id).where(
        d.patient_id == bindparam("patient_id"),
        d.item_code == bindparam("item"),
        d.at >= bindparam("since"),
        d.at <= bindparam("issued_at"),
        d.institution_code == bindparam("institution"),
    )
    return select(and_(exists(prior), ~exists(recorded)))


_REPEATED_WITHOUT_DECISION = _repeated_without_decision_statement()


class SqlMonitoringTx:
    def __init__(self, conn: Connection) -> None:
        self.c = conn

    def cursor(self, source: str) -> int:
        cur = g.monitoring_cursor.c
        q = select(cur.last_id).where(cur.source == source).with_for_update()
        got = self.c.execute(q).scalar()
        return int(got) if got is not None else 0

    def set_cursor(self, source: str, last_id: int, at: datetime) -> None:
        cur = g.monitoring_cursor.c
        res = self.c.execute(
            update(g.monitoring_cursor)
            .where(cur.source == source)
            .values(last_id=last_id, updated_at=at)
        )
        if res.rowcount == 0:
            self.c.execute(
                insert(g.monitoring_cursor).values(source=source, last_id=last_id, updated_at=at)
            )

    def reminders_after(self, last_id: int, limit: int) -> list[ReminderFact]:
        r = t.reminder.c
        rows = self.c.execute(
            select(
                r.id,
                r.at,
                r.institution_code,
                r.department,
                r.clinician,
                r.item_code,
                r.recognizable,
            )
            .where(r.id > last_id)
            .order_by(r.id)
            .limit(limit)
        )
        return [
            ReminderFact(
                x.id,
                x.at,
                x.institution_code,
                x.department,
                x.clinician,
                x.item_code or "",
                x.recognizable,
            )
            for x in rows
        ]

    def decisions_after(self, last_id: int, limit: int) -> list[DecisionFact]:
        d = t.decision.c
        rows = self.c.execute(
            select(
                d.id,
                d.at,
                d.institution_code,
                d.department,
                d.clinician,
                d.item_code,
                d.action,
                d.reason_code,
                d.saved_fen,
                _PROPOSED.label("proposed"),
            )
            .select_from(_DECISION_WITH_REMINDER)
            .where(d.id > last_id)
            .order_by(d.id)
            .limit(limit)
        )
        return [
            DecisionFact(
                x.id,
                x.at,
                x.institution_code,
                x.department,
                x.clinician,
                x.item_code,
                x.action,
                x.reason_code,
                x.saved_fen,
                bool(x.proposed),
            )
            for x in rows
        ]

    def results_after(self, last_id: int, limit: int) -> list[ResultFact]:
        r = t.result.c
        rows = self.c.execute(
            select(
                r.id,
                r.updated_at,
                r.patient_id,
                r.institution_code,
                r.department,
                r.item_code,
                r.status,
                r.performed_at,
                r.issued_at,
            )
            .where(r.id > last_id)
            .order_by(r.id)
            .limit(limit)
        )
        return [
            ResultFact(
                x.id,
                x.updated_at,
                x.patient_id,
                x.institution_code,
                x.department,
                x.item_code,
                x.status,
                x.performed_at,
                x.issued_at,
            )
            for x in rows
        ]

    def repeated_without_decision(self, res: ResultFact, since: datetime) -> bool:
        # Called once per new result during refresh: the statement is built once
        # (_REPEATED_WITHOUT_DECISION) and only its parameters change.
        return bool(
            self.c.execute(
                _REPEATED_WITHOUT_DECISION,
                {
                    "patient_id": res.patient_id,
                    "item": res.item,
                    "since": since,
                    "performed_at": res.performed_at,
                    "issued_at": res.issued_at,
                    "institution": res.institution,
                },
            ).scalar()
        )

    def apply(self, fine: Mapping[FineKey, Counters], declines: Mapping[DeclineKey, int]) -> None:
        fine_rows: list[dict[str, Any]] = []
        coarse: dict[tuple[date, str, str], Counters] = {}
        for (month, inst, dept, clin, item), c in sorted(fine.items()):
            fine_rows.append(
                {
                    "month": month,
                    "institution_code": inst,
                    "department": dept,
                    "clinician": clin,
                    "item_code": item,
                    **c.as_dict(),
                }
            )
            coarse.setdefault((month, inst, item), Counters())
            coarse[(month, inst, item)] += c
        _upsert(self.c, g.monitoring_month, _FINE_KEYS, fine_rows)
        _upsert(
            self.c,
            g.monitoring_month_inst,
            _INST_KEYS,
            [
                {"month": m, "institution_code": i, "item_code": it, **c.as_dict()}
                for (m, i, it), c in sorted(coarse.items())
            ],
        )
        _upsert(
            self.c,
            g.monitoring_decline,
            _DECLINE_KEYS,
            [
                dict(zip(_DECLINE_KEYS, k, strict=True)) | {"declined": n}
                for k, n in sorted(declines.items())
            ],
        )
        coarse_declines: dict[tuple[date, str, str], int] = {}
        for (month, inst, _dept, _clin, _item, reason), n in declines.items():
            key = (month, inst, reason)
            coarse_declines[key] = coarse_declines.get(key, 0) + n
        _upsert(
            self.c,
            g.monitoring_decline_inst,
            _DECLINE_INST_KEYS,
            [
                dict(zip(_DECLINE_INST_KEYS, k, strict=True)) | {"declined": n}
                for k, n in sorted(coarse_declines.items())
            ],
        )

    def clear_aggregates(self) -> None:
        for table in (
            g.monitoring_month,
            g.monitoring_month_inst,
            g.monitoring_decline,
            g.monitoring_decline_inst,
        ):
            self.c.execute(delete(table))
        self.c.execute(delete(g.monitoring_cursor))

    def max_id(self, source: str) -> int:
        table = {"reminder": t.reminder, "decision": t.decision, "result": t.result}[source]
        return int(self.c.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())

    def rebuild_from_sources(self, upto_reminder: int, upto_decision: int) -> None:
        r, d = t.reminder.c, t.decision.c
        zero = literal(0)
        rem = select(
            month_bucket(self.c, r.at).label("month"),
            r.institution_code.label("institution_code"),
            r.department.label("department"),
            r.clinician.label("clinician"),
            func.coalesce(r.item_code, "").label("item_code"),
            literal(1).label("reminders"),
            case((r.recognizable > 0, 1), else_=0).label("reminders_recognizable"),
            zero.label("accepted"),
            zero.label("declined"),
            zero.label("saved_fen"),
        ).where(r.id <= upto_reminder)
        accepted = d.action == "accepted"
        dec = (
            select(
                month_bucket(self.c, d.at),
                d.institution_code,
                d.department,
                d.clinician,
                d.item_code,
                zero,
                # as the incremental rollup counts it (services.monitoring, DecisionFact)
                case((and_(accepted, not_(_PROPOSED)), 1), else_=0),
                case((accepted, 1), else_=0),
                case((accepted, 0), else_=1),
                case((accepted, d.saved_fen), else_=0),
            )
            .select_from(_DECISION_WITH_REMINDER)
            .where(d.id <= upto_decision, d.action.in_(COUNTED_ACTIONS))
        )
        u = union_all(rem, dec).subquery()
        keys = [u.c.month, u.c.institution_code, u.c.department, u.c.clinician, u.c.item_code]
        sums = [func.sum(u.c[n]) if n in u.c else literal(0) for n in COUNTER_NAMES]
        self.c.execute(
            insert(g.monitoring_month).from_select(
                [*_FINE_KEYS, *COUNTER_NAMES], select(*keys, *sums).group_by(*keys)
            )
        )
        m = g.monitoring_month.c
        coarse_keys = [m.month, m.institution_code, m.item_code]
        self.c.execute(
            insert(g.monitoring_month_inst).from_select(
                [*_INST_KEYS, *COUNTER_NAMES],
                select(*coarse_keys, *[func.sum(m[n]) for n in COUNTER_NAMES]).group_by(
                    *coarse_keys
                ),
            )
        )
        mb = month_bucket(self.c, d.at)
        dkeys = [mb, d.institution_code, d.department, d.clinician, d.item_code, d.reason_code]
        self.c.execute(
            insert(g.monitoring_decline).from_select(
                [*_DECLINE_KEYS, "declined"],
                select(*dkeys, func.count())
                .where(d.id <= upto_decision, d.action == "declined")
                .group_by(*dkeys),
            )
        )
        dl = g.monitoring_decline.c
        coarse_dkeys = [dl.month, dl.institution_code, dl.reason_code]
        self.c.execute(
            insert(g.monitoring_decline_inst).from_select(
                [*_DECLINE_INST_KEYS, "declined"],
                select(*coarse_dkeys, func.sum(dl.declined)).group_by(*coarse_dkeys),
            )
        )


# A decision with the reminder it answers, if any (a report the patient brought has none).
_DECISION_WITH_REMINDER = t.decision.outerjoin(
    t.reminder, t.reminder.c.id == t.decision.c.reminder_id
)


# The decision's reminder had a recognizable prior to propose.
_PROPOSED = func.coalesce(t.reminder.c.recognizable, 0) > 0


class SqlMonitoringStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def transaction(self) -> Iterator[SqlMonitoringTx]:
        with self.engine.begin() as conn:
            yield SqlMonitoringTx(conn)

    def totals(
        self,
        dimension: Dimension,
        institutions: Sequence[str] | None,
        month_from: date,
        month_to: date,
        department: str | None = None,
    ) -> list[tuple[str, Counters]]:
        if institutions is not None and not institutions:
            return []
        fine = dimension in (Dimension.DEPARTMENT, Dimension.CLINICIAN)
        table = g.monitoring_month if fine else g.monitoring_month_inst
        col = {
            Dimension.INSTITUTION: table.c.institution_code,
            Dimension.ITEM: table.c.item_code,
            Dimension.MONTH: table.c.month,
            Dimension.DEPARTMENT: table.c.department if fine else None,
            Dimension.CLINICIAN: table.c.clinician if fine else None,
        }[dimension]
        assert col is not None
        q = (
            select(col.label("k"), *[func.sum(table.c[n]).label(n) for n in COUNTER_NAMES])
            .where(table.c.month >= month_from, table.c.month <= month_to)
            .group_by(col)
        )
        if institutions is not None:
            q = q.where(table.c.institution_code.in_(list(institutions)))
        if department is not None and fine:
            q = q.where(table.c.department == department)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = []
        for r in rows:
            key = r.k
            if isinstance(key, date):
                key = f"{key:%Y-%m}"
            elif dimension is Dimension.MONTH and isinstance(key, str):
                key = key[:7]
            out.append((str(key), Counters(**{n: int(getattr(r, n) or 0) for n in COUNTER_NAMES})))
        return out

    def clinician_names(self, institution: str) -> dict[str, str]:
        accounts = SqlAccounts(self.engine).list_accounts(institution, Role.CLINICIAN)
        return {a.username: a.display_name for a in accounts}

    def declines_by_reason(
        self,
        institutions: Sequence[str] | None,
        month_from: date,
        month_to: date,
        department: str | None = None,
    ) -> list[tuple[str, int]]:
        if institutions is not None and not institutions:
            return []
        # per department from the fine table, otherwise from the per-institution one
        dc = (g.monitoring_decline if department is not None else g.monitoring_decline_inst).c
        q = (
            select(dc.reason_code, func.sum(dc.declined).label("n"))
            .where(dc.month >= month_from, dc.month <= month_to)
            .group_by(dc.reason_code)
            .order_by(func.sum(dc.declined).desc())
        )
        if institutions is not None:
            q = q.where(dc.institution_code.in_(list(institutions)))
        if department is not None:
            q = q.where(g.monitoring_decline.c.department == department)
        with self.engine.connect() as conn:
            return [(r.reason_code, int(r.n)) for r in conn.execute(q)]

    def institutions_with_results(self) -> frozenset[str]:
        i, r = t.institution.c, t.result.c
        q = select(i.code).where(exists(select(r.id).where(r.institution_code == i.code)))
        with self.engine.connect() as conn:
            return frozenset(conn.scalars(q))


class SqlCorrectionBacklog:
    """Open correction requests (R7) from the sharing area's ``correction_request`` table,
    looked up by name so that this module does not depend on that area; None while the
    table does not exist (the dashboard then shows 暂无数据)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open_corrections(self, institutions: Sequence[str] | None) -> int | None:
        with self.engine.connect() as conn:
            insp = inspect(conn)
            if not insp.has_table("correction_request"):
                return None
            table = Table("correction_request", MetaData(), autoload_with=conn)
            if "status" not in table.c:
                return None
            q = select(func.count()).select_from(table).where(table.c.status == "open")
            if institutions is not None and "producing_institution" in table.c:
                q = q.where(table.c.producing_institution.in_(list(institutions)))
            return int(conn.execute(q).scalar_one())
