"""Error correction and feedback (纠错及反馈, R7).

国卫医政发〔2024〕37号 三(三) and 沪卫医〔2024〕135号 五(四): 建立互通共享数据问题纠错及反馈机制.
Anyone who sees a wrong shared result files a request; the producing institution
reviews it; a correction is a new version of the result; nothing is deleted; those who
viewed or accepted the old version are told."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from huren.domain.accounts import Principal, Role
from huren.domain.errors import Conflict, Forbidden, Problem, ValidationFailed


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
