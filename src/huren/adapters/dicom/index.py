"""The imaging index in the database (implements ``services.imaging.ImagingIndex``).

Indexing is a group commit: C-STORE handlers on concurrent associations each call
``add_instance``; the first to find no commit in progress becomes the leader and writes
every instance waiting at that moment in one transaction, with one commit, while the
others wait; each call returns only once the transaction holding its instance has
committed. On SQLite (WAL, synchronous=NORMAL) a commit survives the process being
killed, so an instance acknowledged with C-STORE success is never lost. One writer at a
time also spares SQLite's busy-wait between competing writers.

Per instance the transaction runs one look-up of the SOP Instance UID and one insert;
study and series ids are remembered once committed (rows are never deleted), and the
counters of a series and its study are updated once per batch. An instance already known
(same or other content), or whose study belongs to another institution, writes nothing.
If anything unexpected happens (a concurrent writer in another process, a database
error) the batch is rolled back and each instance is written alone by ``_add``, in its
own transaction with ``INSERT … ON CONFLICT DO NOTHING`` so that nothing of a refused
instance stays."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from huren.adapters.db.engine import begin_write
from huren.adapters.db.tables import audit_event, institution, patient_identifier, result
from huren.adapters.db.tables_imaging import (
    dicom_destination,
    dicom_event,
    imaging_instance,
    imaging_series,
    imaging_study,
)
from huren.services.imaging import (
    AddOutcome,
    AuditRecord,
    DicomEvent,
    EventKind,
    InstanceRow,
    MoveDestination,
    NewInstance,
    ReportRow,
    SeriesRow,
    Source,
    StudyQuery,
    StudyRow,
)

_SEP = "/"  # modalities are kept as "/CT/SR/" so that "/CT/" matches one exactly


class _Rollback(Exception):
    def __init__(self, outcome: AddOutcome) -> None:
        self.outcome = outcome


class _Race(Exception):
    """Another writer got there between our look-up and our insert: redo one by one."""


def _clean(text: str) -> str:
    """Text for the event log without U+0000, which PostgreSQL cannot store: a refusal
    quoting what a peer sent must still be logged."""
    return text.replace("\x00", "\\0") if "\x00" in text else text


def _already_durable() -> None:
    return None


@dataclass(slots=True)
class _Waiting:
    rec: NewInstance
    durable: Callable[[], None]
    outcome: AddOutcome | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class _StudyIds:
    id: int
    institution: str
    modalities: frozenset[str]


@dataclass(slots=True)
class _Batch:
    """What one group-commit transaction changed, applied to the caches after commit."""

    studies: dict[str, _StudyIds] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    series_added: dict[int, int] = field(default_factory=dict)  # series id → instances
    study_added: dict[int, list[int]] = field(default_factory=dict)  # id → [inst, series]
    new_modalities: dict[int, set[str]] = field(default_factory=dict)


_CACHE_LIMIT = 20_000  # study and series ids remembered (cleared whole when exceeded)


class SqlImagingIndex:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._waiting: list[_Waiting] = []
        self._leader = False
        self._studies: dict[str, _StudyIds] = {}
        self._series: dict[str, int] = {}
        self._build_statements()

    def _build_statements(self) -> None:
        """Statements built once: executing a prepared Core statement skips SQLAlchemy's
        per-call construction and cache-key work (~1 ms per instance before)."""
        ins = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
        i, se, st = imaging_instance.c, imaging_series.c, imaging_study.c
        self._q_instance_hash = select(i.content_hash).where(i.sop_uid == bindparam("sop_uid"))
        self._q_study = select(st.id, st.institution_code, st.modalities).where(
            st.study_uid == bindparam("study_uid")
        )
        self._q_series = select(se.id).where(se.series_uid == bindparam("series_uid"))
        self._ins_study = (
            ins(imaging_study).on_conflict_do_nothing(index_elements=["study_uid"]).returning(st.id)
        )
        self._ins_series = (
            ins(imaging_series)
            .on_conflict_do_nothing(index_elements=["series_uid"])
            .returning(se.id)
        )
        self._ins_instance = (
            ins(imaging_instance).on_conflict_do_nothing(index_elements=["sop_uid"]).returning(i.id)
        )
        self._upd_series = (
            update(imaging_series)
            .where(se.id == bindparam("b_id"))
            .values(
                instance_count=se.instance_count + bindparam("b_instances"),
                updated_at=bindparam("b_now"),
            )
        )
        self._upd_study = (
            update(imaging_study)
            .where(st.id == bindparam("b_id"))
            .values(
                instance_count=st.instance_count + bindparam("b_instances"),
                series_count=st.series_count + bindparam("b_series"),
                updated_at=bindparam("b_now"),
            )
        )
        # Adds "CT/" to "/MR/" unless present: race-free against other writers.
        tag = literal(_SEP) + bindparam("b_modality") + literal(_SEP)
        self._upd_modality = (
            update(imaging_study)
            .where(st.id == bindparam("b_id"))
            .values(
                modalities=case(
                    (st.modalities.contains(tag), st.modalities),
                    else_=func.coalesce(func.nullif(st.modalities, ""), _SEP)
                    + bindparam("b_modality")
                    + literal(_SEP),
                )
            )
        )

    # ------------------------------------------------------------ helpers
    def _insert_ignore(self, table: Any, values: dict[str, Any], key: str) -> Any:
        ins = (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)
        # RETURNING tells whether a row was inserted on both backends (rowcount does not
        # reliably with ON CONFLICT DO NOTHING).
        return (
            ins.values(**values).on_conflict_do_nothing(index_elements=[key]).returning(table.c.id)
        )

    # ------------------------------------------------------------ AE titles
    def _ae_map(self) -> dict[str, str]:
        with self.engine.connect() as c:
            rows = c.execute(select(institution.c.code, institution.c.ae_titles)).all()
        out: dict[str, str] = {}
        for code, titles in rows:
            for t in (titles or "").split(","):
                if t.strip():
                    out[t.strip()] = code
        return out

    def institution_for_ae(self, ae_title: str) -> str | None:
        return self._ae_map().get(ae_title.strip())

    def known_ae_titles(self) -> list[str]:
        return sorted(self._ae_map())

    # ------------------------------------------------------------ intake
    def instance_hash(self, sop_uid: str) -> str | None:
        with self.engine.connect() as c:
            value = c.execute(self._q_instance_hash, {"sop_uid": sop_uid}).scalar()
        return str(value) if value is not None else None

    def add_instance(
        self, rec: NewInstance, before_commit: Callable[[], None] = _already_durable
    ) -> AddOutcome:
        """Group commit (see the module docstring): returns once committed.
        ``before_commit`` makes the instance's file durable; the transaction indexing the
        instance commits only after it returns (an error there refuses this instance
        only)."""
        me = _Waiting(rec, before_commit)
        with self._lock:
            self._waiting.append(me)
            while True:
                if me.outcome is not None or me.error is not None:
                    break
                if not self._leader:
                    self._leader = True
                    batch, self._waiting = self._waiting, []
                    self._lock.release()
                    try:
                        self._commit(batch)
                    except BaseException as exc:  # e.g. interrupted: nobody waits forever
                        for w in batch:
                            if w.outcome is None and w.error is None:
                                w.error = exc
                        raise
                    finally:
                        self._lock.acquire()
                        self._leader = False
                        self._done.notify_all()
                    continue
                self._done.wait()
        if me.error is not None:
            raise me.error
        assert me.outcome is not None
        return me.outcome

    def _commit(self, batch: list[_Waiting]) -> None:
        """One transaction for the whole batch; on any failure each instance alone.
        The files are made durable before the transaction begins (never an index row
        without its file): on SQLite the transaction holds the one writer lock, and a
        flush inside it kept intake's writers waiting on the disk too."""
        try:
            for w in batch:
                w.durable()
            changes = _Batch()
            with begin_write(self.engine) as c:
                outcomes = [self._add_batched(c, w.rec, changes) for w in batch]
                self._apply_counters(c, changes, batch[-1].rec.received_at)
        except Exception:
            self._forget()
            for w in batch:
                try:
                    w.durable()
                    w.outcome = self._add_alone(w.rec)
                except Exception as exc:  # handed to the waiting caller
                    w.error = exc
            return
        self._remember(changes)
        for w, outcome in zip(batch, outcomes, strict=True):
            w.outcome = outcome

    def _add_alone(self, rec: NewInstance) -> AddOutcome:
        try:
            with begin_write(self.engine) as c:
                return self._add(c, rec)
        except _Rollback as rb:
            return rb.outcome

    # -------------------------------------------- batched path
    def _study_of(self, c: Connection, rec: NewInstance, changes: _Batch) -> _StudyIds:
        h = rec.header
        known = changes.studies.get(h.study_uid) or self._studies.get(h.study_uid)
        if known is not None:
            return known
        row = c.execute(self._q_study, {"study_uid": h.study_uid}).first()
        if row is None:
            new_id = c.execute(self._ins_study, self._study_values(rec)).scalar()
            if new_id is None:
                raise _Race
            ids = _StudyIds(int(new_id), rec.institution, frozenset((h.modality,)) - {""})
        else:
            ids = _StudyIds(
                int(row.id),
                row.institution_code,
                frozenset(m for m in (row.modalities or "").split(_SEP) if m),
            )
        changes.studies[h.study_uid] = ids
        return ids

    def _series_of(self, c: Connection, rec: NewInstance, study: _StudyIds, changes: _Batch) -> int:
        h = rec.header
        known = changes.series.get(h.series_uid) or self._series.get(h.series_uid)
        if known is not None:
            return known
        series_id = c.execute(self._q_series, {"series_uid": h.series_uid}).scalar()
        if series_id is None:
            series_id = c.execute(self._ins_series, self._series_values(rec, study.id)).scalar()
            if series_id is None:
                raise _Race
            counts = changes.study_added.setdefault(study.id, [0, 0])
            counts[1] += 1
        changes.series[h.series_uid] = int(series_id)
        return int(series_id)

    def _add_batched(self, c: Connection, rec: NewInstance, changes: _Batch) -> AddOutcome:
        h = rec.header
        known_hash = c.execute(self._q_instance_hash, {"sop_uid": h.sop_uid}).scalar()
        if known_hash is not None:
            return "same" if known_hash == rec.content_hash else "conflict"
        study = self._study_of(c, rec, changes)
        if study.institution != rec.institution:
            # A Study Instance UID is globally unique; another institution sending it is a
            # conflict, not a merge.
            return "conflict"
        series_id = self._series_of(c, rec, study, changes)
        added = c.execute(self._ins_instance, self._instance_values(rec, study.id, series_id))
        if added.scalar() is None:
            raise _Race
        changes.series_added[series_id] = changes.series_added.get(series_id, 0) + 1
        changes.study_added.setdefault(study.id, [0, 0])[0] += 1
        if h.modality and h.modality not in study.modalities:
            changes.new_modalities.setdefault(study.id, set()).add(h.modality)
            study.modalities = study.modalities | {h.modality}
        return "added"

    def _apply_counters(self, c: Connection, changes: _Batch, now: datetime) -> None:
        for series_id, n in changes.series_added.items():
            c.execute(self._upd_series, {"b_id": series_id, "b_instances": n, "b_now": now})
        for study_id, (instances, series) in changes.study_added.items():
            c.execute(
                self._upd_study,
                {"b_id": study_id, "b_instances": instances, "b_series": series, "b_now": now},
            )
        for study_id, modalities in changes.new_modalities.items():
            for m in sorted(modalities):
                c.execute(self._upd_modality, {"b_id": study_id, "b_modality": m})

    def _remember(self, changes: _Batch) -> None:
        with self._lock:
            if len(self._studies) > _CACHE_LIMIT or len(self._series) > _CACHE_LIMIT:
                self._studies.clear()
                self._series.clear()
            self._studies.update(changes.studies)
            self._series.update(changes.series)

    def _forget(self) -> None:
        with self._lock:
            self._studies.clear()
            self._series.clear()

    @staticmethod
    def _study_values(rec: NewInstance) -> dict[str, Any]:
        h, now = rec.header, rec.received_at
        return {
            "study_uid": h.study_uid,
            "institution_code": rec.institution,
            "patient_hash": rec.patient_hash,
            "patient_global_hash": rec.patient_global_hash,
            "patient_id_enc": rec.patient_id_enc,
            # The masks are for display: a long name (its PN value may hold 3 × 64
            # characters) is shown cut, never refused for it.
            "patient_id_masked": rec.patient_id_masked[:64],
            "patient_name_enc": rec.patient_name_enc,
            "patient_name_masked": rec.patient_name_masked[:64],
            "patient_sex": h.patient_sex,
            "patient_birth_date": h.patient_birth_date,
            "accession_number": h.accession_number,
            "study_id": h.study_id,
            "study_date": h.study_date,
            "study_time": h.study_time,
            "study_description": h.study_description,
            "modalities": f"{_SEP}{h.modality}{_SEP}" if h.modality else _SEP,
            "series_count": 0,
            "instance_count": 0,
            "received_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _series_values(rec: NewInstance, study_id: int) -> dict[str, Any]:
        h, now = rec.header, rec.received_at
        return {
            "study_id": study_id,
            "series_uid": h.series_uid,
            "modality": h.modality,
            "series_number": h.series_number,
            "series_description": h.series_description,
            "body_part": h.body_part,
            "slice_thickness": h.slice_thickness,
            "derived": h.derived,
            "image_type": "\\".join(h.image_type)[:100],
            "instance_count": 0,
            "received_at": now,
            "updated_at": now,
        }

    @staticmethod
    def _instance_values(rec: NewInstance, study_id: int, series_id: int) -> dict[str, Any]:
        h = rec.header
        return {
            "study_id": study_id,
            "series_id": series_id,
            "sop_uid": h.sop_uid,
            "sop_class_uid": h.sop_class_uid,
            "transfer_syntax": h.transfer_syntax,
            "instance_number": h.instance_number,
            "rows": h.rows,
            "columns": h.columns,
            "number_of_frames": h.number_of_frames,
            "slice_thickness": h.slice_thickness,
            "image_type": "\\".join(h.image_type)[:100],
            "content_hash": rec.content_hash,
            "size_bytes": rec.size_bytes,
            "source": rec.source.value,
            "calling_ae": rec.calling_ae[:16],
            "received_at": rec.received_at,
        }

    # -------------------------------------------- one instance alone (fallback)

    def _add(self, c: Connection, rec: NewInstance) -> AddOutcome:
        h, now = rec.header, rec.received_at
        c.execute(
            self._insert_ignore(
                imaging_study,
                self._study_values(rec),
                "study_uid",
            )
        )
        study = c.execute(
            select(
                imaging_study.c.id, imaging_study.c.modalities, imaging_study.c.institution_code
            ).where(imaging_study.c.study_uid == h.study_uid)
        ).one()
        if study.institution_code != rec.institution:
            # A Study Instance UID is globally unique; another institution sending it is a
            # conflict, not a merge.
            raise _Rollback("conflict")
        new_series = (
            c.execute(
                self._insert_ignore(
                    imaging_series,
                    self._series_values(rec, study.id),
                    "series_uid",
                )
            ).first()
            is not None
        )
        series_id = c.execute(
            select(imaging_series.c.id).where(imaging_series.c.series_uid == h.series_uid)
        ).scalar_one()
        added = (
            c.execute(
                self._insert_ignore(
                    imaging_instance,
                    self._instance_values(rec, study.id, series_id),
                    "sop_uid",
                )
            ).first()
            is not None
        )
        if not added:
            known = c.execute(
                select(imaging_instance.c.content_hash).where(
                    imaging_instance.c.sop_uid == h.sop_uid
                )
            ).scalar()
            raise _Rollback("same" if known == rec.content_hash else "conflict")
        c.execute(
            update(imaging_series)
            .where(imaging_series.c.id == series_id)
            .values(instance_count=imaging_series.c.instance_count + 1, updated_at=now)
        )
        modalities = study.modalities or _SEP
        if h.modality and f"{_SEP}{h.modality}{_SEP}" not in modalities:
            modalities = f"{modalities}{h.modality}{_SEP}"
        c.execute(
            update(imaging_study)
            .where(imaging_study.c.id == study.id)
            .values(
                instance_count=imaging_study.c.instance_count + 1,
                series_count=imaging_study.c.series_count + (1 if new_series else 0),
                modalities=modalities,
                updated_at=now,
            )
        )
        return "added"

    def log_event(self, event: DicomEvent) -> None:
        with self.engine.begin() as c:
            c.execute(
                dicom_event.insert().values(
                    at=event.at,
                    channel=event.channel.value,
                    kind=event.kind.value,
                    calling_ae=_clean(event.calling_ae)[:16],
                    peer=_clean(event.peer)[:64],
                    institution_code=event.institution,
                    sop_uid=_clean(event.sop_uid)[:64],
                    status=event.status,
                    message=_clean(event.message),
                )
            )

    def events(self, limit: int = 100) -> list[DicomEvent]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(dicom_event).order_by(dicom_event.c.id.desc()).limit(limit)
            ).all()
        return [
            DicomEvent(
                at=r.at,
                channel=Source(r.channel),
                kind=EventKind(r.kind),
                message=r.message,
                calling_ae=r.calling_ae,
                peer=r.peer,
                institution=r.institution_code,
                sop_uid=r.sop_uid,
                status=r.status,
            )
            for r in rows
        ]

    # ------------------------------------------------------------ queries
    def _study_filters(self, q: StudyQuery) -> list[Any]:
        s = imaging_study.c
        f: list[Any] = []
        if q.patient_global_hash:
            f.append(s.patient_global_hash == q.patient_global_hash)
        if q.study_uids:
            f.append(s.study_uid.in_(q.study_uids))
        if q.accession_number:
            f.append(s.accession_number == q.accession_number)
        if q.study_date_from is not None:
            f.append(s.study_date >= q.study_date_from)
        if q.study_date_to is not None:
            f.append(s.study_date <= q.study_date_to)
        if q.modality:
            f.append(s.modalities.contains(f"{_SEP}{q.modality}{_SEP}", autoescape=True))
        if q.institution:
            f.append(s.institution_code == q.institution)
        return f

    def _series_filters(self, q: StudyQuery) -> list[Any]:
        se = imaging_series.c
        f: list[Any] = []
        if q.series_uids:
            f.append(se.series_uid.in_(q.series_uids))
        if q.series_modality:
            f.append(se.modality == q.series_modality)
        if q.series_number is not None:
            f.append(se.series_number == q.series_number)
        return f

    @staticmethod
    def _study_row(r: Any) -> StudyRow:
        return StudyRow(
            id=r.id,
            study_uid=r.study_uid,
            institution=r.institution_code,
            patient_hash=r.patient_hash,
            patient_id_enc=r.patient_id_enc,
            patient_name_enc=r.patient_name_enc,
            patient_sex=r.patient_sex,
            patient_birth_date=r.patient_birth_date,
            accession_number=r.accession_number,
            study_id=r.study_id,
            study_date=r.study_date,
            study_time=r.study_time,
            study_description=r.study_description,
            modalities=tuple(m for m in (r.modalities or "").split(_SEP) if m),
            series_count=r.series_count,
            instance_count=r.instance_count,
            received_at=r.received_at,
        )

    @staticmethod
    def _series_row(r: Any) -> SeriesRow:
        return SeriesRow(
            id=r.id,
            study_uid=r.study_uid,
            series_uid=r.series_uid,
            modality=r.modality,
            series_number=r.series_number,
            series_description=r.series_description,
            body_part=r.body_part,
            slice_thickness=r.slice_thickness,
            derived=bool(r.derived),
            instance_count=r.instance_count,
            received_at=r.received_at,
        )

    def studies(self, q: StudyQuery) -> list[StudyRow]:
        stmt = select(imaging_study).where(*self._study_filters(q))
        if q.series_uids or q.series_modality or q.series_number is not None:
            sub = select(imaging_series.c.study_id).where(*self._series_filters(q))
            stmt = stmt.where(imaging_study.c.id.in_(sub))
        stmt = (
            stmt.order_by(imaging_study.c.study_date.desc(), imaging_study.c.id.desc())
            .limit(q.limit)
            .offset(q.offset)
        )
        with self.engine.connect() as c:
            return [self._study_row(r) for r in c.execute(stmt)]

    def _series_select(self) -> Select[Any]:
        return select(imaging_series, imaging_study.c.study_uid).join(
            imaging_study, imaging_study.c.id == imaging_series.c.study_id
        )

    def series(self, q: StudyQuery) -> list[SeriesRow]:
        stmt = (
            self._series_select()
            .where(*self._study_filters(q), *self._series_filters(q))
            .order_by(
                imaging_series.c.study_id, imaging_series.c.series_number, imaging_series.c.id
            )
            .limit(q.limit)
            .offset(q.offset)
        )
        with self.engine.connect() as c:
            return [self._series_row(r) for r in c.execute(stmt)]

    def instances(self, q: StudyQuery) -> list[InstanceRow]:
        i = imaging_instance.c
        stmt = (
            select(
                imaging_instance,
                imaging_study.c.study_uid,
                imaging_study.c.institution_code,
                imaging_series.c.series_uid,
            )
            .join(imaging_series, imaging_series.c.id == i.series_id)
            .join(imaging_study, imaging_study.c.id == i.study_id)
            .where(*self._study_filters(q), *self._series_filters(q))
        )
        if q.sop_uids:
            stmt = stmt.where(i.sop_uid.in_(q.sop_uids))
        if q.sop_class_uid:
            stmt = stmt.where(i.sop_class_uid == q.sop_class_uid)
        if q.instance_number is not None:
            stmt = stmt.where(i.instance_number == q.instance_number)
        stmt = stmt.order_by(i.series_id, i.instance_number, i.id).limit(q.limit).offset(q.offset)
        with self.engine.connect() as c:
            return [
                InstanceRow(
                    study_uid=r.study_uid,
                    series_uid=r.series_uid,
                    sop_uid=r.sop_uid,
                    sop_class_uid=r.sop_class_uid,
                    transfer_syntax=r.transfer_syntax,
                    instance_number=r.instance_number,
                    rows=r.rows,
                    columns=r.columns,
                    number_of_frames=r.number_of_frames,
                    content_hash=r.content_hash,
                    institution=r.institution_code,
                )
                for r in c.execute(stmt)
            ]

    def studies_by_keys(self, pairs: Sequence[tuple[str, str, str]]) -> list[StudyRow]:
        if not pairs:
            return []
        s = imaging_study.c
        uids = sorted({uid for _, _, uid in pairs if uid})
        accs = sorted({(inst, acc) for inst, acc, _ in pairs if acc})
        conds: list[Any] = []
        if uids:
            conds.append(s.study_uid.in_(uids))
        if accs:
            conds.append(
                and_(
                    s.accession_number.in_(sorted({a for _, a in accs})),
                    s.institution_code.in_(sorted({i for i, _ in accs})),
                )
            )
        if not conds:
            return []
        with self.engine.connect() as c:
            rows = [self._study_row(r) for r in c.execute(select(imaging_study).where(or_(*conds)))]
        wanted = set(accs)
        return [
            r for r in rows if r.study_uid in uids or (r.institution, r.accession_number) in wanted
        ]

    def series_of_studies(self, study_uids: Sequence[str]) -> dict[str, list[SeriesRow]]:
        if not study_uids:
            return {}
        stmt = (
            self._series_select()
            .where(imaging_study.c.study_uid.in_(list(study_uids)))
            .order_by(imaging_series.c.series_number, imaging_series.c.id)
        )
        out: dict[str, list[SeriesRow]] = {}
        with self.engine.connect() as c:
            for r in c.execute(stmt):
                out.setdefault(r.study_uid, []).append(self._series_row(r))
        return out

    # ------------------------------------------------------------ reports
    def _report_rows(self, c: Connection, rows: Sequence[Any]) -> list[ReportRow]:
        patient_ids = sorted({r.patient_id for r in rows})
        hashes: dict[tuple[int, str], set[str]] = {}
        if patient_ids:
            pi = patient_identifier.c
            for pid, assigner, h in c.execute(
                select(pi.patient_id, pi.assigner, pi.value_hash).where(
                    pi.patient_id.in_(patient_ids), pi.kind == "mrn"
                )
            ):
                hashes.setdefault((pid, assigner), set()).add(h)
        return [
            ReportRow(
                result_id=r.id,
                patient_id=r.patient_id,
                institution=r.institution_code,
                item_code=r.item_code,
                category=r.category,
                report_no=r.report_no,
                local_name=r.local_name,
                status=r.status,
                performed_at=r.performed_at,
                issued_at=r.issued_at,
                findings=r.findings,
                conclusion=r.conclusion,
                signer=r.signer,
                accession_number=r.accession_number,
                study_uid=r.study_uid,
                patient_hashes=frozenset(hashes.get((r.patient_id, r.institution_code), ())),
                comment=r.comment,
            )
            for r in rows
        ]

    def reports(self, result_ids: Sequence[int]) -> list[ReportRow]:
        if not result_ids:
            return []
        with self.engine.connect() as c:
            rows = c.execute(select(result).where(result.c.id.in_(list(result_ids)))).all()
            return self._report_rows(c, rows)

    def reports_for_study(
        self, institution: str, accession: str, study_uid: str
    ) -> list[ReportRow]:
        r = result.c
        cond = [r.study_uid == study_uid]
        if accession:
            cond.append(and_(r.study_uid == "", r.accession_number == accession))
        with self.engine.connect() as c:
            rows = c.execute(
                select(result)
                .where(r.institution_code == institution, r.category == "imaging", or_(*cond))
                .order_by(r.issued_at.desc())
            ).all()
            return self._report_rows(c, rows)

    # ------------------------------------------------------------ retrieve, audit
    def move_destination(self, ae_title: str) -> MoveDestination | None:
        with self.engine.connect() as c:
            r = c.execute(
                select(dicom_destination).where(dicom_destination.c.ae_title == ae_title.strip())
            ).first()
        if r is None:
            return None
        return MoveDestination(r.ae_title, r.host, r.port, r.institution_code)

    def add_move_destination(self, dest: MoveDestination) -> None:
        with self.engine.begin() as c:
            c.execute(
                dicom_destination.delete().where(dicom_destination.c.ae_title == dest.ae_title)
            )
            c.execute(
                dicom_destination.insert().values(
                    ae_title=dest.ae_title,
                    institution_code=dest.institution,
                    host=dest.host,
                    port=dest.port,
                )
            )

    def audit(self, record: AuditRecord) -> None:
        with self.engine.begin() as c:
            c.execute(
                audit_event.insert().values(
                    at=record.at,
                    account_id=record.account_id,
                    actor=record.actor,
                    role=record.role,
                    institution_code=record.institution,
                    patient_id=record.patient_id,
                    result_id=record.result_id,
                    action=record.action,
                    purpose=record.purpose[:200],
                    outcome="ok",
                )
            )

    def count_instances(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(imaging_instance)).scalar_one())
