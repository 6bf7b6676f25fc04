"""Quality-control lifecycle (R8): evaluations and EQA rounds, re-evaluation and expiry,
suspension proposals, and random spot checks (双随机一公开).

Rules, from the sources:
- 沪卫医〔2024〕135号 五(二): 已标注互认标识的检查检验项目参加相应质量评价的频次不得少于
  半年一次。…参加室间质评两次不合格且整改无效、发现医疗机构临床实验室有不诚信行为时，可暂停
  相关项目或实验室的互认资质。 — "可暂停": the authority decides; the platform proposes.
- 甘卫医政函〔2025〕16号 三(一)2: 定期（每年1次）复评; 三(二)4: 质量评价、抽查不合格的项目
  不得标注互认标志，整改后经省级质控中心验收合格方可标注.
- 冀卫医政函〔2025〕7号 二(二)1–3: who organises the evaluation, "原则上" by level.

Pure: no I/O. Periods per province come from ``huren/data/reevaluation.json`` (loaded by
an adapter and passed in as ``ReevaluationPolicy``).
"""

from __future__ import annotations

import calendar
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum

from huren.domain.errors import Problem, ValidationFailed
from huren.domain.masterdata import (
    Category,
    Institution,
    InstitutionLevel,
    Item,
    Qualification,
    QualificationBasis,
    QualificationStatus,
)


class EvaluationKind(StrEnum):
    EVALUATION = "evaluation"  # 质量评价 / 复评
    EQA_ROUND = "eqa_round"  # 室间质评 (一轮)
    SPOT_CHECK = "spot_check"  # 抽查 (双随机一公开; 沪: 放射影像质量抽查)
    ALLIANCE_COMPARISON = "alliance_comparison"  # 医联体牵头单位组织的室间比对


KIND_LABELS: Mapping[EvaluationKind, str] = {
    EvaluationKind.EVALUATION: "质量评价",
    EvaluationKind.EQA_ROUND: "室间质评",
    EvaluationKind.SPOT_CHECK: "抽查",
    EvaluationKind.ALLIANCE_COMPARISON: "室间比对",
}

KIND_TO_BASIS: Mapping[EvaluationKind, QualificationBasis] = {
    EvaluationKind.EVALUATION: QualificationBasis.QC_EVALUATION,
    EvaluationKind.EQA_ROUND: QualificationBasis.EQA,
    EvaluationKind.SPOT_CHECK: QualificationBasis.SPOT_CHECK,
    EvaluationKind.ALLIANCE_COMPARISON: QualificationBasis.ALLIANCE_COMPARISON,
}


class Organiser(StrEnum):
    NATIONAL_CENTRE = "national_centre"  # 国家临床检验中心
    PROVINCIAL_CENTRE = "provincial_centre"  # 省级质控中心 / 省级临床检验中心
    CITY_CENTRE = "city_centre"  # 市级质控中心
    ALLIANCE_LEAD = "alliance_lead"  # 医联体牵头单位


ORGANISER_LABELS: Mapping[Organiser, str] = {
    Organiser.NATIONAL_CENTRE: "国家临床检验中心",
    Organiser.PROVINCIAL_CENTRE: "省级质控中心",
    Organiser.CITY_CENTRE: "市级质控中心",
    Organiser.ALLIANCE_LEAD: "医联体牵头单位",
}


def suggested_organiser(
    institution: Institution, category: Category, kind: EvaluationKind
) -> Organiser | None:
    """Who organises the evaluation "in principle" (冀: 原则上). A default suggestion shown
    when recording, never a hard rule: a QC centre may record another organiser (and
    the sources say "根据…开设的室间质评项目情况", i.e. only where such a scheme exists).
    None where the sources suggest nothing."""
    level = institution.level
    if kind is EvaluationKind.ALLIANCE_COMPARISON:
        # 冀卫医政函〔2025〕7号 二(二)3: 检验项目需通过牵头单位组织的室间比对
        return Organiser.ALLIANCE_LEAD
    if kind is EvaluationKind.SPOT_CHECK:
        # 冀 三(一): 省级质控中心…对其他医疗机构进行随机抽查; 甘 三(二)4: 省级质控中心…抽查
        return Organiser.PROVINCIAL_CENTRE
    if category is Category.LAB:
        # 冀 二(二)2: 原则上三级公立医院需参加国家临床检验中心组织的室间质评，
        # 二级公立医院需参加省级临床检验中心组织的室间质评
        if institution.public and level is InstitutionLevel.TERTIARY:
            return Organiser.NATIONAL_CENTRE
        if institution.public and level is InstitutionLevel.SECONDARY:
            return Organiser.PROVINCIAL_CENTRE
        return None  # 二级以下: "国家或省级临检中心", no single suggestion
    # 冀 二(二)1: 三级医疗机构由省级影像质控中心…，二级及以下医疗机构由市级影像质控中心…
    if level is InstitutionLevel.TERTIARY:
        return Organiser.PROVINCIAL_CENTRE
    return Organiser.CITY_CENTRE


