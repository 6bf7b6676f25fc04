"""Master data in the database: loading the snapshot and writing lists."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select

from huren.adapters.db import tables as t
from huren.domain.masterdata import (
    Category,
    CodeMapping,
    Institution,
    InstitutionLevel,
    Item,
    ItemExclusion,
    ItemListVersion,
    MarkSymbol,
    NegativeReason,
    Qualification,
    QualificationBasis,
    QualificationStatus,
    QualityRequirements,
    Scope,
    ScopeKind,
    SeriesRequirement,
)
from huren.services.catalog import MasterDataRecords


def quality_to_json(q: QualityRequirements) -> dict[str, Any]:
    return {
        "text": q.text,
        "min_images": q.min_images,
        "requires_report": q.requires_report,
        "required_series": [
            {
                "name": s.name,
                "slice_thickness_max_mm": s.slice_thickness_max_mm,
                "slice_thickness_min_mm": s.slice_thickness_min_mm,
                "description_keywords": list(s.description_keywords),
                "derived": s.derived,
            }
            for s in q.required_series
        ],
    }


def quality_from_json(data: dict[str, Any] | None) -> QualityRequirements:
    data = data or {}
    return QualityRequirements(
        text=data.get("text", ""),
        min_images=int(data.get("min_images", 0)),
        requires_report=bool(data.get("requires_report", True)),
        required_series=tuple(
            SeriesRequirement(
                name=s["name"],
                slice_thickness_max_mm=s.get("slice_thickness_max_mm"),
                slice_thickness_min_mm=s.get("slice_thickness_min_mm"),
                description_keywords=tuple(s.get("description_keywords", ())),
                derived=bool(s.get("derived", False)),
            )
            for s in data.get("required_series", ())
        ),
    )


def item_row(i: Item) -> dict[str, Any]:
    return {
        "code": i.code,
        "name": i.name,
        "category": i.category.value,
        "group_code": i.group,
        "modality": i.modality,
        "body_part": i.body_part,
        "specimen": i.specimen,
        "loinc": i.loinc,
        "time_limit_hours": int(i.time_limit.total_seconds() // 3600),
        "price_fen": i.price_fen,
        "quality": quality_to_json(i.quality),
    }


def item_from_row(r: Any) -> Item:
    return Item(
        code=r.code,
        name=r.name,
        category=Category(r.category),
        time_limit=timedelta(hours=r.time_limit_hours),
        price_fen=r.price_fen,
        group=r.group_code,
        modality=r.modality,
        body_part=r.body_part,
        specimen=r.specimen,
        loinc=r.loinc,
        quality=quality_from_json(r.quality),
    )


def qualification_row(q: Qualification, now: datetime) -> dict[str, Any]:
    return {
        "institution_code": q.institution,
        "item_code": q.item,
        "group_code": q.group,
        "scope_code": q.scope,
        "basis": q.basis.value,
        "valid_from": q.valid_from,
        "valid_to": q.valid_to,
        "status": q.status.value,
        "updated_at": now,
    }


# The columns ``qualification_from_row`` reads.
QUALIFICATION_COLUMNS = (
    "institution_code",
    "scope_code",
    "basis",
    "valid_from",
    "valid_to",
    "status",
    "item_code",
    "group_code",
)


def qualification_from_row(r: Any) -> Qualification:
    return Qualification(
        institution=r.institution_code,
        scope=r.scope_code,
        basis=QualificationBasis(r.basis),
        valid_from=r.valid_from,
        valid_to=r.valid_to,
        status=QualificationStatus(r.status),
        item=r.item_code,
        group=r.group_code,
    )


class SqlMasterData:
    """Implements ``MasterDataSource`` and the writes the catalog services make."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def catalog_version(self) -> int:
        with self.engine.connect() as c:
            n = c.execute(select(t.catalog_version.c.n).where(t.catalog_version.c.id == 1))
            return int(n.scalar_one_or_none() or 0)

    def load_master_data(self) -> MasterDataRecords:
        with self.engine.connect() as c:
            members: dict[str, tuple[set[str], set[str]]] = {}
            for m in c.execute(select(t.scope_member)):
                scopes, insts = members.setdefault(m.scope_code, (set(), set()))
                if m.member_scope:
                    scopes.add(m.member_scope)
                if m.member_institution:
                    insts.add(m.member_institution)
            scopes_ = [
                Scope(
                    code=r.code,
                    name=r.name,
                    kind=ScopeKind(r.kind),
                    parent=r.parent,
                    member_scopes=frozenset(members.get(r.code, (set(), set()))[0]),
                    member_institutions=frozenset(members.get(r.code, (set(), set()))[1]),
                    abbreviation=r.abbreviation,
                )
                for r in c.execute(select(t.scope))
            ]
            institutions = [
                Institution(
                    code=r.code,
                    name=r.name,
                    level=InstitutionLevel(r.level),
                    public=r.public,
                    jurisdiction=r.jurisdiction,
                    address=r.address,
                )
                for r in c.execute(select(t.institution))
            ]
            items = [item_from_row(r) for r in c.execute(select(t.item))]
            entries: dict[int, set[str]] = {}
            for e in c.execute(select(t.item_list_entry)):
                entries.setdefault(e.version_id, set()).add(e.item_code)
            item_lists = [
                ItemListVersion(
                    jurisdiction=r.jurisdiction,
                    version=r.version,
                    effective_from=r.effective_from,
                    effective_to=r.effective_to,
                    item_codes=frozenset(entries.get(r.id, set())),
                )
                for r in c.execute(select(t.item_list_version))
            ]
            # Only the columns a Qualification has (not updated_at, whose timezone
            # conversion was a third of the load at 15 000 qualifications and 18 000
            # code maps).
            q = t.qualification.c
            quals = [
                qualification_from_row(r)
                for r in c.execute(select(*(q[name] for name in QUALIFICATION_COLUMNS)))
            ]
            symbols = [
                MarkSymbol(
                    scope=r.scope_code,
                    category=Category(r.category) if r.category else None,
                    symbol=r.symbol,
                    symbol_en=r.symbol_en,
                )
                for r in c.execute(select(t.mark_symbol))
            ]
            reasons = [
                NegativeReason(
                    jurisdiction=r.jurisdiction,
                    code=r.code,
                    number=r.number,
                    text=r.text,
                    source=r.source,
                    imaging_only=r.imaging_only,
                    requires_free_text=r.requires_free_text,
                )
                for r in c.execute(select(t.negative_reason))
            ]
            exclusions = [
                ItemExclusion(
                    jurisdiction=r.jurisdiction,
                    item=r.item_code,
                    reason=r.reason,
                    only_within_scope=r.only_within_scope,
                )
                for r in c.execute(select(t.item_exclusion))
            ]
            cm = t.code_map.c
            maps = [
                CodeMapping(*r)
                for r in c.execute(
                    select(cm.institution_code, cm.local_code, cm.unified_code, cm.local_name)
                )
            ]
        return MasterDataRecords(
            scopes=scopes_,
            institutions=institutions,
            items=items,
            item_lists=item_lists,
            qualifications=quals,
            symbols=symbols,
            negative_reasons=reasons,
            exclusions=exclusions,
            code_maps=maps,
        )


