"""Master-data edits made through the REST API, each one transaction; implements
``services.masterdata_admin.MasterDataAdminStore``. Bulk loading stays in
``adapters.db.masterdata``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update

from huren.adapters.db import tables as t
from huren.adapters.db.masterdata import (
    item_row,
    qualification_from_row,
    qualification_row,
    write_negative_reasons,
)
from huren.domain.masterdata import (
    Category,
    CodeMapping,
    Institution,
    Item,
    ItemListVersion,
    MarkSymbol,
    NegativeReason,
    Qualification,
    QualificationStatus,
    Scope,
)
from huren.services.masterdata_admin import (
    Department,
    QualificationEvent,
    StoredListVersion,
    StoredQualification,
)


def _scope_values(s: Scope) -> dict[str, Any]:
    return {
        "name": s.name,
        "kind": s.kind.value,
        "parent": s.parent,
        "abbreviation": s.abbreviation,
    }


def _write_members(c: Connection, s: Scope) -> None:
    c.execute(delete(t.scope_member).where(t.scope_member.c.scope_code == s.code))
    rows = [
        {"scope_code": s.code, "member_scope": m, "member_institution": None}
        for m in sorted(s.member_scopes)
    ] + [
        {"scope_code": s.code, "member_scope": None, "member_institution": m}
        for m in sorted(s.member_institutions)
    ]
    if rows:
        c.execute(insert(t.scope_member), rows)


def _institution_values(i: Institution) -> dict[str, Any]:
    return {
        "name": i.name,
        "level": i.level.value,
        "public": i.public,
        "jurisdiction": i.jurisdiction,
        "address": i.address,
    }


def _stored_qualification(r: Any) -> StoredQualification:
    return StoredQualification(r.id, qualification_from_row(r), as_utc(r.updated_at))


def as_utc(at: datetime) -> datetime:
    """SQLite hands back naive datetimes for ``DateTime(timezone=True)``; they were
    written as UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class SqlMasterDataAdmin:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- scopes
    def insert_scope(self, scope: Scope) -> None:
        with self.engine.begin() as c:
            c.execute(insert(t.scope).values(code=scope.code, **_scope_values(scope)))
            _write_members(c, scope)

    def update_scope(self, scope: Scope) -> None:
        with self.engine.begin() as c:
            c.execute(
                update(t.scope).where(t.scope.c.code == scope.code).values(**_scope_values(scope))
            )
            _write_members(c, scope)

    # -- institutions and departments
    def insert_institution(self, inst: Institution, departments: list[Department]) -> None:
        with self.engine.begin() as c:
            c.execute(
                insert(t.institution).values(
                    code=inst.code, ae_titles="", **_institution_values(inst)
                )
            )
            for d in departments:
                c.execute(
                    insert(t.department).values(
                        institution_code=inst.code, code=d.code, name=d.name
                    )
                )

    def update_institution(self, inst: Institution) -> None:
        with self.engine.begin() as c:
            c.execute(
                update(t.institution)
                .where(t.institution.c.code == inst.code)
                .values(**_institution_values(inst))
            )

    def departments(self, institution: str) -> list[Department]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(t.department)
                .where(t.department.c.institution_code == institution)
                .order_by(t.department.c.code)
            )
            return [Department(r.code, r.name) for r in rows]

    def put_department(self, institution: str, dept: Department) -> None:
        with self.engine.begin() as c:
            where = (
                t.department.c.institution_code == institution,
                t.department.c.code == dept.code,
            )
            if c.execute(select(t.department.c.code).where(*where)).first() is None:
                c.execute(
                    insert(t.department).values(
                        institution_code=institution, code=dept.code, name=dept.name
                    )
                )
            else:
                c.execute(update(t.department).where(*where).values(name=dept.name))

    # -- items and list versions
    def insert_item(self, item: Item) -> None:
        with self.engine.begin() as c:
            c.execute(insert(t.item).values(**item_row(item)))

    def update_item(self, item: Item) -> None:
        values = item_row(item)
        del values["code"]
        with self.engine.begin() as c:
            c.execute(update(t.item).where(t.item.c.code == item.code).values(**values))

    def list_versions(self, jurisdiction: str | None = None) -> list[StoredListVersion]:
        q = select(t.item_list_version).order_by(
            t.item_list_version.c.jurisdiction, t.item_list_version.c.effective_from
        )
        if jurisdiction is not None:
            q = q.where(t.item_list_version.c.jurisdiction == jurisdiction)
        with self.engine.connect() as c:
            rows = list(c.execute(q))
            entries: dict[int, set[str]] = {}
            ids = [r.id for r in rows]
            if ids:
                for e in c.execute(
                    select(t.item_list_entry).where(t.item_list_entry.c.version_id.in_(ids))
                ):
                    entries.setdefault(e.version_id, set()).add(e.item_code)
        return [
            StoredListVersion(
                r.id,
                ItemListVersion(
                    r.jurisdiction,
                    r.version,
                    r.effective_from,
                    r.effective_to,
                    frozenset(entries.get(r.id, set())),
                ),
                as_utc(r.published_at) if r.published_at else None,
            )
            for r in rows
        ]

    def insert_list_version(self, version: ItemListVersion, now: datetime) -> int:
        with self.engine.begin() as c:
            vid = int(
                c.execute(
                    insert(t.item_list_version).values(
                        jurisdiction=version.jurisdiction,
                        version=version.version,
                        effective_from=version.effective_from,
                        effective_to=version.effective_to,
                        published_at=now,
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            )
            if version.item_codes:
                c.execute(
                    insert(t.item_list_entry),
                    [{"version_id": vid, "item_code": code} for code in sorted(version.item_codes)],
                )
            return vid

    # -- qualifications
    def qualifications(
        self, institution: str | None = None, item: str | None = None, scope: str | None = None
    ) -> list[StoredQualification]:
        q = select(t.qualification).order_by(t.qualification.c.id)
        if institution:
            q = q.where(t.qualification.c.institution_code == institution)
        if item:
            q = q.where(t.qualification.c.item_code == item)
        if scope:
            q = q.where(t.qualification.c.scope_code == scope)
        with self.engine.connect() as c:
            return [_stored_qualification(r) for r in c.execute(q)]

    def qualification(self, qid: int) -> StoredQualification | None:
        with self.engine.connect() as c:
            row = c.execute(select(t.qualification).where(t.qualification.c.id == qid)).first()
        return _stored_qualification(row) if row is not None else None

    def insert_qualification(
        self, qual: Qualification, actor: str, reason: str, now: datetime
    ) -> int:
        with self.engine.begin() as c:
            qid = int(
                c.execute(
                    insert(t.qualification).values(**qualification_row(qual, now))
                ).inserted_primary_key[0]  # type: ignore[index]
            )
            c.execute(
                insert(t.qualification_event).values(
                    qualification_id=qid,
                    at=now,
                    actor=actor,
                    old_status=None,
                    new_status=qual.status.value,
                    reason=reason,
                )
            )
            return qid

    def change_qualification(
        self,
        qid: int,
        status: QualificationStatus,
        actor: str,
        reason: str,
        now: datetime,
    ) -> None:
        with self.engine.begin() as c:
            old = c.execute(
                select(t.qualification.c.status).where(t.qualification.c.id == qid)
            ).scalar_one()
            c.execute(
                update(t.qualification)
                .where(t.qualification.c.id == qid)
                .values(status=status.value, updated_at=now)
            )
            c.execute(
                insert(t.qualification_event).values(
                    qualification_id=qid,
                    at=now,
                    actor=actor,
                    old_status=old,
                    new_status=status.value,
                    reason=reason,
                )
            )

    def qualification_events(self, qid: int) -> list[QualificationEvent]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(t.qualification_event)
                .where(t.qualification_event.c.qualification_id == qid)
                .order_by(t.qualification_event.c.at, t.qualification_event.c.id)
            )
            return [
                QualificationEvent(
                    as_utc(r.at),
                    r.actor,
                    QualificationStatus(r.old_status) if r.old_status else None,
                    QualificationStatus(r.new_status),
                    r.reason,
                )
                for r in rows
            ]

    # -- negative list, mark symbols and code maps
    def mark_symbols(self) -> list[MarkSymbol]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(t.mark_symbol).order_by(t.mark_symbol.c.scope_code, t.mark_symbol.c.category)
            )
            return [
                MarkSymbol(
                    r.scope_code,
                    Category(r.category) if r.category else None,
                    r.symbol,
                    r.symbol_en,
                )
                for r in rows
            ]

    def put_negative_reason(self, reason: NegativeReason) -> None:
        with self.engine.begin() as c:
            write_negative_reasons(c, [reason])

    def code_maps(self, institution: str) -> list[tuple[CodeMapping, datetime]]:
        with self.engine.connect() as c:
            rows = c.execute(
                select(t.code_map)
                .where(t.code_map.c.institution_code == institution)
                .order_by(t.code_map.c.local_code)
            )
            return [
                (
                    CodeMapping(r.institution_code, r.local_code, r.unified_code, r.local_name),
                    as_utc(r.updated_at),
                )
                for r in rows
            ]

    def put_code_map(self, mapping: CodeMapping, now: datetime) -> None:
        with self.engine.begin() as c:
            where = (
                t.code_map.c.institution_code == mapping.institution,
                t.code_map.c.local_code == mapping.local_code,
            )
            values = {
                "unified_code": mapping.unified_code,
                "local_name": mapping.local_name,
                "updated_at": now,
            }
            if c.execute(select(t.code_map.c.local_code).where(*where)).first() is None:
                c.execute(
                    insert(t.code_map).values(
                        institution_code=mapping.institution,
                        local_code=mapping.local_code,
                        **values,
                    )
                )
            else:
                c.execute(update(t.code_map).where(*where).values(**values))

    def delete_code_map(self, institution: str, local_code: str) -> bool:
        with self.engine.begin() as c:
            result = c.execute(
                delete(t.code_map).where(
                    t.code_map.c.institution_code == institution,
                    t.code_map.c.local_code == local_code,
                )
            )
            return result.rowcount > 0
