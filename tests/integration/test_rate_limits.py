"""Rate limits and login throttles counted in the database (``rate_counter``), so that
several server processes on one database share them. Each "process" here is a container
(or engine) of its own on the same database: its own connection pool, nothing in common
but the database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from huren.adapters.clock import FixedClock
from huren.adapters.db import ratelimits
from huren.adapters.db.engine import make_engine
from huren.adapters.db.ratelimits import SqlRateCounters
from huren.adapters.db.tables_sharing import rate_counter
from huren.bootstrap import Container, build
from huren.config import Settings
from huren.domain.accounts import Role
from huren.domain.errors import Unauthorized
from huren.domain.identity import IdentifierKind, PatientIdentifier
from huren.domain.sharing import RateLimit, RateLimited
from huren.services.accounts import NewAccount, TooManyAttempts
from huren.services.retrieval import RetrievalService
from tests.conftest import TEST_NOW
from tests.fixtures.actors import SEED
from tests.fixtures.results import ZHANG_SAN_ID, lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B
from tests.integration.sharing_helpers import principal

RULE = RateLimit(limit=3, window=timedelta(minutes=1))
ZHANG = PatientIdentifier(IdentifierKind.NATIONAL_ID, ZHANG_SAN_ID)


@pytest.fixture
def counters(container: Container) -> SqlRateCounters:
    return SqlRateCounters(container.engine)


@pytest.fixture
def other_process(settings: Settings, clock: FixedClock) -> Iterator[Container]:
    """A second server process on the same database (same clock, for the test's sake)."""
    c = build(settings, clock=clock)
    yield c
    c.close()


def rows(container: Container) -> int:
    with container.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(rate_counter)).scalar_one())


def test_the_limit_holds_and_a_refused_hit_is_not_counted(counters: SqlRateCounters) -> None:
    t = TEST_NOW
    assert [counters.hit("k", t + timedelta(seconds=i), RULE).allowed for i in range(3)] == [
        True
    ] * 3
    refused = counters.hit("k", t + timedelta(seconds=10), RULE)
    assert (refused.allowed, refused.count, refused.retry_after) == (False, 3, 51)
    for _ in range(5):
        counters.hit("k", t + timedelta(seconds=20), RULE)
    assert counters.count("k", t + timedelta(seconds=20), RULE) == 3
    # the window slides: the first event (t) leaves at t + 60 s, the next at t + 61 s
    assert counters.hit("k", t + timedelta(seconds=60), RULE).allowed
    assert not counters.hit("k", t + timedelta(seconds=60, milliseconds=500), RULE).allowed
    assert counters.hit("k", t + timedelta(seconds=61), RULE).allowed


def test_keys_are_counted_apart_and_cleared(counters: SqlRateCounters) -> None:
    for _ in range(3):
        counters.add("a", TEST_NOW, RULE)
    counters.add("b", TEST_NOW, RULE)
    assert counters.count("a", TEST_NOW, RULE) == 3
    assert counters.count("b", TEST_NOW, RULE) == 1
    counters.clear("a")
    assert counters.count("a", TEST_NOW, RULE) == 0
    assert counters.count("b", TEST_NOW, RULE) == 1


def test_a_key_too_long_for_the_column_is_hashed_not_truncated_into_another(
    counters: SqlRateCounters,
) -> None:
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    counters.add(long_a, TEST_NOW, RULE)
    assert counters.count(long_a, TEST_NOW, RULE) == 1
    assert counters.count(long_b, TEST_NOW, RULE) == 0


