"""ACK^R01 in original acknowledgment mode (HL7 v2.5.1 §2.9.2, §2.14.1 MSA, §2.14.5 ERR).

- MSH: sender and receiver swapped (our MSH-3/4 are the original MSH-5/6), MSH-10 a new
  control id, MSH-12 the sender's version, MSH-18 the character set we encoded with —
  the same as the incoming message.
- MSA-1 AA / AE / AR, MSA-2 the original MSH-10, MSA-3 a Chinese summary.
- One ERR per problem. v2.5+: ERR-2 location (ERL), ERR-3 code (Table 0357), ERR-4
  severity, ERR-7 diagnostic text, ERR-8 the user message in Chinese. v2.3/2.4 have
  only ERR-1 (ELD: segment^sequence^field^code&text&HL70357), repeated.
- An AA may carry notices — what was received but not kept (NTE comments, an ED
  report) — as ERR with code 0 and, from v2.5, severity W (Table 0516 "transaction
  successful, but there may be issues"), and in MSA-3."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from huren.adapters.hl7v2 import codes
from huren.adapters.hl7v2.codes import ErrorCode
from huren.adapters.hl7v2.parse import AckCode, Hl7Problem, MessageHeader
from huren.domain.china_time import CHINA_TZ

OUR_APPLICATION = "HUREN"


_STAMP: list[tuple[int, str]] = [(-1, "")]


def hl7_timestamp(at: datetime) -> str:
    """China time to the second; the text of the last second is kept (every ACK of a
    busy second has the same, and ``strftime`` costs more than the rest of the ACK)."""
    second = int(at.timestamp())
    last = _STAMP[0]
    if last[0] == second:
        return last[1]
    text = at.astimezone(CHINA_TZ).strftime("%Y%m%d%H%M%S+0800")
    _STAMP[0] = (second, text)
    return text


def ack_charset_name(header: MessageHeader) -> str:
    """MSH-18 of the ACK: the sender's own spelling when it names the codec we used."""
    declared = header.charset_field.upper()
    if declared and codes.CHARSETS.get(declared) == header.charset:
        return header.charset_field
    return codes.CHARSET_NAMES.get(header.charset, "UNICODE UTF-8")


def build_ack(
    header: MessageHeader,
    code: AckCode,
    *,
    now: datetime,
    text: str = "",
    problems: Sequence[Hl7Problem] = (),
    notices: Sequence[Hl7Problem] = (),
) -> str:
    """The ACK as text, segments separated by CR (encode with ``encode_ack``)."""
    d = header.delimiters
    version = header.version if header.version in codes.SUPPORTED_VERSIONS else "2.5.1"
    # MSH-9: ACK with the trigger event of the message acknowledged (v2.5.1 §2.9.2; an
    # ADT^A01 sent here by mistake is refused with ACK^A01), and from v2.3.1 on — where
    # MSH-9.3 message structure was introduced — the structure ACK (was: "ACK^R01"
    # for v2.3.1, and R01 whatever the event).
    trigger = d.escape_text(header.trigger) if header.trigger else "R01"
    message_type = (
        f"ACK{d.component}{trigger}"
        if version == "2.3"
        else f"ACK{d.component}{trigger}{d.component}ACK"
    )
    msh = [
        "MSH",
        d.encoding_characters,
        header.receiving_application or OUR_APPLICATION,
        header.receiving_facility,
        header.sending_application,
        header.sending_facility,
        hl7_timestamp(now),
        "",
        message_type,
        d.escape_text(f"A{header.control_id}"),
        header.processing_id or "P",
        version,
        "",
        "",
        "",
        "",
        "",
        ack_charset_name(header),
    ]
    msa = ["MSA", code.value, d.escape_text(header.control_id), d.escape_text(text)]
    segments = [d.field.join(msh), d.field.join(msa)]
    if problems:
        segments.extend(_err_segments(header, version, problems))
    if notices:
        segments.extend(_err_segments(header, version, notices, severity="W"))
    return "\r".join(segments) + "\r"


def _err_segments(
    header: MessageHeader, version: str, problems: Sequence[Hl7Problem], severity: str = "E"
) -> list[str]:
    d = header.delimiters
    c, s = d.component, d.subcomponent
    if version in codes.ERR_25_VERSIONS:
        out = []
        for p in problems:
            loc = p.location
            erl = c.join(
                [
                    loc.segment,
                    str(loc.sequence),
                    str(loc.field) if loc.field is not None else "",
                    str(loc.repetition or 1) if loc.field is not None else "",
                    str(loc.component) if loc.component is not None else "",
                ]
            ).rstrip(c)
            hl7_code = c.join([p.code.value, codes.ERROR_TEXT[p.code], "HL70357"])
            message = d.escape_text(p.message)
            fields = [
                "ERR",
                "",  # ERR-1 (ELD) is kept for versions before 2.5 only
                erl,
                hl7_code,
                severity,
                "",
                "",
                d.escape_text(f"{p.field}: {p.message}"),  # ERR-7 diagnostic information
                message,  # ERR-8 user message
            ]
            out.append(d.field.join(fields))
        return out
    reps = []
    for p in problems:
        loc = p.location
        code_ce = s.join([p.code.value, d.escape_text(p.message), "HL70357"])
        reps.append(
            c.join(
                [
                    loc.segment,
                    str(loc.sequence),
                    str(loc.field) if loc.field is not None else "",
                    code_ce,
                ]
            )
        )
    return [d.field.join(["ERR", d.repetition.join(reps)])]


def encode_ack(ack: str, header: MessageHeader) -> bytes:
    """Encode in the incoming message's character set; characters it cannot carry (a
    Chinese error text in an ASCII message) become '?' rather than failing the ACK."""
    return ack.encode(header.charset, errors="replace")


def with_notices(text: str, notices: Sequence[Hl7Problem]) -> str:
    """MSA-3 of an AA with what was not kept, e.g. "已接收 1 份报告；未保存: NTE[1] …"."""
    if not notices:
        return text
    first = notices[0]
    more = f"（另有 {len(notices) - 1} 处未保存内容）" if len(notices) > 1 else ""
    return f"{text}；未保存: {first.field}: {first.message}{more}"


def summary(code: AckCode, problems: Sequence[Hl7Problem]) -> str:
    """MSA-3: the first problem, and how many more."""
    if not problems:
        return "消息已接收" if code is AckCode.AA else "消息被拒收"
    first = problems[0]
    more = f"（另有 {len(problems) - 1} 处问题）" if len(problems) > 1 else ""
    return f"{first.field}: {first.message}{more}"


__all__ = [
    "AckCode",
    "ErrorCode",
    "ack_charset_name",
    "build_ack",
    "encode_ack",
    "hl7_timestamp",
    "summary",
    "with_notices",
]
