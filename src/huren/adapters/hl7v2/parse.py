"""ORU^R01 (HL7 v2.3 – 2.5.1) → ``InboundMessage`` of ``ResultSubmission``s.

One OBR (with its OBX rows) is one report of one item (报告单); the PID before it is its
patient. Every problem names the field the way an interface engineer reads it —
``PID-3``, ``OBR[2]-25``, ``OBX[3]-5`` (segment occurrence in the message, field number)
— and carries its HL7 Table 0357 error code for the ACK's ERR segment.

Messages that cannot be read at all (not HL7, unknown character set, wrong encoding
characters, a broken segment, an unsupported message type, event, version or processing
id) raise ``Hl7Rejected`` with ``AckCode.AR``; messages that can be read but whose content
is wrong raise it with ``AckCode.AE``. Nothing of a rejected message is stored."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from huren.adapters.hl7v2 import codes
from huren.adapters.hl7v2.codes import ErrorCode, ReportSection, ValueKind
from huren.adapters.hl7v2.er7 import Delimiters, FieldValue
from huren.domain.china_time import CHINA_TZ
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.masterdata import Category
from huren.domain.results import (
    ObservationValue,
    PatientDemographics,
    ReportDocument,
    ResultStatus,
    ResultSubmission,
    ValueType,
)
from huren.services.intake import (
    MAX_DOCUMENT_BYTES,
    MAX_DOCUMENT_TITLE,
    Channel,
    InboundMessage,
    checked_identifier,
    document_problem,
    new_observation,
    new_submission,
)

# Chinese senders write local time without an offset; China has kept UTC+8 all year
# since 1991, so a fixed offset is exact.

_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_TS = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?\s*(?:([+-])(\d{2})(\d{2}))?$"
)
_NATIONAL_ID_SHAPE = re.compile(r"^\d{17}[\dXx]$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_NUM = r"([+-]?\d+(?:\.\d+)?)"
_RANGE = re.compile(r"^" + _NUM + r"\s*(?:-|~|～|—|–|至)\s*" + _NUM + r"$")
_BELOW = re.compile(r"^(?:<=|<|≤|＜|＜=)\s*" + _NUM + r"$")
_ABOVE = re.compile(r"^(?:>=|>|≥|＞|＞=)\s*" + _NUM + r"$")


class AckCode(StrEnum):
    """MSA-1 acknowledgment code (Table 0008, original mode)."""

    AA = "AA"  # accepted
    AE = "AE"  # error: the content is wrong, correct and resend
    AR = "AR"  # reject: the message cannot be processed at all


@dataclass(frozen=True, slots=True)
class Location:
    """Where a problem is (ERR-2 ERL: segment, sequence, field, repetition, component)."""

    segment: str
    sequence: int = 1
    field: int | None = None
    repetition: int | None = None
    component: int | None = None
    indexed: bool = False  # write the occurrence, e.g. OBX[2]-5

    def __str__(self) -> str:
        name = f"{self.segment}[{self.sequence}]" if self.indexed else self.segment
        if self.field is None:
            return name
        out = f"{name}-{self.field}"
        if self.repetition is not None and self.repetition > 1:
            out += f"({self.repetition})"
        if self.component is not None:
            out += f".{self.component}"
        return out

    def at(self, field_no: int, repetition: int | None = None) -> Location:
        return Location(self.segment, self.sequence, field_no, repetition, None, self.indexed)


@dataclass(frozen=True, slots=True)
class Hl7Problem:
    location: Location
    code: ErrorCode
    message: str  # Chinese

    @property
    def field(self) -> str:
        return str(self.location)


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What the ACK needs from the MSH, read as far as the message allows."""

    delimiters: Delimiters = field(default_factory=Delimiters)
    sending_application: str = ""  # raw ER7 text of MSH-3 (echoed in the ACK's MSH-5)
    sending_facility: str = ""  # raw MSH-4 (echoed in MSH-6)
    receiving_application: str = ""  # raw MSH-5 (becomes the ACK's MSH-3)
    receiving_facility: str = ""  # raw MSH-6 (becomes MSH-4)
    control_id: str = ""  # MSH-10
    processing_id: str = "P"  # MSH-11
    version: str = "2.5.1"  # MSH-12.1
    message_type: str = ""  # MSH-9 as sent
    trigger: str = ""  # MSH-9.2
    charset: str = "utf-8"  # Python codec the message was decoded with
    charset_field: str = ""  # MSH-18 as sent (echoed in the ACK)
    institution: str = ""  # MSH-4.1: the producing institution's code


