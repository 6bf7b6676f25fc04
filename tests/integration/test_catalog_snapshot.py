"""The catalog snapshot: rebuilt when the catalog changed anywhere (the version the
database's triggers raise) and not otherwise; while one caller rebuilds, the others go on
with the one they had instead of queueing behind it (a rebuild took ~80 ms at 200 000
results, ~0.5 s at 10 million; every check of that moment waited for it)."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import update

from huren.adapters.clock import FixedClock
from huren.adapters.db import tables
from huren.bootstrap import Container
from huren.services.catalog import CatalogCache, MasterDataRecords
from tests.fixtures.world import HOSP_A


class _HeldSource:
    """The world's master data, each load after the first held until released."""

    def __init__(self, world: Container) -> None:
        self._inner = world.master_data
        self.loads = 0
        self.loading = threading.Event()
        self.release = threading.Event()

    def catalog_version(self) -> int:
        return self._inner.catalog_version()

    def load_master_data(self) -> MasterDataRecords:
        self.loads += 1
        if self.loads > 1:
            self.loading.set()
            self.release.wait(10)
        return self._inner.load_master_data()


def test_an_expired_snapshot_serves_others_while_one_caller_reloads(
    world: Container, clock: FixedClock
) -> None:
    source = _HeldSource(world)
    cache = CatalogCache(source, clock, max_age=timedelta(seconds=30), check_every=0)
    first = cache.get()
    clock.at += timedelta(seconds=31)
    reloaded: list[object] = []
    reloader = threading.Thread(target=lambda: reloaded.append(cache.get()))
    reloader.start()
    assert source.loading.wait(10)
    assert cache.get() is first  # not blocked behind the reload
    source.release.set()
    reloader.join(10)
    assert reloaded[0] is not first
    assert cache.get() is reloaded[0]
    assert source.loads == 2


def test_without_a_snapshot_every_caller_waits_for_the_first_load(
    world: Container, clock: FixedClock
) -> None:
    cache = CatalogCache(world.master_data, clock)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 4
    assert all(c is got[0] for c in got)


def _counting_cache(
    world: Container, clock: FixedClock, check_every: float
) -> tuple[_HeldSource, CatalogCache]:
    """A cache of its own over the world's master data, counting its loads (none held)."""
    source = _HeldSource(world)
    source.release.set()
    return source, CatalogCache(source, clock, check_every=check_every)


def _rename_hospital_a(world: Container) -> None:
    """A change to the catalog's tables by plain SQL, as an administrator might make it."""
    with world.engine.begin() as conn:
        conn.execute(
            update(tables.institution)
            .where(tables.institution.c.code == HOSP_A)
            .values(name="改名医院")
        )


def test_a_change_made_anywhere_is_seen_and_nothing_else_rebuilds(
    world: Container, clock: FixedClock
) -> None:
    # Another process's cache (another worker, another node): it is told nothing.
    source, other = _counting_cache(world, clock, check_every=0)
    before = other.get()
    assert other.get() is before  # checked, unchanged: not rebuilt
    assert source.loads == 1
    _rename_hospital_a(world)
    after = other.get()
    assert after is not before
    assert after.institutions[HOSP_A].name == "改名医院"
    assert source.loads == 2


def test_between_checks_the_snapshot_is_served_without_asking(
    world: Container, clock: FixedClock
) -> None:
    _, cache = _counting_cache(world, clock, check_every=3600)
    first = cache.get()
    _rename_hospital_a(world)
    assert cache.get() is first
    cache.invalidate()  # this process's own change: at once
    assert cache.get().institutions[HOSP_A].name == "改名医院"
