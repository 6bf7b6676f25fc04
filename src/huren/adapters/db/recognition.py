"""Point of care in SQL: the reads the reminder needs (patient by identifier, the newest
prior results per ordered item, their observations, open correction requests) and the
writes it makes (``reminder``, ``decision``, ``cds_card``, ``audit_event``).

The prior-results query reads at most ``limit`` rows per item through the index
``ix_result_patient_item (patient_id, item_code, performed_at)``, newest first (one short
range scan per item), so its cost does not grow with the number of results stored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    union_all,
    update,
)

from huren.adapters.db.results import _obs_from_row, _stored, utc
from huren.adapters.db.tables import (
    audit_event,
    decision,
    institution,
    observation,
    patient,
    patient_identifier,
    reminder,
    result,
)
from huren.adapters.db.tables_recognition import cds_card
from huren.adapters.db.tables_sharing import correction_request
from huren.domain.results import ObservationValue, StoredResult
from huren.services.recognition import (
    AuditRecord,
    CardRecord,
    DecisionRecord,
    ReminderRecord,
    StoredCard,
)

_PRIOR_COLUMNS = [c for c in result.c if c.name not in ("content_hash", "source_message_id")]

# Statements built once: the reminder runs on every order, so SQLAlchemy's compiled-SQL
# cache must hit and no statement construction may happen per call.
_REMINDER_FIELDS = [f.name for f in fields(ReminderRecord)]
_PRIORS_BY_COUNT: dict[int, Any] = {}


def _priors_statement(n: int) -> Any:
    """Newest ``lim`` results of patient ``pid`` for each of the codes ``c0…c{n-1}``: one
    statement, UNION ALL of per-item index range scans; built once per ``n``."""
    stmt = _PRIORS_BY_COUNT.get(n)
    if stmt is None:
        parts = [
            select(*_PRIOR_COLUMNS)
            .where(
                result.c.patient_id == bindparam("pid"), result.c.item_code == bindparam(f"c{i}")
            )
            .order_by(result.c.performed_at.desc())
            .limit(bindparam("lim"))
            .subquery(f"p{i}")
            for i in range(n)
        ]
        stmt = union_all(*(select(p) for p in parts)) if n > 1 else select(parts[0])
        _PRIORS_BY_COUNT[n] = stmt
    return stmt


_OBSERVATIONS = (
    select(observation)
    .where(observation.c.result_id.in_(bindparam("ids", expanding=True)))
    .order_by(observation.c.result_id, observation.c.seq)
)
_REMINDER_INSERT = insert(reminder)
# The ids of the rows just inserted for one request, in insertion order: found through
# ix_reminder_at (all rows of one check share ``at``).
_REMINDER_IDS = (
    select(reminder.c.id)
    .where(reminder.c.at == bindparam("at"), reminder.c.request_id == bindparam("rid"))
    .order_by(reminder.c.id)
)
_FAMILY = select(patient.c.id, patient.c.merged_into).where(
    or_(patient.c.id == bindparam("pid"), patient.c.merged_into == bindparam("pid"))
)
_AUDIT_INSERT = insert(audit_event)
_OPEN_CORRECTIONS = (
    select(correction_request.c.result_id, func.count())
    .where(
        correction_request.c.result_id.in_(bindparam("ids", expanding=True)),
        correction_request.c.status == "open",
    )
    .group_by(correction_request.c.result_id)
)


class SqlRecognitionTx:
    """One transaction of the recognition service (implements ``RecognitionTx``)."""

    def __init__(self, conn: Connection) -> None:
        self._c = conn

    # -- patients
    def patient_by_keys(self, keys: Sequence[tuple[str, str, str]]) -> int | None:
        """The patient (survivor of merges) holding the first known identifier key."""
        if not keys:
            return None
        conds = [
            and_(
                patient_identifier.c.kind == k,
                patient_identifier.c.assigner == a,
                patient_identifier.c.value_hash == h,
            )
            for k, a, h in keys
        ]
        rows = self._c.execute(
            select(
                patient_identifier.c.kind,
                patient_identifier.c.assigner,
                patient_identifier.c.value_hash,
                patient.c.id,
                patient.c.merged_into,
            )
            .join(patient, patient.c.id == patient_identifier.c.patient_id)
            .where(or_(*conds))
        ).all()
        found = {(r.kind, r.assigner, r.value_hash): (r.id, r.merged_into) for r in rows}
        for key in keys:  # the caller orders keys strongest first
            if key in found:
                pid, merged_into = found[key]
                return self._survivor(pid, merged_into)
        return None

    def _survivor(self, patient_id: int, merged_into: int | None) -> int:
        seen = {patient_id}
        while merged_into is not None and merged_into not in seen:
            seen.add(merged_into)
            patient_id = merged_into
            merged_into = self._c.execute(
                select(patient.c.merged_into).where(patient.c.id == patient_id)
            ).scalar_one_or_none()
        return patient_id

    def patient_family(self, patient_id: int) -> list[int] | None:
        """The patient (after merges) and the patients merged into it; None if unknown."""
        rows = self._c.execute(_FAMILY, {"pid": patient_id}).all()
        own = next((r for r in rows if r.id == patient_id), None)
        if own is None:
            return None
        if own.merged_into is None:
            return [patient_id, *(int(r.id) for r in rows if r.id != patient_id)]
        survivor = self._survivor(own.id, own.merged_into)
        return self.patient_family(survivor)

    # -- results
    def priors(
        self, patient_ids: Sequence[int], item_codes: Sequence[str], limit: int
    ) -> dict[str, list[StoredResult]]:
        """The newest ``limit`` results per item of these patients, with observations."""
        out: dict[str, list[StoredResult]] = {code: [] for code in item_codes}
        if not item_codes or not patient_ids:
            return out
        stmt = _priors_statement(len(item_codes))
        params: dict[str, Any] = {f"c{i}": code for i, code in enumerate(item_codes)}
        params["lim"] = limit
        rows = [row for pid in patient_ids for row in self._c.execute(stmt, {**params, "pid": pid})]
        if not rows:
            return out
        obs = self._observations([r.id for r in rows])
        for r in rows:
            out[r.item_code].append(_stored(r, obs.get(r.id, ())))
        return out

    def _observations(self, result_ids: Sequence[int]) -> dict[int, list[ObservationValue]]:
        by_result: dict[int, list[ObservationValue]] = {}
        for o in self._c.execute(_OBSERVATIONS, {"ids": list(result_ids)}):
            by_result.setdefault(o.result_id, []).append(_obs_from_row(o))
        return by_result

    def result(self, result_id: int) -> StoredResult | None:
        row = self._c.execute(select(*_PRIOR_COLUMNS).where(result.c.id == result_id)).first()
        if row is None:
            return None
        obs = self._observations([result_id])
        return _stored(row, obs.get(result_id, ()))

    def open_corrections(self, result_ids: Sequence[int]) -> dict[int, int]:
        if not result_ids:
            return {}
        rows = self._c.execute(_OPEN_CORRECTIONS, {"ids": list(result_ids)}).all()
        return {int(r[0]): int(r[1]) for r in rows}

    def institution_names(self, codes: Sequence[str]) -> dict[str, str]:
        rows = self._c.execute(
            select(institution.c.code, institution.c.name).where(
                institution.c.code.in_(list(codes))
            )
        )
        return {r.code: r.name for r in rows}

    # -- writes
    def record_reminders(self, rows: Sequence[ReminderRecord]) -> list[int]:
        if not rows:
            return []
        at = utc(rows[0].at)
        request_id = rows[0].request_id
        if any(r.request_id != request_id or r.at != rows[0].at for r in rows):
            raise ValueError("reminders of one call share at and request_id")
        params = []
        for r in rows:
            values = {f: getattr(r, f) for f in _REMINDER_FIELDS}
            values["at"] = at
            params.append(values)
        self._c.execute(_REMINDER_INSERT, params)
        ids = self._c.execute(_REMINDER_IDS, {"at": at, "rid": request_id}).scalars().all()
        return [int(i) for i in ids[-len(rows) :]]

    def reminder_institution(self, reminder_id: int) -> str | None:
        return self._c.execute(
            select(reminder.c.institution_code).where(reminder.c.id == reminder_id)
        ).scalar_one_or_none()

    def record_decision(self, row: DecisionRecord) -> int:
        values = {**asdict(row), "at": utc(row.at)}
        return int(self._c.execute(insert(decision).returning(decision.c.id), values).scalar_one())

    def record_audit(self, row: AuditRecord) -> None:
        values = {f.name: getattr(row, f.name) for f in fields(AuditRecord)}
        values["at"] = utc(row.at)
        self._c.execute(_AUDIT_INSERT, values)

    def record_cards(self, cards: Sequence[CardRecord]) -> None:
        if cards:
            self._c.execute(insert(cds_card), [{**asdict(c), "at": utc(c.at)} for c in cards])

    def card(self, uuid: str) -> StoredCard | None:
        row = self._c.execute(select(cds_card).where(cds_card.c.uuid == uuid)).first()
        if row is None:
            return None
        values: dict[str, Any] = dict(row._mapping)
        values["at"] = utc(values["at"])
        return StoredCard(**values)

    def link_card_decision(self, uuid: str, decision_id: int) -> None:
        self._c.execute(
            update(cds_card).where(cds_card.c.uuid == uuid).values(decision_id=decision_id)
        )


class SqlRecognitionStore:
    """Implements ``huren.services.recognition.RecognitionStore``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def transaction(self) -> Iterator[SqlRecognitionTx]:
        with self._engine.begin() as conn:
            yield SqlRecognitionTx(conn)

    @contextmanager
    def reading(self) -> Iterator[SqlRecognitionTx]:
        with self._engine.connect() as conn:
            yield SqlRecognitionTx(conn)
