"""Result intake (R3): every channel's message becomes an ``InboundMessage`` of
``ResultSubmission``s, stored atomically, idempotently, with versions and marks.

The message types are the CONTRACT shared by the FHIR, HL7 v2, bulk and DICOM adapters;
``IntakeService`` is the implementation wired as ``container.intake``. Its storage port
is ``IntakeStore``; the SQL implementation is ``huren.adapters.db.results``."""

from __future__ import annotations

import hashlib
import json
import logging
import operator
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Protocol, TypeVar

import msgspec

from huren.domain.errors import DomainError, Problem, ProblemCollector, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier, validate_identifier
from huren.domain.marks import Mark
from huren.domain.masterdata import Category
from huren.domain.results import (
    MAX_OBSERVATION_COMMENT,
    MAX_REPORT_COMMENT,
    ObservationValue,
    ResultSubmission,
    ValueType,
    plausible_result_time,
)
from huren.services.catalog import Catalog, CatalogCache
from huren.services.patients import IdentifierKey, PatientLookup, PatientMatcher, PatientStore
from huren.services.ports import Clock, IdentifierVault

log = logging.getLogger("huren.intake")

T = TypeVar("T")


class Channel(StrEnum):
    HL7V2_MLLP = "hl7v2-mllp"
    HL7V2_HTTP = "hl7v2-http"
    FHIR = "fhir"
    BULK = "bulk"
    DICOM = "dicom"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    channel: Channel
    institution: str  # producing institution's code (from MSH-4, the API key, Bundle meta…)
    control_id: str  # MSH-10, Bundle.id/identifier, file:line
    # The message as received (kept for the engineer's page and for replays): its text,
    # or its bytes (UTF-8; any invalid sequence is shown as a replacement character),
    # kept as they came, without the round trip through a Python str (decoding a
    # Bundle's bytes and encoding them back for the insert cost more than the insert).
    raw: str | bytes
    submissions: tuple[ResultSubmission, ...]


def positional_constructor(cls: type[T]) -> Callable[..., T]:
    """A constructor of the frozen, slotted dataclass ``cls`` taking every field
    positionally, in declaration order, that sets the slots directly. The dataclass's
    own ``__init__`` sets each field through ``object.__setattr__`` (it is frozen), which
    cost ~1,500 instructions a field (callgrind): making an ``ObservationValue`` cost as
    much as decoding the FHIR Observation it comes from. Only for classes whose ``__init__`` does nothing else (no ``__post_init__``,
    no ``init=False`` field); the objects are the same (==, hash)."""
    params = getattr(cls, "__dataclass_params__", None)
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if (
        params is None
        or not params.frozen
        or "__slots__" not in cls.__dict__
        or hasattr(cls, "__post_init__")
        or not all(f.init for f in fields(cls))  # type: ignore[arg-type]
    ):
        raise TypeError(f"{cls.__name__}: not a plain frozen slotted dataclass")
    namespace: dict[str, object] = {"_new": object.__new__, "_cls": cls}
    # A field with a plain default may be left out, as with the dataclass's ``__init__``
    # (fields added last, like the comments, leave the callers as they were).
    params_text = []
    for n, f in enumerate(fields(cls)):  # type: ignore[arg-type]
        if f.default is MISSING:
            params_text.append(f.name)
        else:
            namespace[f"_default{n}"] = f.default
            params_text.append(f"{f.name}=_default{n}")
    lines = [f"def make({', '.join(params_text)}):", "    o = _new(_cls)"]
    for n, name in enumerate(names):
        namespace[f"_set{n}"] = cls.__dict__[name].__set__
        lines.append(f"    _set{n}(o, {name})")
    lines.append("    return o")
    exec("\n".join(lines), namespace)  # noqa: S102 - the source is built from field names
    make: Callable[..., T] = namespace["make"]  # type: ignore[assignment]
    make.__qualname__ = make.__name__ = f"new_{cls.__name__}"
    return make


# For the channel adapters, which make a few of these per result.
new_observation = positional_constructor(ObservationValue)
new_submission = positional_constructor(ResultSubmission)


class Disposition(StrEnum):
    CREATED = "created"
    UPDATED = "updated"  # new version (amended, corrected, entered-in-error …)
    UNCHANGED = "unchanged"  # same content resent


@dataclass(frozen=True, slots=True)
class StoredRef:
    result_id: int
    version: int
    disposition: Disposition
    report_no: str
    local_code: str
    item_code: str | None  # None: unmapped (对码缺失), stored and flagged
    mark_symbol: str | None
    # The result's patient, when known without a read: not kept in the stored response,
    # so not part of what a resend is answered with (compare=False).
    patient_id: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ReceiveOutcome:
    message_id: int
    duplicate: bool  # the identical message was accepted before; nothing changed
    results: tuple[StoredRef, ...]

    @property
    def unmapped_codes(self) -> tuple[str, ...]:
        return tuple(r.local_code for r in self.results if r.item_code is None)

    @property
    def unchanged(self) -> int:
        """Results found already stored as sent: all of a resent message's (it answers
        with the results of its first sending), else those intake left unchanged. The
        rest were created or given a new version (bulk loads count them apart)."""
        if self.duplicate:
            return len(self.results)
        return sum(r.disposition is Disposition.UNCHANGED for r in self.results)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message refused as a whole (AE/AR, OperationOutcome): recorded for the
    integration engineer's page, nothing of its content stored."""

    channel: Channel
    institution: str | None
    control_id: str
    raw: str
    error: str  # Chinese, naming the field