def test_rows_out_of_their_window_are_removed(
    container: Container, counters: SqlRateCounters, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        counters.hit("kept", TEST_NOW + timedelta(seconds=i), RULE)
        counters.hit("gone", TEST_NOW + timedelta(seconds=i), RULE)
    later = TEST_NOW + timedelta(minutes=5)
    counters.hit("kept", later, RULE)  # its own old rows leave with its next hit
    assert rows(container) == 4
    monkeypatch.setattr(ratelimits, "SWEEP_EVERY", 1)  # the sweep drops keys never hit again
    counters.hit("kept", later + timedelta(seconds=1), RULE)
    assert rows(container) == 2


def test_two_processes_share_one_limit(container: Container, settings: Settings) -> None:
    one = SqlRateCounters(container.engine)
    other_engine = make_engine(settings.database_url)
    try:
        other = SqlRateCounters(other_engine)
        assert one.hit("k", TEST_NOW, RULE).allowed
        assert other.hit("k", TEST_NOW, RULE).allowed
        assert one.hit("k", TEST_NOW, RULE).allowed
        assert not other.hit("k", TEST_NOW, RULE).allowed
    finally:
        other_engine.dispose()


def test_concurrent_hits_from_many_connections_admit_exactly_the_limit(
    container: Container, settings: Settings
) -> None:
    """Eight "processes" at once, each hitting one key twenty times in the same second:
    exactly ``limit`` get through, however the hits interleave."""
    rule = RateLimit(limit=37, window=timedelta(minutes=1))
    engines = [make_engine(settings.database_url) for _ in range(8)]
    allowed: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        counters = SqlRateCounters(engines[n])
        for i in range(20):
            at = TEST_NOW + timedelta(milliseconds=n * 20 + i)
            ok = counters.hit("busy", at, rule).allowed
            with lock:
                allowed.append(ok)

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for e in engines:
            e.dispose()
    assert len(allowed) == 160
    assert sum(allowed) == rule.limit
    assert SqlRateCounters(container.engine).count(
        "busy", TEST_NOW + timedelta(seconds=1), rule
    ) == (rule.limit)


def test_failed_logins_in_one_process_lock_the_user_out_of_the_other(
    world: Container, other_process: Container
) -> None:
    world.accounts.create_account(
        NewAccount("dr.wang", "王医生", Role.CLINICIAN, institution=HOSP_A),
        "Correct-Horse-9",
        actor=SEED,
    )
    one, two = world.accounts, other_process.accounts
    for accounts in (one, two, one, two, one):  # five failures, spread over two processes
        with pytest.raises(Unauthorized) as failed:
            accounts.authenticate_password("dr.wang", "wrong password", "10.0.0.1")
        assert not isinstance(failed.value, TooManyAttempts)
    with pytest.raises(TooManyAttempts):
        two.authenticate_password("dr.wang", "Correct-Horse-9", "10.0.0.1")
    # another address is not locked out, and its success clears only its own count
    assert two.authenticate_password("dr.wang", "Correct-Horse-9", "10.0.0.2")
    with pytest.raises(TooManyAttempts):
        one.authenticate_password("dr.wang", "Correct-Horse-9", "10.0.0.1")


def test_lookups_are_limited_per_account_across_processes(
    world: Container, other_process: Container
) -> None:
    store(world, lab_panel(HOSP_A))
    limit = RateLimit(limit=2, window=timedelta(minutes=1))

    def service(c: Container) -> RetrievalService:
        return RetrievalService(
            c.sharing.retrieval._store,
            c.catalog,
            c.vault,
            c.clock,
            c.sharing.retrieval.purposes,
            limit,
            counters=c.rate_counters,
        )

    a, b = service(world), service(other_process)
    doctor = principal(world, Role.CLINICIAN, institution=HOSP_B)
    assert a.search(doctor, ZHANG, "treatment").results
    assert b.search(doctor, ZHANG, "treatment").results
    with pytest.raises(RateLimited) as refused:
        a.search(doctor, ZHANG, "treatment")
    assert refused.value.problems[0].field == "rate_limit"
    colleague = principal(world, Role.CLINICIAN, institution=HOSP_B)
    assert b.search(colleague, ZHANG, "treatment").results


def test_one_time_code_requests_are_limited_per_address_across_processes(
    world: Container, other_process: Container
) -> None:
    """20 per 10 minutes per client address (the per-identifier limits are separate)."""
    from huren.services.portal import CLIENT_LIMIT

    portals = (world.sharing.portal, other_process.sharing.portal)
    for i in range(CLIENT_LIMIT.limit):
        ident = PatientIdentifier(IdentifierKind.INSURANCE, f"HB{i:08d}")
        portals[i % 2].request_code(ident, "10.9.9.9")
    with pytest.raises(RateLimited):
        portals[0].request_code(
            PatientIdentifier(IdentifierKind.INSURANCE, "HB99999999"), "10.9.9.9"
        )
    portals[1].request_code(PatientIdentifier(IdentifierKind.INSURANCE, "HB99999999"), "10.9.9.8")
