"""Insurer verification (医保核查, R6): claim lines checked against shared results,
reminders and decisions.

冀卫医政函〔2025〕7号 三(四): 实现医保部门通过调阅云影像平台参保人员的检查检验结果信息，核实参保
人报销数据的准确性. 沪卫医〔2024〕135号 五(三) and 甘卫医政函〔2025〕16号 三(二)6: 对于符合互认
条件的检查检验项目，不得以与其他项目打包等形式再次收取相关费用.

Whether a prior result was *recognizable* is the recognition area's rule
(``huren.domain.recognition``); this module only turns its answer, the reminders and the
decisions into flags an insurer reviews."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from huren.domain.errors import ProblemCollector
from huren.domain.identity import IdentifierKind, PatientIdentifier, mask_id


class Flag(StrEnum):
    REPEAT_WITHOUT_REASON = "repeat_without_reason"
    RECOGNIZED_BUT_BILLED = "recognized_but_billed"
    SAME_RESULT_BILLED_TWICE = "same_result_billed_twice"
    BUNDLED_RECOGNIZED_ITEM = "bundled_recognized_item"


FLAG_LABELS: Mapping[Flag, str] = {
    Flag.REPEAT_WITHOUT_REASON: "存在可互认结果，重复检查未记录不予互认理由",
    Flag.RECOGNIZED_BUT_BILLED: "该项目已互认，仍按检查检验收费",
    Flag.SAME_RESULT_BILLED_TWICE: "同一结果重复收费",
    Flag.BUNDLED_RECOGNIZED_ITEM: "已互认项目以打包形式再次收费（沪卫医〔2024〕135号 五(三)）",
}

# Column names accepted in batch files: English, and the Chinese a claims export has.
COLUMNS: Mapping[str, tuple[str, ...]] = {
    "claim_no": ("claim_no", "结算单号", "单据号"),
    "line_no": ("line_no", "明细序号", "序号"),
    "id_kind": ("id_kind", "证件类型"),
    "id_value": ("id_value", "证件号码", "身份证号", "医保号"),
    "institution": ("institution", "机构编码", "定点机构编码"),
    "item_code": ("item_code", "互认项目编码", "项目编码"),
    "local_code": ("local_code", "院内项目编码", "收费项目编码"),
    "service_date": ("service_date", "服务日期", "费用发生日期"),
    "report_no": ("report_no", "报告单编号"),
    "bundled_items": ("bundled_items", "打包项目", "包含项目"),
}

_KIND_ALIASES = {
    "national_id": IdentifierKind.NATIONAL_ID,
    "身份证": IdentifierKind.NATIONAL_ID,
    "居民身份证": IdentifierKind.NATIONAL_ID,
    "insurance": IdentifierKind.INSURANCE,
    "医保号": IdentifierKind.INSURANCE,
    "health_card": IdentifierKind.HEALTH_CARD,
    "电子健康卡": IdentifierKind.HEALTH_CARD,
}

MAX_LINES = 5000
TWINS_NAMED = 5  # other lines named in a verdict's summary; the rest are counted


@dataclass(frozen=True, slots=True)
class ClaimLine:
    """One line of a claim (医保结算明细) for an examination or test."""

    claim_no: str
    line_no: str
    identifier: PatientIdentifier
    institution: str
    service_date: date
    item_code: str = ""  # unified code; or
    local_code: str = ""  # the institution's charge/order code, mapped by 对码
    report_no: str = ""  # the report this line bills for, when the claim names one
    bundled_items: tuple[str, ...] = ()  # unified codes included in a package line

    @property
    def ref(self) -> str:
        return f"{self.claim_no}#{self.line_no}"


def claim_line_from_row(
    row: Mapping[str, str], where: str, errors: ProblemCollector
) -> ClaimLine | None:
    """A claim line from a batch-file row (keys already normalized to ``COLUMNS``);
    problems are added to ``errors`` naming ``where`` and the column."""
    get = {k: str(row.get(k, "") or "").strip() for k in COLUMNS}
    ok = True
    for key, label in (
        ("claim_no", "结算单号"),
        ("id_value", "证件号码"),
        ("institution", "机构编码"),
    ):
        if not get[key]:
            errors.add(f"{where}: {key}", f"缺少{label}")
            ok = False
    if not get["item_code"] and not get["local_code"]:
        errors.add(f"{where}: item_code", "缺少项目编码（互认项目编码或院内项目编码）")
        ok = False
    kind = _KIND_ALIASES.get(get["id_kind"] or "national_id")
    if kind is None:
        errors.add(
            f"{where}: id_kind", f"证件类型 {get['id_kind']} 无效（身份证/医保号/电子健康卡）"
        )
        ok = False
    service = parse_date(get["service_date"])
    if service is None:
        errors.add(
            f"{where}: service_date",
            f"服务日期无效: {get['service_date'] or '空'}（格式 YYYY-MM-DD）",
        )
        ok = False
    if not ok or kind is None or service is None:
        return None
    bundled = tuple(
        c.strip()
        for c in get["bundled_items"].replace("，", ";").replace(",", ";").split(";")
        if c.strip()
    )
    return ClaimLine(
        claim_no=get["claim_no"],
        line_no=get["line_no"] or where,
        identifier=PatientIdentifier(kind, get["id_value"]),
        institution=get["institution"],
        service_date=service,
        item_code=get["item_code"],
        local_code=get["local_code"],
        report_no=get["report_no"],
        bundled_items=bundled,
    )


def parse_date(text: str) -> date | None:
    text = text.strip()[:10].replace("/", "-").replace(".", "-")
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PriorSummary:
    result_id: int
    institution: str
    report_no: str
    performed_at: datetime
    mark_symbol: str | None
    standing: str  # recognizable | near_miss | information
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DecisionSummary:
    at: datetime
    action: str  # accepted | declined
    reason_code: str
    reason_text: str
    result_id: int | None
    clinician: str


@dataclass(frozen=True, slots=True)
class LineFacts:
    """What the platform knows about one claim line."""

    line: ClaimLine
    item_code: str
    item_name: str
    patient_known: bool
    order_time: datetime
    recognizable: PriorSummary | None  # the best prior proposed for recognition
    other_priors: tuple[PriorSummary, ...]
    reminder_at: datetime | None
    decisions: tuple[DecisionSummary, ...]
    billed_result_ids: tuple[int, ...]  # results the line's report_no names
    bundled_recognized: tuple[str, ...]  # bundled items accepted (互认) at this institution
    twin_lines: tuple[str, ...] = ()  # other lines billing the same result


@dataclass(frozen=True, slots=True)
class LineVerdict:
    facts: LineFacts
    flags: tuple[Flag, ...]
    summary: str  # Chinese, one sentence for the report
    decision: DecisionSummary | None = None
    reason_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def patient_masked(self) -> str:
        return mask_id(self.facts.line.identifier.value)


def judge(facts: LineFacts, reason_labels: Mapping[str, str]) -> LineVerdict:
    """Flags for one claim line. The latest decision on the item at the billing
    institution counts."""
    flags: list[Flag] = []
    latest = facts.decisions[-1] if facts.decisions else None
    parts: list[str] = []
    if facts.recognizable is not None:
        p = facts.recognizable
        parts.append(
            f"开单时存在可互认结果（{p.institution} {p.performed_at:%Y-%m-%d}，报告单 {p.report_no}"
            f"{'，标识 ' + p.mark_symbol if p.mark_symbol else ''}）"
        )
    else:
        parts.append("开单时无可互认的既往结果")
    parts.append("已推送互认提醒" if facts.reminder_at else "无互认提醒记录")
    if latest is not None:
        if latest.action == "accepted":
            parts.append("医师已互认")
            flags.append(Flag.RECOGNIZED_BUT_BILLED)
        else:
            label = reason_labels.get(latest.reason_code, latest.reason_code)
            text = f"：{latest.reason_text}" if latest.reason_text else ""
            parts.append(f"医师不予互认，理由：{label or '未填写'}{text}")
            if facts.recognizable is not None and not (latest.reason_code or latest.reason_text):
                flags.append(Flag.REPEAT_WITHOUT_REASON)
    elif facts.recognizable is not None:
        flags.append(Flag.REPEAT_WITHOUT_REASON)
    if facts.twin_lines:
        flags.append(Flag.SAME_RESULT_BILLED_TWICE)
        named = "、".join(facts.twin_lines[:TWINS_NAMED])
        more = len(facts.twin_lines) - TWINS_NAMED
        parts.append(
            f"与 {named}{f' 等 {len(facts.twin_lines)} 条明细' if more > 0 else ''} 为同一结果"
        )
    if facts.bundled_recognized:
        flags.append(Flag.BUNDLED_RECOGNIZED_ITEM)
        parts.append(f"打包项目中含已互认项目 {'、'.join(facts.bundled_recognized)}")
    return LineVerdict(
        facts=facts,
        flags=tuple(flags),
        summary="；".join(parts),
        decision=latest,
        reason_labels=reason_labels,
    )


def twins(keys: Sequence[tuple[str, str] | None]) -> list[tuple[str, ...]]:
    """For each line's billed-result key (or None), the indices of other lines with the
    same key, as strings; used to flag the same result billed twice."""
    seen: dict[tuple[str, str], list[int]] = {}
    for i, k in enumerate(keys):
        if k is not None:
            seen.setdefault(k, []).append(i)
    return [
        tuple(str(j) for j in seen[k] if j != i) if k is not None else ()
        for i, k in enumerate(keys)
    ]
