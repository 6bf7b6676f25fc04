"""The store behind catalog import (``huren.services.catalog_io.CatalogStore``): upserts
of whole lists in one transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete, insert, select, update

from huren.adapters.db import masterdata as md
from huren.adapters.db import tables as t
from huren.services.catalog import MasterDataRecords
from huren.services.catalog_io import ImportChanges


class SqlCatalogStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._reader = md.SqlMasterData(engine)

    def load_master_data(self) -> MasterDataRecords:
        return self._reader.load_master_data()

    def apply(self, changes: ImportChanges, at: datetime, actor: str) -> None:
        with self.engine.begin() as c:
            if changes.scopes:
                existing = set(c.scalars(select(t.scope.c.code)))
                new = [s for s in changes.scopes if s.code not in existing]
                md.write_scopes(c, new)  # parents first; validation ruled out cycles
                for s in changes.scopes:
                    c.execute(
                        update(t.scope)
                        .where(t.scope.c.code == s.code)
                        .values(
                            name=s.name,
                            kind=s.kind.value,
                            parent=s.parent,
                            abbreviation=s.abbreviation,
                        )
                    )
                    c.execute(delete(t.scope_member).where(t.scope_member.c.scope_code == s.code))
                    rows = [
                        {"scope_code": s.code, "member_scope": m, "member_institution": None}
                        for m in sorted(s.member_scopes)
                    ] + [
                        {"scope_code": s.code, "member_scope": None, "member_institution": m}
                        for m in sorted(s.member_institutions)
                    ]
                    md.insert_rows(c, t.scope_member, rows)
            if changes.items:
                existing = set(c.scalars(select(t.item.c.code)))
                md.write_items(c, [i for i in changes.items if i.code not in existing])
                for i in changes.items:
                    if i.code in existing:
                        row = md.item_row(i)
                        del row["code"]
                        c.execute(update(t.item).where(t.item.c.code == i.code).values(**row))
            if changes.institutions:
                existing = set(c.scalars(select(t.institution.c.code)))
                md.write_institutions(
                    c, [i for i in changes.institutions if i.code not in existing]
                )
                for inst in changes.institutions:
                    if inst.code in existing:
                        c.execute(
                            update(t.institution)
                            .where(t.institution.c.code == inst.code)
                            .values(
                                name=inst.name,
                                level=inst.level.value,
                                public=inst.public,
                                jurisdiction=inst.jurisdiction,
                                address=inst.address,
                            )
                        )
            for v in changes.item_lists:
                vid = c.scalar(
                    select(t.item_list_version.c.id).where(
                        t.item_list_version.c.jurisdiction == v.jurisdiction,
                        t.item_list_version.c.version == v.version,
                    )
                )
                if vid is None:
                    md.write_item_list(c, v, at)
                    continue
                c.execute(
                    update(t.item_list_version)
                    .where(t.item_list_version.c.id == vid)
                    .values(
                        effective_from=v.effective_from,
                        effective_to=v.effective_to,
                        published_at=at,
                    )
                )
                c.execute(delete(t.item_list_entry).where(t.item_list_entry.c.version_id == vid))
                md.insert_rows(
                    c,
                    t.item_list_entry,
                    [{"version_id": vid, "item_code": code} for code in sorted(v.item_codes)],
                )
            q_table = t.qualification
            for q in changes.qualifications:
                found = c.execute(
                    select(q_table.c.id, q_table.c.status).where(
                        q_table.c.institution_code == q.institution,
                        q_table.c.item_code == q.item,
                        q_table.c.group_code == q.group,
                        q_table.c.scope_code == q.scope,
                        q_table.c.valid_from == q.valid_from,
                    )
                ).first()
                if found is None:
                    qid = c.execute(
                        insert(q_table).values(**md.qualification_row(q, at))
                    ).inserted_primary_key[0]  # type: ignore[index]
                    old_status = None
                else:
                    qid, old_status = found.id, found.status
                    c.execute(
                        update(q_table)
                        .where(q_table.c.id == qid)
                        .values(
                            basis=q.basis.value,
                            valid_to=q.valid_to,
                            status=q.status.value,
                            updated_at=at,
                        )
                    )
                if old_status != q.status.value:
                    c.execute(
                        insert(t.qualification_event).values(
                            qualification_id=qid,
                            at=at,
                            actor=actor,
                            old_status=old_status,
                            new_status=q.status.value,
                            reason="目录导入",
                        )
                    )
            for m in changes.code_maps:
                c.execute(
                    delete(t.code_map).where(
                        t.code_map.c.institution_code == m.institution,
                        t.code_map.c.local_code == m.local_code,
                    )
                )
            md.write_code_maps(c, changes.code_maps, at)
