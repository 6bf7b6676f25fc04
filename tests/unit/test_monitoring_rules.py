"""Monitoring rules (R9): ratios, the outlier rule, target progress."""

from __future__ import annotations

import statistics
from datetime import UTC, date, datetime, timedelta

from huren.adapters.db.governance import policy_targets
from huren.domain.masterdata import (
    Category,
    Institution,
    InstitutionLevel,
    Item,
    Qualification,
    QualificationBasis,
    QualificationStatus,
    Scope,
    ScopeGraph,
    ScopeKind,
)
from huren.domain.monitoring import (
    Counters,
    Metric,
    Subject,
    TargetFacts,
    find_outliers,
    month_of,
    target_progress,
)


def test_recognition_ratio_counts_accepted_over_reminders_with_recognizable_priors() -> None:
    c = Counters(reminders=120, reminders_recognizable=80, accepted=60, declined=20)
    assert c.recognition_ratio == 0.75


def test_no_ratio_without_recognizable_reminders() -> None:
    assert Counters(reminders=5).recognition_ratio is None


def test_month_is_counted_in_china_time() -> None:
    # 2026-06-30 20:00 UTC is 2026-07-01 04:00 in Beijing
    assert month_of(datetime(2026, 6, 30, 20, 0, tzinfo=UTC)) == date(2026, 7, 1)
    assert month_of(datetime(2026, 6, 30, 15, 0)) == date(2026, 6, 1)  # naive = UTC


def _peers(ratios: list[float], volume: int = 200) -> list[Subject]:
    return [
        Subject(
            f"H{n}",
            f"医院{n}",
            "河北省·三级",
            Counters(reminders=volume, reminders_recognizable=volume, accepted=round(r * volume)),
        )
        for n, r in enumerate(ratios)
    ]


NORMAL = [0.62, 0.58, 0.65, 0.60, 0.55, 0.63, 0.59, 0.61]


def test_planted_low_ratio_is_flagged_and_the_normal_peers_are_not() -> None:
    # 国卫医政发〔2024〕37号 三(五): 互认项目数量、互认比例明显偏离平均水平的…
    subjects = _peers([*NORMAL, 0.12])
    findings = find_outliers(subjects, Metric.RECOGNITION_RATIO)
    flagged = [f for f in findings if f.flagged]
    assert [f.key for f in flagged] == ["H8"]
    assert flagged[0].z < -3.5


def test_finding_explains_the_statistic_in_chinese_with_the_numbers() -> None:
    findings = find_outliers(_peers([*NORMAL, 0.12]), Metric.RECOGNITION_RATIO)
    text = next(f for f in findings if f.flagged).explanation
    median = statistics.median([*NORMAL, 0.12])
    assert "12.0%" in text
    assert f"中位数 {median * 100:.1f}%" in text
    assert "稳健Z值" in text
    assert "明显低于同组平均水平" in text


def test_unusual_but_small_gap_in_a_tight_group_is_not_flagged() -> None:
    # MAD of a tight group is tiny, so 8 points gives |z| > 3.5; "明显偏离" needs a material gap too
    tight = [0.60, 0.61, 0.60, 0.59, 0.60, 0.61, 0.60, 0.68]
    findings = find_outliers(_peers(tight), Metric.RECOGNITION_RATIO)
    top = findings[0]
    assert abs(top.z) >= 3.5
    assert not top.flagged
    assert "不判为明显偏离" in top.explanation


def test_small_volume_is_not_judged() -> None:
    tiny = Subject("TINY", "小医院", "河北省·三级", Counters(reminders_recognizable=10, accepted=0))
    findings = find_outliers([*_peers(NORMAL), tiny], Metric.RECOGNITION_RATIO)
    assert "TINY" not in {f.key for f in findings}
    assert len(findings) == len(NORMAL)


def test_a_group_smaller_than_five_is_not_compared() -> None:
    assert find_outliers(_peers([0.6, 0.6, 0.1, 0.6]), Metric.RECOGNITION_RATIO) == []


def test_identical_peers_do_not_divide_by_zero() -> None:
    findings = find_outliers(_peers([0.6] * 6 + [0.2]), Metric.RECOGNITION_RATIO)
    assert [f.key for f in findings if f.flagged] == ["H6"]


