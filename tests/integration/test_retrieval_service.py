"""Cross-institution retrieval (调阅): reach by role, one audit row per read, no
enumeration, rate limits. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.errors import Forbidden, NotFound, ValidationFailed
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.results import ResultStatus
from huren.domain.sharing import RateLimit, RateLimited
from huren.services.retrieval import ResultFilter, RetrievalService
from tests.fixtures.results import (
    LI_SI_ID,
    ZHANG_SAN_ID,
    imaging_report,
    lab_panel,
    patient,
    store,
)
from tests.fixtures.world import BJ1, CT_CHEST, GS1, HOSP_A, HOSP_B, LFT, SH1
from tests.integration.sharing_helpers import audit_rows, principal

ZHANG = PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID)


@pytest.fixture
def shared(world: Container) -> dict[str, int]:
    """张三 has a liver panel and a chest CT from hospital A (河北) and a liver panel from
    Shanghai's 中山 (SH1)."""
    lft = store(world, lab_panel(HOSP_A)).results[0].result_id
    ct = store(world, imaging_report(HOSP_A)).results[0].result_id
    sh = store(world, lab_panel(SH1, local_code=LFT)).results[0].result_id
    return {"lft": lft, "ct": ct, "sh": sh}


def test_clinician_of_another_hebei_hospital_sees_hebei_results_but_not_shanghai(
    world: Container, shared: dict[str, int]
) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    out = world.sharing.retrieval.search(doctor, ZHANG, "treatment")
    assert {r.id for r in out.results} == {shared["lft"], shared["ct"]}
    assert out.patient is not None
    assert out.patient.name == "张*"


def test_lookup_by_insurance_number_finds_the_same_patient(world: Container) -> None:
    demo = patient(insurance="1301001234567890")
    rid = store(world, lab_panel(HOSP_A, patient_demographics=demo)).results[0].result_id
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    ins = PatientIdentifier(IdentifierKind.INSURANCE, "1301001234567890")
    assert [r.id for r in world.sharing.retrieval.search(doctor, ins, "referral").results] == [rid]


def test_filters_by_item_institution_and_date(world: Container, shared: dict[str, int]) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    r = world.sharing.retrieval
    only_ct = r.search(doctor, ZHANG, "treatment", ResultFilter(item_codes=frozenset({CT_CHEST})))
    assert [x.id for x in only_ct.results] == [shared["ct"]]
    elsewhere = r.search(doctor, ZHANG, "treatment", ResultFilter(institutions=frozenset({BJ1})))
    assert elsewhere.results == ()
    performed = only_ct.results[0].performed_at.date()
    later = r.search(
        doctor, ZHANG, "treatment", ResultFilter(date_from=performed + timedelta(days=1))
    )
    assert later.results == ()


def test_every_listed_result_and_the_lookup_are_audited_in_the_same_call(
    world: Container, shared: dict[str, int]
) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    before = audit_rows(world)
    out = world.sharing.retrieval.search(doctor, ZHANG, "consultation")
    assert audit_rows(world) - before == 1 + len(out.results)
    assert audit_rows(world, account_id=doctor.account_id, action="list") == len(out.results)
    assert audit_rows(world, account_id=doctor.account_id, purpose="consultation") == 3


def test_opening_a_report_is_audited_and_shows_findings_conclusion_and_observations(
    world: Container, shared: dict[str, int]
) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    ct = world.sharing.retrieval.open_report(doctor, shared["ct"], "treatment")
    assert "磨玻璃结节" in ct.result.findings
    assert "建议12个月后复查" in ct.result.conclusion
    lft = world.sharing.retrieval.open_report(doctor, shared["lft"], "treatment")
    alt = next(o for o in lft.result.observations if o.code == "ALT")
    assert (alt.unit, alt.ref_low, alt.ref_high, alt.flag) == ("U/L", 9, 50, "H")
    assert lft.patient.name == "张三"  # the clinician confirms whom the report belongs to
    assert audit_rows(world, result_id=shared["lft"], action="view", outcome="ok") == 1


def test_an_earlier_version_stays_readable_after_an_amendment(
    world: Container, shared: dict[str, int]
) -> None:
    first = lab_panel(HOSP_A, report_no="JY-AMEND-1")
    rid = store(world, first).results[0].result_id
    store(
        world,
        lab_panel(HOSP_A, report_no="JY-AMEND-1", status=ResultStatus.AMENDED, observations=()),
    )
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    head = world.sharing.retrieval.open_report(doctor, rid, "treatment")
    assert [v.version for v in head.versions] == [1, 2]
    old = world.sharing.retrieval.open_report(doctor, rid, "treatment", version=1)
    assert old.shown_version == 1
    assert len(old.result.observations) == 4
    assert audit_rows(world, result_id=rid, action="version") == 1


