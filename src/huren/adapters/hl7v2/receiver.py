"""One HL7 v2 message in, one ACK out — the same for MLLP and HTTP.

The ACK is built only after ``intake.receive_many`` has returned, i.e. after the intake
transaction has committed: AA means the result is durable (R3: 已确认的结果不会丢失).
Bad messages are recorded through ``intake.reject`` for the integration engineer's page,
and nothing of them is stored. ``handle`` does one message (HTTP); ``prepare`` and
``commit`` split it for the MLLP listener's group commit (``MllpGroupCommit``), where
many messages share one transaction and each still gets its own ACK. These calls block;
servers run them in worker threads."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from huren.adapters.hl7v2 import codes
from huren.adapters.hl7v2.ack import build_ack, encode_ack, summary, with_notices
from huren.adapters.hl7v2.codes import ErrorCode
from huren.adapters.hl7v2.mllp import Oversized
from huren.adapters.hl7v2.parse import (
    MSH,
    AckCode,
    Hl7Problem,
    Hl7Rejected,
    Location,
    MessageHeader,
    Origin,
    ParsedOru,
    header_from_text,
    normalize_segment_terminators,
    parse_oru,
    read_header,
)
from huren.domain.errors import DomainError, Problem
from huren.services.intake import (
    MAX_DOCUMENT_BYTES,
    Channel,
    InboundMessage,
    ReceiveOutcome,
    Rejection,
)
from huren.services.ports import Clock

log = logging.getLogger("huren.hl7v2")


class Intake(Protocol):
    """The intake service as this adapter uses it (``huren.services.intake``)."""

    def receive_many(
        self, messages: Sequence[InboundMessage]
    ) -> list[ReceiveOutcome | Exception]: ...

    def reject(self, rejection: Rejection) -> int: ...


class ResponseLog(Protocol):
    """Keeps the ACK we sent next to a rejected inbound message, for the engineer's page
    (an accepted message's response is what intake answers a resend with)."""

    def record_response(self, message_id: int, response: str) -> None: ...


class Refusal(NamedTuple):
    """A message refused before storing, not yet recorded (``Hl7Receiver.parse``)."""

    code: AckCode
    header: MessageHeader
    problems: list[Hl7Problem]
    text: str


@dataclass(frozen=True, slots=True)
class Hl7Reply:
    code: AckCode
    ack: str  # ER7 text, segments separated by CR
    payload: bytes  # encoded in the incoming message's character set
    header: MessageHeader
    outcome: ReceiveOutcome | None = None
    message_id: int | None = None
    problems: tuple[Hl7Problem, ...] = ()


# Fields of the intake service's problems (``submissions[i].report_no``,
# ``submissions[i].patient.identifiers[j]``, ``submissions[i].observations[k].unit`` …)
# → the ORU field they came from, through the parser's ``Origin`` of each submission.
_PATH = re.compile(
    r"^submissions\[(\d+)\](?:\.patient\.identifiers(?:\[(\d+)\])?|\.observations\[(\d+)\]\.?(\w*)|\.(\w+))?"
)
_OBR_FIELDS: Mapping[str, int] = {
    "report_no": 3,
    "local_code": 4,
    "local_name": 4,
    "performed_at": 7,
    "accession_number": 18,
    "issued_at": 22,
    "category": 24,
    "department": 24,
    "status": 25,
    "signer": 32,
    "performer": 34,
    "institution": 3,
}
_OBX_FIELDS: Mapping[str, int] = {
    "code": 3,
    "name": 3,
    "loinc": 3,
    "value_type": 2,
    "value_num": 5,
    "value_text": 5,
    "unit": 6,
    "ref_text": 7,
    "flag": 8,
}


def hl7_location(problem: Problem, origins: Sequence[Origin] = ()) -> Location:
    """Name an intake problem the HL7 way; fields already named so (``PID-3``) pass."""
    name = problem.field
    if m := re.match(r"^([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?(?:-(\d+))?", name):
        seq = int(m.group(2) or 1)
        field_no = int(m.group(3)) if m.group(3) else None
        return Location(m.group(1), seq, field_no, indexed=bool(m.group(2)))
    if name == "institution":
        return MSH.at(4)
    if (m := _PATH.match(name)) and int(m.group(1)) < len(origins):
        origin = origins[int(m.group(1))]
        ident, obs, obs_field, sub_field = m.group(2), m.group(3), m.group(4), m.group(5)
        if "patient" in name:
            if ident is not None and int(ident) < len(origin.identifiers):
                return origin.identifiers[int(ident)]
            return Location("PID", field=3)
        if obs is not None and int(obs) < len(origin.observations):
            k = int(obs)
            if obs_field == "comment" and k < len(origin.observation_notes):
                # NTE after the OBX (v2.5.1 §7.3.1), its NTE-3 comment
                note = origin.observation_notes[k]
                if note is not None:
                    return note
            obx = origin.observations[k]
            return obx.at(_OBX_FIELDS[obs_field]) if obs_field in _OBX_FIELDS else obx
        if sub_field == "comment" and origin.notes is not None:
            return origin.notes  # NTE after the OBR
        if sub_field in _OBR_FIELDS:
            return origin.obr.at(_OBR_FIELDS[sub_field])
        return origin.obr
    return MSH


def _error_code(problem: Problem) -> ErrorCode:
    text = problem.message
    if "缺少" in text or "为空" in text or "必须" in text:
        return ErrorCode.REQUIRED_FIELD_MISSING
    if "未知" in text or "不存在" in text or "未登记" in text:
        return ErrorCode.UNKNOWN_KEY
    return ErrorCode.DATA_TYPE


class Hl7Receiver:
    def __init__(
        self,
        intake: Intake,
        clock: Clock,
        channel: Channel,
        responses: ResponseLog | None = None,
    ) -> None:
        self.intake = intake
        self.clock = clock
        self.channel = channel
        self.responses = responses

    def handle(
        self,
        raw: bytes,
        *,
        charset_hint: str | None = None,
        sender_institution: str | None = None,
    ) -> Hl7Reply:
        """Parse, store, acknowledge. ``sender_institution``: the authenticated caller's
        institution (HTTP); MSH-4 must name it."""
        prepared = self.prepare(
            raw, charset_hint=charset_hint, sender_institution=sender_institution
        )
        return self.commit([prepared])[0]

    def prepare(
        self,
        raw: bytes,
        *,
        charset_hint: str | None = None,
        sender_institution: str | None = None,
    ) -> ParsedOru | Hl7Reply:
        """The parsed message, or the reply to a message refused before storing."""
        parsed = self.parse(raw, charset_hint=charset_hint, sender_institution=sender_institution)
        return self._refuse(*parsed) if isinstance(parsed, Refusal) else parsed

    def parse(
        self,
        raw: bytes,
        *,
        charset_hint: str | None = None,
        sender_institution: str | None = None,
    ) -> ParsedOru | Refusal:
        """``prepare`` without the database: a refused message's ``Refusal`` is recorded
        (and answered) by ``commit``."""
        try:
            parsed = parse_oru(raw, self.channel, charset_hint=charset_hint)
            if sender_institution is not None and parsed.header.institution != sender_institution:
                raise Hl7Rejected(
                    AckCode.AE,
                    [
                        Hl7Problem(
                            MSH.at(4),
                            ErrorCode.UNKNOWN_KEY,
                            f"发送机构 {parsed.header.institution} 与接口账号所属机构 {sender_institution} 不一致",
                        )
                    ],
                    parsed.header,
                )
        except Hl7Rejected as exc:
            text = exc.text or raw.decode(exc.header.charset, errors="replace")
            return Refusal(exc.ack, exc.header, exc.problems, text)
        except Exception:
            # A message our parser chokes on is still the sender's to fix, never a crash.
            log.exception("unreadable HL7 message")
            problem = Hl7Problem(MSH, ErrorCode.SEGMENT_SEQUENCE, "消息无法解析")
            return Refusal(
                AckCode.AR, MessageHeader(), [problem], raw.decode("utf-8", errors="replace")
            )
        return parsed

    def oversized(self, frame: Oversized) -> Refusal:
        """An MLLP frame over the size limit, of which only the head was kept: AR naming
        the size, answered with the MSH of its head (control id, sender, character set)
        and recorded with that head for the engineer's page."""
        raw = normalize_segment_terminators(frame.head)
        try:
            header = read_header(raw)
        except Hl7Rejected as exc:
            header = exc.header
        codec = codes.CHARSETS.get(header.charset_field.upper(), "utf-8")
        text = raw.decode(codec, errors="replace")
        if raw.startswith(b"MSH") and header.control_id:
            header = header_from_text(text, header, codec)
        mib = 1024 * 1024
        problem = Hl7Problem(
            MSH,
            ErrorCode.DATA_TYPE,
            f"消息过大：{frame.size} 字节，超过单条消息上限 {frame.limit} 字节"
            f"（约 {frame.limit // mib} MB；其中的封装报告文档最大 "
            f"{MAX_DOCUMENT_BYTES // mib} MB），未保存",
        )
        return Refusal(AckCode.AR, header, [problem], text + "\n……（消息过大，仅保留开头）")

    def commit(self, prepared: Sequence[ParsedOru | Hl7Reply | Refusal]) -> list[Hl7Reply]:
        """Store the parsed messages in one group commit and answer each, in order: AA
        once committed, AE naming the field for a message intake refuses, AR 207 for one
        that could not be stored now (the engine sends it again later); a ``Refusal`` is
        recorded and answered."""
        ready: list[ParsedOru | Hl7Reply] = [
            self._refuse(*p) if isinstance(p, Refusal) else p for p in prepared
        ]
        parsed = [p for p in ready if isinstance(p, ParsedOru)]
        received: list[ReceiveOutcome | Exception] = []
        if parsed:
            try:
                received = self.intake.receive_many([p.message for p in parsed])
            except Exception as exc:  # e.g. the catalog could not be read: nothing stored
                received = [exc] * len(parsed)
        outcomes = iter(received)
        return [p if isinstance(p, Hl7Reply) else self._answer(p, next(outcomes)) for p in ready]

    def _answer(self, parsed: ParsedOru, received: ReceiveOutcome | Exception) -> Hl7Reply:
        header = parsed.header
        if isinstance(received, DomainError):
            problems = [
                Hl7Problem(hl7_location(p, parsed.origins), _error_code(p), p.message)
                for p in received.problems
            ]
            if not problems:
                problems = [Hl7Problem(MSH, ErrorCode.DATA_TYPE, received.message)]
            raw = parsed.message.raw
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            return self._refuse(AckCode.AE, header, problems, text)
        if isinstance(received, Exception):
            # Not the message's fault (database down, disk full): AR with 207 tells the
            # engine to resend later. Nothing was committed, so nothing is acknowledged.
            log.error("intake failed for %s", header.control_id, exc_info=received)
            problem = Hl7Problem(
                MSH, ErrorCode.INTERNAL_ERROR, "平台暂时无法保存该消息，请稍后重发"
            )
            ack = build_ack(
                header, AckCode.AR, now=self.clock.now(), text=problem.message, problems=[problem]
            )
            return Hl7Reply(AckCode.AR, ack, encode_ack(ack, header), header, problems=(problem,))
        # The accepted message's response column already holds what a resend is answered
        # with (intake's stored references); the AA itself is not written back.
        ack = build_ack(
            header,
            AckCode.AA,
            now=self.clock.now(),
            text=with_notices(accepted_text(received), parsed.notices),
            notices=parsed.notices,
        )
        return Hl7Reply(
            AckCode.AA, ack, encode_ack(ack, header), header, received, received.message_id
        )

    def _refuse(
        self, code: AckCode, header: MessageHeader, problems: list[Hl7Problem], text: str
    ) -> Hl7Reply:
        ack = build_ack(
            header, code, now=self.clock.now(), text=summary(code, problems), problems=problems
        )
        text = text.replace("\x00", "\u2400")  # keep it readable and storable (PostgreSQL)
        message_id: int | None = None
        try:
            message_id = self.intake.reject(
                Rejection(
                    channel=self.channel,
                    institution=header.institution or None,
                    control_id=header.control_id,
                    raw=text,
                    error="；".join(f"{p.field}: {p.message}" for p in problems),
                )
            )
            self._record(message_id, ack)
        except Exception:
            log.exception("could not record the rejection of %s", header.control_id)
        return Hl7Reply(
            code, ack, encode_ack(ack, header), header, None, message_id, tuple(problems)
        )

    def _record(self, message_id: int, ack: str) -> None:
        if self.responses is None:
            return
        try:
            self.responses.record_response(message_id, ack)
        except Exception:
            # The result is committed; a lost copy of the ACK text is not worth an AR.
            log.exception("could not keep the ACK of inbound message %s", message_id)


class MllpGroupCommit:
    """The receiver as the MLLP listener's ``BatchHandler``: ACK bytes per message.
    ``prepare`` only parses; refusals are recorded by ``commit`` (the database is
    written in one place, after the batch is gathered)."""

    def __init__(self, receiver: Hl7Receiver) -> None:
        self.receiver = receiver

    def prepare(self, message: bytes | Oversized) -> ParsedOru | Refusal:
        if isinstance(message, Oversized):
            return self.receiver.oversized(message)
        return self.receiver.parse(message)

    def commit(self, prepared: Sequence[ParsedOru | Refusal]) -> list[bytes]:
        return [reply.payload for reply in self.receiver.commit(prepared)]


def accepted_text(outcome: ReceiveOutcome) -> str:
    """MSA-3 of an AA: what happened, and the local codes still waiting for 对码."""
    if outcome.duplicate:
        return "重复消息：此前已接收，未作改动"
    parts = [f"已接收 {len(outcome.results)} 份报告"]
    if unmapped := outcome.unmapped_codes:
        parts.append("未对码项目: " + "、".join(dict.fromkeys(unmapped)))
    return "；".join(parts)
