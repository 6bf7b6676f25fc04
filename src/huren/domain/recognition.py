"""Is this prior result recognizable here and now? (R2, R5 — 提醒精准)

The platform *proposes*; the clinician decides (以接诊医师判断为标准). For one ordered item
(a unified code after 对码), the ordering institution and the moment of ordering, every
prior result of the patient for that item is assessed:

- released: final and its later versions (amended, corrected, appended); not a
  preliminary report, not cancelled, not entered in error;
- its stored mark's scope contains the ordering institution
  (沪卫医〔2024〕135号 四(四); 冀卫医政函〔2025〕7号 二(二): 评价合格后在相应范围内互认);
- inside the item's reference time limit (参考时限 — a reference: older results are shown
  with their age against the limit, never hidden; 甘卫医政函〔2025〕16号: 负面清单及参考时限);
- not excluded by an item exclusion in force for the ordering institution's jurisdiction;
- for imaging, a complete study (沪卫医〔2024〕135号 四(二)2: 序列完整; CT 厚层及薄层、
  后处理图像; MR 各序列).

Every assessment carries reasons with stable codes and Chinese text: why it qualifies
(mark, scope, age against the limit) and why a near-miss does not. Unmarked prior results
are still listed as information (沪卫医〔2024〕135号 五(三): 鼓励医务人员…对其他检查检验结果
予以互认).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from huren.domain.masterdata import Category, Item, ItemExclusion, ScopeGraph
from huren.domain.results import RELEASED, STATUS_LABELS, ResultStatus, StoredResult


class Effect(StrEnum):
    """What a reason does to the proposal."""

    SUPPORTS = "supports"  # a condition met (mark, scope, age, completeness)
    BLOCKS = "blocks"  # a condition not met: the result is not proposed
    CAUTION = "caution"  # worth knowing, does not block (the clinician judges)


class ReasonCode(StrEnum):
    RELEASED = "released"
    NOT_RELEASED = "not_released"
    ENTERED_IN_ERROR = "entered_in_error"
    MARK_IN_SCOPE = "mark_in_scope"
    MARK_OUT_OF_SCOPE = "mark_out_of_scope"
    UNMARKED = "unmarked"
    WITHIN_TIME_LIMIT = "within_time_limit"
    BEYOND_TIME_LIMIT = "beyond_time_limit"
    ITEM_EXCLUDED = "item_excluded"
    STUDY_COMPLETE = "study_complete"
    STUDY_INCOMPLETE = "study_incomplete"
    STUDY_UNKNOWN = "study_unknown"
    CORRECTION_PENDING = "correction_pending"
    WITHIN_RETEST_INTERVAL = "within_retest_interval"


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    effect: Effect
    text: str  # Chinese, for the clinician and the auditor


class Standing(StrEnum):
    """Where an assessed prior is listed."""

    RECOGNIZABLE = "recognizable"  # proposed for recognition
    NEAR_MISS = "near_miss"  # carries a mark but a condition is not met
    INFORMATION = "information"  # unmarked: shown, may still be accepted (沪 五(三))


STANDING_LABELS: Mapping[Standing, str] = {
    Standing.RECOGNIZABLE: "可互认",
    Standing.NEAR_MISS: "暂不建议互认",
    Standing.INFORMATION: "供参考",
}


class StudyCompleteness(StrEnum):
    """Completeness of an imaging result (report + study) against the item's quality
    requirements (沪卫医〔2024〕135号 四(二)2).

    ``COMPLETE``: the report and its study both arrived and the study holds every required
    series. ``INCOMPLETE`` blocks: a report whose images have not arrived, a study without
    its report, or a study missing a required series (issue 4 §3–4).

    ``UNKNOWN`` only where completeness cannot be known at all, and then it cautions rather
    than blocks: a node run without an imaging source (``services.recognition.NoImagingData``,
    e.g. a lab-only pilot), or a result the imaging source gives no answer for. A node with
    the imaging area wired answers ``COMPLETE`` or ``INCOMPLETE`` for every imaging result:
    "no images yet" is known, and it is ``INCOMPLETE``."""

    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class StudyState:
    completeness: StudyCompleteness = StudyCompleteness.UNKNOWN
    # What is missing, in Chinese as the imaging area words it and shown to clinicians as
    # it is, e.g. ("缺少薄层序列（层厚 ≤ 1.5 mm）",) or ("影像未上传：尚未收到…",).
    missing: tuple[str, ...] = ()


UNKNOWN_STUDY = StudyState()


@dataclass(frozen=True, slots=True)
class PriorResult:
    """A stored result with what else recognition needs to know about it."""

    result: StoredResult
    study: StudyState = UNKNOWN_STUDY
    open_corrections: int = 0  # correction requests filed and not yet decided (R7)


@dataclass(frozen=True, slots=True)
class RetestInterval:
    """A well-established minimum retest interval (beyond the policy sources): shown beside
    the policy's time limit, never overriding it."""

    key: str
    label: str
    days: float
    source: str
    loinc: frozenset[str] = frozenset()
    item_codes: frozenset[str] = frozenset()
    keywords: tuple[str, ...] = ()

    def applies_to(self, item: Item) -> bool:
        if item.code in self.item_codes or (item.loinc and item.loinc in self.loinc):
            return True
        return any(k in item.name for k in self.keywords)


