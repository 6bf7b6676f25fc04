"""互认标识: which mark a result carries.

Rules, from the sources:
- 沪卫医〔2024〕135号 四(四): 如同一项目满足多个互认范围，则以最大范围的名称标注。
  未按要求参加质量评价或质量评价不合格的检查检验项目，不得标注。
- 冀卫医政函〔2025〕7号 二(二)1–2: 评价合格后，在全省范围内互认并标注 “—HBHR” (影像) /
  “☆” (检验); 参加京津冀互认的直接标注 “—JJJHR” / “★”。
- The mark is computed at issue time and kept on the result; a later suspension removes
  it from results issued afterwards, not from earlier ones.

"Largest" means widest coverage (number of institutions covered), not the kind of scope:
scopes do not nest (R2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from huren.domain.masterdata import (
    Category,
    Item,
    MarkSymbol,
    Qualification,
    ScopeGraph,
    ScopeKind,
)

# Tie-break between scopes of equal breadth: the wider kind wins, then the code.
_KIND_RANK: Mapping[ScopeKind, int] = {
    ScopeKind.ALLIANCE: 0,
    ScopeKind.CITY: 1,
    ScopeKind.PROVINCE: 2,
    ScopeKind.REGION: 3,
    ScopeKind.AGREEMENT: 4,
    ScopeKind.NATIONAL: 5,
}


@dataclass(frozen=True, slots=True)
class Mark:
    """The mark a result carries: the scope it is recognized in and how it is written."""

    scope: str
    symbol: str
    symbol_en: str = ""


class MarkSymbols:
    """Mark symbols as configured per scope and category, with the Shanghai rule as the
    fallback: 互认范围拼音首字母 + HR (沪卫医〔2024〕135号 四(四))."""

    def __init__(self, symbols: Iterable[MarkSymbol], graph: ScopeGraph) -> None:
        self._by_key: dict[tuple[str, Category | None], MarkSymbol] = {
            (s.scope, s.category): s for s in symbols
        }
        self._graph = graph

    def for_scope(self, scope: str, category: Category) -> Mark:
        found = self._by_key.get((scope, category)) or self._by_key.get((scope, None))
        if found is not None:
            return Mark(scope, found.symbol, found.symbol_en)
        s = self._graph.scopes.get(scope)
        if s is None:
            return Mark(scope, f"{scope}HR", f"{scope}HR")
        en = f"{s.abbreviation or s.code}HR"
        return Mark(scope, f"{s.name}HR", en)


def _scope_rank(graph: ScopeGraph, scope: str) -> tuple[int, int, str]:
    s = graph.scopes.get(scope)
    kind_rank = _KIND_RANK[s.kind] if s is not None else -1
    return (graph.breadth(scope), kind_rank, scope)


def qualified_scopes(
    institution: str,
    item: Item,
    at: datetime,
    qualifications: Iterable[Qualification],
) -> list[str]:
    """Scopes in which ``institution`` is qualified for ``item`` at ``at``: active, in
    its validity window, for the item itself or its group."""
    return [
        q.scope
        for q in qualifications
        if q.institution == institution and q.covers(item) and q.in_force(at)
    ]


def largest_scope(graph: ScopeGraph, scopes: Iterable[str]) -> str | None:
    """The widest of ``scopes`` (沪: 以最大范围的名称标注), or None if there is none."""
    best: str | None = None
    best_rank: tuple[int, int, str] | None = None
    for scope in scopes:
        rank = _scope_rank(graph, scope)
        if best_rank is None or rank > best_rank:
            best, best_rank = scope, rank
    return best


def mark_for(
    institution: str,
    item: Item,
    issued_at: datetime,
    qualifications: Iterable[Qualification],
    graph: ScopeGraph,
    symbols: MarkSymbols,
) -> Mark | None:
    """The mark a result of ``item`` issued by ``institution`` at ``issued_at`` carries;
    None when the institution is not evaluated, failed, suspended or expired for it."""
    scope = largest_scope(graph, qualified_scopes(institution, item, issued_at, qualifications))
    if scope is None:
        return None
    return symbols.for_scope(scope, item.category)


def mark_recognized_at(mark: Mark | None, ordering_institution: str, graph: ScopeGraph) -> bool:
    """Does the ordering institution lie inside the scope of the mark?"""
    return mark is not None and graph.contains(mark.scope, ordering_institution)
