"""The reference data every rule reads: scopes, institutions, items, qualifications, mark
symbols, the negative list and 对码 maps, held in memory as one immutable snapshot.

Master data changes rarely and is read on every result and every order, so it is read
from the database once and rebuilt when a write through this process invalidates it, or
when the database's catalog version shows a change made elsewhere (``CatalogCache``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from huren.domain.marks import Mark, MarkSymbols, mark_for
from huren.domain.masterdata import (
    CodeMapping,
    Institution,
    Item,
    ItemExclusion,
    ItemListVersion,
    MarkSymbol,
    NegativeReason,
    Qualification,
    Scope,
    ScopeGraph,
    ScopeKind,
)
from huren.services.ports import Clock


@dataclass(frozen=True, slots=True)
class MasterDataRecords:
    scopes: list[Scope]
    institutions: list[Institution]
    items: list[Item]
    item_lists: list[ItemListVersion]
    qualifications: list[Qualification]
    symbols: list[MarkSymbol]
    negative_reasons: list[NegativeReason]
    exclusions: list[ItemExclusion]
    code_maps: list[CodeMapping]


class MasterDataSource(Protocol):
    def catalog_version(self) -> int:
        """A counter that moves in every transaction writing the catalog's tables."""
        ...

    def load_master_data(self) -> MasterDataRecords: ...


@dataclass
class Catalog:
    """An immutable snapshot of the reference data with the lookups the rules need."""

    graph: ScopeGraph
    institutions: dict[str, Institution]
    items: dict[str, Item]
    item_lists: list[ItemListVersion]
    qualifications: dict[str, list[Qualification]]
    symbols: MarkSymbols
    negative_reasons: dict[str, list[NegativeReason]]
    exclusions: list[ItemExclusion]
    code_maps: dict[tuple[str, str], str]
    loaded_at: datetime
    _province_of: dict[str, str] = field(default_factory=dict)
    # The item whose LOINC hint a code is: what senders and orders that give only LOINC
    # are matched to (built once per snapshot, with it).
    _item_by_loinc: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, records: MasterDataRecords, loaded_at: datetime) -> Catalog:
        graph = ScopeGraph(records.scopes, records.institutions)
        quals: dict[str, list[Qualification]] = {}
        for q in records.qualifications:
            quals.setdefault(q.institution, []).append(q)
        reasons: dict[str, list[NegativeReason]] = {}
        for r in sorted(records.negative_reasons, key=lambda r: (r.jurisdiction, r.number)):
            reasons.setdefault(r.jurisdiction, []).append(r)
        catalog = cls(
            graph=graph,
            institutions={i.code: i for i in records.institutions},
            items={i.code: i for i in records.items},
            item_lists=records.item_lists,
            qualifications=quals,
            symbols=MarkSymbols(records.symbols, graph),
            negative_reasons=reasons,
            exclusions=records.exclusions,
            code_maps={(m.institution, m.local_code): m.unified_code for m in records.code_maps},
            loaded_at=loaded_at,
        )
        for inst in records.institutions:
            catalog._province_of[inst.code] = catalog._find_province(inst.jurisdiction)
        catalog._item_by_loinc.update((i.loinc, i.code) for i in records.items if i.loinc)
        return catalog

    def _find_province(self, scope_code: str) -> str:
        for code in (scope_code, *self.graph.ancestors(scope_code)):
            s = self.graph.scopes.get(code)
            if s is not None and s.kind is ScopeKind.PROVINCE:
                return code
        return scope_code

    def province_of(self, institution: str) -> str:
        """The province whose lists and negative list apply at ``institution``."""
        return self._province_of.get(institution, "")

    def unified_code(self, institution: str, local_code: str) -> str | None:
        """对码: the unified item code for an institution's local code. A local code that
        is itself a unified code is accepted as mapped."""
        mapped = self.code_maps.get((institution, local_code))
        if mapped is not None:
            return mapped
        return local_code if local_code in self.items else None

    def item_for_loinc(self, loinc: str) -> str | None:
        """The unified code of the item carrying ``loinc`` as its LOINC hint."""
        return self._item_by_loinc.get(loinc)

    def mark_for(self, institution: str, item_code: str, issued_at: datetime) -> Mark | None:
        item = self.items.get(item_code)
        if item is None:
            return None
        return mark_for(
            institution,
            item,
            issued_at,
            self.qualifications.get(institution, ()),
            self.graph,
            self.symbols,
        )

    def reasons_for(self, institution: str) -> list[NegativeReason]:
        """The negative list in force where ``institution`` is; Gansu refers to the six
        conditions without listing them, so a province without its own list uses the
        national/Hebei six (R1.3)."""
        own = self.negative_reasons.get(self.province_of(institution))
        if own:
            return own
        return self.negative_reasons.get("NATIONAL") or self.negative_reasons.get("HE", [])

    def items_in_force(self, jurisdiction: str, on: datetime) -> frozenset[str]:
        for v in self.item_lists:
            if v.jurisdiction == jurisdiction and v.in_force(on.date()):
                return v.item_codes
        return frozenset()


class CatalogCache:
    """Holds the current ``Catalog``; thread-safe. About once a second (``check_every``,
    real time) one caller compares the database's catalog version: the catalog is rebuilt
    when a change was made anywhere (any process, any tool: the counter is raised by
    triggers in the writing transaction) and, as a safety net, after ``max_age``. A
    rebuild reads every catalog table (~0.5 s at 300 institutions with their code maps and
    qualifications): done on every expiry, it used to stall a busy node every 30 s."""

    def __init__(
        self,
        source: MasterDataSource,
        clock: Clock,
        max_age: timedelta = timedelta(minutes=10),
        check_every: float = 1.0,
    ) -> None:
        self._source = source
        self._clock = clock
        self._max_age = max_age
        self._check_every = check_every
        self._lock = threading.Lock()
        self._current: Catalog | None = None
        self._version = -1
        self._checked = 0.0  # time.monotonic() of the last version check

    def get(self) -> Catalog:
        current = self._current
        if current is not None and time.monotonic() - self._checked < self._check_every:
            return current
        if current is None:
            with self._lock:
                return self._refresh()
        # Time to check: one caller does; the others go on with the snapshot they had
        # (older by the check's, or the rebuild's, duration) rather than queue for it.
        if not self._lock.acquire(blocking=False):
            return current
        try:
            return self._refresh()
        finally:
            self._lock.release()

    def _refresh(self) -> Catalog:
        """Under the lock: the current snapshot, rebuilt when absent, changed or expired."""
        now = self._clock.now()
        # The version first: tables read after it are at least as new as it says.
        version = self._source.catalog_version()
        current = self._current
        if current is None or version != self._version or now - current.loaded_at >= self._max_age:
            current = self._current = Catalog.build(self._source.load_master_data(), now)
            self._version = version
        self._checked = time.monotonic()
        return current

    def invalidate(self) -> None:
        """Rebuild at the next ``get`` (this process's own change, at once)."""
        with self._lock:
            self._current = None


def institutions_in(catalog: Catalog, scope: str) -> Iterable[Institution]:
    for code in sorted(catalog.graph.coverage(scope)):
        inst = catalog.institutions.get(code)
        if inst is not None:
            yield inst