def retest_interval_for(item: Item, intervals: Iterable[RetestInterval]) -> RetestInterval | None:
    if item.category is not Category.LAB:
        return None
    for interval in intervals:
        if interval.applies_to(item):
            return interval
    return None


@dataclass(frozen=True, slots=True)
class Assessment:
    """One prior result assessed for one ordered item."""

    prior: PriorResult
    standing: Standing
    reasons: tuple[Reason, ...]
    age: timedelta
    time_limit: timedelta
    within_time_limit: bool

    @property
    def result(self) -> StoredResult:
        return self.prior.result

    @property
    def recognizable(self) -> bool:
        return self.standing is Standing.RECOGNIZABLE

    def blocking(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.effect is Effect.BLOCKS)

    def cautions(self) -> tuple[Reason, ...]:
        return tuple(r for r in self.reasons if r.effect is Effect.CAUTION)


def format_span(span: timedelta) -> str:
    """A duration in Chinese: days, or hours when under two days."""
    hours = span.total_seconds() / 3600
    if hours < 48:
        return f"{max(math.ceil(hours), 0)} 小时"
    return f"{math.floor(hours / 24)} 天"


def _overrun(span: timedelta) -> str:
    """By how much a result is past its time limit, in the units ``format_span`` shows the
    age and the limit in: whole days counted down, as the age is, so that "超过参考时限 6 天
    （距今 9 天，参考时限 3 天）" adds up (rounded up it read 7, as if 7 were the limit)."""
    hours = span.total_seconds() / 3600
    if hours < 48:
        return f"{max(math.ceil(hours), 1)} 小时"
    return f"{math.floor(hours / 24)} 天"


def exclusions_in_force(
    item: Item, jurisdictions: Iterable[str], exclusions: Iterable[ItemExclusion]
) -> list[ItemExclusion]:
    """Item exclusions (负面清单, item level) of the jurisdictions that apply at the ordering
    institution (its province, and the national list)."""
    js = set(jurisdictions)
    return [e for e in exclusions if e.item == item.code and e.jurisdiction in js]


def _excluding(
    exclusions: Sequence[ItemExclusion],
    producing: str,
    ordering: str,
    graph: ScopeGraph,
) -> ItemExclusion | None:
    for e in exclusions:
        if not e.only_within_scope:
            return e
        scope = e.only_within_scope
        if not (graph.contains(scope, producing) and graph.contains(scope, ordering)):
            return e
    return None


