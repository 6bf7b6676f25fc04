"""Monitoring (R9): counters, ratios, peer groups, the outlier rule and target progress.

国卫医政发〔2024〕37号 三(五) / 甘卫医政函〔2025〕16号 三(二)5: 对互认项次数量、互认比例明显
偏离平均水平的，分析原因，提出改进措施. "明显偏离" is not defined by the sources; the rule
used here is the robust (modified) z-score of Iglewicz & Hoaglin (1993):

    z = 0.6745 × (x − median) / MAD,   MAD = median(|xᵢ − median|)

flagged when |z| ≥ 3.5 **and** the gap to the median is material (at least 10
percentage points for a ratio, at least a factor of two for a count), within a peer group
of at least ``MIN_PEERS`` members, for members with at least ``MIN_VOLUME`` recognizable
reminders. The second condition keeps a tight peer group (small MAD) from flagging
differences that are statistically unusual but too small to matter (or mere sampling
noise of a few dozen decisions): "明显偏离" asks for both. Median and MAD are used instead of mean and
standard deviation because one extreme institution inflates the standard deviation and
hides itself (masking); the peer mean is still shown next to it, as the sources speak of
the average. When MAD is 0 (more than half the peers identical) the mean absolute
deviation × 1.2533 takes its place (the same estimator's fallback).

Pure: no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from enum import StrEnum

from huren.domain.china_time import CHINA_TZ
from huren.domain.masterdata import (
    LEVEL_LABELS,
    SCOPE_KIND_LABELS,
    Institution,
    InstitutionLevel,
    Item,
    Qualification,
    ScopeGraph,
    ScopeKind,
)

# China Standard Time: statistics periods are calendar months as hospitals count them.


def month_of(at: datetime) -> date:
    """The calendar month (first day, China time) an event at ``at`` counts in. A naive
    ``at`` is taken as UTC (how SQLite hands back stored times)."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return aware.astimezone(CHINA_TZ).date().replace(day=1)


def month_label(month: date) -> str:
    return f"{month.year}年{month.month}月"


@dataclass(slots=True)
class Counters:
    """What is counted per month × institution × department × clinician × item.

    ``reminders``: items for which a reminder was shown; ``reminders_recognizable``: those
    with at least one recognizable prior result, and the items a clinician recognized a
    prior of that the platform had not proposed (beyond its reference time limit, or a
    report the patient brought); ``accepted``: 互认项次; ``declined``:
    declined with a negative-list reason; ``saved_fen``: money saved (分);
    ``repeats_unrecorded``: tests repeated inside the time limit after a result at another
    institution with no decision recorded."""

    reminders: int = 0
    reminders_recognizable: int = 0
    accepted: int = 0
    declined: int = 0
    saved_fen: int = 0
    repeats_unrecorded: int = 0

    def __iadd__(self, other: Counters) -> Counters:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def __add__(self, other: Counters) -> Counters:
        out = Counters(**self.as_dict())
        out += other
        return out

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def recognition_ratio(self) -> float | None:
        """互认比例 = 互认项次 / 有可互认既往结果的提醒数; None when nothing was recognizable."""
        if self.reminders_recognizable == 0:
            return None
        return self.accepted / self.reminders_recognizable

    @property
    def decline_ratio(self) -> float | None:
        decided = self.accepted + self.declined
        return None if decided == 0 else self.declined / decided


COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Counters))

COUNTER_LABELS: Mapping[str, str] = {
    "reminders": "提醒项次",
    "reminders_recognizable": "可互认提醒项次",
    "accepted": "互认项次",
    "declined": "未互认项次",
    "saved_fen": "节约费用（分）",
    "repeats_unrecorded": "时限内重复检查且无记录",
}


# ---------------------------------------------------------------- peers and outliers


def peer_group_of(institution: Institution, province: str) -> tuple[str, str]:
    """Institutions are compared with peers of the same level in the same province."""
    return (institution.level.value, province)


def peer_group_label(group: tuple[str, str], scope_names: Mapping[str, str]) -> str:
    level, province = group
    try:
        level_label = LEVEL_LABELS[InstitutionLevel(level)]
    except ValueError:
        level_label = level
    return f"{scope_names.get(province, province)}·{level_label}"