# ---------------------------------------------------------------- re-evaluation, expiry


@dataclass(frozen=True, slots=True)
class ReevaluationPolicy:
    """A province's re-evaluation period and what a failed evaluation does."""

    jurisdiction: str
    months: int
    warn_days: int
    failure_removes_mark: bool
    source: str
    failure_source: str = ""


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole calendar months, clamped to the month's last day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def valid_until(evaluated_on: date, policy: ReevaluationPolicy) -> date:
    """Last day a qualification earned on ``evaluated_on`` is valid without re-evaluation
    (沪: 不少于半年一次 → 6 months; 甘: 每年1次 → 12 months)."""
    return add_months(evaluated_on, policy.months) - timedelta(days=1)


class ExpiryState(StrEnum):
    VALID = "valid"
    EXPIRING = "expiring"  # within warn_days of valid_to
    EXPIRED = "expired"


EXPIRY_LABELS: Mapping[ExpiryState, str] = {
    ExpiryState.VALID: "有效",
    ExpiryState.EXPIRING: "即将到期",
    ExpiryState.EXPIRED: "已过期",
}


def expiry_state(valid_to: date | None, today: date, policy: ReevaluationPolicy) -> ExpiryState:
    if valid_to is None:
        return ExpiryState.VALID
    if today > valid_to:
        return ExpiryState.EXPIRED
    if (valid_to - today).days <= policy.warn_days:
        return ExpiryState.EXPIRING
    return ExpiryState.VALID