def assess_prior(
    item: Item,
    ordering_institution: str,
    now: datetime,
    prior: PriorResult,
    graph: ScopeGraph,
    exclusions: Sequence[ItemExclusion] = (),
    scope_names: Mapping[str, str] | None = None,
) -> Assessment:
    """Assess one prior result of ``item`` for an order at ``ordering_institution`` at
    ``now``. ``exclusions`` are the item exclusions in force there
    (``exclusions_in_force``)."""
    r = prior.result
    reasons: list[Reason] = []
    names = scope_names or {}

    # Status: only a released result may be recognized; entered-in-error never.
    if r.status is ResultStatus.ENTERED_IN_ERROR:
        reasons.append(Reason(ReasonCode.ENTERED_IN_ERROR, Effect.BLOCKS, "结果已被标记为录入错误"))
    elif r.status in RELEASED:
        reasons.append(
            Reason(
                ReasonCode.RELEASED,
                Effect.SUPPORTS,
                f"报告已正式发布（{STATUS_LABELS[r.status]}）",
            )
        )
    else:
        reasons.append(
            Reason(
                ReasonCode.NOT_RELEASED,
                Effect.BLOCKS,
                f"报告尚未正式发布（{STATUS_LABELS[r.status]}）",
            )
        )

    # Mark and scope: the mark is computed at issue time and kept on the result
    # (沪卫医〔2024〕135号 四(四)); the ordering institution must lie inside its scope.
    marked = r.mark_scope is not None
    if r.mark_scope is not None:
        scope_name = names.get(r.mark_scope, r.mark_scope)
        symbol = r.mark_symbol or ""
        if graph.contains(r.mark_scope, ordering_institution):
            reasons.append(
                Reason(
                    ReasonCode.MARK_IN_SCOPE,
                    Effect.SUPPORTS,
                    f"互认标识 {symbol}（{scope_name}范围），本机构在该互认范围内",
                )
            )
        else:
            reasons.append(
                Reason(
                    ReasonCode.MARK_OUT_OF_SCOPE,
                    Effect.BLOCKS,
                    f"出具机构未获本范围互认资质：标识 {symbol} 仅在{scope_name}范围互认，"
                    "本机构不在其中",
                )
            )
    else:
        reasons.append(
            Reason(
                ReasonCode.UNMARKED,
                Effect.BLOCKS,
                "结果无互认标识（出具时该机构该项目未通过质量评价），仅供参考",
            )
        )

    # Age against the reference time limit: a reference, shown either way.
    age = now - r.performed_at
    limit = item.time_limit
    within = age <= limit
    if within:
        reasons.append(
            Reason(
                ReasonCode.WITHIN_TIME_LIMIT,
                Effect.SUPPORTS,
                f"距今 {format_span(age)}，在参考时限 {format_span(limit)} 以内",
            )
        )
    else:
        reasons.append(
            Reason(
                ReasonCode.BEYOND_TIME_LIMIT,
                Effect.BLOCKS,
                f"超过参考时限 {_overrun(age - limit)}（距今 {format_span(age)}，"
                f"参考时限 {format_span(limit)}）",
            )
        )

    excluded = _excluding(exclusions, r.institution, ordering_institution, graph)
    if excluded is not None:
        where = (
            f"（仅在{names.get(excluded.only_within_scope, excluded.only_within_scope)}内互认）"
            if excluded.only_within_scope
            else ""
        )
        reasons.append(
            Reason(
                ReasonCode.ITEM_EXCLUDED,
                Effect.BLOCKS,
                f"该项目列入负面清单{where}：{excluded.reason}",
            )
        )

    if item.category is Category.IMAGING:
        study = prior.study
        if study.completeness is StudyCompleteness.COMPLETE:
            reasons.append(Reason(ReasonCode.STUDY_COMPLETE, Effect.SUPPORTS, "影像资料完整"))
        elif study.completeness is StudyCompleteness.INCOMPLETE:
            # 沪卫医〔2024〕135号 四(二)2: 序列完整…应包括…影像以及影像科医生签发的报告.
            missing = "；".join(study.missing) or "未达到该项目的完整性要求"
            reasons.append(
                Reason(ReasonCode.STUDY_INCOMPLETE, Effect.BLOCKS, f"影像资料不完整：{missing}")
            )
        else:
            reasons.append(
                Reason(
                    ReasonCode.STUDY_UNKNOWN,
                    Effect.CAUTION,
                    "本节点未接入影像数据，无法核对影像完整性，请调阅原始影像后判断",
                )
            )

    if prior.open_corrections > 0:
        reasons.append(
            Reason(
                ReasonCode.CORRECTION_PENDING,
                Effect.CAUTION,
                f"该结果有 {prior.open_corrections} 条纠错申请尚在处理中",
            )
        )

    blocked = any(x.effect is Effect.BLOCKS for x in reasons)
    if not marked:
        standing = Standing.INFORMATION
    elif blocked:
        standing = Standing.NEAR_MISS
    else:
        standing = Standing.RECOGNIZABLE
    return Assessment(
        prior=prior,
        standing=standing,
        reasons=tuple(reasons),
        age=age,
        time_limit=limit,
        within_time_limit=within,
    )