MIN_PEERS = 5
MIN_VOLUME = 30
Z_THRESHOLD = 3.5
MIN_RATIO_GAP = 0.10  # 10 percentage points
MIN_COUNT_FACTOR = 2.0  # half or double the peer median
_MAD_SCALE = 0.6745
_MEAN_AD_SCALE = 1.2533


class Metric(StrEnum):
    RECOGNITION_RATIO = "recognition_ratio"
    ACCEPTED = "accepted"


METRIC_LABELS: Mapping[Metric, str] = {
    Metric.RECOGNITION_RATIO: "互认比例",
    Metric.ACCEPTED: "互认项次",
}


@dataclass(frozen=True, slots=True)
class Subject:
    """Something compared with its peers: an institution, a department, a clinician."""

    key: str
    label: str
    peer_group: str
    counters: Counters


@dataclass(frozen=True, slots=True)
class Finding:
    """The statistic for one subject, flagged or not, with the numbers behind it."""

    key: str
    label: str
    metric: Metric
    value: float
    peer_group: str
    peer_count: int
    peer_median: float
    peer_mean: float
    spread: float  # MAD (or scaled mean absolute deviation when MAD is 0)
    z: float
    flagged: bool
    explanation: str = field(default="")

    @property
    def direction(self) -> str:
        return "偏低" if self.z < 0 else "偏高"


def _fmt(metric: Metric, v: float) -> str:
    return f"{v * 100:.1f}%" if metric is Metric.RECOGNITION_RATIO else f"{v:.0f}"


def _value(metric: Metric, c: Counters) -> float | None:
    if metric is Metric.RECOGNITION_RATIO:
        return c.recognition_ratio
    return float(c.accepted)


def robust_z(value: float, values: Sequence[float]) -> tuple[float, float, float]:
    """(z, median, spread) of ``value`` among ``values`` (Iglewicz–Hoaglin)."""
    med = statistics.median(values)
    mad = statistics.median([abs(v - med) for v in values])
    if mad > 0:
        return _MAD_SCALE * (value - med) / mad, med, mad
    mean_ad = statistics.fmean([abs(v - med) for v in values])
    if mean_ad > 0:
        return (value - med) / (_MEAN_AD_SCALE * mean_ad), med, mean_ad * _MEAN_AD_SCALE
    return 0.0, med, 0.0


def find_outliers(
    subjects: Iterable[Subject],
    metric: Metric,
    *,
    threshold: float = Z_THRESHOLD,
    min_peers: int = MIN_PEERS,
    min_volume: int = MIN_VOLUME,
) -> list[Finding]:
    """The statistic for every subject with enough volume in a large enough peer group,
    flagged where |z| ≥ ``threshold``. Sorted by |z|, largest first.

    Counts (互认项次) are compared on a log scale, as volumes of hospitals of one level
    still differ by orders of magnitude; ratios as they are."""
    groups: dict[str, list[tuple[Subject, float]]] = {}
    for s in subjects:
        if s.counters.reminders_recognizable < min_volume:
            continue
        v = _value(metric, s.counters)
        if v is None:
            continue
        groups.setdefault(s.peer_group, []).append((s, v))
    transform: Callable[[float], float] = (
        (lambda v: math.log1p(v)) if metric is Metric.ACCEPTED else (lambda v: v)
    )
    findings: list[Finding] = []
    label = METRIC_LABELS[metric]
    for group, members in groups.items():
        if len(members) < min_peers:
            continue
        scaled = [transform(v) for _, v in members]
        raw = [v for _, v in members]
        mean = statistics.fmean(raw)
        med = statistics.median(raw)
        for (s, v), t in zip(members, scaled, strict=True):
            z, scaled_med, spread = robust_z(t, scaled)
            gap = abs(t - scaled_med)
            material = gap >= (
                MIN_RATIO_GAP if metric is Metric.RECOGNITION_RATIO else math.log(MIN_COUNT_FACTOR)
            )
            flagged = abs(z) >= threshold and material
            direction = "低于" if z < 0 else "高于"
            scale_note = "（按对数尺度比较）" if metric is Metric.ACCEPTED else ""
            gap_rule = (
                f" {MIN_RATIO_GAP * 100:.0f} 个百分点"
                if metric is Metric.RECOGNITION_RATIO
                else f"中位数的 {MIN_COUNT_FACTOR:g} 倍（或一半）"
            )
            explanation = (
                f"{label} {_fmt(metric, v)}，同组（{group}，{len(members)} 个）中位数 "
                f"{_fmt(metric, med)}、平均 {_fmt(metric, mean)}；稳健Z值 {z:+.1f}{scale_note}。"
                + (
                    f"|Z| ≥ {threshold:g} 且差距达到{gap_rule}，明显{direction}同组平均水平，请分析原因、提出改进措施。"
                    if flagged
                    else (
                        f"|Z| ≥ {threshold:g} 但差距未达到{gap_rule}，不判为明显偏离。"
                        if abs(z) >= threshold
                        else f"|Z| < {threshold:g}，在同组正常范围内。"
                    )
                )
            )
            findings.append(
                Finding(
                    key=s.key,
                    label=s.label,
                    metric=metric,
                    value=v,
                    peer_group=group,
                    peer_count=len(members),
                    peer_median=med,
                    peer_mean=mean,
                    spread=spread,
                    z=z,
                    flagged=flagged,
                    explanation=explanation,
                )
            )
    findings.sort(key=lambda f: -abs(f.z))
    return findings