# The service (``container.intake``) offers:
#   receive(message: InboundMessage) -> ReceiveOutcome
#       one transaction: patient matching, 对码, marks at issue time, versions; idempotent.
#       Raises huren.domain.errors.ValidationFailed (problems name the fields) and stores
#       nothing of the message when any part is invalid (unknown institution, invalid
#       身份证, missing report number …); unmapped codes are NOT an error.
#   receive_many(messages: Sequence[InboundMessage]) -> list[ReceiveOutcome | Exception]
#       group commit: the valid messages stored in ONE transaction, each with receive()'s
#       own all-or-nothing outcome, in order; a DomainError (AE/AR: the message's fault)
#       or another Exception (not stored, send again later) in the place of a message
#       that was not stored. Never raises for one message's sake.
#   reject(rejection: Rejection) -> int
#       records a refused message in inbound_message with status "rejected".


# ---------------------------------------------------------------- implementation

UNKNOWN_INSTITUTION = "未知的机构编码（不在机构清单中）"


@dataclass(frozen=True, slots=True)
class CurrentResult:
    """The stored head of one (institution, report_no, local_code)."""

    id: int
    version: int
    content_hash: str
    status: str
    patient_id: int | None = None


@dataclass(slots=True)
class ResultWrite:
    """What the store writes for one submission: a new result or a new version."""

    submission: ResultSubmission
    patient_id: int
    item_code: str | None
    category: Category
    mark: Mark | None
    version: int
    content_hash: str
    result_id: int | None = None  # None: a new result; the store fills it in
    message_id: int = 0  # the inbound message that brought it (result.source_message_id)
    # ``submission.observations`` as JSON when already encoded (``encode_submission``).
    observations_json: bytes | None = None

    def snapshot(self) -> dict[str, object]:
        """The full content of this version, kept in result_version (R3: 完整版本历史)."""
        return self._snapshot([observation_json(o) for o in self.submission.observations])

    def snapshot_json(self) -> bytes:
        """``snapshot()`` as JSON, in one encoding pass: ``ObservationValue``'s fields are
        ``observation_json``'s keys in the same order, so the dataclasses are encoded as
        those objects without building a dict per observation — or taken as encoded for
        the submission's hash."""
        encoded = self.observations_json
        if encoded is None:
            encoded = encode_observations(self.submission.observations)
        return _CANONICAL.encode(self._snapshot(msgspec.Raw(encoded)))

    def _snapshot(self, observations: object) -> dict[str, object]:
        s = self.submission
        return {
            "patient_id": self.patient_id,
            "institution": s.institution,
            "department": s.department,
            "report_no": s.report_no,
            "local_code": s.local_code,
            "local_name": s.local_name,
            "item_code": self.item_code,
            "category": str(self.category),
            "status": str(s.status),
            "performed_at": _isoformat(s.performed_at),
            "issued_at": _isoformat(s.issued_at),
            "performer": s.performer,
            "signer": s.signer,
            "findings": s.findings,
            "conclusion": s.conclusion,
            "accession_number": s.accession_number,
            "study_uid": s.study_uid,
            "mark_scope": self.mark.scope if self.mark else None,
            "mark_symbol": self.mark.symbol if self.mark else None,
            "observations": observations,
            "comment": s.comment,
        }


_ISO: dict[tuple[object, datetime], str] = {}


def _isoformat(value: datetime) -> str:
    """``value.isoformat()``, remembered: the times of a report recur in its neighbours'
    (keyed with the zone too: equal instants in two zones are written differently)."""
    key = (value.tzinfo, value)
    text = _ISO.get(key)
    if text is None:
        if len(_ISO) >= 4096:
            _ISO.clear()
        text = _ISO[key] = value.isoformat()
    return text


def observation_json(o: ObservationValue) -> dict[str, object]:
    """An observation as stored in JSON (the version snapshot): its fields by name, the
    comment only when there is one (``encode_observations``)."""
    out: dict[str, object] = {
        "code": o.code,
        "name": o.name,
        "value_type": str(o.value_type),
        "value_num": o.value_num,
        "value_text": o.value_text,
        "unit": o.unit,
        "ref_low": o.ref_low,
        "ref_high": o.ref_high,
        "ref_text": o.ref_text,
        "flag": o.flag,
        "loinc": o.loinc,
    }
    if o.comment:
        out["comment"] = o.comment
    return out


@dataclass(frozen=True, slots=True)
class MessageRecord:
    received_at: datetime
    channel: str
    institution: str | None
    content_hash: str
    control_id: str
    status: str  # accepted | rejected | duplicate
    error: str
    response: str
    raw: str | bytes  # bytes: as received (``InboundMessage.raw``)