def test_a_purpose_is_required(world: Container, shared: dict[str, int]) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    with pytest.raises(ValidationFailed) as err:
        world.sharing.retrieval.search(doctor, ZHANG, None)
    assert err.value.problems[0].field == "purpose"


def test_a_purpose_of_another_role_is_refused(world: Container) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    with pytest.raises(ValidationFailed):
        world.sharing.retrieval.search(doctor, ZHANG, "supervision")


def test_lookup_by_name_or_local_record_number_is_refused(world: Container) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    with pytest.raises(ValidationFailed):
        world.sharing.retrieval.search(
            doctor, PatientIdentifier(IdentifierKind.MRN, "A0001", HOSP_A), "treatment"
        )


@pytest.mark.parametrize("role", [Role.INSURER, Role.OPERATOR])
def test_roles_without_retrieval_are_refused_and_the_refusal_is_logged(
    world: Container, shared: dict[str, int], role: Role
) -> None:
    who = principal(world, role, jurisdiction="HE")
    with pytest.raises(Forbidden):
        world.sharing.retrieval.search(who, ZHANG, "claim_verification")
    assert audit_rows(world, account_id=who.account_id, outcome="denied") == 1
    assert audit_rows(world, account_id=who.account_id, outcome="ok") == 0


def test_opening_a_result_out_of_reach_is_refused_and_logged(
    world: Container, shared: dict[str, int]
) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    with pytest.raises(NotFound):
        world.sharing.retrieval.open_report(doctor, shared["sh"], "treatment")
    assert audit_rows(world, result_id=shared["sh"], outcome="denied") == 1


def test_unknown_and_known_but_out_of_reach_patients_get_identical_answers(
    world: Container,
) -> None:
    store(world, lab_panel(SH1, local_code=LFT))  # 张三 has only a Shanghai result
    doctor = principal(world, Role.CLINICIAN, institution=GS1)
    r = world.sharing.retrieval
    known = r.search(doctor, ZHANG, "treatment")
    unknown = r.search(doctor, PatientIdentifier(IdentifierKind.NATIONAL_ID, LI_SI_ID), "treatment")
    assert known == unknown
    assert known.patient is None
    assert known.results == ()


def test_a_missing_result_and_an_unreachable_one_are_refused_alike(
    world: Container, shared: dict[str, int]
) -> None:
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    messages = []
    for rid in (shared["sh"], 999_999):
        with pytest.raises(NotFound) as err:
            world.sharing.retrieval.open_report(doctor, rid, "treatment")
        messages.append((err.value.message, err.value.problems))
    assert messages[0] == messages[1]


def test_regulator_reads_only_within_the_jurisdiction(
    world: Container, shared: dict[str, int]
) -> None:
    he = principal(world, Role.REGULATOR, jurisdiction="HE")
    out = world.sharing.retrieval.search(he, ZHANG, "supervision")
    assert {x.institution for x in out.results} == {HOSP_A}
    with pytest.raises(NotFound):
        world.sharing.retrieval.open_report(he, shared["sh"], "supervision")


def test_a_patient_opens_only_their_own_results(world: Container, shared: dict[str, int]) -> None:
    other = store(world, lab_panel(HOSP_A, patient_demographics=patient(LI_SI_ID, "李四"))).results[
        0
    ]
    me = world.sharing.retrieval.open_report
    zhang_id = world.sharing.retrieval.open_report(
        principal(world, Role.CLINICIAN, institution=HOSP_A), shared["lft"], "treatment"
    ).result.patient_id
    patient_account = principal(world, Role.PATIENT, patient_id=zhang_id)
    assert me(patient_account, shared["sh"], None).result.institution == SH1
    with pytest.raises(NotFound):
        me(patient_account, other.result_id, None)


def test_lookups_are_rate_limited_per_account(world: Container, shared: dict[str, int]) -> None:
    limited = RetrievalService(
        world.sharing.retrieval._store,
        world.catalog,
        world.vault,
        world.clock,
        world.sharing.retrieval.purposes,
        RateLimit(limit=2, window=timedelta(minutes=1)),
    )
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    colleague = principal(world, Role.CLINICIAN, institution=HOSP_B)
    limited.search(doctor, ZHANG, "treatment")
    limited.search(doctor, ZHANG, "treatment")
    with pytest.raises(RateLimited):
        limited.search(doctor, ZHANG, "treatment")
    assert limited.search(colleague, ZHANG, "treatment").results
    world.clock.at += timedelta(minutes=1, seconds=1)  # type: ignore[attr-defined]
    assert limited.search(doctor, ZHANG, "treatment").results
