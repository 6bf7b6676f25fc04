"""QC lifecycle rules (R8), each next to the clause it comes from."""

from __future__ import annotations

from datetime import date

import pytest

from huren.adapters.db.governance import reevaluation_policies
from huren.domain.errors import ValidationFailed
from huren.domain.masterdata import (
    Category,
    Institution,
    InstitutionLevel,
    Item,
    Qualification,
    QualificationBasis,
    QualificationStatus,
)
from huren.domain.qc import (
    Evaluation,
    EvaluationKind,
    ExpiryState,
    Inspector,
    Organiser,
    SuspensionReason,
    TargetKind,
    assess_evaluation,
    draw_spot_checks,
    eqa_failed_twice_unrectified,
    expiry_state,
    qualifications_for_target,
    suggested_organiser,
    valid_until,
)

POLICIES, DEFAULT = reevaluation_policies()
SH, GS, HE = POLICIES["SH"], POLICIES["GS"], POLICIES["HE"]


def eqa(id_: int, on: date, passed: bool, accepted: date | None = None) -> Evaluation:
    return Evaluation(
        id_,
        "H310000001",
        EvaluationKind.EQA_ROUND,
        on,
        passed,
        group="生化",
        rectification_accepted_on=accepted,
    )


# ---------------------------------------------------------------- re-evaluation


def test_shanghai_qualification_runs_six_months() -> None:
    # 沪卫医〔2024〕135号 五(二): 参加相应质量评价的频次不得少于半年一次
    assert valid_until(date(2026, 1, 10), SH) == date(2026, 7, 9)


def test_gansu_qualification_runs_one_year() -> None:
    # 甘卫医政函〔2025〕16号 三(一)2: 定期（每年1次）复评
    assert valid_until(date(2026, 1, 10), GS) == date(2027, 1, 9)


def test_month_end_evaluation_clamps_to_the_shorter_month() -> None:
    assert valid_until(date(2025, 8, 31), SH) == date(2026, 2, 27)


def test_warning_starts_inside_the_jurisdictions_window() -> None:
    valid_to = date(2026, 7, 9)
    assert expiry_state(valid_to, date(2026, 6, 1), SH) is ExpiryState.VALID
    assert expiry_state(valid_to, date(2026, 6, 10), SH) is ExpiryState.EXPIRING
    assert expiry_state(valid_to, date(2026, 7, 10), SH) is ExpiryState.EXPIRED


def test_gansu_warns_earlier_than_shanghai() -> None:
    valid_to = date(2026, 7, 9)
    day = date(2026, 5, 30)  # 40 days ahead
    assert expiry_state(valid_to, day, SH) is ExpiryState.VALID
    assert expiry_state(valid_to, day, GS) is ExpiryState.EXPIRING


def test_passed_evaluation_renews_by_the_jurisdictions_period() -> None:
    new = Evaluation(1, "H620100001", EvaluationKind.EVALUATION, date(2026, 3, 1), True, item="X")
    assert assess_evaluation(new, [], GS).renew_until == date(2027, 2, 28)
    assert assess_evaluation(new, [], SH).renew_until == date(2026, 8, 31)


def test_passed_spot_check_does_not_extend_the_qualification() -> None:
    new = Evaluation(1, "H620100001", EvaluationKind.SPOT_CHECK, date(2026, 3, 1), True, item="X")
    assert assess_evaluation(new, [], GS).renew_until is None


# ---------------------------------------------------------------- suspension conditions


def test_one_failed_eqa_round_raises_no_proposal() -> None:
    first = eqa(1, date(2026, 3, 1), False)
    assessment = assess_evaluation(first, [], SH)
    assert assessment.proposal is None
    assert not assessment.remove_mark


def test_two_failed_eqa_rounds_raise_a_proposal() -> None:
    # 沪卫医〔2024〕135号 五(二): 参加室间质评两次不合格且整改无效…可暂停相关项目或实验室的互认资质
    first = eqa(1, date(2026, 3, 1), False, accepted=date(2026, 4, 1))
    second = eqa(2, date(2026, 9, 1), False)
    assessment = assess_evaluation(second, [first], SH)
    assert assessment.proposal is not None
    assert assessment.proposal.reason is SuspensionReason.EQA_FAILED_TWICE
    assert assessment.proposal.evidence == (1, 2)
    assert not assessment.remove_mark  # the authority decides (可暂停)


def test_a_passed_round_between_failures_resets_the_count() -> None:
    history = [eqa(1, date(2025, 9, 1), False), eqa(2, date(2026, 3, 1), True)]
    third = eqa(3, date(2026, 9, 1), False)
    assert assess_evaluation(third, history, SH).proposal is None


def test_accepted_rectification_of_the_latest_failure_ends_the_condition() -> None:
    history = [eqa(1, date(2026, 3, 1), False), eqa(2, date(2026, 9, 1), False, date(2026, 10, 1))]
    assert eqa_failed_twice_unrectified(history) is None


