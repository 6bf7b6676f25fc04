"""Error correction and feedback (纠错及反馈, R7).

国卫医政发〔2024〕37号 三(三) and 沪卫医〔2024〕135号 五(四): 建立互通共享数据问题纠错及反馈机制.
Anyone who sees a wrong shared result files a request; the producing institution
reviews it; a correction is a new version of the result; nothing is deleted; those who
viewed or accepted the old version are told."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from huren.domain.accounts import Principal, Role
from huren.domain.errors import Conflict, Forbidden, Problem, ValidationFailed
from huren.domain.results import ObservationValue, ValueType, reported_numerals


class CorrectionStatus(StrEnum):
    OPEN = "open"  # 待处理
    ACCEPTED = "accepted"  # 已更正 (a new version was issued)
    REJECTED = "rejected"  # 不予更正 (reason sent to the requester)


CORRECTION_STATUS_LABELS = {
    CorrectionStatus.OPEN: "待处理",
    CorrectionStatus.ACCEPTED: "已更正",
    CorrectionStatus.REJECTED: "不予更正",
}

# Who may file: those who see shared results.
FILING_ROLES = frozenset({Role.CLINICIAN, Role.INSTITUTION_ADMIN, Role.PATIENT})

MAX_TEXT = 2000


def due_at(filed: datetime, working_days: int) -> datetime:
    """``working_days`` working days (Monday–Friday) after ``filed``, same time of day.
    Public holidays are not known to the platform (no holiday calendar): a deadline over
    the Spring Festival is therefore earlier than the strict count."""
    if working_days < 1:
        raise ValueError("working_days must be >= 1")
    at = filed
    left = working_days
    while left:
        at += timedelta(days=1)
        if at.weekday() < 5:
            left -= 1
    return at


def validate_request_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValidationFailed("请说明结果哪里有误", problems=[Problem("text", "纠错说明不能为空")])
    if len(text) > MAX_TEXT:
        raise ValidationFailed(
            "纠错说明过长", problems=[Problem("text", f"纠错说明不超过 {MAX_TEXT} 字")]
        )
    return text


@dataclass(frozen=True, slots=True)
class CorrectionState:
    id: int
    status: CorrectionStatus
    producing_institution: str
    result_id: int
    result_version: int
    due_at: datetime

    def overdue(self, now: datetime) -> bool:
        return self.status is CorrectionStatus.OPEN and now > self.due_at


def require_reviewer(principal: Principal, state: CorrectionState) -> None:
    """Only the producing institution's administrator reviews (its queue)."""
    if not (
        principal.role is Role.INSTITUTION_ADMIN
        and principal.institution == state.producing_institution
    ):
        raise Forbidden("只有出具该结果的医疗机构可以处理此纠错申请")


def require_open(state: CorrectionState) -> None:
    if state.status is not CorrectionStatus.OPEN:
        raise Conflict(
            f"该纠错申请已处理（{CORRECTION_STATUS_LABELS[state.status]}），不能再次处理"
        )


def require_reason(reason: str, where: str = "reason") -> str:
    reason = reason.strip()
    if not reason:
        raise ValidationFailed("请填写处理理由", problems=[Problem(where, "处理理由不能为空")])
    return reason


def corrected_comment(text: str | None) -> str | None:
    """A comment as the reviewer wrote it (the sender's 备注 on a value or on the report,
    HL7 v2 NTE / FHIR Observation.note): None leaves it as it was, "" clears it; line
    ends as "\n" (a browser sends a textarea's as "\r\n"), blanks around it dropped."""
    if text is None:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def corrected_value(
    o: ObservationValue, value_num: float | None, value_text: str | None, field: str
) -> ObservationValue:
    """``o`` with the value the reviewer gave (both None: as it was). An edited number
    carries the numerals typed ("8.10" is shown "8.10", never the old value's numerals):
    a number with its numerals, numerals alone (read as the number they write) or a
    number alone (shown without loss). Any other text is the value's text; on a numeric
    value, a comparator and numerals ("<0.5") make a structured numeric, as HL7 v2 keeps
    an NM sent so, other text ("未检出") a string. ``field`` names the value in problems."""
    if value_num is None and value_text is None:
        return o
    as_typed = value_text.strip() if value_text is not None else ""
    # Full-width digits and signs typed with a Chinese input method ("８.１０", "＜0.5")
    # are numerals as ASCII ones are; other text is kept as typed.
    typed = unicodedata.normalize("NFKC", as_typed)
    if value_num is not None:
        if not math.isfinite(value_num):
            raise ValidationFailed(
                "更正的数值无效",
                problems=[Problem(field, "数值应为有限的数（不能为 NaN 或无穷大）")],
            )
        if typed and _numerals_value(typed) != value_num:
            raise ValidationFailed(
                "更正的数值与其文字不一致",
                problems=[Problem(field, f"文字 {typed!r} 写的不是数值 {value_num!r}")],
            )
        return replace(o, value_type=ValueType.NM, value_num=value_num, value_text=typed)
    if not typed:
        raise ValidationFailed("更正的结果为空", problems=[Problem(field, "更正的结果不能为空")])
    number = _numerals_value(typed)
    if number is not None:
        return replace(o, value_type=ValueType.NM, value_num=number, value_text=typed)
    kind, text = o.value_type, as_typed
    if kind in (ValueType.NM, ValueType.SN):
        below_or_above = _numerals_value(typed.lstrip("<>=≤≥")) is not None
        if below_or_above and typed[0] in "<>≤≥":
            kind, text = ValueType.SN, typed
        else:
            kind = ValueType.ST
    return replace(o, value_type=kind, value_num=None, value_text=text)


def _numerals_value(text: str) -> float | None:
    """The number that plain numerals ("8.10", "-3", ".5") write; None for other text."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if reported_numerals(text, number) is not None else None