class Hl7Rejected(Exception):
    """The message is refused as a whole; ``header`` is what could be read of it."""

    def __init__(self, ack: AckCode, problems: list[Hl7Problem], header: MessageHeader) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.ack = ack
        self.problems = problems
        self.header = header
        self.text = ""  # the decoded message, when decoding got that far

    @property
    def error(self) -> str:
        return "；".join(f"{p.field}: {p.message}" for p in self.problems)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one submission came from, to name fields in problems found later (intake)."""

    obr: Location
    identifiers: tuple[Location, ...]  # PID-3 repetition of each kept identifier
    observations: tuple[Location, ...]  # the OBX of each observation
    # NTE-3 of the first comment of each observation (None: no comment), of the report.
    observation_notes: tuple[Location | None, ...] = ()
    notes: Location | None = None


@dataclass(frozen=True, slots=True)
class ParsedOru:
    header: MessageHeader
    message: InboundMessage
    origins: tuple[Origin, ...] = ()
    # What was received but has no place in the platform's record (NTE comments on the
    # patient, ED/RP attachments): the message is accepted, and the ACK says what was
    # not kept.
    notices: tuple[Hl7Problem, ...] = ()


# ------------------------------------------------------------------ entry point
def parse_oru(raw: bytes, channel: Channel, *, charset_hint: str | None = None) -> ParsedOru:
    """Decode, check and translate one ORU^R01 message; raise ``Hl7Rejected``."""
    raw = unwrap_batch(normalize_segment_terminators(raw))
    header = read_header(raw)
    text, codec = decode(raw, header, charset_hint)
    header = header_from_text(text, header, codec)
    check_header(header)
    if "\x00" in text:
        # No HL7 data type allows NUL, and PostgreSQL text cannot store it.
        segment_no = text[: text.index("\x00")].count("\r") + 1
        exc = _reject(
            AckCode.AR,
            header,
            MSH,
            ErrorCode.DATA_TYPE,
            f"消息第 {segment_no} 段含有 NUL 字符（0x00），不是合法的 HL7 文本",
        )
        exc.text = text
        raise exc
    try:
        segments = split_segments(text, header)
        translator = _Translator(segments, header)
        submissions = translator.submissions()
    except Hl7Rejected as exc:
        exc.text = text
        raise
    message = InboundMessage(
        channel=channel,
        institution=header.institution,
        control_id=header.control_id,
        raw=text,
        submissions=tuple(submissions),
    )
    return ParsedOru(header, message, tuple(translator.origins), tuple(translator.notices))


_UTF8_BOM = b"\xef\xbb\xbf"


def normalize_segment_terminators(raw: bytes) -> bytes:
    """Files and some engines end segments with LF or CRLF instead of CR (v2.5.1 §2.5.4
    requires CR). Neither byte occurs inside a UTF-8 or GB 18030 multi-byte character.
    A UTF-8 byte order mark (Windows editors and file readers put one before ``MSH``)
    is not part of the message."""
    raw = raw.strip(b" \t\r\n\x0b\x1c\x00")
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :].lstrip(b" \t\r\n")
    return raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")


def unwrap_batch(raw: bytes) -> bytes:
    """HL7 batch protocol (v2.5.1 §2.10.3): ``[FHS] BHS {MSH …} BTS [FTS]``. Engines
    (Mirth's batch file reader, ``huren ingest`` of a batch file) wrap a single message
    so too: the envelope is dropped and the message read. A batch of several messages
    is refused naming FHS/BHS — each message needs its own ACK, which one request
    cannot give (send them one by one, or load the file with ``huren ingest``)."""
    if not raw.startswith((b"FHS", b"BHS")) and b"\rBTS" not in raw and b"\rFTS" not in raw:
        return raw
    lines = raw.split(b"\r")
    envelope = [line for line in lines if line[:3] in _BATCH_SEGMENTS]
    if not envelope:
        return raw
    body = [line for line in lines if line[:3] not in _BATCH_SEGMENTS]
    messages = sum(1 for line in body if line.startswith(b"MSH"))
    if messages == 1 and body[0].startswith(b"MSH"):
        return b"\r".join(body)
    header = _batch_header(raw, envelope)
    first = envelope[0][:3].decode("latin-1")
    if messages == 0:
        text = "批量消息（FHS/BHS）中没有任何 MSH 消息"
    else:
        text = (
            f"批量消息（FHS/BHS）含 {messages} 条消息：本接口每次只接收一条 ORU^R01，"
            "请逐条发送，或用 huren ingest --format hl7 导入批量文件"
        )
    raise _reject(AckCode.AR, header, Location(first), ErrorCode.SEGMENT_SEQUENCE, text)


def _batch_header(raw: bytes, envelope: list[bytes]) -> MessageHeader:
    """What the ACK of a refused batch can say: the first message's sender, and the
    batch's control id (BHS-11, else FHS-11) in MSA-2."""
    start = raw.find(b"MSH")
    header = MessageHeader()
    if start >= 0:
        try:
            header = read_header(raw[start:])
        except Hl7Rejected as exc:
            header = exc.header
    control = ""
    for line in sorted(envelope, key=lambda seg: seg[:3] != b"BHS"):
        if line[:3] in (b"BHS", b"FHS") and len(line) > 3:
            parts = line.decode("latin-1").split(line[3:4].decode("latin-1"))
            control = _part(parts, 11).split(header.delimiters.component)[0].strip()
            if control:
                break
    return _replace(header, control_id=control)


def _reject(
    ack: AckCode, header: MessageHeader, location: Location, code: ErrorCode, message: str
) -> Hl7Rejected:
    return Hl7Rejected(ack, [Hl7Problem(location, code, message)], header)


MSH = Location("MSH")


def read_header(raw: bytes) -> MessageHeader:
    """Read MSH from the bytes, before the character set is known: MSH-1, MSH-2 and the
    fields the ACK echoes are ASCII in every sender we know of."""
    if not raw.startswith(b"MSH") or len(raw) < 8:
        raise _reject(
            AckCode.AR,
            MessageHeader(),
            MSH,
            ErrorCode.SEGMENT_SEQUENCE,
            "消息不是 HL7 v2 消息：必须以 MSH 段开头",
        )
    sep = chr(raw[3])
    if sep.isalnum() or sep.isspace() or raw[3] > 0x7E:
        raise _reject(
            AckCode.AR,
            MessageHeader(),
            MSH.at(1),
            ErrorCode.DATA_TYPE,
            f"字段分隔符（MSH-1）无效：{sep!r}",
        )
    msh_line = raw.split(b"\r", 1)[0].decode("latin-1")
    parts = msh_line.split(sep)
    enc = parts[1] if len(parts) > 1 else ""
    delims = _delimiters(sep, enc)
    if delims is None:
        base = MessageHeader(
            delimiters=Delimiters(field=sep),
            control_id=_plain(parts, 10, sep),
            sending_application=_part(parts, 3),
            sending_facility=_part(parts, 4),
            receiving_application=_part(parts, 5),
            receiving_facility=_part(parts, 6),
            version=_plain(parts, 12, sep) or "2.5.1",
        )
        raise _reject(
            AckCode.AR,
            base,
            MSH.at(2),
            ErrorCode.DATA_TYPE,
            f"编码字符（MSH-2）无效：{enc!r}，应为 4 个互不相同的分隔符，如 ^~\\&",
        )
    return MessageHeader(
        delimiters=delims,
        sending_application=_part(parts, 3),
        sending_facility=_part(parts, 4),
        receiving_application=_part(parts, 5),
        receiving_facility=_part(parts, 6),
        control_id=_first_component(_part(parts, 10), delims),
        version=_first_component(_part(parts, 12), delims) or "2.5.1",
        charset_field=_part(parts, 18).split(delims.repetition)[0].strip(),
    )


@functools.lru_cache(maxsize=64)
def _delimiters(sep: str, enc: str) -> Delimiters | None:
    """MSH-1 and MSH-2 as ``Delimiters`` (each sender uses one set: made once), or None
    when MSH-2 is not 4 distinct delimiters."""
    if (
        len(enc) not in (4, 5)
        or len(set(enc + sep)) != len(enc) + 1
        or any(ch.isalnum() or ch.isspace() for ch in enc)
    ):
        return None
    return Delimiters(
        field=sep, component=enc[0], repetition=enc[1], escape=enc[2], subcomponent=enc[3]
    )


def _part(parts: list[str], msh_field: int) -> str:
    # MSH-1 is the separator itself, so MSH-n is parts[n - 1].
    return parts[msh_field - 1] if len(parts) >= msh_field else ""


def _plain(parts: list[str], msh_field: int, sep: str) -> str:
    return _part(parts, msh_field).strip()


def _first_component(text: str, delims: Delimiters) -> str:
    return text.split(delims.repetition)[0].split(delims.component)[0].strip()


def decode(raw: bytes, header: MessageHeader, charset_hint: str | None = None) -> tuple[str, str]:
    """Decode with the MSH-18 character set (Table 0211); without MSH-18, UTF-8 then
    GB 18030 — both are common in Chinese hospitals. Undecodable bytes reject the
    message naming MSH-18 rather than storing mojibake."""
    declared = header.charset_field.upper()
    if declared:
        codec = codes.CHARSETS.get(declared) or codes.CHARSETS.get(declared.replace("_", " "))
        if codec is None:
            raise _reject(
                AckCode.AR,
                header,
                MSH.at(18),
                ErrorCode.TABLE_VALUE_NOT_FOUND,
                f"不支持的字符集 {header.charset_field!r}，请使用 UNICODE UTF-8 或 GB 18030-2000",
            )
        try:
            return raw.decode(codec), codec
        except UnicodeDecodeError as exc:
            raise _reject(
                AckCode.AR,
                _with_charset(header, codec),
                MSH.at(18),
                ErrorCode.DATA_TYPE,
                f"消息内容不是 MSH-18 声明的字符集 {header.charset_field}（第 {exc.start} 字节无法解码）",
            ) from exc
    candidates = [c for c in (charset_hint, *codes.DEFAULT_CHARSETS) if c]
    for codec in dict.fromkeys(candidates):
        try:
            text = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        return text, codec
    raise _reject(
        AckCode.AR,
        header,
        MSH.at(18),
        ErrorCode.DATA_TYPE,
        "无法识别消息的字符集：既不是 UTF-8 也不是 GB 18030，请在 MSH-18 声明字符集",
    )


def _with_charset(header: MessageHeader, codec: str) -> MessageHeader:
    return _replace(header, charset=codec)


def _replace(header: MessageHeader, **changes: Any) -> MessageHeader:
    values = {f: getattr(header, f) for f in MessageHeader.__dataclass_fields__}
    values.update(changes)
    return MessageHeader(**values)


def header_from_text(text: str, header: MessageHeader, codec: str) -> MessageHeader:
    """The header read again from the decoded text, with the codec it was decoded with."""
    d = header.delimiters
    parts = text.split("\r", 1)[0].split(d.field)
    msh9 = FieldValue(_part(parts, 9), d)
    msh4 = FieldValue(_part(parts, 4), d)
    return MessageHeader(
        delimiters=d,
        charset=codec,
        charset_field=header.charset_field,
        sending_application=_part(parts, 3),
        sending_facility=_part(parts, 4),
        receiving_application=_part(parts, 5),
        receiving_facility=_part(parts, 6),
        message_type=msh9.value(),
        trigger=msh9.component(2),
        control_id=FieldValue(_part(parts, 10), d).component(1),
        processing_id=FieldValue(_part(parts, 11), d).component(1),
        version=FieldValue(_part(parts, 12), d).component(1),
        institution=msh4.component(1) or msh4.component(2),
    )


def check_header(header: MessageHeader) -> None:
    """What makes a message unprocessable (AR): type, event, version, processing id."""
    msg_type = header.message_type.split(header.delimiters.component)[0]
    if msg_type != "ORU":
        raise _reject(
            AckCode.AR,
            header,
            MSH.at(9),
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            f"不支持的消息类型 {msg_type or '（空）'}，本接口只接收 ORU^R01 检查检验结果",
        )
    if header.trigger != "R01":
        raise _reject(
            AckCode.AR,
            header,
            MSH.at(9),
            ErrorCode.UNSUPPORTED_EVENT,
            f"不支持的触发事件 {header.trigger or '（空）'}，本接口只接收 ORU^R01",
        )
    if header.version not in codes.SUPPORTED_VERSIONS:
        supported = "、".join(sorted(codes.SUPPORTED_VERSIONS))
        raise _reject(
            AckCode.AR,
            header,
            MSH.at(12),
            ErrorCode.UNSUPPORTED_VERSION,
            f"不支持的 HL7 版本 {header.version or '（空）'}，支持 {supported}",
        )
    if header.processing_id not in codes.ACCEPTED_PROCESSING_IDS:
        raise _reject(
            AckCode.AR,
            header,
            MSH.at(11),
            ErrorCode.UNSUPPORTED_PROCESSING_ID,
            f"处理标识 {header.processing_id} 不被接收：平台只接收生产数据（P）",
        )
    if not header.control_id:
        raise _reject(
            AckCode.AR,
            header,
            MSH.at(10),
            ErrorCode.REQUIRED_FIELD_MISSING,
            "缺少消息控制号（MSH-10），无法确认",
        )


# ------------------------------------------------------------------ segments
@functools.lru_cache(maxsize=4096)
def _location(
    segment: str, sequence: int, field_no: int | None, repetition: int | None, indexed: bool
) -> Location:
    """Locations are values and recur from message to message (OBX[3]-5 …): made once."""
    return Location(segment, sequence, field_no, repetition, None, indexed)


class Segment:
    """One segment with its occurrence number; ``f(n)`` is field n (HL7 numbering).

    A plain class rather than a frozen dataclass: a message has a dozen segments, and
    the frozen ``__init__`` cost more than splitting the segment."""

    __slots__ = ("_read", "delimiters", "fields", "id", "indexed", "plain", "sequence")

    def __init__(
        self,
        id: str,
        sequence: int,
        fields: tuple[str, ...],  # raw ER7 text; index n = field n (MSH: index n = MSH-n)
        delimiters: Delimiters,
        indexed: bool,
        plain: bool = False,
    ) -> None:
        self.id = id
        self.sequence = sequence
        self.fields = fields
        self.delimiters = delimiters
        self.indexed = indexed
        # No escape and no subcomponent character anywhere in the segment: a component
        # is then its text between delimiters, stripped (``_plain_components``).
        self.plain = plain
        # Fields read so far: each keeps its components once split (``FieldValue``).
        self._read: dict[int, FieldValue] = {}

    def __repr__(self) -> str:
        return f"Segment({self.id!r}, {self.sequence}, {self.fields!r})"

    def f(self, n: int) -> FieldValue:
        fv = self._read.get(n)
        if fv is None:
            fields = self.fields
            fv = self._read[n] = FieldValue(fields[n] if n < len(fields) else "", self.delimiters)
        return fv

    def loc(self, n: int | None = None, repetition: int | None = None) -> Location:
        return _location(self.id, self.sequence, n, repetition, self.indexed)


REPEATING = frozenset({"OBR", "OBX", "NTE", "ORC", "SPM", "PID", "PV1", "ZDS", "IPC"})


def split_segments(text: str, header: MessageHeader) -> list[Segment]:
    """Check each segment's id and split it into fields."""
    d = header.delimiters
    sep, escape, subcomponent = d.field, d.escape, d.subcomponent
    # Fields only: components and subcomponents are split lazily by ``FieldValue`` when
    # read. (python-hl7's ``hl7.parse`` splits every field down to subcomponents and took
    # half of the adapter's time per message; it stays the independent reader of our ACKs
    # in the tests.)
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    n = 0
    for line in text.split("\r"):
        if not line or line.isspace():
            continue
        n += 1
        seg_id = line[:3]
        if (seg_id not in _SEGMENT_IDS and not _segment_id(seg_id)) or (
            len(line) > 3 and line[3] != sep
        ):
            shown = line[:12] + ("…" if len(line) > 12 else "")
            raise _reject(
                AckCode.AR,
                header,
                Location(seg_id if _SEGMENT_ID.match(seg_id) else "???", n),
                ErrorCode.SEGMENT_SEQUENCE,
                f"第 {n} 段不是合法的 HL7 段：{shown!r}",
            )
        if seg_id == "MSH" and n > 1:
            raise _reject(
                AckCode.AR,
                header,
                Location("MSH", 2, indexed=True),
                ErrorCode.SEGMENT_SEQUENCE,
                f"一次只能发送一条消息：第 {n} 段又是 MSH（批量消息请逐条发送）",
            )
        parts = line.split(sep)
        # MSH-1 is the field separator itself, so MSH-n is parts[n - 1]: realign.
        fields = ("MSH", sep, *parts[1:]) if seg_id == "MSH" else tuple(parts)
        count = counts[seg_id] = counts.get(seg_id, 0) + 1
        segments.append(
            Segment(
                seg_id,
                count,
                fields,
                d,
                seg_id in REPEATING and seg_id != "PID",
                escape not in line and subcomponent not in line,
            )
        )
    return segments


# Segment ids seen valid (at most 26 × 36 × 36 of them): checked once each.
_SEGMENT_IDS: set[str] = set()


def _segment_id(seg_id: str) -> bool:
    if _SEGMENT_ID.match(seg_id):
        _SEGMENT_IDS.add(seg_id)
        return True
    return False


def _plain_components(fields: tuple[str, ...], n: int, d: Delimiters) -> list[str]:
    """Components of field ``n``'s first repetition in a plain segment, stripped — what
    ``FieldValue.component`` gives for each (nothing to unescape or split further)."""
    text = fields[n] if n < len(fields) else ""
    if d.repetition in text:
        text = text.split(d.repetition, 1)[0]
    return list(map(str.strip, text.split(d.component)))  # no comprehension's frame


# ------------------------------------------------------------------ field readers
@functools.lru_cache(maxsize=4096)
def parse_ts(value: str) -> datetime | None:
    """HL7 TS/DTM: YYYY[MM[DD[HH[MM[SS[.S…]]]]]][+/-ZZZZ]; local China time if no offset.
    (Remembered: the times of one message recur in its segments and its neighbours.)"""
    m = _TS.match(value.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    tz = CHINA_TZ
    if sign:
        offset = timedelta(hours=int(oh), minutes=int(om))
        tz = timezone(offset if sign == "+" else -offset)
    try:
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        )
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def parse_reference_range(text: str) -> tuple[float | None, float | None]:
    """OBX-7 "3.5-5.5", "3.5~5.5", "<5.0", ">=10" → (low, high); text ranges such as
    "阴性" give (None, None) and stay as text. (Remembered: an item's range recurs.)"""
    t = text.strip()
    if m := _RANGE.match(t):
        low, high = float(m.group(1)), float(m.group(2))
        # "3.5--5.5": some LIS write "--" as the separator, not a negative upper limit.
        return (low, -high) if high < low <= -high else (low, high)
    if m := _BELOW.match(t):
        return None, float(m.group(1))
    if m := _ABOVE.match(t):
        return float(m.group(1)), None
    return None, None


def person_name(fv: FieldValue) -> str:
    """XCN / CN / NDL person: ``id^family^given`` or ``id&family&given`` (NDL's CN), or
    just a name where Chinese senders put it."""
    subs = fv.subcomponents(1)
    if len(subs) > 1:
        return _join_name(subs[1], subs[2] if len(subs) > 2 else "") or subs[0]
    family, given = fv.component(2), fv.component(3)
    return _join_name(family, given) or fv.component(1)


def _join_name(family: str, given: str) -> str:
    if not family or not given:
        return family or given
    cjk = max(family + given) > "\u2e7f"  # a character from CJK radicals on
    return family + given if cjk else f"{given} {family}"


def identifier_rule(type_code: str, authority: str) -> codes.IdentifierRule | None:
    """PID-3 CX-5 type code first; a generic or empty one defers to the CX-4 assigning
    authority; no type and no known authority means the sender's own id (MRN)."""
    by_type = codes.IDENTIFIER_TYPES.get(type_code) if type_code else None
    if by_type is not None:
        return by_type
    by_authority = codes.IDENTIFIER_AUTHORITIES.get(
        authority.upper()
    ) or codes.IDENTIFIER_AUTHORITIES.get(authority)
    if by_authority is not None or type_code:
        return by_authority
    return codes.IDENTIFIER_TYPES[""]


# ------------------------------------------------------------------ the translation
@dataclass
class _Report:
    obr: Segment
    patient: PatientDemographics | None
    pid: Segment | None = None
    obx: list[Segment] = field(default_factory=list)
    extra: list[Segment] = field(default_factory=list)  # ZDS, IPC
    # NTE comments (v2.5.1 §7.3.1): after the OBR (the report's), after each OBX (by the
    # OBX's sequence number in the message).
    notes: list[Segment] = field(default_factory=list)
    obx_notes: dict[int, list[Segment]] = field(default_factory=dict)
    # ADD-1 of ADD segments after an OBX (v2.5.1 §2.10.2 continuation of a segment's
    # last field: an encapsulated document too long for one segment), by OBX sequence.
    obx_addenda: dict[int, list[str]] = field(default_factory=dict)

    statuses: list[str] | None = None

    def obx_status(self) -> list[str]:
        """OBX-11 of each OBX (Table 0085: one letter), read once from the raw fields: a
        field object per OBX for it cost a sixth of parsing a lab message."""
        if self.statuses is not None:
            return self.statuses
        out = self.statuses = []
        for x in self.obx:
            raw = x.fields[11] if len(x.fields) > 11 else ""
            if raw:
                d = x.delimiters
                raw = raw.split(d.repetition, 1)[0].split(d.component, 1)[0].strip().upper()
            out.append(raw)
        return out


class _Translator:
    def __init__(self, segments: list[Segment], header: MessageHeader) -> None:
        self.segments = segments
        self.header = header
        self.problems: list[Hl7Problem] = []
        self.notices: list[Hl7Problem] = []
        self.origins: list[Origin] = []
        self._identifier_locations: dict[int, tuple[Location, ...]] = {}

    def problem(self, location: Location, code: ErrorCode, message: str) -> None:
        self.problems.append(Hl7Problem(location, code, message))

    def notice(self, location: Location, message: str) -> None:
        self.notices.append(Hl7Problem(location, ErrorCode.ACCEPTED, message))

    def submissions(self) -> list[ResultSubmission]:
        if not self.header.institution:
            self.problem(
                MSH.at(4),
                ErrorCode.REQUIRED_FIELD_MISSING,
                "缺少发送机构（MSH-4），无法确定报告机构",
            )
        reports = self._group()
        out: list[ResultSubmission] = []
        seen: dict[tuple[str, str], Location] = {}
        for report in reports:
            sub = self._submission(report)
            if sub is None:
                continue
            key = (sub.report_no, sub.local_code)
            if key in seen:
                self.problem(
                    report.obr.loc(3),
                    ErrorCode.DUPLICATE_KEY,
                    f"报告单编号 {sub.report_no} 的项目 {sub.local_code} 在 {seen[key]} 已出现",
                )
            seen.setdefault(key, report.obr.loc(3))
            out.append(sub)
        if self.problems:
            raise Hl7Rejected(AckCode.AE, self._in_message_order(), self.header)
        return out

    def _in_message_order(self) -> list[Hl7Problem]:
        position = {(s.id, s.sequence): n for n, s in enumerate(self.segments)}

        def key(p: Hl7Problem) -> tuple[int, int, int]:
            loc = p.location
            return (
                position.get((loc.segment, loc.sequence), -1),
                loc.field or 0,
                loc.repetition or 0,
            )

        return sorted(self.problems, key=key)

    def _group(self) -> list[_Report]:
        reports: list[_Report] = []
        patient: PatientDemographics | None = None
        pid: Segment | None = None
        saw_pid = False
        # The segment NTE comments follow (v2.5.1 §7.3.1: NTE after PID, OBR or OBX).
        parent: Segment | None = None
        notes: list[Segment] = []
        for seg in self.segments:
            if seg.id == "NTE":
                notes.append(seg)
                continue
            if seg.id == "ADD" and not notes and reports and reports[-1].obx:
                last = reports[-1].obx[-1]
                if parent is last:
                    # Continues the OBX's last field (v2.5.1 §2.10.2); the OBX stays the
                    # segment that NTE comments after it belong to.
                    addendum = seg.fields[1] if len(seg.fields) > 1 else ""
                    reports[-1].obx_addenda.setdefault(last.sequence, []).append(addendum)
                    continue
            if notes:
                self._file_notes(parent, notes, reports)
                notes = []
            parent = seg
            if seg.id == "PID":
                saw_pid, pid = True, seg
                patient = self._patient(seg)
            elif seg.id == "OBR":
                reports.append(_Report(seg, patient, pid))
            elif seg.id == "OBX":
                if not reports:
                    self.problem(
                        seg.loc(), ErrorCode.SEGMENT_SEQUENCE, "OBX 段出现在任何 OBR 段之前"
                    )
                elif reports[-1].pid is not pid:
                    # ORU^R01 (v2.5.1 §7.3.1): a PATIENT_RESULT group is PID … {ORC OBR
                    # {OBX}}; OBX after a new PID without its own OBR would be filed in
                    # the previous patient's report.
                    self.problem(
                        seg.loc(),
                        ErrorCode.SEGMENT_SEQUENCE,
                        "OBX 段前面是另一患者的 PID 段，却没有该患者自己的 OBR 段",
                    )
                else:
                    reports[-1].obx.append(seg)
            elif seg.id in ("ZDS", "IPC") and reports:
                reports[-1].extra.append(seg)
        if notes:
            self._file_notes(parent, notes, reports)
        if not saw_pid:
            self.problem(Location("PID"), ErrorCode.SEGMENT_SEQUENCE, "缺少 PID 段（患者信息）")
        if not reports and saw_pid:
            self.problem(
                Location("OBR"), ErrorCode.SEGMENT_SEQUENCE, "缺少 OBR 段：消息中没有任何报告"
            )
        return reports

    def _file_notes(
        self, parent: Segment | None, notes: list[Segment], reports: list[_Report]
    ) -> None:
        """NTE (v2.5.1 §2.15.10) comments on the segment they follow (§7.3.1: NTE after
        PID, OBR or OBX). After an OBR they are the report's comment, after an OBX that
        value's; anything else (a patient's comment after PID, one after ORC, PV1 …)
        has no place in a stored result — the ACK says so rather than dropping them
        without a word."""
        if parent is not None and reports:
            report = reports[-1]
            if parent is report.obr:
                report.notes.extend(notes)
                return
            if report.obx and parent is report.obx[-1]:
                report.obx_notes.setdefault(parent.sequence, []).extend(notes)
                return
        self._unkept_notes(parent, notes, "平台只保存报告和检验结果的注释")

    def _unkept_notes(self, parent: Segment | None, notes: list[Segment], why: str) -> None:
        where = str(parent.loc()) if parent is not None else "MSH"
        first = next((t for n in notes if (t := n.f(3).value())), "")
        shown = first[:30] + ("…" if len(first) > 30 else "")
        self.notice(
            notes[0].loc(),
            f"{where} 后的 {len(notes)} 条 NTE 注释未保存（{why}）"
            + (f"：{shown}" if shown else ""),
        )

    # -------------------------------------------------------------- PID
    def _patient(self, pid: Segment) -> PatientDemographics | None:
        before = len(self.problems)
        identifiers = self._identifiers(pid)
        name = ""
        for rep in pid.f(5).reps():
            name = _join_name(rep.component(1), rep.component(2))
            if name:
                break
        birth: date | None = None
        if born := pid.f(7).component(1):
            ts = parse_ts(born)
            if ts is None:
                self.problem(
                    pid.loc(7), ErrorCode.DATA_TYPE, f"出生日期格式无效：{born!r}（应为 YYYYMMDD）"
                )
            else:
                birth = ts.date()
        sex = ""
        if raw_sex := pid.f(8).component(1):
            mapped = codes.SEX.get(raw_sex.upper())
            if mapped is None:
                self.problem(
                    pid.loc(8),
                    ErrorCode.TABLE_VALUE_NOT_FOUND,
                    f"性别代码无效：{raw_sex!r}（应为 M/F/O/U）",
                )
            else:
                sex = mapped
        if len(self.problems) > before:
            return None
        return PatientDemographics(tuple(identifiers), name, sex, birth)

    def _identifiers(self, pid: Segment) -> list[PatientIdentifier]:
        out: list[PatientIdentifier] = []
        where: list[Location] = []
        self._identifier_locations[pid.sequence] = ()
        reps = pid.f(3).reps()
        if not any(reps):
            self.problem(pid.loc(3), ErrorCode.REQUIRED_FIELD_MISSING, "缺少患者标识（PID-3）")
            return out
        for n, rep in enumerate(reps, start=1):
            value = rep.component(1)
            if not value:
                continue
            type_code = rep.component(5).upper()
            if type_code in codes.IGNORED_IDENTIFIER_TYPES:
                continue
            rule = identifier_rule(type_code, rep.component(4))
            if rule is None:
                self.problem(
                    pid.loc(3, n),
                    ErrorCode.TABLE_VALUE_NOT_FOUND,
                    f"未知的标识类型 {type_code!r}（PID-3 第 {n} 个标识的 CX-5）",
                )
                continue
            # A 病历号 is issued by a hospital: CX-4 assigning authority (HD namespace ID)
            # or CX-6 assigning facility names it (v2.5.1 §2.A.14) — a regional lab sends
            # the ordering hospital's. Intake takes a name that is no known institution
            # ("HIS", "LIS") for the sender's own.
            assigner = (
                (rep.component(4) or rep.component(6) or self.header.institution)
                if rule.kind is IdentifierKind.MRN
                else ""
            )
            checked = checked_identifier(PatientIdentifier(rule.kind, value, assigner))
            if isinstance(checked, PatientIdentifier):
                out.append(checked)
                where.append(pid.loc(3, n))
            else:
                for message in checked:
                    self.problem(pid.loc(3, n), ErrorCode.DATA_TYPE, f"{rule.label}：{message}")
        self._national_id_in_pid19(pid, out, where)
        if not out and not any(p.location.segment == "PID" for p in self.problems):
            self.problem(
                pid.loc(3), ErrorCode.REQUIRED_FIELD_MISSING, "PID-3 中没有可识别的患者标识"
            )
        self._identifier_locations[pid.sequence] = tuple(where)
        return out

    def _national_id_in_pid19(
        self, pid: Segment, out: list[PatientIdentifier], where: list[Location]
    ) -> None:
        """PID-19 "SSN number – patient" (v2.5.1 §3.4.2.19, kept for backward
        compatibility) is where many Chinese HIS/LIS put the 居民身份证号 instead of a PID-3
        repetition. A value shaped like one (18 characters) is the patient's
        national id and is checked like PID-3's; anything else there (a 15-digit first-
        generation number, a 医保号) is not read."""
        value = pid.f(19).component(1)
        if not _NATIONAL_ID_SHAPE.match(value):
            return
        checked = checked_identifier(PatientIdentifier(IdentifierKind.NATIONAL_ID, value, ""))
        if not isinstance(checked, PatientIdentifier):
            for message in checked:
                self.problem(pid.loc(19), ErrorCode.DATA_TYPE, f"居民身份证（PID-19）：{message}")
            return
        if checked not in out:
            out.append(checked)
            where.append(pid.loc(19))

    # -------------------------------------------------------------- OBR
    def _submission(self, report: _Report) -> ResultSubmission | None:
        obr = report.obr
        before = len(self.problems)
        report_no = obr.f(3).component(1)
        if not report_no:
            self.problem(
                obr.loc(3),
                ErrorCode.REQUIRED_FIELD_MISSING,
                "缺少报告单编号（OBR-3 检查检验方医嘱号）",
            )
        local_code, local_name = obr.f(4).component(1), obr.f(4).component(2)
        if not local_code:
            self.problem(
                obr.loc(4), ErrorCode.REQUIRED_FIELD_MISSING, "缺少检查检验项目代码（OBR-4）"
            )
        status = self._status(report)
        performed = self._time(obr, 7, required=True, label="检查检验时间")
        issued = self._time(obr, 22, required=False, label="报告时间")
        if issued is None and performed is not None:
            issued = self._message_time() or performed
        section = obr.f(24).component(1)
        category = codes.SERVICE_SECTIONS.get(section.upper()) or codes.SERVICE_SECTIONS.get(
            section
        )
        observations, obs_locations, note_locations, findings, conclusion, notes, documents = (
            self._observations(report)
        )
        comment = "\n".join(t for t in (note_text(report.notes), *notes) if t)
        if findings or conclusion:
            category = category or Category.IMAGING
        if not report.obx and status not in (ResultStatus.CANCELLED, ResultStatus.REGISTERED):
            self.problem(
                obr.loc(),
                ErrorCode.SEGMENT_SEQUENCE,
                "报告没有任何 OBX 结果段（消息可能被截断）",
            )
        accession, study_uid = obr.f(18).component(1) or obr.f(19).component(1), ""
        for seg in report.extra:
            if seg.id == "ZDS":
                study_uid = study_uid or seg.f(1).component(1)
            elif seg.id == "IPC":
                accession = accession or seg.f(1).component(1)
                study_uid = study_uid or seg.f(3).component(1)
        signer = person_name(obr.f(32))
        performer = person_name(obr.f(34)) or next(
            (n for x in report.obx if (n := person_name(x.f(16)))), ""
        )
        if (
            len(self.problems) > before
            or report.patient is None
            or status is None
            or performed is None
            or issued is None
        ):
            return None
        self.origins.append(
            Origin(
                obr.loc(),
                self._identifier_locations.get(report.pid.sequence, ()) if report.pid else (),
                tuple(obs_locations),
                tuple(note_locations),
                report.notes[0].loc(3) if report.notes else None,
            )
        )
        return new_submission(
            institution=self.header.institution,
            report_no=report_no,
            local_code=local_code,
            local_name=local_name,
            patient=report.patient,
            status=status,
            performed_at=performed,
            issued_at=issued,
            category=category,
            department=section,
            performer=performer,
            signer=signer,
            observations=tuple(observations),
            findings=findings,
            conclusion=conclusion,
            accession_number=accession,
            study_uid=study_uid,
            comment=comment,
            documents=tuple(documents),
        )

    def _message_time(self) -> datetime | None:
        msh = self.segments[0]
        return parse_ts(msh.f(7).component(1))

    def _time(self, seg: Segment, n: int, *, required: bool, label: str) -> datetime | None:
        raw = seg.f(n).component(1)
        if not raw:
            if required:
                self.problem(
                    seg.loc(n), ErrorCode.REQUIRED_FIELD_MISSING, f"缺少{label}（{seg.id}-{n}）"
                )
            return None
        ts = parse_ts(raw)
        if ts is None:
            self.problem(
                seg.loc(n), ErrorCode.DATA_TYPE, f"{label}格式无效：{raw!r}（应为 YYYYMMDDHHMMSS）"
            )
        return ts

    def _status(self, report: _Report) -> ResultStatus | None:
        obr = report.obr
        raw = obr.f(25).component(1).upper()
        obx_status = report.obx_status()
        if obx_status and all(s in codes.OBSERVATION_STATUS_OVERRIDE for s in obx_status):
            overrides = {codes.OBSERVATION_STATUS_OVERRIDE[s] for s in obx_status}
            if len(overrides) == 1:
                return overrides.pop()
        if not raw:
            # OBR-25 is required for ORU (v2.5.1 §7.4.1.25); fall back to a uniform OBX-11.
            uniform = set(obx_status)
            if len(uniform) == 1 and (only := uniform.pop()) in codes.RESULT_STATUS:
                return codes.RESULT_STATUS[only]
            self.problem(
                obr.loc(25),
                ErrorCode.REQUIRED_FIELD_MISSING,
                "缺少结果状态（OBR-25，应为 P/F/C/X）",
            )
            return None
        status = codes.RESULT_STATUS.get(raw)
        if status is None:
            self.problem(
                obr.loc(25),
                ErrorCode.TABLE_VALUE_NOT_FOUND,
                f"结果状态 {raw!r} 无效（应为 P/F/C/X）",
            )
        elif status is ResultStatus.FINAL and codes.OBSERVATION_STATUS_CORRECTION in obx_status:
            # Table 0085 C replaces a final result: the report is a correction even when
            # the sender left OBR-25 at F (Table 0123 C "correction to results").
            return ResultStatus.CORRECTED
        return status

    # -------------------------------------------------------------- OBX
    def _observations(
        self, report: _Report
    ) -> tuple[
        list[ObservationValue],
        list[Location],
        list[Location | None],
        str,
        str,
        list[str],
        list[ReportDocument],
    ]:
        """The report's values, their OBX and first NTE, its findings and conclusion, the
        comments of OBX that are report text or attachments (they go with the report's),
        and its original report documents (ED)."""
        observations: list[ObservationValue] = []
        note_locations: list[Location | None] = []
        report_notes: list[str] = []
        obx_notes = report.obx_notes
        locations: list[Location] = []
        sections: dict[ReportSection, list[str]] = {}
        attachments: list[Segment] = []
        documents: list[ReportDocument] = []
        obx_status = report.obx_status()
        all_wrong = bool(obx_status) and all(
            s in codes.OBSERVATION_STATUS_OVERRIDE for s in obx_status
        )
        for obx, status in zip(report.obx, obx_status, strict=True):
            notes = obx_notes.get(obx.sequence) if obx_notes else None
            if status in codes.OBSERVATION_STATUS_REMOVED and not all_wrong:
                # deleted / posted as wrong: not a current value of the report
                if notes:
                    self._unkept_notes(obx, notes, "该结果已删除或标为错误（OBX-11）")
                continue
            plain = obx.plain or _observation_fields_plain(obx)
            vt = (
                _plain_components(obx.fields, 2, obx.delimiters)[0]
                if plain
                else obx.f(2).component(1)
            ).upper()
            kind = codes.VALUE_TYPES.get(vt)
            if kind is None:
                self.problem(
                    obx.loc(2),
                    ErrorCode.TABLE_VALUE_NOT_FOUND,
                    f"不支持的值类型 {vt or '（空）'}（支持 NM、ST、TX、FT、CE、CWE、SN）",
                )
                continue
            if kind is ValueKind.ATTACHMENT:
                kept = (
                    self._documents(obx, report.obx_addenda.get(obx.sequence, ()))
                    if vt == "ED"
                    else []  # RP
                )
                if kept is None:  # refused (a problem named OBX-5)
                    continue
                if not kept:  # a reference (RP), or a document of a type not kept
                    attachments.append(obx)
                    continue
                documents.extend(kept)
                if notes:
                    report_notes.append(note_text(notes))
                continue
            # Only text can be a report section (findings / conclusion).
            if kind is ValueKind.TEXT and (section := _section(obx)) is not None:
                sections.setdefault(section, []).append(_text_value(obx))
                if notes:
                    report_notes.append(note_text(notes))
                continue
            obs = (
                _plain_observation(obx, vt, kind) if plain and kind in _PLAIN_KINDS else None
            ) or self._observation(obx, vt, kind)
            if obs is not None:
                if notes and (comment := note_text(notes)):
                    obs = replace(obs, comment=comment)
                observations.append(obs)
                locations.append(obx.loc())
                note_locations.append(notes[0].loc(3) if notes else None)
        findings = "\n".join(t for t in sections.get(ReportSection.FINDINGS, ()) if t)
        conclusion = "\n".join(t for t in sections.get(ReportSection.CONCLUSION, ()) if t)
        if attachments:
            self._unkept_attachments(
                attachments, bool(observations or findings or conclusion or documents)
            )
        return (
            observations,
            locations,
            note_locations,
            findings,
            conclusion,
            report_notes,
            documents,
        )

    def _documents(self, obx: Segment, addenda: Sequence[str]) -> list[ReportDocument] | None:
        """The documents of an ED OBX (encapsulated data, v2.5.1 §2.A.24: OBX-5 =
        source application ^ type of data (Table 0191) ^ data subtype (Table 0291) ^
        encoding (Table 0299: A, Hex, Base64) ^ data). Each repetition of OBX-5 is a
        document (v2-to-FHIR: each repeat a DocumentReference.content); a repetition with
        only data continues the one before, as does ADD-1 after the OBX (§2.10.2). Kept:
        PDF, JPEG and PNG; [] for another type (the ACK names it as not kept); None when
        the data is wrong or too large (AE naming OBX-5 and OBX-1)."""
        d = obx.delimiters
        set_id = obx.f(1).component(1) or str(obx.sequence)
        parts: list[tuple[int, str, str, list[str]]] = []  # (rep, type, encoding, data)
        for n, rep in enumerate(obx.f(5).reps(), start=1):
            head = [rep.component(i) for i in (1, 2, 3, 4)]
            data = rep.component_text(5)
            if not any(head) and parts:
                parts[-1][3].append(data)
                continue
            if not any(head) and not data:
                continue
            content_type = _ed_content_type(head[1], head[2])
            parts.append((n, content_type, head[3], [data]))
        if parts:
            parts[-1][3].extend(addenda)
        if not parts or any(not p[1] for p in parts):
            return []
        title = obx.f(3).component(2)[:MAX_DOCUMENT_TITLE]
        out: list[ReportDocument] = []
        for n, content_type, encoding, chunks in parts:
            where = obx.loc(5, n)
            raw = "".join(chunks)
            if d.escape in raw:
                raw = d.unescape_text(raw)
            decoded, why = _ed_decode(encoding, raw)
            if why is None:
                assert decoded is not None
                why = document_problem(content_type, decoded)
            if why is not None:
                self.problem(
                    where,
                    ErrorCode.DATA_TYPE,
                    f"OBX-1 设置号 {set_id} 的封装文档（ED，OBX-5）无法保存：{why}",
                )
                return None
            assert decoded is not None
            out.append(ReportDocument(content_type, decoded, title))
        return out

    def _unkept_attachments(self, attachments: list[Segment], has_content: bool) -> None:
        """ED (encapsulated data, v2.5.1 §2.A.24) and RP (reference pointer, §2.A.65)
        values — a PDF of the signed report, a link to it — have no place in a stored
        result. Beside structured rows or report text they are left out and the ACK
        says so; a report that is nothing but an attachment would be stored empty, so
        it is refused."""
        for obx in attachments:
            vt = obx.f(2).component(1).upper()
            kind = obx.f(5).component(3 if vt == "ED" else 4) or obx.f(5).component(2)
            what = (
                f"封装文档（ED{'，' + kind if kind else ''}）"
                if vt == "ED"
                else "外部文档引用（RP）"
            )
            if has_content:
                self.notice(obx.loc(5), f"{what}未保存：平台只保存结构化结果和报告文本")
            else:
                self.problem(
                    obx.loc(2),
                    ErrorCode.DATA_TYPE,
                    f"报告只有{what}，没有可保存的结果：请以 NM/ST/TX/FT/CE/SN 等类型"
                    "发送检验结果或报告文本（所见、诊断意见）",
                )

    def _observation(self, obx: Segment, vt: str, kind: ValueKind) -> ObservationValue | None:
        ident = obx.f(3)
        code, name = ident.component(1), ident.component(2)
        if not code and not name:
            self.problem(obx.loc(3), ErrorCode.REQUIRED_FIELD_MISSING, "缺少观察项目代码（OBX-3）")
            return None
        loinc = code if ident.component(3).upper() == "LN" else ""
        if not loinc and ident.component(6).upper() == "LN":
            loinc = ident.component(4)
        status = obx.f(11).component(1).upper()
        value_field = obx.f(5)
        if not value_field:
            if status in codes.OBSERVATION_STATUS_NO_VALUE:
                # No value, and OBX-11 says why (Table 0085: X cannot be obtained, I
                # pending …). Kept as text saying so: an NM without its number is no
                # numeric result, and intake refuses one (it answered AE before).
                return ObservationValue(
                    code or name,
                    name or code,
                    ValueType.ST,
                    value_text=codes.OBSERVATION_STATUS_TEXT.get(status, ""),
                    unit=_unit(obx.f(6).component(1), obx.f(6).component(2), ""),
                    ref_text=obx.f(7).value(),
                    loinc=loinc,
                )
            self.problem(
                obx.loc(5),
                ErrorCode.REQUIRED_FIELD_MISSING,
                f"观察项目 {name or code} 缺少结果值（OBX-5）",
            )
            return None
        value_num: float | None = None
        value_text = ""
        value_type = _value_type(vt)
        if (
            kind in (ValueKind.NUMERIC, ValueKind.STRUCTURED_NUMERIC)
            and obx.delimiters.repetition in value_field.text
            and (extra := next((n for n, r in enumerate(value_field.reps(), 1) if n > 1 and r), 0))
        ):
            # One number per OBX (v2.5.1 §7.4.2.5 repeats OBX-5 for multi-part answers of
            # CE/TX/FT only): a second one would be dropped, so the message is refused.
            self.problem(
                obx.loc(5, extra),
                ErrorCode.DATA_TYPE,
                f"数值型结果（{vt}）只能有一个值，OBX-5 却有重复：{value_field.text!r}",
            )
            return None
        if kind is ValueKind.NUMERIC:
            raw = value_field.component(1)
            if _NUMBER.match(raw):
                value_num, value_text = float(raw), raw
            elif comparator := _comparator_value(raw):
                # "<0.5", ">1000" sent as NM (LIS print the detection limit): the number
                # alone would be a different result. Kept as SN text with its comparator
                # (v2.5.1 §2.A.73 SN: comparator^num1), like an SN "<^0.5".
                value_type, value_text = ValueType.SN, comparator
            else:
                self.problem(obx.loc(5), ErrorCode.DATA_TYPE, f"数值型结果（NM）不是数字：{raw!r}")
                return None
        elif kind is ValueKind.CODED:
            # CE/CWE answers may repeat (several organisms, v2.5.1 §7.4.2.5): all are kept.
            value_text = "；".join(t for r in value_field.reps() if (t := _coded_text(r)))
            if not value_text:
                # Was stored as an empty answer with AA ("^^L": a coding system only).
                self.problem(
                    obx.loc(5),
                    ErrorCode.REQUIRED_FIELD_MISSING,
                    f"观察项目 {name or code} 的编码结果（{vt}）既无代码也无文本（OBX-5）",
                )
                return None
        elif kind is ValueKind.STRUCTURED_NUMERIC:
            parsed = _structured_numeric(value_field)
            if parsed is None:
                self.problem(
                    obx.loc(5),
                    ErrorCode.DATA_TYPE,
                    f"结构化数值（SN）格式无效：{value_field.value()!r}",
                )
                return None
            value_num, value_text = parsed
        else:
            value_text = _text_value(obx)
        ref = obx.f(7).value()
        low, high = parse_reference_range(ref)
        # OBX-8 repeats (v2.5.1 §7.4.2.8, e.g. "H~A"): every flag must be a known one; the
        # first one given is the result's flag (an empty first repetition is no flag).
        flag = ""
        flags = obx.f(8)
        for n, rep in enumerate(
            flags.reps() if obx.delimiters.repetition in flags.text else (flags,), start=1
        ):
            flag_raw = rep.component(1)
            if not flag_raw:
                continue
            mapped = _abnormal_flag(flag_raw)
            if not mapped:
                self.problem(
                    obx.loc(8, n),
                    ErrorCode.TABLE_VALUE_NOT_FOUND,
                    f"异常标志 {flag_raw!r} 无效（应为 H/L/N/A 等）",
                )
                return None
            flag = flag or mapped
        unit = obx.f(6)
        # Positional: ObservationValue's field order (code, name, value_type, value_num,
        # value_text, unit, ref_low, ref_high, ref_text, flag, loinc).
        return new_observation(
            code or name,
            name or code,
            value_type,
            value_num,
            value_text,
            _unit(unit.component(1), unit.component(2), unit.component(3)),
            low,
            high,
            ref,
            flag,
            loinc,
        )


# Data subtypes (Table 0291, and the MIME subtypes later versions and many senders use)
# of the documents kept; a subtype in the type-of-data component is read as well.
_ED_SUBTYPES = {
    "PDF": "application/pdf",
    "APPLICATION/PDF": "application/pdf",
    "X-PDF": "application/pdf",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "IMAGE/JPEG": "image/jpeg",
    "PNG": "image/png",
    "IMAGE/PNG": "image/png",
}
_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _ed_content_type(type_of_data: str, subtype: str) -> str:
    """The content type of an ED document kept, or "" (a type not kept)."""
    return _ED_SUBTYPES.get(subtype.upper()) or _ED_SUBTYPES.get(type_of_data.upper(), "")


def _ed_decode(encoding: str, text: str) -> tuple[bytes | None, str | None]:
    """ED-4 encoding (Table 0299) applied to ED-5: (bytes, None) or (None, why).
    Base64 (RFC 4648 §4, line breaks allowed, nothing else) and Hex strictly; A (no
    encoding) is ASCII text as it stands."""
    enc = encoding.upper()
    if enc in ("BASE64", "HEX"):
        text = text.translate(_WHITESPACE)
    if len(text) > 2 * MAX_DOCUMENT_BYTES + 64:
        return None, f"文档过大，超过上限 {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB"
    if enc == "BASE64":
        try:  # validate: the alphabet and its padding, nothing else
            if text:
                return base64.b64decode(text, validate=True), None
        except binascii.Error:
            pass
        return None, "数据不是有效的 Base64 编码（ED-4 = Base64）"
    if enc == "HEX":
        # ``fromhex`` checks the digits itself (was: a regular expression over the text
        # first, 4.4 of the 5.8 s it took to read a 20 MB PDF in Hex).
        try:
            if text:
                return bytes.fromhex(text), None
        except ValueError:
            pass
        return None, "数据不是有效的十六进制编码（ED-4 = Hex）"
    if enc == "A":
        if not text.isascii():
            return None, "ED-4 = A（无编码）的数据含有非 ASCII 字符"
        return text.encode("ascii"), None
    return None, f"编码方式 {encoding or '（空）'} 无效（ED-4 应为 Base64、Hex 或 A）"


def note_text(notes: Sequence[Segment]) -> str:
    """The text of NTE comments (v2.5.1 §2.15.10): NTE-3 (FT, repeating) of each, escape
    sequences and formatting commands decoded like any text (§2.7), repetitions and
    segments one line each, empty ones left out."""
    return "\n".join(t for nte in notes for r in nte.f(3).reps() if (t := r.value()))


def _coded_text(fv: FieldValue) -> str:
    """The text of one CE/CWE/CNE answer (v2.5.1 §2.A.8 CE, §2.A.13 CWE): its text, else
    its code, else the alternate text and code (components 5 and 4), else CWE-9
    original text — LIS that code the answer only in an alternate system, or send the
    text alone as original text (v2-to-FHIR: CWE-9 → CodeableConcept.text), were
    stored with an empty value."""
    return (
        fv.component(2) or fv.component(1) or fv.component(5) or fv.component(4) or fv.component(9)
    )


def _abnormal_flag(raw: str) -> str:
    """The platform's flag of an OBX-8 abnormal flag (HL7 Table 0078), "" if unknown."""
    return codes.ABNORMAL_FLAGS.get(raw.upper()) or codes.ABNORMAL_FLAGS.get(raw, "")


_VALUE_TYPES: dict[str, ValueType] = {
    "CE": ValueType.CE,
    "CWE": ValueType.CE,
    "CNE": ValueType.CE,
    "NM": ValueType.NM,
    "SN": ValueType.SN,
    "ST": ValueType.ST,
}


_PLAIN_KINDS = frozenset({ValueKind.NUMERIC, ValueKind.CODED, ValueKind.STRUCTURED_NUMERIC})
# The OBX fields ``_plain_observation`` splits by their delimiters alone (OBX-7, the
# reference range, it unescapes itself; OBX-11 is read by ``_Report.obx_status``).
_PLAIN_OBX_FIELDS = (2, 3, 5, 6, 8)


def _observation_fields_plain(obx: Segment) -> bool:
    """No escape and no subcomponent character in the fields ``_plain_observation``
    splits: an OBX that is not plain as a whole (``Segment.plain``) only because of an
    escaped reference range (``40\\R\\55``) or a performer's ``id&family&given`` in
    OBX-16 is still read in one pass. Measured on bench_mllp's
    liver panel (one such OBX and one SN among six), with SN read here too: 107 against
    97 µs to parse the message (the fastest of 8 alternating runs of 5,000 each)."""
    fields, d = obx.fields, obx.delimiters
    escape, subcomponent, n_fields = d.escape, d.subcomponent, len(obx.fields)
    for n in _PLAIN_OBX_FIELDS:
        if n < n_fields and (escape in fields[n] or subcomponent in fields[n]):
            return False
    return True


def _plain_observation(obx: Segment, vt: str, kind: ValueKind) -> ObservationValue | None:
    """``_Translator._observation`` of an OBX whose value fields are plain (see
    ``_observation_fields_plain``) with a numeric, coded or structured numeric value, in
    one pass over its fields — or None whenever anything is missing or wrong, and the
    general reader takes it (and names the problem). Most results are such OBX; reading
    them field object by field object was 3/4 of parsing a message."""
    fields, d = obx.fields, obx.delimiters
    rep, n_fields = d.repetition, len(fields)
    if (n_fields > 5 and rep in fields[5]) or (n_fields > 8 and rep in fields[8]):
        return None  # repeated values or flags: the general reader
    ident = _plain_components(fields, 3, d)
    if len(ident) < 6:
        ident += [""] * (6 - len(ident))
    code, name = ident[0], ident[1]
    if not code and not name:
        return None
    loinc = code if ident[2].upper() == "LN" else ""
    if not loinc and ident[5].upper() == "LN":
        loinc = ident[3]
    value = _plain_components(fields, 5, d)
    value_num: float | None
    if kind is ValueKind.NUMERIC:
        value_text = value[0]
        if not _NUMBER.match(value_text):
            return None  # also an empty value: no value, or not a number
        value_num = float(value_text)
    elif kind is ValueKind.STRUCTURED_NUMERIC:
        if len(value) < 4:
            value += [""] * (4 - len(value))
        parsed = _sn_value(value[0], value[1], value[2], value[3])
        if parsed is None:
            return None  # also an empty value (no number)
        value_num, value_text = parsed
    else:  # coded
        value_text = (value[1] if len(value) > 1 else "") or value[0]
        if not value_text:
            return None
        value_num = None
    # OBX-7 as ``FieldValue.value`` reads it: the first repetition, unescaped.
    ref_field = fields[7] if len(fields) > 7 else ""
    ref = ref_field.split(d.repetition, 1)[0] if ref_field else ""
    if d.escape in ref:
        ref = d.unescape_text(ref)
    ref = ref.strip()
    low, high = parse_reference_range(ref)
    flag_raw = _plain_components(fields, 8, d)[0]
    flag = _abnormal_flag(flag_raw)
    if flag_raw and not flag:
        return None
    unit = _plain_components(fields, 6, d)
    if len(unit) > 1:  # "10^9/L" unescaped reads as two components (``_unit``)
        unit = [_unit(unit[0], unit[1], unit[2] if len(unit) > 2 else "")]
    return new_observation(
        code or name,
        name or code,
        _value_type(vt),
        value_num,
        value_text,
        unit[0] if unit else "",
        low,
        high,
        ref,
        flag,
        loinc,
    )


_COMPARATOR_VALUE = re.compile(r"^(<=|>=|<|>|≤|≥|＜|＞)\s*" + _NUM + r"$")
_COMPARATORS = {"≤": "<=", "≥": ">=", "＜": "<", "＞": ">"}


def _comparator_value(raw: str) -> str:
    """ "<0.5", "> 1000", "≤5" → the SN text "<0.5", ">1000", "<=5"; "" otherwise."""
    m = _COMPARATOR_VALUE.match(raw)
    if not m:
        return ""
    return _COMPARATORS.get(m.group(1), m.group(1)) + m.group(2)


_POWER_BASE = re.compile(r"^\d+$")
_POWER_REST = re.compile(r"^\d+\s*(?:/|$)")


def _unit(identifier: str, text: str, system: str) -> str:
    """OBX-6 (CE: identifier^text^coding system). Chinese LIS write cell counts' units
    as "10^9/L", "10^12/L" without escaping the caret (v2.5.1 §2.7: ``\\S\\``), which
    reads as identifier "10" and text "9/L": the unit is the two put back together."""
    if not system and _POWER_BASE.match(identifier) and _POWER_REST.match(text):
        return f"{identifier}^{text}"
    return identifier or text


def _value_type(vt: str) -> ValueType:
    return _VALUE_TYPES.get(vt, ValueType.TX)


def _text_value(obx: Segment) -> str:
    """TX/FT/ST: repetitions are lines (v2.5.1 §2.A.79 TX), ``\\.br\\`` breaks lines."""
    return "\n".join(r.value() for r in obx.f(5).reps()).strip()


def _section(obx: Segment) -> ReportSection | None:
    ident = obx.f(3)
    code_subs = ident.subcomponents(1)
    if len(code_subs) > 1 and (s := codes.SECTION_SUFFIXES.get(code_subs[-1].upper())):
        return s
    for candidate in (ident.component(1), ident.component(4)):
        if s := codes.SECTION_CODES.get(candidate):
            return s
    for name in (ident.component(2), ident.component(5), ident.component(1)):
        if s := codes.SECTION_NAMES.get(name):
            return s
    return None


def _structured_numeric(fv: FieldValue) -> tuple[float | None, str] | None:
    """SN: comparator^num1^separator/suffix^num2, e.g. ``<^0.5``, ``^1^:^40``,
    ``^10^-^20``. A plain ``=num1`` keeps the number; other forms stay as text."""
    return _sn_value(fv.component(1), fv.component(2), fv.component(3), fv.component(4))


def _sn_value(comparator: str, num1: str, sep: str, num2: str) -> tuple[float | None, str] | None:
    """``_structured_numeric`` of the four components, each unescaped and stripped."""
    if comparator not in ("", "=", "<", ">", "<=", ">=", "<>"):
        return None
    for n in (num1, num2):
        if n and not _NUMBER.match(n):
            return None
    if not num1:
        return None
    if sep and sep not in ("-", "+", "/", ".", ":"):
        return None
    text = f"{comparator if comparator != '=' else ''}{num1}{sep}{num2}"
    number = float(num1) if comparator in ("", "=") and not sep and not num2 else None
    return number, text


def problems_as_text(problems: Iterable[Hl7Problem]) -> str:
    return "；".join(f"{p.field}: {p.message}" for p in problems)
