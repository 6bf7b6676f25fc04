"""The synthetic world generator: deterministic for a seed, valid identifiers, rules."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

import pytest

from huren.adapters import reference_data
from huren.adapters.crypto import IdentifierCrypto, new_key
from huren.domain.identity import birth_date_from_national_id, validate_national_id
from huren.domain.masterdata import InstitutionLevel, QualificationBasis, ScopeKind
from huren.services import synth

UNTIL = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def ref() -> synth.ReferenceData:
    return reference_data.synth_reference()


def _config(seed: int, results: int = 400) -> synth.SynthConfig:
    return synth.SynthConfig(seed=seed, results=results, until=UNTIL, institutions=120)


def _results(ref: synth.ReferenceData, cfg: synth.SynthConfig) -> list[object]:
    world = synth.generate_world(ref, cfg)
    directory = synth.PatientDirectory(cfg.seed, cfg.patient_count, world, ref, UNTIL.date())
    gen = synth.ResultGenerator(world, ref, cfg, directory)
    return list(gen.results(1))


def test_the_same_seed_gives_the_same_world(ref: synth.ReferenceData) -> None:
    a = synth.generate_world(ref, _config(7))
    b = synth.generate_world(ref, _config(7))
    assert a.records == b.records
    assert a.departments == b.departments


def test_the_same_seed_gives_the_same_results_row_for_row(ref: synth.ReferenceData) -> None:
    assert _results(ref, _config(7)) == _results(ref, _config(7))


def test_another_seed_gives_another_world(ref: synth.ReferenceData) -> None:
    a = synth.generate_world(ref, _config(7))
    b = synth.generate_world(ref, _config(8))
    assert [i.name for i in a.records.institutions] != [i.name for i in b.records.institutions]


def test_patients_have_valid_national_ids_matching_sex_and_birth(ref: synth.ReferenceData) -> None:
    cfg = _config(3)
    world = synth.generate_world(ref, cfg)
    directory = synth.PatientDirectory(3, 500, world, ref, UNTIL.date())
    patients = list(synth.generate_patients(directory, 1))
    assert len({p.national_id for p in patients}) == 500
    for p in patients:
        assert validate_national_id(p.national_id) == p.national_id
        assert birth_date_from_national_id(p.national_id) == p.birth
        assert (int(p.national_id[16]) % 2 == 1) == (p.sex == "M")
        assert p.birth < UNTIL.date()


def test_patient_rows_are_hashed_encrypted_and_masked_like_intake(
    ref: synth.ReferenceData,
) -> None:
    vault = IdentifierCrypto(new_key(), new_key())
    p = synth.SynthPatient(1, "张小三", "M", UNTIL.date(), "11010519491231002X", "")
    row, idents = synth.patient_rows(p, vault, UNTIL)
    assert row[2] == "张*三"
    assert vault.decrypt(row[1]) == "张小三"
    (ident,) = idents
    assert ident[1:3] == ("national_id", "")
    assert ident[3] == vault.lookup_hash("national_id", "", "11010519491231002X")
    assert vault.decrypt(ident[4]) == "11010519491231002X"
    assert ident[5] == "1101**********002X"


def test_world_has_every_level_and_alliances_led_by_a_member(ref: synth.ReferenceData) -> None:
    world = synth.generate_world(ref, _config(11))
    levels = {i.level for i in world.records.institutions}
    assert levels == set(InstitutionLevel)
    alliances = [s for s in world.records.scopes if s.kind is ScopeKind.ALLIANCE]
    assert alliances
    for a in alliances:
        assert world.alliance_leads[a.code] in a.member_institutions


def test_hebei_lab_eqa_only_at_secondary_level_and_above_unless_passed(
    ref: synth.ReferenceData,
) -> None:
    # 冀卫医政函〔2025〕7号 二(二)2: 二级以上 EQA; 二级以下 only after passing EQA (few)
    world = synth.generate_world(
        ref, synth.SynthConfig(seed=5, results=0, until=UNTIL, institutions=400)
    )
    inst = {i.code: i for i in world.records.institutions}
    he_eqa = [
        q
        for q in world.records.qualifications
        if q.scope == "HE" and q.basis is QualificationBasis.EQA
    ]
    holders = {q.institution for q in he_eqa}
    he_upper = {
        c for c, i in inst.items()
        if i.jurisdiction.startswith("HE-") and i.level in (InstitutionLevel.TERTIARY, InstitutionLevel.SECONDARY)
    }  # fmt: skip
    assert he_upper <= holders
    lower = [
        c for c in holders if inst[c].level in (InstitutionLevel.PRIMARY, InstitutionLevel.UNRATED)
    ]
    assert len(lower) < len(he_upper)


def test_results_are_in_time_order_within_the_history(ref: synth.ReferenceData) -> None:
    cfg = _config(9, results=300)
    rows = [r[0][0] for r in _results(ref, cfg)]  # type: ignore[index]
    performed = [r[10] for r in rows]
    assert performed[0] >= cfg.start - timedelta(days=1)
    assert max(r[11] for r in rows) <= UNTIL
    assert all(r[11] >= r[10] for r in rows)


def test_every_city_yields_valid_national_ids_for_every_birth_year(
    ref: synth.ReferenceData,
) -> None:
    # the 身份证 address check knows when each division code came into use (e.g. 重庆 1997)
    r = random.Random(1)
    taken: set[int] = set()
    for city in ref.cities:
        for year in (1931, 1962, 1984, 1999, 2024):
            nid = synth.national_id(r, city, date(year, 3, 1), "F", taken)
            assert validate_national_id(nid) == nid, city.code
            assert birth_date_from_national_id(nid) == date(year, 3, 1)