@dataclass(frozen=True, slots=True)
class UnmappedCode:
    """A local code of an institution without a unified code (对码缺失), for the engineer."""

    local_code: str
    local_name: str
    results: int
    first_issued: datetime  # the results' report (issue) times, not when they arrived
    last_issued: datetime
    # The inbound messages that brought these results (``result.source_message_id``: the
    # message of each result's current version), the first and the last, with the times
    # they were received; None for results loaded without a message (synthetic data).
    first_message_id: int | None = None
    last_message_id: int | None = None
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UnmappedResult:
    id: int
    issued_at: datetime
    category: str


@dataclass(frozen=True, slots=True)
class OpenedMessage:
    """A message just recorded as accepted, with what intake reads before writing."""

    message_id: int
    earlier: tuple[int, str] | None  # (id, response) of an identical accepted message
    heads: dict[tuple[str, str], CurrentResult]
    patients: dict[IdentifierKey, int] = field(default_factory=dict)  # of ``patient_keys``


@dataclass(frozen=True, slots=True)
class OpenedBatch:
    """Messages of one group commit just recorded as accepted, with what intake reads
    before writing."""

    message_ids: list[int]  # in the order of the records
    earlier: dict[str, tuple[int, str]]  # content hash → (id, response) accepted before
    heads: dict[tuple[str, str, str], CurrentResult]  # (institution, report_no, local_code)
    patients: dict[IdentifierKey, int] = field(default_factory=dict)  # of ``patient_keys``


class IntakeTx(PatientStore, Protocol):
    """Storage operations of one intake transaction."""

    def open_message(
        self,
        record: MessageRecord,
        institution: str,
        keys: Sequence[tuple[str, str]],
        patient_keys: Sequence[IdentifierKey] = (),
    ) -> OpenedMessage:
        """``accepted_message(record.content_hash)`` as it was before this message,
        ``insert_message(record)``, ``current_results(institution, keys)`` and
        ``patients_by_identifier(patient_keys)`` at once (on PostgreSQL in one round
        trip)."""
        ...

    def open_messages(
        self,
        records: Sequence[MessageRecord],
        keys: Sequence[tuple[str, str, str]],
        patient_keys: Sequence[IdentifierKey] = (),
    ) -> OpenedBatch:
        """``open_message`` for many messages at once: the earlier accepted messages of
        the records' hashes (as they were before this batch), all records inserted, the
        heads of the (institution, report_no, local_code) keys and the patients of the
        identifier keys."""
        ...

    def mark_duplicate(self, message_id: int, response: str) -> None:
        """The opened message turned out to be a resend: status "duplicate", with the
        response given the first time."""
        ...

    def accepted_message(self, content_hash: str) -> tuple[int, str] | None:
        """(id, response) of an earlier accepted message with this hash."""
        ...

    def insert_message(self, record: MessageRecord) -> int: ...

    def current_results(
        self, institution: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], CurrentResult]:
        """Heads of the given (report_no, local_code) pairs of ``institution``."""
        ...

    def write_results(self, writes: Sequence[ResultWrite], at: datetime) -> None:
        """Insert new results, update changed ones, add their versions and replace their
        observations; fills ``result_id`` of new writes. No two writes share a result."""
        ...

    def set_response(self, message_id: int, response: str) -> None: ...

    def emit(self, topic: str, payload: dict[str, object], at: datetime) -> None:
        """An outbox event, committed with the results."""
        ...

    def unmapped_results(self, institution: str, local_code: str) -> list[UnmappedResult]: ...

    def set_mapping(
        self, result_id: int, item_code: str, category: str, mark: Mark | None, at: datetime
    ) -> None: ...


class IntakeStore(Protocol):
    def transaction(self) -> AbstractContextManager[IntakeTx]:
        """One write transaction; on SQLite it takes the write lock at once."""
        ...

    def unmapped_codes(self, institution: str) -> list[UnmappedCode]: ...


class TransientConflict(Exception):
    """A concurrent writer stored the same row first; the transaction is retried."""


# The original report documents kept (``ReportDocument``): types that can be served
# inline without risk (no HTML, SVG or script-carrying formats), and at most this size
# decoded. Others are named in the acknowledgement as not kept, larger ones refused.
@dataclass(frozen=True, slots=True)
class DocumentKind:
    label: str  # as pages name it: 原始报告（PDF）
    extension: str  # of the file name it is served under
    # What its bytes begin with (PDF 1.7 / ISO 32000-1 §7.5.2 header, JPEG SOI, PNG
    # signature): a document that does not is not what it claims to be.
    magic: bytes


DOCUMENT_KINDS = {
    "application/pdf": DocumentKind("PDF", "pdf", b"%PDF-"),
    "image/jpeg": DocumentKind("JPEG", "jpg", b"\xff\xd8\xff"),
    "image/png": DocumentKind("PNG", "png", b"\x89PNG\r\n\x1a\n"),
}
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
MAX_DOCUMENT_TITLE = 200


def document_problem(content_type: str, data: bytes) -> str | None:
    """Why a document cannot be kept (Chinese), or None."""
    kind = DOCUMENT_KINDS.get(content_type)
    if kind is None:
        return f"不支持的文档类型 {content_type!r}（支持 PDF、JPEG、PNG）"
    if not data:
        return "文档内容为空"
    if len(data) > MAX_DOCUMENT_BYTES:
        return f"文档过大：{len(data)} 字节，超过上限 {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB"
    if not data.startswith(kind.magic):
        return f"文档内容不是 {kind.label}（开头不是 {kind.magic!r}）"
    return None


