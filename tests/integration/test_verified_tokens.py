"""A token whose signature was verified is remembered (issue 5: verifying it on every
request was a tenth of a CDS Hooks call); what the service checks on every request —
expiry against the clock, the account still active and unchanged — still applies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from huren.adapters.clock import FixedClock
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.errors import Unauthorized
from huren.services.accounts import NewAccount
from tests.fixtures.actors import SEED
from tests.fixtures.world import HOSP_B


def _token(world: Container) -> str:
    created = world.accounts.create_account(
        NewAccount("his-b", "乙医院接口", Role.INTEGRATION, institution=HOSP_B),
        generate_password=False,
        actor=SEED,
    )
    return world.accounts.issue_token(created.account.principal()).access_token


def test_a_remembered_token_still_expires(world: Container, clock: FixedClock) -> None:
    token = _token(world)
    assert world.accounts.principal_from_token(token).username == "his-b"
    assert world.accounts.principal_from_token(token).username == "his-b"  # remembered
    clock.at += world.accounts.token_ttl + timedelta(seconds=1)
    with pytest.raises(Unauthorized, match="过期"):
        world.accounts.principal_from_token(token)


def test_a_token_altered_after_a_verified_one_is_refused(world: Container) -> None:
    token = _token(world)
    world.accounts.principal_from_token(token)
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    with pytest.raises(Unauthorized):
        world.accounts.principal_from_token(forged)


def test_the_account_is_rechecked_for_a_remembered_token(world: Container) -> None:
    token = _token(world)
    world.accounts.principal_from_token(token)
    world.accounts.deactivate("his-b", actor=SEED)
    with pytest.raises(Unauthorized, match="停用"):
        world.accounts.principal_from_token(token)