# ---------------------------------------------------------------- targets


class TargetMetric(StrEnum):
    ITEMS_PER_SCOPE = "items_per_scope"  # every scope of a kind inside the jurisdiction
    ITEMS_IN_SCOPE = "items_in_scope"  # one scope
    ALLIANCES_ALL_ITEMS = "alliances_all_items"
    CONNECTED_SHARE = "connected_share"
    PROVINCES_CROSS_PROVINCE = "provinces_cross_province"
    QUALITATIVE = "qualitative"


@dataclass(frozen=True, slots=True)
class Target:
    """A policy target, as written in ``huren/data/targets.json``."""

    id: str
    jurisdiction: str
    deadline: date
    metric: TargetMetric
    text: str
    source: str
    threshold: float = 0
    comparator: str = "gt"  # gt: 超过; ge: 达到
    scope: str = ""
    scope_kind: str = ""
    public_only: bool = True


@dataclass(frozen=True, slots=True)
class Progress:
    target: Target
    measured: str  # what was measured, in words
    value: float | None  # the share or the count; None for qualitative targets
    met: bool | None
    details: tuple[tuple[str, str], ...] = ()  # (label, value) per scope / institution
    note: str = ""


@dataclass(frozen=True, slots=True)
class TargetFacts:
    """What target progress is computed from."""

    graph: ScopeGraph
    institutions: Mapping[str, Institution]
    items: Mapping[str, Item]
    qualifications: Sequence[Qualification]
    connected: frozenset[str]  # institutions with results uploaded (数据共享调阅)
    at: datetime


def _kind_label(kind: str) -> str:
    try:
        return SCOPE_KIND_LABELS[ScopeKind(kind)]
    except ValueError:
        return kind


def _passes(value: float, target: Target) -> bool:
    return value > target.threshold if target.comparator == "gt" else value >= target.threshold


def _items_of(q: Qualification, items: Mapping[str, Item]) -> set[str]:
    if q.item:
        return {q.item} if q.item in items else set()
    return {code for code, i in items.items() if q.group and i.group == q.group}


def items_recognized_in(scope: str, facts: TargetFacts) -> set[str]:
    """Items recognized between the institutions of ``scope``: an institution inside the
    scope holds an in-force qualification whose scope covers the whole of ``scope``."""
    covered = facts.graph.coverage(scope)
    out: set[str] = set()
    if not covered:
        return out
    for q in facts.qualifications:
        if (
            q.institution in covered
            and q.in_force(facts.at)
            and facts.graph.coverage(q.scope) >= covered
        ):
            out |= _items_of(q, facts.items)
    return out


def _scopes_of_kind(kind: str, within: str, facts: TargetFacts) -> list[str]:
    inside = facts.graph.coverage(within) if within != "NATIONAL" else None
    out = []
    for code, s in facts.graph.scopes.items():
        if s.kind.value != kind:
            continue
        cov = facts.graph.coverage(code)
        if not cov:
            continue
        if inside is None or cov <= inside:
            out.append(code)
    return sorted(out)