# Column widths of result / observation (adapters/db/tables.py): longer input is refused
# naming the field rather than truncated.
_LIMITS = (
    ("report_no", 64),
    ("comment", MAX_REPORT_COMMENT),
    ("local_code", 64),
    ("local_name", 200),
    ("department", 100),
    ("performer", 100),
    ("signer", 100),
    ("accession_number", 64),
    ("study_uid", 128),
)
_OBS_LIMITS = (
    ("code", 64),
    ("loinc", 32),
    ("name", 200),
    ("unit", 32),
    ("ref_text", 100),
    ("flag", 8),
    ("comment", MAX_OBSERVATION_COMMENT),
)
# For the channel adapters, which name a value that is too long by their own element.
OBSERVATION_LIMITS = _OBS_LIMITS
# The common case (nothing too long) checked in one pass per result and observation.
_sub_limited = operator.attrgetter(*(name for name, _ in _LIMITS))
_SUB_MAX = tuple(limit for _, limit in _LIMITS)
_obs_limited = operator.attrgetter(*(name for name, _ in _OBS_LIMITS))
_OBS_MAX = tuple(limit for _, limit in _OBS_LIMITS)
_NM = ValueType.NM
_MRN = IdentifierKind.MRN


@dataclass(frozen=True, slots=True)
class _Pending:
    """A validated message waiting for its transaction."""

    index: int  # in the caller's sequence
    message: InboundMessage
    submissions: list[ResultSubmission]
    hashes: list[str]
    msg_hash: str
    observations_json: list[bytes]  # each submission's observations, encoded


@dataclass(slots=True)
class _Staged:
    """A message of a group commit with its writes (``refs``: None where a write goes)."""

    pos: int  # in the batch
    message: InboundMessage
    message_id: int
    refs: list[StoredRef | None] = field(default_factory=list)
    writes: list[ResultWrite] = field(default_factory=list)

    @property
    def actor(self) -> str:
        return f"intake:{self.message.channel}:{self.message.institution}"


