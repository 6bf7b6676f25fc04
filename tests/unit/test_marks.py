"""Marks (R2), as the sources state them. Pure domain: no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from huren.domain.errors import ScopeCycle
from huren.domain.marks import MarkSymbols, largest_scope, mark_for, mark_recognized_at
from huren.domain.masterdata import (
    Category,
    Institution,
    InstitutionLevel,
    Item,
    MarkSymbol,
    Qualification,
    QualificationBasis,
    QualificationStatus,
    Scope,
    ScopeGraph,
    ScopeKind,
)

AT = datetime(2026, 3, 1, 10, tzinfo=UTC)
CT = Item("CT1", "胸部CT平扫", Category.IMAGING, timedelta(days=30), group="CT")
LAB = Item("L1", "肝功能", Category.LAB, timedelta(days=7), group="生化")

SCOPES = [
    Scope("HE", "河北省", ScopeKind.PROVINCE, abbreviation="HB"),
    Scope("BJ", "北京市", ScopeKind.PROVINCE),
    Scope("TJ", "天津市", ScopeKind.PROVINCE),
    Scope("SH", "上海市", ScopeKind.PROVINCE, abbreviation="SH"),
    Scope("JS", "江苏省", ScopeKind.PROVINCE),
    Scope("HE-SJZ", "石家庄市", ScopeKind.CITY, parent="HE"),
    Scope("JJJ", "京津冀", ScopeKind.REGION, member_scopes=frozenset({"HE", "BJ", "TJ"})),
    Scope(
        "CSJ", "长三角", ScopeKind.REGION, member_scopes=frozenset({"SH", "JS"}), abbreviation="CSJ"
    ),
    Scope("YLT", "某医联体", ScopeKind.ALLIANCE, member_institutions=frozenset({"A", "C"})),
]
INSTS = [
    Institution("A", "甲医院", InstitutionLevel.TERTIARY, True, "HE-SJZ"),
    Institution("B", "乙医院", InstitutionLevel.TERTIARY, True, "BJ"),
    Institution("C", "丙医院", InstitutionLevel.SECONDARY, True, "HE"),
    Institution("S", "沪医院", InstitutionLevel.TERTIARY, True, "SH"),
    Institution("J", "苏医院", InstitutionLevel.TERTIARY, True, "JS"),
]
GRAPH = ScopeGraph(SCOPES, INSTS)
SYMBOLS = MarkSymbols(
    [
        MarkSymbol("HE", Category.IMAGING, "—HBHR", "HBHR"),
        MarkSymbol("HE", Category.LAB, "☆", "HBHR"),
        MarkSymbol("JJJ", Category.IMAGING, "—JJJHR", "JJJHR"),
        MarkSymbol("JJJ", Category.LAB, "★", "JJJHR"),
        MarkSymbol("SH", None, "上海HR", "SHHR"),
        MarkSymbol("CSJ", None, "长三角HR", "CSJHR"),
    ],
    GRAPH,
)


def qual(
    inst: str,
    scope: str,
    *,
    item: str = "",
    group: str = "",
    status: QualificationStatus = QualificationStatus.ACTIVE,
    valid_to: date | None = None,
) -> Qualification:
    return Qualification(
        inst,
        scope,
        QualificationBasis.QC_EVALUATION,
        date(2026, 1, 1),
        valid_to,
        status,
        item=item,
        group=group,
    )


def test_hebei_imaging_mark_after_passing_evaluation() -> None:
    # 冀卫医政函〔2025〕7号 二(二)1: 评价合格后，在全省范围内互认并标注互认标识“—HBHR”
    mark = mark_for("A", CT, AT, [qual("A", "HE", item="CT1")], GRAPH, SYMBOLS)
    assert mark is not None
    assert mark.symbol == "—HBHR"


def test_hebei_lab_mark_is_a_white_star() -> None:
    # 冀卫医政函〔2025〕7号 二(二)2: 通过后可在全省范围内互认并标注互认标识“☆”
    mark = mark_for("A", LAB, AT, [qual("A", "HE", group="生化")], GRAPH, SYMBOLS)
    assert mark is not None
    assert mark.symbol == "☆"


def test_jingjinji_mark_replaces_the_provincial_one() -> None:
    # 冀卫医政函〔2025〕7号 二(二): 参加京津冀互认的，直接标注京津冀互认标识（影像“—JJJHR”、检验“★”）
    quals = [
        qual("A", "HE", item="CT1"),
        qual("A", "JJJ", item="CT1"),
        qual("A", "HE", group="生化"),
        qual("A", "JJJ", group="生化"),
    ]
    ct = mark_for("A", CT, AT, quals, GRAPH, SYMBOLS)
    lab = mark_for("A", LAB, AT, quals, GRAPH, SYMBOLS)
    assert ct is not None
    assert lab is not None
    assert (ct.symbol, lab.symbol) == ("—JJJHR", "★")


def test_shanghai_largest_scope_gives_the_name() -> None:
    # 沪卫医〔2024〕135号 四(四): 如同一项目满足多个互认范围，则以最大范围的名称标注
    quals = [qual("S", "SH", item="CT1"), qual("S", "CSJ", item="CT1")]
    mark = mark_for("S", CT, AT, quals, GRAPH, SYMBOLS)
    assert mark is not None
    assert (mark.symbol, mark.symbol_en) == ("长三角HR", "CSJHR")


def test_unconfigured_scope_falls_back_to_scope_name_plus_hr() -> None:
    # 沪卫医〔2024〕135号 四(四): 互认范围 + 互认标识; 英文: 互认范围拼音首字母 + 互认标识
    bare = MarkSymbols([], GRAPH)
    mark = mark_for("S", CT, AT, [qual("S", "SH", item="CT1")], GRAPH, bare)
    assert mark is not None
    assert (mark.symbol, mark.symbol_en) == ("上海市HR", "SHHR")


@pytest.mark.parametrize(
    "status",
    [
        QualificationStatus.FAILED,
        QualificationStatus.SUSPENDED,
        QualificationStatus.REVOKED,
        QualificationStatus.EXPIRED,
    ],
)
def test_no_mark_unless_the_qualification_is_active(status: QualificationStatus) -> None:
    # 沪卫医〔2024〕135号 四(四): 未按要求参加质量评价或质量评价不合格的检查检验项目，不得标注
    assert (
        mark_for("A", CT, AT, [qual("A", "HE", item="CT1", status=status)], GRAPH, SYMBOLS) is None
    )


def test_no_mark_after_the_qualification_ran_out() -> None:
    quals = [qual("A", "HE", item="CT1", valid_to=date(2026, 2, 28))]
    assert mark_for("A", CT, AT, quals, GRAPH, SYMBOLS) is None


def test_no_mark_without_evaluation() -> None:
    assert mark_for("A", CT, AT, [], GRAPH, SYMBOLS) is None


def test_qualification_of_another_institution_does_not_count() -> None:
    assert mark_for("B", CT, AT, [qual("A", "HE", item="CT1")], GRAPH, SYMBOLS) is None


def test_ordering_institution_inside_the_region_recognizes_the_mark() -> None:
    mark = mark_for("A", CT, AT, [qual("A", "JJJ", item="CT1")], GRAPH, SYMBOLS)
    assert mark_recognized_at(mark, "B", GRAPH)  # 北京 lies in 京津冀
    assert not mark_recognized_at(mark, "S", GRAPH)  # 上海 does not


def test_alliance_mark_is_recognized_only_inside_the_alliance() -> None:
    # 冀卫医政函〔2025〕7号 二(二)3: 紧密型医联体…评价合格后，内部开展互认
    mark = mark_for("C", LAB, AT, [qual("C", "YLT", group="生化")], GRAPH, SYMBOLS)
    assert mark_recognized_at(mark, "A", GRAPH)
    assert not mark_recognized_at(mark, "B", GRAPH)


def test_largest_means_widest_coverage_not_kind() -> None:
    # Scopes do not nest (R2): an alliance spanning many institutions can outrank a small city.
    assert largest_scope(GRAPH, ["HE-SJZ", "JJJ", "HE"]) == "JJJ"
    assert GRAPH.breadth("JJJ") > GRAPH.breadth("HE") > GRAPH.breadth("HE-SJZ")


def test_scope_cycle_is_rejected_with_the_path() -> None:
    scopes = [
        Scope("X", "甲", ScopeKind.REGION, member_scopes=frozenset({"Y"})),
        Scope("Y", "乙", ScopeKind.REGION, member_scopes=frozenset({"X"})),
    ]
    with pytest.raises(ScopeCycle, match=r"X → Y → X|Y → X → Y"):
        ScopeGraph(scopes, [])
