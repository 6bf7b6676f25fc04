"""Imaging use cases (R3 imaging, R6, issue 4): store a received DICOM instance, find
studies, link a study to its report, judge completeness for the item, confirm a study
to an insurer.

The service needs four things from outside, as Protocols: a parser that turns bytes
into an ``InstanceHeader`` (pydicom, ``adapters/dicom/parse``), a content-addressed file
store (``adapters/dicom/store``), the imaging index in the database
(``adapters/dicom/index``) and the identifier vault.

Storing an instance is all or nothing: the file is written and made durable before its
index row is committed in one transaction; a failure leaves at most an unreferenced
content-addressed file, never an index row without its file or half a study. Both steps
are shared between concurrent associations (one journal flush, one commit for every
instance waiting at that moment) and a store returns only once both are done for it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Literal, Protocol

from huren.domain.errors import Conflict, DomainError, Forbidden, NotFound, Problem
from huren.domain.identity import mask_id, mask_name
from huren.domain.imaging import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_CONFLICTING_INSTANCE,
    STATUS_INVALID_ATTRIBUTE,
    STATUS_MISSING_REQUIRED,
    STATUS_NOT_AUTHORISED,
    STATUS_NOT_DICOM,
    ImagingConfirmation,
    InstanceHeader,
    ReportKey,
    SeriesConfirmation,
    SeriesSummary,
    StudyKey,
    StudyStatus,
    assess_study,
    invalid_attributes,
    link,
    missing_required,
    uid_problem,
)
from huren.domain.masterdata import Category, Item, QualityRequirements
from huren.domain.recognition import StudyCompleteness, StudyState
from huren.domain.results import StoredResult
from huren.services.catalog import CatalogCache
from huren.services.ports import Clock, IdentifierVault


class Source(StrEnum):
    DIMSE = "dimse"  # C-STORE
    STOW = "stow"  # STOW-RS


class EventKind(StrEnum):
    ASSOCIATION_REJECTED = "association_rejected"
    INSTANCE_REJECTED = "instance_rejected"
    INSTANCE_CONFLICT = "instance_conflict"
    MOVE_REFUSED = "move_refused"


# ---------------------------------------------------------------- errors
class InstanceRefused(DomainError):
    """An instance not stored; ``dicom_status`` is the C-STORE status (PS3.4 B.2.3) and the
    STOW-RS Failure Reason (PS3.18 I.2.2)."""

    code = "instance_refused"
    status = 422
    dicom_status = STATUS_CANNOT_UNDERSTAND

    def __init__(self, message: str, *, sop_uid: str = "", problems: list[Problem] | None = None):
        super().__init__(message, problems=problems)
        self.sop_uid = sop_uid


class NotDicom(InstanceRefused):
    code = "not_dicom"
    status = 400
    dicom_status = STATUS_NOT_DICOM


class MissingRequiredTags(InstanceRefused):
    code = "missing_required_tags"
    status = 422
    dicom_status = STATUS_MISSING_REQUIRED


class InvalidAttributes(InstanceRefused):
    """An indexed attribute holds a value the index cannot keep as sent (a UID that is
    not one, a NUL character, a Patient ID or accession number too long)."""

    code = "invalid_attributes"
    status = 422
    dicom_status = STATUS_INVALID_ATTRIBUTE


class ConflictingInstance(InstanceRefused):
    code = "conflicting_instance"
    status = Conflict.status
    dicom_status = STATUS_CONFLICTING_INSTANCE


class UnknownCallingAE(InstanceRefused):
    code = "unknown_calling_ae"
    status = Forbidden.status
    dicom_status = STATUS_NOT_AUTHORISED


class InvalidDicomBytes(Exception):
    """Raised by an ``InstanceParser`` for bytes that are not a DICOM Part 10 file."""


# ---------------------------------------------------------------- ports
class InstanceParser(Protocol):
    def parse(self, data: bytes) -> tuple[InstanceHeader, Mapping[str, str]]:
        """The header of a Part 10 file and the raw text of the required identifiers
        (``REQUIRED_TAGS`` keywords → value, '' when absent). Raises ``InvalidDicomBytes``."""
        ...


class StagedBlob(Protocol):
    def commit(self) -> Callable[[], None]:
        """Make the bytes visible; the returned call waits until they are durable (one
        flush may cover several concurrent writes)."""
        ...

    def cancel(self) -> None:
        """The bytes are not kept (no-op after ``commit``)."""
        ...


class BlobStore(Protocol):
    def put(self, data: bytes, content_hash: str) -> None:
        """Write durably under ``content_hash`` (no-op when already there)."""
        ...

    def stage(self, data: bytes, content_hash: str) -> Callable[[], None]:
        """Write under ``content_hash`` so that readers see it; the returned call makes it
        durable (one flush may cover several concurrent writes)."""
        ...

    def begin(self, data: bytes, content_hash: str) -> StagedBlob:
        """Start making ``data`` durable before it is checked (the disk works meanwhile);
        nothing is visible until ``commit``."""
        ...

    def read(self, content_hash: str) -> bytes: ...

    def path(self, content_hash: str) -> str: ...


@dataclass(frozen=True, slots=True)
class NewInstance:
    header: InstanceHeader
    institution: str
    patient_hash: str
    patient_global_hash: str
    patient_id_enc: str
    patient_id_masked: str
    patient_name_enc: str
    patient_name_masked: str
    content_hash: str
    size_bytes: int
    source: Source
    calling_ae: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class DicomEvent:
    at: datetime
    channel: Source
    kind: EventKind
    message: str
    calling_ae: str = ""
    peer: str = ""
    institution: str | None = None
    sop_uid: str = ""
    status: int | None = None


@dataclass(frozen=True, slots=True)
class StudyQuery:
    """QIDO-RS / C-FIND matching keys (PS3.18 8.3.4, PS3.4 C.2.2.2). Empty = universal."""

    patient_global_hash: str = ""
    study_uids: tuple[str, ...] = ()
    accession_number: str = ""
    study_date_from: date | None = None
    study_date_to: date | None = None
    modality: str = ""
    institution: str = ""  # restrict to one producing institution (integration callers)
    series_uids: tuple[str, ...] = ()
    series_modality: str = ""
    series_number: int | None = None
    sop_uids: tuple[str, ...] = ()
    sop_class_uid: str = ""
    instance_number: int | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class StudyRow:
    id: int
    study_uid: str
    institution: str
    patient_hash: str
    patient_id_enc: str
    patient_name_enc: str
    patient_sex: str
    patient_birth_date: str
    accession_number: str
    study_id: str
    study_date: date | None
    study_time: str
    study_description: str
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class SeriesRow:
    id: int
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    slice_thickness: float | None
    derived: bool
    instance_count: int
    received_at: datetime

    def summary(self) -> SeriesSummary:
        return SeriesSummary(
            self.series_uid,
            self.modality,
            self.series_description,
            self.slice_thickness,
            self.derived,
            self.instance_count,
            self.series_number,
        )


@dataclass(frozen=True, slots=True)
class InstanceRow:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    content_hash: str
    institution: str


@dataclass(frozen=True, slots=True)
class ReportRow:
    """The imaging report (``result`` row) as linking and the viewer need it."""

    result_id: int
    patient_id: int
    institution: str
    item_code: str | None
    category: str
    report_no: str
    local_name: str
    status: str
    performed_at: datetime
    issued_at: datetime
    findings: str
    conclusion: str
    signer: str
    accession_number: str
    study_uid: str
    patient_hashes: frozenset[str] = frozenset()
    comment: str = ""  # the sender's comment on the report (NTE after OBR)

    def key(self) -> ReportKey:
        return ReportKey(
            self.result_id,
            self.institution,
            self.accession_number,
            self.study_uid,
            self.patient_hashes,
        )


@dataclass(frozen=True, slots=True)
class MoveDestination:
    ae_title: str
    host: str
    port: int
    institution: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    actor: str
    role: str
    action: str
    account_id: int | None = None
    institution: str | None = None
    patient_id: int | None = None
    result_id: int | None = None
    purpose: str = ""


AddOutcome = Literal["added", "same", "conflict"]


class ImagingIndex(Protocol):
    """The imaging tables. Every method is its own transaction unless noted."""

    def institution_for_ae(self, ae_title: str) -> str | None: ...

    def known_ae_titles(self) -> list[str]: ...

    def instance_hash(self, sop_uid: str) -> str | None: ...

    def add_instance(self, rec: NewInstance, before_commit: Callable[[], None] = ...) -> AddOutcome:
        """Index one instance with its study and series, atomically, calling
        ``before_commit`` (the file's durability) before committing. ``same`` when the SOP
        Instance UID is already indexed with the same content hash, ``conflict`` when with
        another (nothing written then)."""
        ...

    def log_event(self, event: DicomEvent) -> None: ...

    def events(self, limit: int = 100) -> list[DicomEvent]: ...

    def studies(self, q: StudyQuery) -> list[StudyRow]: ...

    def series(self, q: StudyQuery) -> list[SeriesRow]: ...

    def instances(self, q: StudyQuery) -> list[InstanceRow]: ...

    def studies_by_keys(
        self, pairs: Sequence[tuple[str, str, str]]
    ) -> list[StudyRow]:  # (institution, accession, study_uid)
        ...

    def series_of_studies(self, study_uids: Sequence[str]) -> dict[str, list[SeriesRow]]: ...

    def reports(self, result_ids: Sequence[int]) -> list[ReportRow]:
        """The results with the MRN lookup hashes their patients hold at the producing
        institution (``patient_identifier`` kind ``mrn``)."""
        ...

    def reports_for_study(
        self, institution: str, accession: str, study_uid: str
    ) -> list[ReportRow]: ...

    def move_destination(self, ae_title: str) -> MoveDestination | None: ...

    def audit(self, record: AuditRecord) -> None: ...


# ---------------------------------------------------------------- outcomes
@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    duplicate: bool  # the same bytes were stored before; nothing changed
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class StudyView:
    """A study with its series and, when linked, its report (for the viewer)."""

    study: StudyRow
    series: list[SeriesRow]
    report: ReportRow | None
    status: StudyStatus
    item: Item | None = None


class StudyExporter(Protocol):
    def build_export(
        self, files: Sequence[tuple[str, bytes]], report_text: str, readme: str
    ) -> bytes:
        """A ZIP: DICOM files under a DICOMDIR, PNG renders, the report."""
        ...


class CatalogView(Protocol):
    def item(self, code: str) -> Item | None: ...


class CatalogItems:
    """``CatalogView`` over the reference-data snapshot (quality requirements per item)."""

    def __init__(self, catalog: CatalogCache) -> None:
        self._catalog = catalog

    def item(self, code: str) -> Item | None:
        return self._catalog.get().items.get(code)


# ---------------------------------------------------------------- the service
class ImagingService:
    def __init__(
        self,
        *,
        index: ImagingIndex,
        blobs: BlobStore,
        parser: InstanceParser,
        vault: IdentifierVault,
        clock: Clock,
        items: CatalogView,
        exporter: StudyExporter | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.parser = parser
        self.vault = vault
        self.clock = clock
        self.items = items
        self.exporter = exporter

    # ---------------------------------------------------------- intake
    def institution_for_ae(self, calling_ae: str) -> str | None:
        return self.index.institution_for_ae(calling_ae.strip())

    def reject_association(self, calling_ae: str, peer: str, reason: str) -> None:
        self.index.log_event(
            DicomEvent(
                at=self.clock.now(),
                channel=Source.DIMSE,
                kind=EventKind.ASSOCIATION_REJECTED,
                calling_ae=calling_ae.strip(),
                peer=peer,
                status=None,
                message=reason,
            )
        )

    def log_event(self, event: DicomEvent) -> None:
        self.index.log_event(event)

    def store_instance(
        self,
        data: bytes,
        *,
        institution: str,
        source: Source,
        calling_ae: str = "",
        peer: str = "",
    ) -> StoredInstance:
        """Store one DICOM Part 10 file received from ``institution``.

        Refuses (and logs in ``dicom_event``) non-DICOM bytes, an instance missing a
        required identifier, an instance with an indexed value that cannot be kept as sent
        (``domain.imaging.invalid_attributes``), and an instance whose SOP Instance UID is
        known with other content; the same bytes again are a success that changes
        nothing. A refused instance leaves neither a row nor a file."""
        try:
            return self._store(data, institution, source, calling_ae)
        except InstanceRefused as exc:
            kind = (
                EventKind.INSTANCE_CONFLICT
                if isinstance(exc, ConflictingInstance)
                else EventKind.INSTANCE_REJECTED
            )
            self.index.log_event(
                DicomEvent(
                    at=self.clock.now(),
                    channel=source,
                    kind=kind,
                    calling_ae=calling_ae,
                    peer=peer,
                    institution=institution,
                    sop_uid=exc.sop_uid,
                    status=exc.dicom_status,
                    message=exc.message,
                )
            )
            raise

    def _store(
        self, data: bytes, institution: str, source: Source, calling_ae: str
    ) -> StoredInstance:
        content_hash = hashlib.sha256(data).hexdigest()
        # The disk flush that makes the bytes durable starts now and runs while they are
        # checked and indexed; refused bytes are cancelled, never visible.
        staged = self.blobs.begin(data, content_hash)
        try:
            header, known = self._check(data)
            if known is not None:
                staged.cancel()
                return self._duplicate(header, known, content_hash)
            # PS3.4 B.2.2: the SCP stores the instance as received; lossless originals
            # kept byte for byte (沪卫医〔2024〕135号 四(二)2: 无损 DICOM 格式影像).
            durable = staged.commit()
        except BaseException:
            staged.cancel()
            raise
        sop = header.sop_uid
        pid = header.patient_id.strip()
        outcome = self.index.add_instance(
            NewInstance(
                header=header,
                institution=institution,
                patient_hash=self.vault.lookup_hash("mrn", institution, pid),
                patient_global_hash=self.vault.lookup_hash("dicom", "", pid),
                patient_id_enc=self.vault.encrypt(pid),
                patient_id_masked=mask_id(pid),
                patient_name_enc=self.vault.encrypt(header.patient_name),
                patient_name_masked=mask_name(header.patient_name),
                content_hash=content_hash,
                size_bytes=len(data),
                source=source,
                calling_ae=calling_ae,
                received_at=self.clock.now(),
            ),
            durable,
        )
        if outcome == "added":
            return StoredInstance(
                sop,
                header.sop_class_uid,
                header.study_uid,
                header.series_uid,
                False,
                header.transfer_syntax,
            )
        # Lost a race with a concurrent association storing the same SOP Instance UID.
        return self._duplicate(header, self.index.instance_hash(sop) or "", content_hash)

    def _check(self, data: bytes) -> tuple[InstanceHeader, str | None]:
        """The header of valid DICOM bytes with every required identifier, and the content
        hash already stored under its SOP Instance UID (None: new)."""
        try:
            header, required = self.parser.parse(data)
        except InvalidDicomBytes as exc:
            raise NotDicom(
                f"不是有效的 DICOM 文件: {exc}",
                problems=[
                    Problem("DICOM", "内容不是 DICOM Part 10 文件（缺少 DICM 前导或无法解析）")
                ],
            ) from exc
        missing = missing_required(required)
        if missing:
            labels = "、".join(label for _, label in missing)
            sop_uid = required.get("SOPInstanceUID", "")
            raise MissingRequiredTags(
                f"缺少必需的 DICOM 属性: {labels}",
                sop_uid=sop_uid if uid_problem(sop_uid) is None else "",
                problems=[Problem(kw, f"缺少必需属性 {label}") for kw, label in missing],
            )
        invalid = invalid_attributes(header)
        if invalid:
            raise InvalidAttributes(
                "DICOM 属性值无效: " + "；".join(reason for _, reason in invalid),
                sop_uid=header.sop_uid if uid_problem(header.sop_uid) is None else "",
                problems=[Problem(kw, reason) for kw, reason in invalid],
            )
        return header, self.index.instance_hash(header.sop_uid)

    def _duplicate(self, header: InstanceHeader, known: str, content_hash: str) -> StoredInstance:
        if known != content_hash:
            raise ConflictingInstance(
                f"SOP 实例 {header.sop_uid} 已存在且内容不同，拒绝覆盖",
                sop_uid=header.sop_uid,
                problems=[Problem("SOPInstanceUID", "同一 SOP 实例UID 已以不同内容存储")],
            )
        return StoredInstance(
            header.sop_uid,
            header.sop_class_uid,
            header.study_uid,
            header.series_uid,
            True,
            header.transfer_syntax,
        )

    # ---------------------------------------------------------- queries
    def patient_global_hash(self, patient_id: str) -> str:
        return self.vault.lookup_hash("dicom", "", patient_id.strip())

    def reveal(self, token: str) -> str:
        return self.vault.decrypt(token) if token else ""

    def read_blob(self, content_hash: str) -> bytes:
        return self.blobs.read(content_hash)

    def blob_path(self, content_hash: str) -> str:
        return self.blobs.path(content_hash)

    def instances_for_retrieve(
        self, study_uid: str, series_uid: str = "", sop_uid: str = "", institution: str = ""
    ) -> list[InstanceRow]:
        rows = self.index.instances(
            StudyQuery(
                study_uids=(study_uid,) if study_uid else (),
                series_uids=(series_uid,) if series_uid else (),
                sop_uids=(sop_uid,) if sop_uid else (),
                institution=institution,
                limit=1_000_000,
            )
        )
        if not rows:
            what = sop_uid or series_uid or study_uid
            raise NotFound(f"未找到影像: {what}", problems=[Problem("uid", what)])
        return rows

    def iter_files(self, rows: Sequence[InstanceRow]) -> Iterator[tuple[InstanceRow, bytes]]:
        for r in rows:
            yield r, self.blobs.read(r.content_hash)

    # ---------------------------------------------------------- linking and completeness
    def _quality(self, item_code: str | None) -> tuple[Item | None, QualityRequirements]:
        item = self.items.item(item_code) if item_code else None
        return item, (item.quality if item is not None else QualityRequirements())

    def study_status(self, result_id: int) -> StudyStatus:
        """Completeness of one imaging result: its study arrived, its report arrived, and
        the study holds what its item requires. Raises ``NotFound`` for an unknown result."""
        statuses = self.study_statuses([result_id])
        if result_id not in statuses:
            raise NotFound(
                f"未找到结果 {result_id}", problems=[Problem("result_id", str(result_id))]
            )
        return statuses[result_id]

    def study_statuses(self, result_ids: Sequence[int]) -> dict[int, StudyStatus]:
        """``study_status`` for many results with a constant number of queries. Results
        that are not imaging come back complete with no parts missing (nothing required)."""
        reports = self.index.reports(list(dict.fromkeys(result_ids)))
        imaging = [r for r in reports if r.category == Category.IMAGING.value]
        candidates = self.index.studies_by_keys(
            [(r.institution, r.accession_number, r.study_uid) for r in imaging]
        )
        return self._statuses(reports, candidates)

    def _statuses(
        self, reports: Sequence[ReportRow], candidates: Sequence[StudyRow]
    ) -> dict[int, StudyStatus]:
        imaging = [r for r in reports if r.category == Category.IMAGING.value]
        keys = [
            StudyKey(s.institution, s.accession_number, s.study_uid, s.patient_hash)
            for s in candidates
        ]
        linked: dict[int, str] = {}
        for r in imaging:
            found = link(keys, r.key())
            if found is not None:
                linked[r.result_id] = found.study_uid
        series = self.index.series_of_studies(list(set(linked.values())))
        out: dict[int, StudyStatus] = {}
        for r in reports:
            if r.category != Category.IMAGING.value:
                out[r.result_id] = StudyStatus(True, (), 0, 0, has_report=True)
                continue
            _, quality = self._quality(r.item_code)
            uid = linked.get(r.result_id, "")
            out[r.result_id] = assess_study(
                quality,
                [s.summary() for s in series.get(uid, [])],
                has_study=bool(uid),
                has_report=True,
                study_uid=uid,
            )
        return out

    def study_states(self, results: Sequence[StoredResult]) -> dict[int, StudyState]:
        """``services.recognition.StudyStates`` for the recognition service: COMPLETE or
        INCOMPLETE (with the Chinese reasons) for every imaging result given.

        Runs on every order with imaging priors, so it looks the studies up by the keys
        the results already carry (one query); only when some study has arrived are the
        results read again with their patients' MRN hashes to link it (``link``)."""
        imaging = [r for r in results if r.category is Category.IMAGING]
        candidates = self.index.studies_by_keys(
            [(r.institution, r.accession_number, r.study_uid) for r in imaging]
        )
        if not candidates:
            return self.states_without_study(results)
        statuses = self._statuses(self.index.reports([r.id for r in results]), candidates)
        return _states(statuses)

    def states_without_study(self, results: Sequence[StoredResult]) -> dict[int, StudyState]:
        """``study_states`` of results for which no study has arrived (the caller knows),
        without a query: what ``_statuses`` finds for unlinked reports."""
        return _states(
            {
                r.id: assess_study(
                    self._quality(r.item_code)[1], [], has_study=False, has_report=True
                )
                if r.category is Category.IMAGING
                else StudyStatus(True, (), 0, 0, has_report=True)
                for r in results
            }
        )

    def study_view(self, study_uid: str) -> StudyView:
        """A study with its series and its report when one has arrived; a study without a
        report is shown incomplete (not recognizable) with the reason."""
        studies = self.index.studies(StudyQuery(study_uids=(study_uid,), limit=1))
        if not studies:
            raise NotFound(f"未找到检查 {study_uid}", problems=[Problem("study_uid", study_uid)])
        study = studies[0]
        series = self.index.series_of_studies([study_uid]).get(study_uid, [])
        key = StudyKey(
            study.institution, study.accession_number, study.study_uid, study.patient_hash
        )
        report = next(
            (
                r
                for r in self.index.reports_for_study(
                    study.institution, study.accession_number, study.study_uid
                )
                if link([key], r.key()) is not None
            ),
            None,
        )
        item, quality = self._quality(report.item_code if report else None)
        status = assess_study(
            quality,
            [s.summary() for s in series],
            has_study=True,
            has_report=report is not None,
            study_uid=study_uid,
        )
        return StudyView(study, series, report, status, item)

    def result_view(self, result_id: int) -> tuple[ReportRow, StudyView | None, StudyStatus]:
        reports = self.index.reports([result_id])
        if not reports:
            raise NotFound(
                f"未找到结果 {result_id}", problems=[Problem("result_id", str(result_id))]
            )
        status = self.study_statuses([result_id])[result_id]
        view = self.study_view(status.study_uid) if status.study_uid else None
        return reports[0], view, status

    # ---------------------------------------------------------- insurer (冀 三(四))
    def confirm(
        self,
        *,
        patient_id: str,
        accession: str = "",
        study_uid: str = "",
        on: date | None = None,
        institution: str = "",
    ) -> ImagingConfirmation:
        """Does the billed study exist? Counts and times only: no pixels, no report."""
        q = StudyQuery(
            patient_global_hash=self.patient_global_hash(patient_id),
            study_uids=(study_uid,) if study_uid else (),
            accession_number=accession,
            study_date_from=on,
            study_date_to=on,
            institution=institution,
            limit=1,
        )
        found = self.index.studies(q)
        if not found:
            return ImagingConfirmation(exists=False)
        s = found[0]
        series = self.index.series_of_studies([s.study_uid]).get(s.study_uid, [])
        return ImagingConfirmation(
            exists=True,
            study_uid=s.study_uid,
            accession_number=s.accession_number,
            institution=s.institution,
            study_date=s.study_date,
            modalities=s.modalities,
            series_count=s.series_count,
            instance_count=s.instance_count,
            received_at=s.received_at,
            series=tuple(
                SeriesConfirmation(x.modality, x.series_number, x.instance_count, x.received_at)
                for x in series
            ),
        )

    def audit(self, record: AuditRecord) -> None:
        self.index.audit(record)

    # ---------------------------------------------------------- patient download (R6)
    def export_study(self, study_uid: str) -> tuple[StudyView, bytes]:
        """The report and a viewer-friendly ZIP of the study (DICOMDIR + PNG renders)."""
        if self.exporter is None:
            raise NotFound("本节点未配置影像导出", problems=[Problem("export", "未配置")])
        view = self.study_view(study_uid)
        rows = self.instances_for_retrieve(study_uid)
        labels = {
            s.series_uid: f"{s.series_number or 0:03d}-{s.modality}-{s.series_description or '序列'}"
            for s in view.series
        }
        files = [
            (labels.get(r.series_uid, r.series_uid), data) for r, data in self.iter_files(rows)
        ]
        return view, self.exporter.build_export(files, report_text(view), EXPORT_README)

    def study_of_result(self, result_id: int) -> str:
        status = self.study_status(result_id)
        if not status.study_uid:
            raise NotFound(
                "该报告的影像尚未上传", problems=[Problem("result_id", "；".join(status.missing))]
            )
        return status.study_uid


EXPORT_README = (
    "本压缩包由互认平台生成，内容为一次影像检查：\n"
    "- 报告.txt：检查所见与诊断结论（诊断结论为报告医师意见，互认的是检查结果）；\n"
    "- DICOM/：无损原始影像与 DICOMDIR，可用任意 DICOM 看图软件打开；\n"
    "- 图像/：每幅图像的 PNG 预览，普通看图软件即可查看。\n"
)


def report_text(view: StudyView) -> str:
    s, r = view.study, view.report
    lines = [
        f"检查日期：{s.study_date.isoformat() if s.study_date else '未知'}",
        f"检查号：{s.accession_number or '无'}",
        f"检查机构：{s.institution}",
        f"序列数：{s.series_count}；图像数：{s.instance_count}",
    ]
    if r is None:
        lines.append("报告：尚未收到影像科医生签发的报告")
    else:
        lines += [
            f"报告单编号：{r.report_no}",
            f"检查项目：{r.local_name}",
            f"签发时间：{r.issued_at.isoformat()}",
            f"报告医师：{r.signer}",
            "",
            "【检查所见】",
            r.findings or "（无）",
            "",
            "【诊断结论】",
            r.conclusion or "（无）",
        ]
    if not view.status.complete:
        lines += ["", "【完整性】", *view.status.missing]
    return "\n".join(lines) + "\n"


def _states(statuses: Mapping[int, StudyStatus]) -> dict[int, StudyState]:
    """Study statuses as the recognition service's ``StudyState``."""
    return {
        rid: StudyState(
            StudyCompleteness.COMPLETE if st.complete else StudyCompleteness.INCOMPLETE,
            st.missing,
        )
        for rid, st in statuses.items()
    }