def _chunks(rows: Sequence[dict[str, Any]], size: int = 2000) -> Iterable[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def insert_rows(conn: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    for chunk in _chunks(rows):
        conn.execute(insert(table), list(chunk))


def write_scopes(conn: Connection, scopes: Sequence[Scope]) -> None:
    """Insert scopes parents-first, then their memberships."""
    pending = {s.code: s for s in scopes}
    existing = set(conn.scalars(select(t.scope.c.code)))
    ordered: list[Scope] = []
    placed = set(existing)
    while pending:
        ready = [
            s
            for s in pending.values()
            if not s.parent or s.parent in placed or s.parent not in pending
        ]
        if not ready:  # a parent cycle; ScopeGraph reports it properly before we get here
            ready = list(pending.values())
        for s in sorted(ready, key=lambda s: s.code):
            ordered.append(s)
            placed.add(s.code)
            del pending[s.code]
    insert_rows(
        conn,
        t.scope,
        [
            {
                "code": s.code,
                "name": s.name,
                "kind": s.kind.value,
                "parent": s.parent,
                "abbreviation": s.abbreviation,
            }
            for s in ordered
        ],
    )
    member_rows: list[dict[str, Any]] = []
    for s in ordered:
        member_rows += [
            {"scope_code": s.code, "member_scope": m, "member_institution": None}
            for m in sorted(s.member_scopes)
        ]
        member_rows += [
            {"scope_code": s.code, "member_scope": None, "member_institution": m}
            for m in sorted(s.member_institutions)
        ]
    insert_rows(conn, t.scope_member, member_rows)


def write_institutions(conn: Connection, institutions: Sequence[Institution]) -> None:
    insert_rows(
        conn,
        t.institution,
        [
            {
                "code": i.code,
                "name": i.name,
                "level": i.level.value,
                "public": i.public,
                "jurisdiction": i.jurisdiction,
                "address": i.address,
                "ae_titles": "",
            }
            for i in institutions
        ],
    )


def write_items(conn: Connection, items: Sequence[Item]) -> None:
    insert_rows(conn, t.item, [item_row(i) for i in items])


def write_item_list(conn: Connection, version: ItemListVersion, published_at: datetime) -> None:
    vid = conn.execute(
        insert(t.item_list_version).values(
            jurisdiction=version.jurisdiction,
            version=version.version,
            effective_from=version.effective_from,
            effective_to=version.effective_to,
            published_at=published_at,
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    insert_rows(
        conn,
        t.item_list_entry,
        [{"version_id": vid, "item_code": c} for c in sorted(version.item_codes)],
    )


def write_qualifications(conn: Connection, quals: Sequence[Qualification], now: datetime) -> None:
    insert_rows(conn, t.qualification, [qualification_row(q, now) for q in quals])


def write_negative_reasons(conn: Connection, reasons: Sequence[NegativeReason]) -> None:
    for r in reasons:
        conn.execute(
            delete(t.negative_reason).where(
                t.negative_reason.c.jurisdiction == r.jurisdiction,
                t.negative_reason.c.code == r.code,
            )
        )
    insert_rows(
        conn,
        t.negative_reason,
        [
            {
                "jurisdiction": r.jurisdiction,
                "code": r.code,
                "number": r.number,
                "text": r.text,
                "source": r.source,
                "imaging_only": r.imaging_only,
                "requires_free_text": r.requires_free_text,
            }
            for r in reasons
        ],
    )


def write_mark_symbols(conn: Connection, symbols: Sequence[MarkSymbol]) -> None:
    insert_rows(
        conn,
        t.mark_symbol,
        [
            {
                "scope_code": s.scope,
                "category": s.category.value if s.category else "",
                "symbol": s.symbol,
                "symbol_en": s.symbol_en,
            }
            for s in symbols
        ],
    )


def write_code_maps(conn: Connection, maps: Sequence[CodeMapping], now: datetime) -> None:
    insert_rows(
        conn,
        t.code_map,
        [
            {
                "institution_code": m.institution,
                "local_code": m.local_code,
                "unified_code": m.unified_code,
                "local_name": m.local_name,
                "updated_at": now,
            }
            for m in maps
        ],
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def today() -> date:
    return utcnow().date()