def alliance_fully_recognized(alliance: str, facts: TargetFacts) -> bool:
    """全部项目互认 inside an alliance, as far as the lists show it: every item a member
    has ever been evaluated for (any qualification record) is covered by an in-force
    qualification whose scope covers the whole alliance."""
    members = facts.graph.coverage(alliance)
    for inst in members:
        own = [q for q in facts.qualifications if q.institution == inst]
        wanted: set[str] = set()
        have: set[str] = set()
        for q in own:
            wanted |= _items_of(q, facts.items)
            if q.in_force(facts.at) and facts.graph.coverage(q.scope) >= members:
                have |= _items_of(q, facts.items)
        if wanted - have:
            return False
    return bool(members)


def target_progress(target: Target, facts: TargetFacts) -> Progress:
    names = {c: s.name for c, s in facts.graph.scopes.items()}
    if target.metric is TargetMetric.QUALITATIVE:
        return Progress(
            target, "定性目标", None, None, note="定性目标，平台不自动计算，由主管部门评估"
        )
    if target.metric is TargetMetric.ITEMS_IN_SCOPE:
        n = len(items_recognized_in(target.scope, facts))
        return Progress(
            target,
            f"{names.get(target.scope, target.scope)}范围内互认项目数",
            float(n),
            _passes(n, target),
        )
    if target.metric is TargetMetric.ITEMS_PER_SCOPE:
        scopes = _scopes_of_kind(target.scope_kind, target.jurisdiction, facts)
        details = []
        ok = 0
        for code in scopes:
            n = len(items_recognized_in(code, facts))
            ok += _passes(n, target)
            details.append((names.get(code, code), str(n)))
        share = ok / len(scopes) if scopes else 0.0
        return Progress(
            target,
            f"互认项目数达标的{_kind_label(target.scope_kind)}占比（{ok}/{len(scopes)}）",
            share,
            bool(scopes) and ok == len(scopes),
            tuple(details),
        )
    if target.metric is TargetMetric.ALLIANCES_ALL_ITEMS:
        alliances = _scopes_of_kind(ScopeKind.ALLIANCE.value, target.jurisdiction, facts)
        done = [a for a in alliances if alliance_fully_recognized(a, facts)]
        share = len(done) / len(alliances) if alliances else 0.0
        return Progress(
            target,
            f"实现全部项目互认的医联体占比（{len(done)}/{len(alliances)}）",
            share,
            bool(alliances) and len(done) == len(alliances),
            tuple((names.get(a, a), "是" if a in done else "否") for a in alliances),
        )
    if target.metric is TargetMetric.CONNECTED_SHARE:
        within = (
            facts.graph.coverage(target.jurisdiction)
            if target.jurisdiction != "NATIONAL"
            else frozenset(facts.institutions)
        )
        eligible = [
            i
            for code, i in sorted(facts.institutions.items())
            if code in within
            and i.level in (InstitutionLevel.SECONDARY, InstitutionLevel.TERTIARY)
            and (i.public or not target.public_only)
        ]
        connected = [i for i in eligible if i.code in facts.connected]
        share = len(connected) / len(eligible) if eligible else 0.0
        return Progress(
            target,
            f"已接入并共享结果的二级及以上{'公立' if target.public_only else ''}医疗机构占比（{len(connected)}/{len(eligible)}）",
            share,
            bool(eligible) and share >= target.threshold,
            tuple((i.name, "已接入" if i.code in facts.connected else "未接入") for i in eligible),
        )
    # PROVINCES_CROSS_PROVINCE
    provinces = {c for c, s in facts.graph.scopes.items() if s.kind is ScopeKind.PROVINCE}
    crossing: set[str] = set()
    for q in facts.qualifications:
        if not q.in_force(facts.at):
            continue
        spanned = {p for p in provinces if facts.graph.coverage(q.scope) & facts.graph.coverage(p)}
        if len(spanned) > 1:
            crossing |= {p for p in provinces if q.institution in facts.graph.coverage(p)}
    return Progress(
        target,
        "实现跨省互认的省份数",
        float(len(crossing)),
        _passes(len(crossing), target),
        tuple((names.get(p, p), "是") for p in sorted(crossing)),
    )