class IntakeService:
    """``container.intake``: stores every channel's results (R3)."""

    def __init__(
        self,
        store: IntakeStore,
        catalog: CatalogCache,
        vault: IdentifierVault,
        clock: Clock,
        *,
        retries: int = 3,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._matcher = PatientMatcher(vault)
        self._clock = clock
        self._retries = retries
        self._mark_memo: MarkMemo | None = None

    # ------------------------------------------------------------ receive
    def receive(self, message: InboundMessage) -> ReceiveOutcome:
        (received,) = self.receive_many([message])
        if isinstance(received, Exception):
            raise received
        return received

    def receive_many(self, messages: Sequence[InboundMessage]) -> list[ReceiveOutcome | Exception]:
        """Group commit (issue 7, performance): every valid message stored in one
        transaction, with exactly the outcome ``receive`` would give it, one after
        another in the given order (a later message may correct an earlier one, a resend
        in the same batch is a duplicate). In the place of a message not stored: its
        ``DomainError`` (validation, the message's fault — nothing of it stored) or the
        exception that kept it from being stored. When the batch transaction fails, the
        messages are stored one by one, so one bad message never costs the others."""
        catalog = self._catalog.get()
        out: list[ReceiveOutcome | Exception | None] = [None] * len(messages)
        pending: list[_Pending] = []
        for index, message in enumerate(messages):
            try:
                submissions = self._validate(message, catalog)
            except DomainError as exc:
                out[index] = exc
                continue
            # Each submission is hashed once: for its own version check and the message's;
            # its observations' JSON is kept for the version snapshot.
            encoded = [encode_submission(s) for s in submissions]
            hashes = [h for h, _ in encoded]
            pending.append(
                _Pending(
                    index,
                    message,
                    submissions,
                    hashes,
                    message_hash(message, hashes),
                    [obs for _, obs in encoded],
                )
            )
        if pending:
            try:
                stored: list[ReceiveOutcome | Exception] = list(
                    self._store_with_retries(pending, catalog)
                )
            except Exception as exc:
                if len(pending) == 1:
                    stored = [exc]
                else:
                    log.warning(
                        "group commit of %s messages failed (%s); storing them one by one",
                        len(pending),
                        exc,
                    )
                    stored = [self._store_alone(p, catalog) for p in pending]
            for p, received in zip(pending, stored, strict=True):
                out[p.index] = received
        return [r for r in out if r is not None]

    def _store_alone(self, pending: _Pending, catalog: Catalog) -> ReceiveOutcome | Exception:
        try:
            return self._store_with_retries([pending], catalog)[0]
        except Exception as exc:
            return exc

    def _store_with_retries(
        self, pending: Sequence[_Pending], catalog: Catalog
    ) -> list[ReceiveOutcome]:
        for attempt in range(self._retries):
            try:
                return self._store_batch(pending, catalog)
            except TransientConflict:
                if attempt == self._retries - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _store_batch(self, pending: Sequence[_Pending], catalog: Catalog) -> list[ReceiveOutcome]:
        """One transaction for ``pending``, each message as if stored after the previous
        one: writes are collected in waves, and a message touching a result already
        written in the current wave starts a new wave once that one is written."""
        now = self._clock.now()
        marks = self._marks(catalog)
        # The patients' identifiers are looked up with the transaction's other reads.
        patient_keys = self._matcher.lookup_keys(s.patient for p in pending for s in p.submissions)
        with self._store.transaction() as tx:
            opened = self._open(tx, pending, now, patient_keys)
            lookup = PatientLookup(set(patient_keys), dict(opened.patients))
            outcomes: list[ReceiveOutcome | None] = [None] * len(pending)
            first_of: dict[str, int] = {}  # message hash → position accepted in this batch
            resends: list[tuple[int, int, int]] = []  # (position, message id, original)
            wave: list[_Staged] = []
            wave_keys: set[tuple[str, str, str]] = set()
            for pos, (p, message_id) in enumerate(zip(pending, opened.message_ids, strict=True)):
                earlier = opened.earlier.get(p.msg_hash)
                if earlier is not None:
                    # Idempotent resend: answer as before, record the receipt, change nothing.
                    tx.mark_duplicate(message_id, earlier[1])
                    outcomes[pos] = ReceiveOutcome(earlier[0], True, refs_from_json(earlier[1]))
                    continue
                if p.msg_hash in first_of:
                    resends.append((pos, message_id, first_of[p.msg_hash]))
                    continue
                first_of[p.msg_hash] = pos
                keys = {(p.message.institution, s.report_no, s.local_code) for s in p.submissions}
                if not wave_keys.isdisjoint(keys):
                    self._write_wave(tx, wave, opened.heads, outcomes, now, lookup)
                    wave, wave_keys = [], set()
                wave.append(self._stage(pos, p, message_id, opened.heads, catalog, marks))
                wave_keys |= keys
            self._write_wave(tx, wave, opened.heads, outcomes, now, lookup)
            for pos, message_id, original in resends:
                first = outcomes[original]
                assert first is not None
                tx.mark_duplicate(message_id, refs_to_json(first.results))
                outcomes[pos] = ReceiveOutcome(first.message_id, True, first.results)
        done = [o for o in outcomes if o is not None]
        assert len(done) == len(pending)
        return done

    @staticmethod
    def _open(
        tx: IntakeTx,
        pending: Sequence[_Pending],
        now: datetime,
        patient_keys: Sequence[IdentifierKey],
    ) -> OpenedBatch:
        records = [
            MessageRecord(
                now,
                str(p.message.channel),
                p.message.institution,
                p.msg_hash,
                p.message.control_id,
                "accepted",
                "",
                "",
                p.message.raw,
            )
            for p in pending
        ]
        if len(pending) > 1:
            return tx.open_messages(
                records,
                [
                    (p.message.institution, s.report_no, s.local_code)
                    for p in pending
                    for s in p.submissions
                ],
                patient_keys,
            )
        # One message (``receive``): the single-message statements (PostgreSQL: one round
        # trip for the duplicate check, the insert and the heads).
        (p,) = pending
        institution = p.message.institution
        one = tx.open_message(
            records[0],
            institution,
            [(s.report_no, s.local_code) for s in p.submissions],
            patient_keys,
        )
        return OpenedBatch(
            [one.message_id],
            {} if one.earlier is None else {p.msg_hash: one.earlier},
            {(institution, no, code): head for (no, code), head in one.heads.items()},
            one.patients,
        )

    def _stage(
        self,
        pos: int,
        p: _Pending,
        message_id: int,
        heads: dict[tuple[str, str, str], CurrentResult],
        catalog: Catalog,
        marks: MarkMemo,
    ) -> _Staged:
        """What one message writes: a new result or version per changed submission, a
        reference to the stored head per unchanged one."""
        staged = _Staged(pos, p.message, message_id)
        for sub, content_hash, observations_json in zip(
            p.submissions, p.hashes, p.observations_json, strict=True
        ):
            head = heads.get((p.message.institution, sub.report_no, sub.local_code))
            item_code = unified_code(catalog, sub.institution, sub.local_code)
            mark = (
                marks.mark_for(sub.institution, item_code, sub.issued_at)
                if item_code is not None
                else None
            )
            if head is not None and head.content_hash == content_hash:
                staged.refs.append(
                    StoredRef(
                        head.id,
                        head.version,
                        Disposition.UNCHANGED,
                        sub.report_no,
                        sub.local_code,
                        item_code,
                        mark.symbol if mark else None,
                        head.patient_id,
                    )
                )
                continue
            staged.writes.append(
                ResultWrite(
                    submission=sub,
                    patient_id=0,  # matched with the wave's other patients
                    item_code=item_code,
                    category=category_of(sub, item_code, catalog),
                    mark=mark,
                    version=1 if head is None else head.version + 1,
                    content_hash=content_hash,
                    result_id=None if head is None else head.id,
                    message_id=message_id,
                    observations_json=observations_json,
                )
            )
            staged.refs.append(None)
        return staged

    def _write_wave(
        self,
        tx: IntakeTx,
        wave: Sequence[_Staged],
        heads: dict[tuple[str, str, str], CurrentResult],
        outcomes: list[ReceiveOutcome | None],
        now: datetime,
        lookup: PatientLookup,
    ) -> None:
        """Match the wave's patients (consecutive messages of one sender together, in
        order: as one ``match`` after another), write its results, answer its messages."""
        start = 0
        while start < len(wave):
            actor = wave[start].actor
            end = start + 1
            while end < len(wave) and wave[end].actor == actor:
                end += 1
            writes = [w for s in wave[start:end] for w in s.writes]
            if writes:
                matches = self._matcher.match_many(
                    tx, [w.submission.patient for w in writes], at=now, actor=actor, lookup=lookup
                )
                for w in writes:
                    w.patient_id = matches[w.submission.patient].patient_id
            start = end
        tx.write_results([w for s in wave for w in s.writes], now)
        for s in wave:
            it = iter(s.writes)
            final: list[StoredRef] = []
            for ref in s.refs:
                if ref is not None:
                    final.append(ref)
                    continue
                w = next(it)
                assert w.result_id is not None
                sub = w.submission
                heads[(s.message.institution, sub.report_no, sub.local_code)] = CurrentResult(
                    w.result_id, w.version, w.content_hash, str(sub.status), w.patient_id
                )
                final.append(
                    StoredRef(
                        w.result_id,
                        w.version,
                        Disposition.CREATED if w.version == 1 else Disposition.UPDATED,
                        sub.report_no,
                        sub.local_code,
                        w.item_code,
                        w.mark.symbol if w.mark else None,
                        w.patient_id,
                    )
                )
            tx.set_response(s.message_id, refs_to_json(final))
            if s.writes:
                tx.emit(
                    "results.stored",
                    {
                        "message_id": s.message_id,
                        "institution": s.message.institution,
                        "results": [
                            {"id": r.result_id, "version": r.version, "disposition": r.disposition}
                            for r in final
                            if r.disposition is not Disposition.UNCHANGED
                        ],
                    },
                    now,
                )
            outcomes[s.pos] = ReceiveOutcome(s.message_id, False, tuple(final))

    def _marks(self, catalog: Catalog) -> MarkMemo:
        memo = self._mark_memo
        if memo is None or memo.catalog is not catalog:
            memo = self._mark_memo = MarkMemo(catalog)
        return memo

    # ------------------------------------------------------------ validation
    def _validate(self, message: InboundMessage, catalog: Catalog) -> list[ResultSubmission]:
        """Every problem of the message at once; returns submissions with identifiers
        normalized. Unmapped codes are not a problem (R1.4: 对码缺失照常保存并标记).
        (Field names are spelled out only for a problem: this runs for every result.)"""
        errors = ProblemCollector()
        institution = message.institution
        if institution not in catalog.institutions:
            errors.add("institution", f"{UNKNOWN_INSTITUTION}: {institution}")
        if not message.submissions:
            errors.add("submissions", "消息中没有检查检验结果")
        out: list[ResultSubmission] = []
        seen: set[tuple[str, str]] = set()
        gt = operator.gt
        for i, sub in enumerate(message.submissions):
            if sub.institution != institution:
                errors.add(
                    f"submissions[{i}].institution",
                    f"结果的检查检验机构 {sub.institution} 与消息的发送机构 {institution} 不一致",
                )
            key = (sub.report_no, sub.local_code)
            if not key[0].strip():
                errors.add(f"submissions[{i}].report_no", "缺少报告单编号")
            if not key[1].strip():
                errors.add(f"submissions[{i}].local_code", "缺少项目编码")
            if key in seen:
                errors.add(
                    f"submissions[{i}].report_no",
                    f"同一消息中报告单编号 {key[0]} 的项目 {key[1]} 重复",
                )
            seen.add(key)
            for value, name, label in (
                (sub.performed_at, "performed_at", "检查检验时间"),
                (sub.issued_at, "issued_at", "报告时间"),
            ):
                if not isinstance(value, datetime):
                    errors.add(f"submissions[{i}].{name}", f"缺少{label}")
                elif value.tzinfo is None:
                    errors.add(f"submissions[{i}].{name}", f"{label}缺少时区")
                elif not plausible_result_time(value):
                    errors.add(
                        f"submissions[{i}].{name}",
                        f"{label}超出可接受的范围（1900–2199 年）: {value.isoformat()}",
                    )
            identifiers = sub.patient.identifiers
            if not identifiers:
                errors.add(
                    f"submissions[{i}].patient.identifiers",
                    "缺少患者标识（身份证、医保号、电子健康卡或病历号）",
                )
            idents: list[PatientIdentifier] = []
            for j, ident in enumerate(identifiers):
                checked = checked_identifier(ident)
                if isinstance(checked, PatientIdentifier):
                    if (
                        checked.kind is _MRN
                        and checked.assigner != institution
                        and checked.assigner not in catalog.institutions
                    ):
                        # An issuer that is no institution of the platform (a system
                        # name such as "HIS", a local code) is the sender: keyed by it,
                        # two hospitals' record numbers would meet.
                        checked = PatientIdentifier(_MRN, checked.value, institution)
                    idents.append(checked)
                else:
                    errors.problems.extend(
                        Problem(f"submissions[{i}].patient.identifiers[{j}]", msg)
                        for msg in checked
                    )
            if any(map(gt, map(len, _sub_limited(sub)), _SUB_MAX)):
                for name, limit in _LIMITS:
                    if len(getattr(sub, name)) > limit:
                        errors.add(f"submissions[{i}].{name}", f"长度超过 {limit} 个字符")
            for k, obs in enumerate(sub.observations):
                if any(map(gt, map(len, _obs_limited(obs)), _OBS_MAX)):
                    for name, limit in _OBS_LIMITS:
                        if len(getattr(obs, name)) > limit:
                            errors.add(
                                f"submissions[{i}].observations[{k}].{name}",
                                f"长度超过 {limit} 个字符",
                            )
                if not obs.code.strip():
                    errors.add(f"submissions[{i}].observations[{k}].code", "缺少检验项目编码")
                if obs.value_type is _NM and obs.value_num is None:
                    errors.add(
                        f"submissions[{i}].observations[{k}].value_num", "数值型结果缺少数值"
                    )
            for k, doc in enumerate(sub.documents):
                if (why := document_problem(doc.content_type, doc.data)) is not None:
                    errors.add(f"submissions[{i}].documents[{k}]", why)
                if len(doc.title) > MAX_DOCUMENT_TITLE:
                    errors.add(
                        f"submissions[{i}].documents[{k}].title",
                        f"长度超过 {MAX_DOCUMENT_TITLE} 个字符",
                    )
            if (
                len(idents) == len(identifiers)
                and any(a is not b for a, b in zip(idents, identifiers, strict=True))
                and tuple(idents) != identifiers
            ):
                sub = replace(sub, patient=replace(sub.patient, identifiers=tuple(idents)))
            out.append(sub)
        errors.raise_if_any("消息未通过校验，未保存任何内容")
        return out

    # ------------------------------------------------------------ rejections
    def reject(self, rejection: Rejection) -> int:
        with self._store.transaction() as tx:
            return tx.insert_message(
                MessageRecord(
                    self._clock.now(),
                    str(rejection.channel),
                    rejection.institution,
                    hashlib.sha256(rejection.raw.encode()).hexdigest(),
                    rejection.control_id[:64],
                    "rejected",
                    rejection.error,
                    "",
                    rejection.raw,
                )
            )

    # ------------------------------------------------------------ 对码 after the fact
    def remap(self, institution: str, local_code: str) -> int:
        """Give stored unmapped results of ``local_code`` their unified code and the mark
        computed at their issue time, once the institution's code map has it. Returns
        the number of results re-mapped (0 while the code is still unmapped)."""
        self._catalog.invalidate()
        return self._remap(self._catalog.get(), institution, local_code)

    def remap_codes(self, codes: Iterable[tuple[str, str]]) -> int:
        """``remap`` each (institution, local code) that has results stored unmapped — an
        import of code maps names thousands, of which few were waiting — with the catalog
        read once. Returns the number of results re-mapped."""
        wanted: dict[str, set[str]] = {}
        for institution, local_code in codes:
            wanted.setdefault(institution, set()).add(local_code)
        self._catalog.invalidate()
        catalog = self._catalog.get()
        done = 0
        for institution, local_codes in wanted.items():
            for waiting in self.unmapped_codes(institution):
                if waiting.local_code in local_codes:
                    done += self._remap(catalog, institution, waiting.local_code)
        return done

    def _remap(self, catalog: Catalog, institution: str, local_code: str) -> int:
        item_code = unified_code(catalog, institution, local_code)
        if item_code is None:
            return 0
        item = catalog.items[item_code]
        now = self._clock.now()
        with self._store.transaction() as tx:
            rows = tx.unmapped_results(institution, local_code)
            for row in rows:
                mark = catalog.mark_for(institution, item_code, row.issued_at)
                tx.set_mapping(row.id, item_code, str(item.category), mark, now)
            if rows:
                tx.emit(
                    "results.remapped",
                    {
                        "institution": institution,
                        "local_code": local_code,
                        "item_code": item_code,
                        "results": [r.id for r in rows],
                    },
                    now,
                )
        return len(rows)

    def remap_institution(self, institution: str) -> dict[str, int]:
        """``remap`` every unmapped code of ``institution``; {local_code: results re-mapped}."""
        self._catalog.invalidate()
        catalog = self._catalog.get()
        done: dict[str, int] = {}
        for code in self.unmapped_codes(institution):
            n = self._remap(catalog, institution, code.local_code)
            if n:
                done[code.local_code] = n
        return done

    def unmapped_codes(self, institution: str) -> list[UnmappedCode]:
        """The institution's local codes stored without a unified code, most results first."""
        return self._store.unmapped_codes(institution)


_CHECKED: dict[tuple[str, str, str], PatientIdentifier | tuple[str, ...]] = {}
_CHECKED_SIZE = 65536


def checked_identifier(ident: PatientIdentifier) -> PatientIdentifier | tuple[str, ...]:
    """The normalized identifier, or the problems with it (remembered by its values: the
    same patient's 身份证 arrives with every report, and the check digit costs more than
    the insert; the dataclass's own hash would cost a Python call per lookup)."""
    key = (ident.kind, ident.value, ident.assigner)
    found = _CHECKED.get(key)
    if found is None:
        try:
            found = validate_identifier(ident, "")
        except ValidationFailed as exc:
            found = tuple(p.message for p in exc.problems)
        if len(_CHECKED) >= _CHECKED_SIZE:
            _CHECKED.clear()
        _CHECKED[key] = found
    return found


class MarkMemo:
    """``Catalog.mark_for`` remembered per (institution, item, issue day) for one catalog
    snapshot: qualifications are in force by calendar day (``Qualification.in_force``
    reads ``issued_at.date()``), so every result of a day shares its mark."""

    __slots__ = ("_marks", "catalog")

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._marks: dict[tuple[str, str, date], Mark | None] = {}

    def mark_for(self, institution: str, item_code: str, issued_at: datetime) -> Mark | None:
        key = (institution, item_code, issued_at.date())
        try:
            return self._marks[key]
        except KeyError:
            mark = self._marks[key] = self.catalog.mark_for(institution, item_code, issued_at)
            return mark


def unified_code(catalog: Catalog, institution: str, local_code: str) -> str | None:
    """对码 through the institution's code map; a LOINC code sent as the local code (FHIR
    senders that give only LOINC) is matched to the item with that LOINC as a hint."""
    mapped = catalog.unified_code(institution, local_code)
    if mapped is not None:
        return mapped
    return catalog.item_for_loinc(local_code)


def category_of(sub: ResultSubmission, item_code: str | None, catalog: Catalog) -> Category:
    if item_code is not None:
        return catalog.items[item_code].category
    if sub.category is not None:
        return sub.category
    if sub.observations:
        return Category.LAB
    if sub.study_uid or sub.accession_number:
        return Category.IMAGING
    return Category.OTHER


def message_hash(message: InboundMessage, hashes: Sequence[str] | None = None) -> str:
    """Identity of a message for idempotency: sender, control id and content — not the
    channel or the raw bytes, so the same HL7 message over MLLP or HTTP, or the same Bundle
    reformatted, is the same message. ``hashes``: the submissions' ``submission_hash``es
    when the caller has them already."""
    h = hashlib.sha256()
    h.update(f"{message.institution}\x1f{message.control_id}".encode())
    for sub_hash in hashes if hashes is not None else map(submission_hash, message.submissions):
        h.update(b"\x1e")
        h.update(sub_hash.encode())
    return h.hexdigest()


# msgspec encodes the frozen dataclasses (str, float, enum, date/datetime with its offset,
# tuples) field by field in declaration order: a canonical form of the content, ~5 times
# cheaper than the dataclass repr and ~30 times cheaper than ``asdict`` + ``json.dumps``.
_CANONICAL = msgspec.json.Encoder()


def submission_hash(sub: ResultSubmission) -> str:
    """Stable hash of a submission's clinical content: a resend with the same content is a
    no-op, computed once per result."""
    return encode_submission(sub)[0]


# Comments (the last field of ``ObservationValue`` and of ``ResultSubmission``) are part
# of the content only when given: without them a submission is encoded — and hashed —
# byte for byte as before comments were kept, so that a message sent again after the
# upgrade is still answered "unchanged" rather than stored as a new version.
_SUBMISSION_FIELDS = tuple(
    f.name for f in fields(ResultSubmission) if f.name not in ("comment", "documents")
)
assert [f.name for f in fields(ResultSubmission)][-2:] == ["comment", "documents"]
assert fields(ObservationValue)[-1].name == "comment"
# An observation without a comment ends so, and only so: inside a JSON string a quote is
# always escaped (``\"``), so `,"` never occurs there and nothing else is cut.
_NO_COMMENT = b',"comment":""}'


def encode_observations(observations: Sequence[ObservationValue]) -> bytes:
    """``observations`` as a JSON array of objects of their fields in declaration order
    (``observation_json``'s keys), an empty comment left out."""
    return _CANONICAL.encode(observations).replace(_NO_COMMENT, b"}")


def encode_submission(sub: ResultSubmission) -> tuple[str, bytes]:
    """(``submission_hash(sub)``, ``sub.observations`` as JSON), the observations encoded
    once for both: the submission is encoded as the object of its fields in declaration
    order — what msgspec makes of the dataclass, byte for byte — with the observations
    spliced in as encoded, and empty comments left out (see ``_NO_COMMENT``)."""
    observations = encode_observations(sub.observations)
    content = {name: getattr(sub, name) for name in _SUBMISSION_FIELDS}
    content["observations"] = msgspec.Raw(observations)
    if sub.comment:
        content["comment"] = sub.comment
    if sub.documents:
        # Documents (the last field) likewise only when given, each by its type, title
        # and digest: the same PDF sent again is the same content.
        content["documents"] = [[d.content_type, d.title, d.sha256] for d in sub.documents]
    return hashlib.sha256(_CANONICAL.encode(content)).hexdigest(), observations


def refs_to_json(refs: Sequence[StoredRef]) -> str:
    return _CANONICAL.encode(
        [
            (
                r.result_id,
                r.version,
                str(r.disposition),
                r.report_no,
                r.local_code,
                r.item_code,
                r.mark_symbol,
            )
            for r in refs
        ]
    ).decode()


def refs_from_json(text: str) -> tuple[StoredRef, ...]:
    return tuple(
        StoredRef(int(r[0]), int(r[1]), Disposition(r[2]), r[3], r[4], r[5], r[6])
        for r in json.loads(text or "[]")
    )