def test_counts_are_compared_on_a_log_scale() -> None:
    volumes = [1000, 1200, 900, 1100, 1050, 950, 15]
    subjects = [
        Subject(f"H{n}", f"医院{n}", "g", Counters(reminders_recognizable=2000, accepted=v))
        for n, v in enumerate(volumes)
    ]
    flagged = [f for f in find_outliers(subjects, Metric.ACCEPTED) if f.flagged]
    assert [f.key for f in flagged] == ["H6"]


# ---------------------------------------------------------------- targets

TARGETS = {t.id: t for t in policy_targets()}
AT = datetime(2026, 6, 15, tzinfo=UTC)


def _items(n: int, prefix: str = "JY") -> list[Item]:
    return [Item(f"{prefix}{k:03d}", f"项目{k}", Category.LAB, timedelta(days=7)) for k in range(n)]


def _facts(
    items: list[Item], quals: list[Qualification], connected: frozenset[str] = frozenset()
) -> TargetFacts:
    scopes = [
        Scope("SH", "上海市", ScopeKind.PROVINCE),
        Scope("JS", "江苏省", ScopeKind.PROVINCE),
        Scope("CSJ", "长三角", ScopeKind.REGION, member_scopes=frozenset({"SH", "JS"})),
        Scope(
            "YLT",
            "某医联体",
            ScopeKind.ALLIANCE,
            parent="SH",
            member_institutions=frozenset({"A", "B"}),
        ),
    ]
    insts = [
        Institution("A", "甲医院", InstitutionLevel.TERTIARY, True, "SH"),
        Institution("B", "乙医院", InstitutionLevel.SECONDARY, True, "SH"),
        Institution("C", "丙医院", InstitutionLevel.TERTIARY, True, "JS"),
    ]
    return TargetFacts(
        ScopeGraph(scopes, insts),
        {i.code: i for i in insts},
        {i.code: i for i in items},
        quals,
        connected,
        AT,
    )


def _q(
    inst: str, scope: str, item: str, status: QualificationStatus = QualificationStatus.ACTIVE
) -> Qualification:
    return Qualification(
        inst, scope, QualificationBasis.EQA, date(2026, 1, 1), date(2026, 12, 31), status, item=item
    )


def test_shanghai_500_items_not_met_with_501_only_when_more_than_500() -> None:
    # 沪卫医〔2024〕135号 一: 到2027年底，全市医疗机构间互认项目超过500项
    items = _items(501)
    facts = _facts(items, [_q("A", "SH", i.code) for i in items])
    p = target_progress(TARGETS["SH-2027-500"], facts)
    assert (p.value, p.met) == (501, True)
    facts = _facts(items, [_q("A", "SH", i.code) for i in items[:500]])
    assert target_progress(TARGETS["SH-2027-500"], facts).met is False


def test_suspended_qualifications_do_not_count_towards_item_targets() -> None:
    items = _items(3)
    quals = [
        _q("A", "CSJ", items[0].code),
        _q("C", "CSJ", items[1].code, QualificationStatus.SUSPENDED),
    ]
    p = target_progress(TARGETS["SH-2027-CSJ200"], _facts(items, quals))
    assert p.value == 1


def test_alliance_target_needs_every_member_item_recognized_inside_the_alliance() -> None:
    # 沪卫医〔2024〕135号 一: 各紧密型医联体实现医联体内医疗机构间全部项目互认
    items = _items(2)
    quals = [
        _q("A", "SH", items[0].code),
        _q("B", "YLT", items[1].code, QualificationStatus.FAILED),
    ]
    assert target_progress(TARGETS["SH-2025-alliance"], _facts(items, quals)).met is False
    quals[1] = _q("B", "YLT", items[1].code)
    assert target_progress(TARGETS["SH-2025-alliance"], _facts(items, quals)).met is True


def test_connected_share_counts_secondary_and_tertiary_public_hospitals() -> None:
    p = target_progress(TARGETS["CN-2025-retrieval"], _facts([], [], frozenset({"A", "C"})))
    assert p.value is not None
    assert round(p.value, 3) == round(2 / 3, 3)
    assert p.met is False


def test_qualitative_targets_are_not_computed() -> None:
    p = target_progress(TARGETS["CN-2030"], _facts([], []))
    assert p.value is None
    assert p.met is None


def test_every_target_cites_its_clause() -> None:
    for t in TARGETS.values():
        assert t.source.split(" ")[0] in {
            "国卫医政发〔2024〕37号",
            "冀卫医政函〔2025〕7号",
            "沪卫医〔2024〕135号",
            "甘卫医政函〔2025〕16号",
        }