def test_gansu_failed_spot_check_removes_the_mark_without_a_proposal() -> None:
    # 甘卫医政函〔2025〕16号 三(二)4: 质量评价、抽查不合格的项目不得标注互认标志，
    # 整改后经省级质控中心验收合格方可标注
    new = Evaluation(5, "H620100001", EvaluationKind.SPOT_CHECK, date(2026, 5, 1), False, item="X")
    assessment = assess_evaluation(new, [], GS)
    assert assessment.remove_mark
    assert assessment.proposal is None


def test_failed_evaluation_elsewhere_is_a_proposal_for_the_authority() -> None:
    new = Evaluation(5, "H130100001", EvaluationKind.EVALUATION, date(2026, 5, 1), False, item="X")
    assessment = assess_evaluation(new, [], HE)
    assert not assessment.remove_mark
    assert assessment.proposal is not None
    assert assessment.proposal.reason is SuspensionReason.EVALUATION_FAILED


LAB = Item("JY-1", "肝功能", Category.LAB, date(2026, 1, 2) - date(2026, 1, 1), group="生化")
CT = Item("YX-1", "胸部CT", Category.IMAGING, date(2026, 1, 2) - date(2026, 1, 1), group="CT")


def _q(
    item: str = "", group: str = "", status: QualificationStatus = QualificationStatus.ACTIVE
) -> Qualification:
    return Qualification(
        "H1", "SH", QualificationBasis.EQA, date(2026, 1, 1), None, status, item=item, group=group
    )


def test_laboratory_suspension_hits_every_lab_qualification_and_no_imaging() -> None:
    # 沪 五(二): 暂停相关项目或实验室的互认资质
    quals = [(1, _q(group="生化")), (2, _q(item="YX-1")), (3, _q(item="JY-1"))]
    ids = qualifications_for_target(
        TargetKind.LABORATORY, "H1", "", quals, {"JY-1": LAB, "YX-1": CT}
    )
    assert ids == [1, 3]


def test_item_suspension_skips_qualifications_already_not_active() -> None:
    quals = [(1, _q(item="JY-1", status=QualificationStatus.EXPIRED)), (2, _q(item="JY-1"))]
    assert qualifications_for_target(TargetKind.ITEM, "H1", "JY-1", quals, {"JY-1": LAB}) == [2]


# ---------------------------------------------------------------- organiser by level


def test_tertiary_public_lab_eqa_is_suggested_to_the_national_centre() -> None:
    # 冀卫医政函〔2025〕7号 二(二)2: 原则上三级公立医院需参加国家临床检验中心组织的室间质评
    inst = Institution("H1", "三级医院", InstitutionLevel.TERTIARY, True, "HE-SJZ")
    assert (
        suggested_organiser(inst, Category.LAB, EvaluationKind.EQA_ROUND)
        is Organiser.NATIONAL_CENTRE
    )


def test_secondary_imaging_is_suggested_to_the_city_centre() -> None:
    # 冀 二(二)1: 二级及以下医疗机构由市级影像质控中心集中组织质量评价
    inst = Institution("H2", "县医院", InstitutionLevel.SECONDARY, True, "HE-BD")
    assert (
        suggested_organiser(inst, Category.IMAGING, EvaluationKind.EVALUATION)
        is Organiser.CITY_CENTRE
    )


def test_private_tertiary_lab_has_no_suggested_organiser() -> None:
    inst = Institution("H3", "民营医院", InstitutionLevel.TERTIARY, False, "HE-SJZ")
    assert suggested_organiser(inst, Category.LAB, EvaluationKind.EQA_ROUND) is None


# ---------------------------------------------------------------- 双随机一公开

INSTITUTIONS = [f"H62{n:04d}" for n in range(12)]
ROSTER = [Inspector(f"专家{n}", INSTITUTIONS[n % 12]) for n in range(10)]


def test_draw_is_reproducible_from_the_seed_whatever_the_input_order() -> None:
    a = draw_spot_checks(INSTITUTIONS, ROSTER, 4, 2, seed=20260615)
    b = draw_spot_checks(list(reversed(INSTITUTIONS)), list(reversed(ROSTER)), 4, 2, seed=20260615)
    assert a == b


def test_another_seed_gives_another_draw() -> None:
    a = draw_spot_checks(INSTITUTIONS, ROSTER, 4, 2, seed=1)
    b = draw_spot_checks(INSTITUTIONS, ROSTER, 4, 2, seed=2)
    assert a != b


@pytest.mark.parametrize("seed", range(50))
def test_no_inspector_checks_their_own_or_a_declared_institution(seed: int) -> None:
    roster = [*ROSTER, Inspector("回避专家", INSTITUTIONS[0], frozenset({INSTITUTIONS[1]}))]
    for check in draw_spot_checks(INSTITUTIONS, roster, 6, 2, seed=seed):
        for inspector in check.inspectors:
            assert inspector.institution != check.institution
            assert check.institution not in inspector.conflicts


def test_too_few_unconflicted_inspectors_is_rejected() -> None:
    roster = [Inspector("唯一专家", INSTITUTIONS[0])]
    with pytest.raises(ValidationFailed) as err:
        draw_spot_checks([INSTITUTIONS[0]], roster, 1, 1, seed=7)
    assert err.value.problems[0].field == "inspectors"