# ---------------------------------------------------------------- evaluations, suspension


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One recorded evaluation of an institution for an item or an item group."""

    id: int
    institution: str
    kind: EvaluationKind
    evaluated_on: date
    passed: bool
    item: str = ""
    group: str = ""
    rectification_accepted_on: date | None = None

    def same_target(self, other: Evaluation) -> bool:
        return (self.institution, self.item, self.group) == (
            other.institution,
            other.item,
            other.group,
        )


class SuspensionReason(StrEnum):
    EQA_FAILED_TWICE = "eqa_failed_twice"
    EVALUATION_FAILED = "evaluation_failed"
    SPOT_CHECK_FAILED = "spot_check_failed"
    SERIOUS_QUALITY_PROBLEM = "serious_quality_problem"
    DISHONEST_CONDUCT = "dishonest_conduct"
    OTHER = "other"


SUSPENSION_REASON_LABELS: Mapping[SuspensionReason, str] = {
    # 沪卫医〔2024〕135号 五(二)
    SuspensionReason.EQA_FAILED_TWICE: "参加室间质评两次不合格且整改无效",
    SuspensionReason.EVALUATION_FAILED: "质量评价不合格",
    SuspensionReason.SPOT_CHECK_FAILED: "抽查不合格",
    SuspensionReason.SERIOUS_QUALITY_PROBLEM: "质量督查时发现较严重问题且整改不到位",
    SuspensionReason.DISHONEST_CONDUCT: "临床实验室有不诚信行为",
    SuspensionReason.OTHER: "其他（须说明理由）",
}

# Raised by the platform itself; the others only by a person (they need judgement).
AUTOMATIC_REASONS = frozenset(
    {
        SuspensionReason.EQA_FAILED_TWICE,
        SuspensionReason.EVALUATION_FAILED,
        SuspensionReason.SPOT_CHECK_FAILED,
    }
)


class ProposalStatus(StrEnum):
    PROPOSED = "proposed"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    REINSTATED = "reinstated"


PROPOSAL_STATUS_LABELS: Mapping[ProposalStatus, str] = {
    ProposalStatus.PROPOSED: "待确认",
    ProposalStatus.CONFIRMED: "已暂停",
    ProposalStatus.REJECTED: "未采纳",
    ProposalStatus.REINSTATED: "已恢复",
}

# Which status a proposal may move to, and from where.
_TRANSITIONS: Mapping[ProposalStatus, frozenset[ProposalStatus]] = {
    ProposalStatus.PROPOSED: frozenset({ProposalStatus.CONFIRMED, ProposalStatus.REJECTED}),
    ProposalStatus.CONFIRMED: frozenset({ProposalStatus.REINSTATED}),
    ProposalStatus.REJECTED: frozenset(),
    ProposalStatus.REINSTATED: frozenset(),
}


def check_transition(current: ProposalStatus, wanted: ProposalStatus) -> None:
    if wanted not in _TRANSITIONS[current]:
        raise ValidationFailed(
            f"暂停建议当前状态为“{PROPOSAL_STATUS_LABELS[current]}”，不能改为“{PROPOSAL_STATUS_LABELS[wanted]}”",
            problems=[Problem("status", f"不允许从 {current.value} 变为 {wanted.value}")],
        )


class TargetKind(StrEnum):
    ITEM = "item"
    GROUP = "group"
    LABORATORY = "laboratory"  # 暂停…实验室的互认资质: every lab item of the institution


@dataclass(frozen=True, slots=True)
class ProposalDraft:
    """A suspension proposal the platform raises by itself."""

    reason: SuspensionReason
    text: str
    evidence: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Assessment:
    """What recording ``evaluation`` does to the institution's qualification.

    ``renew_until``: a passed evaluation renews the qualification up to this day.
    ``remove_mark``: the qualification drops to 不合格 at once (甘: until the provincial QC
    centre accepts the rectification). ``proposal``: a suspension proposal to raise."""

    renew_until: date | None = None
    remove_mark: bool = False
    proposal: ProposalDraft | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def consecutive_failed_eqa(history: Iterable[Evaluation]) -> list[Evaluation]:
    """The failed EQA rounds at the end of the target's EQA history, newest last: the
    run of failures since the last passed round."""
    rounds = sorted(
        (e for e in history if e.kind is EvaluationKind.EQA_ROUND),
        key=lambda e: (e.evaluated_on, e.id),
    )
    run: list[Evaluation] = []
    for e in rounds:
        run = [*run, e] if not e.passed else []
    return run


def eqa_failed_twice_unrectified(history: Iterable[Evaluation]) -> tuple[Evaluation, ...] | None:
    """沪卫医〔2024〕135号 五(二) "参加室间质评两次不合格且整改无效": the last two EQA rounds of
    the target both failed (the rectification after the first did not make the next round
    pass) and the latest failure has no rectification accepted by the QC centre yet.
    Returns the two failed rounds, or None."""
    run = consecutive_failed_eqa(history)
    if len(run) < 2 or run[-1].rectification_accepted_on is not None:
        return None
    return (run[-2], run[-1])


def assess_evaluation(
    new: Evaluation, history: Sequence[Evaluation], policy: ReevaluationPolicy
) -> Assessment:
    """Apply the rules to a newly recorded evaluation. ``history`` holds the target's
    earlier evaluations (with or without ``new``)."""
    if new.passed:
        if new.kind is EvaluationKind.SPOT_CHECK:
            # a spot check audits a qualification; passing it does not extend it
            return Assessment()
        return Assessment(renew_until=valid_until(new.evaluated_on, policy))
    if new.kind in (EvaluationKind.EVALUATION, EvaluationKind.SPOT_CHECK):
        if policy.failure_removes_mark:
            # 甘卫医政函〔2025〕16号 三(二)4: 质量评价、抽查不合格的项目不得标注互认标志，
            # 整改后经省级质控中心验收合格方可标注
            return Assessment(remove_mark=True, notes=(policy.failure_source,))
        reason = (
            SuspensionReason.SPOT_CHECK_FAILED
            if new.kind is EvaluationKind.SPOT_CHECK
            else SuspensionReason.EVALUATION_FAILED
        )
        return Assessment(
            proposal=ProposalDraft(
                reason,
                f"{new.evaluated_on.isoformat()} {KIND_LABELS[new.kind]}不合格，建议暂停相关项目互认资质（由卫生健康行政部门确认）",
                (new.id,),
            )
        )
    if new.kind is EvaluationKind.ALLIANCE_COMPARISON:
        return Assessment(
            proposal=ProposalDraft(
                SuspensionReason.EVALUATION_FAILED,
                f"{new.evaluated_on.isoformat()} 医联体室间比对不合格，建议暂停医联体内互认资质",
                (new.id,),
            )
        )
    merged = [e for e in history if e.id != new.id] + [new]
    pair = eqa_failed_twice_unrectified(merged)
    if pair is None:
        return Assessment(notes=("室间质评不合格一次：请整改，下一轮仍不合格将提出暂停建议",))
    first, second = pair
    return Assessment(
        proposal=ProposalDraft(
            SuspensionReason.EQA_FAILED_TWICE,
            f"室间质评 {first.evaluated_on.isoformat()}、{second.evaluated_on.isoformat()} 两次不合格且整改无效（沪卫医〔2024〕135号 五(二)）",
            (first.id, second.id),
        )
    )


def qualifications_for_target(
    target: TargetKind,
    institution: str,
    code: str,
    qualifications: Iterable[tuple[int, Qualification]],
    items: Mapping[str, Item],
) -> list[int]:
    """Ids of the institution's in-status qualifications a suspension of ``target`` hits.
    An item target also hits a group qualification covering the item (the qualification
    cannot be split)."""
    out: list[int] = []
    lab_groups = {i.group for i in items.values() if i.category is Category.LAB and i.group}
    for qid, q in qualifications:
        if q.institution != institution or q.status is not QualificationStatus.ACTIVE:
            continue
        if target is TargetKind.ITEM:
            item = items.get(code)
            hit = q.item == code or (item is not None and q.item == "" and q.covers(item))
        elif target is TargetKind.GROUP:
            hit = q.group == code or (q.item in items and items[q.item].group == code)
        else:
            hit = (q.item in items and items[q.item].category is Category.LAB) or (
                q.group != "" and q.group in lab_groups
            )
        if hit:
            out.append(qid)
    return out


# ---------------------------------------------------------------- spot checks (双随机一公开)


@dataclass(frozen=True, slots=True)
class Inspector:
    """An expert on the inspector roster (检查人员名录库). ``conflicts`` lists further
    institutions the inspector must not check (declared conflicts of interest)."""

    name: str
    institution: str
    conflicts: frozenset[str] = frozenset()

    def may_check(self, institution: str) -> bool:
        return institution != self.institution and institution not in self.conflicts


@dataclass(frozen=True, slots=True)
class DrawnCheck:
    institution: str
    inspectors: tuple[Inspector, ...]


def draw_spot_checks(
    candidates: Iterable[str],
    inspectors: Iterable[Inspector],
    count: int,
    per_check: int,
    seed: int,
) -> list[DrawnCheck]:
    """双随机一公开: draw ``count`` institutions and, for each, ``per_check`` inspectors,
    at random but reproducibly — the same inputs and ``seed`` give the same draw, whatever
    order the inputs come in. No inspector checks their own institution or one they
    declared a conflict with (回避). Each inspector is drawn at most once per draw when the
    roster allows it, so that checks are spread."""
    pool_inst = sorted(set(candidates))
    roster = sorted(set(inspectors), key=lambda i: (i.name, i.institution))
    problems: list[Problem] = []
    if count < 1:
        problems.append(Problem("count", "抽取机构数应至少为 1"))
    elif count > len(pool_inst):
        problems.append(Problem("count", f"抽取机构数 {count} 超过候选机构数 {len(pool_inst)}"))
    if per_check < 1:
        problems.append(Problem("inspectors_per_check", "每家机构的检查人员数应至少为 1"))
    if problems:
        raise ValidationFailed("抽查参数无效", problems=problems)
    # reproducible on purpose: the seed is published with the draw (not a secret)
    rng = random.Random(seed)  # noqa: S311
    drawn = rng.sample(pool_inst, count)
    used: set[Inspector] = set()
    out: list[DrawnCheck] = []
    for inst in drawn:
        eligible = [i for i in roster if i.may_check(inst)]
        fresh = [i for i in eligible if i not in used]
        source = fresh if len(fresh) >= per_check else eligible
        if len(source) < per_check:
            raise ValidationFailed(
                "可回避利益冲突的检查人员不足",
                problems=[
                    Problem(
                        "inspectors",
                        f"机构 {inst} 可用检查人员 {len(source)} 名，少于每家 {per_check} 名",
                    )
                ],
            )
        chosen = tuple(rng.sample(source, per_check))
        used.update(chosen)
        out.append(DrawnCheck(inst, chosen))
    return out