@dataclass(frozen=True, slots=True)
class ItemRecognition:
    """The answer for one ordered item: candidates best first, near-misses and other
    prior results as information, and the retest interval where one is established."""

    item: Item
    candidates: tuple[Assessment, ...]
    near_misses: tuple[Assessment, ...]
    information: tuple[Assessment, ...]
    retest_interval: RetestInterval | None = None
    retest_reasons: tuple[Reason, ...] = field(default=())

    @property
    def best(self) -> Assessment | None:
        return self.candidates[0] if self.candidates else None

    def all(self) -> tuple[Assessment, ...]:
        return self.candidates + self.near_misses + self.information


def _rank(graph: ScopeGraph, a: Assessment) -> tuple[float, int, int]:
    # Best first: newest, then the widest mark, then the higher version.
    breadth = graph.breadth(a.result.mark_scope) if a.result.mark_scope else 0
    return (-a.result.performed_at.timestamp(), -breadth, -a.result.version)


def recognizable_priors(
    item: Item,
    ordering_institution: str,
    now: datetime,
    priors: Iterable[PriorResult],
    graph: ScopeGraph,
    exclusions: Sequence[ItemExclusion] = (),
    retest_intervals: Iterable[RetestInterval] = (),
    scope_names: Mapping[str, str] | None = None,
) -> ItemRecognition:
    """Assess every prior of ``item`` and sort them into candidates, near-misses and
    information, each best (newest) first."""
    assessed = [
        assess_prior(item, ordering_institution, now, p, graph, exclusions, scope_names)
        for p in priors
    ]
    assessed.sort(key=lambda a: _rank(graph, a))
    interval = retest_interval_for(item, retest_intervals)
    retest: tuple[Reason, ...] = ()
    if interval is not None:
        released = [a for a in assessed if a.result.status in RELEASED]
        if released:
            newest = released[0]
            span = timedelta(days=interval.days)
            if newest.age < span:
                retest = (
                    Reason(
                        ReasonCode.WITHIN_RETEST_INTERVAL,
                        Effect.CAUTION,
                        f"距上次{item.name}仅 {format_span(newest.age)}，未达到"
                        f"{interval.label}的最短复检间隔 {format_span(span)}"
                        f"（参考：{interval.source}）",
                    ),
                )
    return ItemRecognition(
        item=item,
        candidates=tuple(a for a in assessed if a.standing is Standing.RECOGNIZABLE),
        near_misses=tuple(a for a in assessed if a.standing is Standing.NEAR_MISS),
        information=tuple(a for a in assessed if a.standing is Standing.INFORMATION),
        retest_interval=interval,
        retest_reasons=retest,
    )


# ---------------------------------------------------------------- request values
# The widths of what a check or a decision carries into its records (reminder, decision,
# cds_card); ``huren.domain.text.text_problem`` refuses longer values naming the field.
CODE_MAX = 64  # reminder.local_code; an ordered item's code
# reminder / decision / cds_card.clinician: a CDS Hooks userId, "PractitionerRole/" and a
# FHIR id of up to 64 characters (migration 0005).
CLINICIAN_MAX = 100
DEPARTMENT_MAX = 100  # reminder / decision / cds_card.department
REQUEST_ID_MAX = 64  # reminder.request_id
