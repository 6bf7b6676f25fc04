"""Credentials and reach, without a database: argon2 passwords, HMAC API keys, HS256
tokens, the login throttle, and which institutions and scopes each role reaches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from huren.adapters.clock import FixedClock
from huren.adapters.crypto import new_key
from huren.adapters.security import Argon2Passwords, HmacApiKeys, JwtTokens
from huren.domain.accounts import Principal, Role, can_act_in_scope, can_see_institution
from huren.domain.masterdata import ScopeGraph
from huren.services.accounts import LoginThrottle, TokenClaims, TooManyAttempts
from tests.fixtures.world import BJ1, HOSP_A, HOSP_B, INSTITUTIONS, SCOPES, SH1

NOW = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)
GRAPH = ScopeGraph(SCOPES, INSTITUTIONS)


def _claims() -> TokenClaims:
    return TokenClaims(7, "dr.wang", "clinician", HOSP_A, None, NOW, NOW + timedelta(hours=1))


def test_password_hash_is_argon2id_and_verifies_only_the_right_password() -> None:
    pw = Argon2Passwords()
    h = pw.hash("correct-horse-42")
    assert h.startswith("$argon2id$")
    assert pw.verify(h, "correct-horse-42")
    assert not pw.verify(h, "correct-horse-43")


def test_api_key_is_stored_as_keyed_hash_found_by_prefix() -> None:
    keys = HmacApiKeys(new_key())
    key, prefix = keys.new_key()
    assert key.startswith(prefix + "_")
    assert keys.prefix_of(key) == prefix
    assert key not in keys.hash(key)
    assert keys.matches(key, keys.hash(key))
    assert not keys.matches(key[:-1] + ("A" if key[-1] != "A" else "B"), keys.hash(key))


def test_api_key_hash_depends_on_the_server_key() -> None:
    key, _ = HmacApiKeys(new_key()).new_key()
    assert HmacApiKeys(new_key()).hash(key) != HmacApiKeys(new_key()).hash(key)


def test_token_round_trips_claims() -> None:
    tokens = JwtTokens(new_key())
    decoded = tokens.decode(tokens.encode(_claims()))
    assert decoded == _claims()


def test_token_signed_with_another_key_is_rejected() -> None:
    assert JwtTokens(new_key()).decode(JwtTokens(new_key()).encode(_claims())) is None


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_malformed_tokens_decode_to_none(garbage: str) -> None:
    assert JwtTokens(new_key()).decode(garbage) is None


def test_throttle_blocks_after_five_failures_and_forgets_after_the_window() -> None:
    clock = FixedClock(NOW)
    throttle = LoginThrottle(clock)
    for _ in range(5):
        throttle.check("dr.wang", "10.0.0.1")
        throttle.failed("dr.wang", "10.0.0.1")
    with pytest.raises(TooManyAttempts):
        throttle.check("dr.wang", "10.0.0.1")
    throttle.check("dr.wang", "10.0.0.2")  # another address is not blocked
    clock.at += timedelta(minutes=5)
    throttle.check("dr.wang", "10.0.0.1")


def _p(role: Role, **kw: object) -> Principal:
    return Principal(1, "u", "u", role, **kw)  # type: ignore[arg-type]


def test_institution_roles_see_only_their_own_institution() -> None:
    clinician = _p(Role.CLINICIAN, institution=HOSP_A)
    assert can_see_institution(clinician, HOSP_A, GRAPH)
    assert not can_see_institution(clinician, HOSP_B, GRAPH)


def test_jurisdiction_roles_see_institutions_their_jurisdiction_covers() -> None:
    he = _p(Role.REGULATOR, jurisdiction="HE")
    jjj = _p(Role.QC_CENTRE, jurisdiction="JJJ")
    assert can_see_institution(he, HOSP_B, GRAPH)
    assert not can_see_institution(he, BJ1, GRAPH)
    assert can_see_institution(jjj, BJ1, GRAPH)
    assert not can_see_institution(jjj, SH1, GRAPH)


def test_patients_see_no_institution_and_operator_sees_all() -> None:
    assert not can_see_institution(_p(Role.PATIENT, patient_id=3), HOSP_A, GRAPH)
    assert can_see_institution(_p(Role.OPERATOR), SH1, GRAPH)


def test_province_acts_on_its_cities_and_alliances_not_on_its_region() -> None:
    he = _p(Role.REGULATOR, jurisdiction="HE")
    assert can_act_in_scope(he, "HE-BD", GRAPH)
    assert can_act_in_scope(he, "BD-YLT", GRAPH)
    assert not can_act_in_scope(he, "JJJ", GRAPH)
    assert can_act_in_scope(_p(Role.REGULATOR, jurisdiction="JJJ"), "HE", GRAPH)


def test_institution_roles_never_act_on_lists() -> None:
    assert not can_act_in_scope(_p(Role.INSTITUTION_ADMIN, institution=HOSP_A), "HE", GRAPH)
