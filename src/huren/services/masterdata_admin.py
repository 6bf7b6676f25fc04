"""Reading and editing the master-data lists (issue 3 §3, §7): scopes, institutions and
departments, items and their versioned lists, qualifications with their history, the
negative list, and 对码 maps.

Who may edit what:
- regulators and QC centres edit the lists of scopes within their own jurisdiction
  (an item list, a qualification, a negative-list reason, an institution located there);
  the operator edits everything;
- the item catalogue itself is shared by every jurisdiction: any list editor may add an
  item, but may change one only while every list that includes it is within their own
  jurisdiction;
- an institution administrator edits their own institution's departments and code maps.

Every edit is validated whole and written in one transaction; then the catalog snapshot
is invalidated so rules read the new lists at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Generic, Protocol, TypeVar

from huren.domain.accounts import (
    Principal,
    Role,
    can_act_in_scope,
)
from huren.domain.errors import (
    Conflict,
    Forbidden,
    NotFound,
    Problem,
    ProblemCollector,
    ScopeCycle,
    ValidationFailed,
)
from huren.domain.marks import Mark
from huren.domain.masterdata import (
    CodeMapping,
    Institution,
    Item,
    ItemListVersion,
    MarkSymbol,
    NegativeReason,
    Qualification,
    QualificationStatus,
    Scope,
    ScopeGraph,
    overlapping_versions,
)
from huren.services.catalog import Catalog, CatalogCache
from huren.services.ports import Clock

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Department:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class StoredListVersion:
    id: int
    version: ItemListVersion
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredQualification:
    id: int
    qualification: Qualification
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class QualificationEvent:
    at: datetime
    actor: str
    old_status: QualificationStatus | None
    new_status: QualificationStatus
    reason: str


class MasterDataAdminStore(Protocol):
    def insert_scope(self, scope: Scope) -> None: ...

    def update_scope(self, scope: Scope) -> None: ...

    def insert_institution(self, inst: Institution, departments: list[Department]) -> None: ...

    def update_institution(self, inst: Institution) -> None: ...

    def departments(self, institution: str) -> list[Department]: ...

    def put_department(self, institution: str, dept: Department) -> None: ...

    def insert_item(self, item: Item) -> None: ...

    def update_item(self, item: Item) -> None: ...

    def list_versions(self, jurisdiction: str | None = None) -> list[StoredListVersion]: ...

    def insert_list_version(self, version: ItemListVersion, now: datetime) -> int: ...

    def qualifications(
        self, institution: str | None = None, item: str | None = None, scope: str | None = None
    ) -> list[StoredQualification]: ...

    def qualification(self, qid: int) -> StoredQualification | None: ...

    def insert_qualification(
        self, qual: Qualification, actor: str, reason: str, now: datetime
    ) -> int: ...

    def change_qualification(
        self, qid: int, status: QualificationStatus, actor: str, reason: str, now: datetime
    ) -> None: ...

    def qualification_events(self, qid: int) -> list[QualificationEvent]: ...

    def put_negative_reason(self, reason: NegativeReason) -> None: ...

    def mark_symbols(self) -> list[MarkSymbol]: ...

    def code_maps(self, institution: str) -> list[tuple[CodeMapping, datetime]]: ...

    def put_code_map(self, mapping: CodeMapping, now: datetime) -> None: ...

    def delete_code_map(self, institution: str, local_code: str) -> bool: ...


# Which status changes a qualification may make; a revoked one stays revoked (a new
# qualification is granted after re-evaluation).
ALLOWED_TRANSITIONS: dict[QualificationStatus, frozenset[QualificationStatus]] = {
    QualificationStatus.ACTIVE: frozenset(
        {
            QualificationStatus.SUSPENDED,
            QualificationStatus.REVOKED,
            QualificationStatus.EXPIRED,
            QualificationStatus.FAILED,
        }
    ),
    QualificationStatus.SUSPENDED: frozenset(
        {QualificationStatus.ACTIVE, QualificationStatus.REVOKED, QualificationStatus.EXPIRED}
    ),
    QualificationStatus.FAILED: frozenset(
        {QualificationStatus.ACTIVE, QualificationStatus.REVOKED}
    ),
    QualificationStatus.EXPIRED: frozenset({QualificationStatus.ACTIVE}),
    QualificationStatus.REVOKED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    total: int
    rows: list[T]


def _forbidden(field: str, message: str) -> Forbidden:
    return Forbidden(message, problems=[Problem(field, message)])


def _actor(principal: Principal) -> str:
    return f"{principal.username}({principal.role.value})"


@dataclass(frozen=True, slots=True)
class CodeMapChange:
    """A mapping saved, and how many results stored unmapped under its local code were
    re-mapped with it (issue 7 §3: when the map is fixed later, stored results are
    re-mapped)."""

    mapping: CodeMapping
    remapped: int


class MasterDataAdmin:
    def __init__(
        self,
        store: MasterDataAdminStore,
        catalog: CatalogCache,
        clock: Clock,
        *,
        remap: Callable[[str, str], int],
    ) -> None:
        """``remap(institution, local_code)`` gives the results stored unmapped under a
        local code their unified code once the map has it (``IntakeService.remap``)."""
        self.store = store
        self.catalog = catalog
        self.clock = clock
        self._remap = remap

    def _fresh(self) -> Catalog:
        """Validate edits against the database as it is now, not a cached snapshot."""
        self.catalog.invalidate()
        return self.catalog.get()

    def _done(self) -> None:
        self.catalog.invalidate()

    def _require_scope(
        self, principal: Principal, scope: str, graph: ScopeGraph, field: str
    ) -> None:
        if not can_act_in_scope(principal, scope, graph):
            raise _forbidden(
                field, f"{scope} 不在您的辖区（{principal.jurisdiction or '无'}）内，无权编辑"
            )

    # ------------------------------------------------------------ reads
    def items(
        self,
        *,
        category: str | None = None,
        search: str | None = None,
        jurisdiction: str | None = None,
        on: date | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[Item]:
        cat = self.catalog.get()
        rows = sorted(cat.items.values(), key=lambda i: i.code)
        if category:
            rows = [i for i in rows if i.category.value == category]
        if search:
            needle = search.strip().lower()
            rows = [
                i
                for i in rows
                if needle in i.code.lower() or needle in i.name.lower() or needle == i.loinc.lower()
            ]
        if jurisdiction:
            codes = self.items_in_force(jurisdiction, on or self.clock.now().date())
            rows = [i for i in rows if i.code in codes]
        return Page(len(rows), rows[offset : offset + limit])

    def items_in_force(self, jurisdiction: str, on: date) -> frozenset[str]:
        for v in self.catalog.get().item_lists:
            if v.jurisdiction == jurisdiction and v.in_force(on):
                return v.item_codes
        return frozenset()

    def item(self, code: str) -> Item:
        found = self.catalog.get().items.get(code)
        if found is None:
            raise NotFound(f"互认项目 {code} 不存在")
        return found

    def institutions(
        self,
        *,
        province: str | None = None,
        level: str | None = None,
        search: str | None = None,
        scope: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[Institution]:
        cat = self.catalog.get()
        rows = sorted(cat.institutions.values(), key=lambda i: i.code)
        if province:
            rows = [i for i in rows if cat.province_of(i.code) == province]
        if level:
            rows = [i for i in rows if i.level.value == level]
        if scope:
            rows = [i for i in rows if cat.graph.contains(scope, i.code)]
        if search:
            needle = search.strip().lower()
            rows = [i for i in rows if needle in i.code.lower() or needle in i.name.lower()]
        return Page(len(rows), rows[offset : offset + limit])

    def institution(self, code: str) -> Institution:
        found = self.catalog.get().institutions.get(code)
        if found is None:
            raise NotFound(f"医疗机构 {code} 不存在")
        return found

    def departments(self, institution: str) -> list[Department]:
        self.institution(institution)
        return self.store.departments(institution)

    def scopes(self) -> list[Scope]:
        return sorted(self.catalog.get().graph.scopes.values(), key=lambda s: s.code)

    def scope(self, code: str) -> Scope:
        found = self.catalog.get().graph.scopes.get(code)
        if found is None:
            raise NotFound(f"互认范围 {code} 不存在")
        return found

    def list_versions(self, jurisdiction: str | None = None) -> list[StoredListVersion]:
        return self.store.list_versions(jurisdiction)

    def qualifications(
        self, institution: str | None = None, item: str | None = None, scope: str | None = None
    ) -> list[StoredQualification]:
        return self.store.qualifications(institution, item, scope)

    def qualification(self, qid: int) -> StoredQualification:
        found = self.store.qualification(qid)
        if found is None:
            raise NotFound(f"互认资质 {qid} 不存在")
        return found

    def qualification_history(self, qid: int) -> list[QualificationEvent]:
        self.qualification(qid)
        return self.store.qualification_events(qid)

    def qualification_marks(
        self, q: Qualification, now: datetime
    ) -> tuple[Mark | None, Mark | None]:
        """(the mark this qualification gives today, the mark the institution's results
        of the item carry today — the largest qualified scope, 沪卫医〔2024〕135号 四(四)).
        For a group qualification the second is None: it depends on the item."""
        cat = self.catalog.get()
        own: Mark | None = None
        if q.in_force(now):
            item = cat.items.get(q.item) if q.item else None
            category = item.category if item is not None else None
            if category is None:
                for candidate in cat.items.values():
                    if q.group and candidate.group == q.group:
                        category = candidate.category
                        break
            if category is not None:
                own = cat.symbols.for_scope(q.scope, category)
        effective = cat.mark_for(q.institution, q.item, now) if q.item else None
        return own, effective

    def negative_list(self, jurisdiction: str) -> list[NegativeReason]:
        return list(self.catalog.get().negative_reasons.get(jurisdiction, []))

    def mark_symbols(self) -> list[MarkSymbol]:
        return self.store.mark_symbols()

    def code_maps(self, institution: str) -> list[tuple[CodeMapping, datetime]]:
        self.institution(institution)
        return self.store.code_maps(institution)

    # ------------------------------------------------------------ scopes
    def save_scope(self, principal: Principal, scope: Scope, *, create: bool) -> Scope:
        cat = self._fresh()
        graph = cat.graph
        existing = graph.scopes.get(scope.code)
        if create and existing is not None:
            raise Conflict(f"互认范围 {scope.code} 已存在", problems=[Problem("code", "已存在")])
        if not create and existing is None:
            raise NotFound(f"互认范围 {scope.code} 不存在")
        if existing is not None:
            self._require_scope(principal, scope.code, graph, "code")
        if scope.parent:
            self._require_scope(principal, scope.parent, graph, "parent")
        elif principal.role is not Role.OPERATOR and (existing is None or existing.parent):
            raise _forbidden("parent", "只有平台运维可以创建或调整顶层互认范围")
        errors = ProblemCollector()
        if scope.parent and scope.parent not in graph.scopes:
            errors.add("parent", f"上级范围 {scope.parent} 不存在")
        for i, m in enumerate(sorted(scope.member_scopes)):
            if m not in graph.scopes and m != scope.code:
                errors.add(f"member_scopes[{i}]", f"成员范围 {m} 不存在")
        for i, m in enumerate(sorted(scope.member_institutions)):
            if m not in cat.institutions:
                errors.add(f"member_institutions[{i}]", f"成员机构 {m} 不存在")
        errors.raise_if_any("互认范围未通过校验")
        insts = list(cat.institutions.values())
        try:
            ScopeGraph({**graph.scopes, scope.code: scope}.values(), insts)
        except ScopeCycle as exc:
            # Name the field that closes the cycle: without the parent link, is it gone?
            field = "member_scopes"
            if scope.parent:
                try:
                    ScopeGraph(
                        {**graph.scopes, scope.code: replace(scope, parent=None)}.values(), insts
                    )
                    field = "parent"
                except ScopeCycle:
                    pass
            raise ScopeCycle(exc.message, problems=[Problem(field, exc.message)]) from exc
        if create:
            self.store.insert_scope(scope)
        else:
            self.store.update_scope(scope)
        self._done()
        return scope

    # ------------------------------------------------------------ institutions
    def save_institution(
        self,
        principal: Principal,
        inst: Institution,
        departments: Sequence[Department] = (),
        *,
        create: bool,
    ) -> Institution:
        cat = self._fresh()
        existing = cat.institutions.get(inst.code)
        if create and existing is not None:
            raise Conflict(f"医疗机构 {inst.code} 已存在", problems=[Problem("code", "已存在")])
        if not create and existing is None:
            raise NotFound(f"医疗机构 {inst.code} 不存在")
        if existing is not None:
            self._require_scope(principal, existing.jurisdiction, cat.graph, "jurisdiction")
        errors = ProblemCollector()
        if inst.jurisdiction not in cat.graph.scopes:
            errors.add("jurisdiction", f"所在辖区 {inst.jurisdiction} 不存在")
        seen: set[str] = set()
        for i, d in enumerate(departments):
            if d.code in seen:
                errors.add(f"departments[{i}].code", f"科室代码 {d.code} 重复")
            seen.add(d.code)
        errors.raise_if_any("医疗机构未通过校验")
        self._require_scope(principal, inst.jurisdiction, cat.graph, "jurisdiction")
        if create:
            self.store.insert_institution(inst, list(departments))
        else:
            self.store.update_institution(inst)
        self._done()
        return inst

    def put_department(
        self, principal: Principal, institution: str, dept: Department
    ) -> Department:
        cat = self._fresh()
        inst = cat.institutions.get(institution)
        if inst is None:
            raise NotFound(f"医疗机构 {institution} 不存在")
        if principal.role is Role.INSTITUTION_ADMIN:
            if principal.institution != institution:
                raise _forbidden("institution", "机构管理员只能编辑本机构")
        else:
            self._require_scope(principal, inst.jurisdiction, cat.graph, "institution")
        self.store.put_department(institution, dept)
        return dept

    # ------------------------------------------------------------ items and lists
    def save_item(self, principal: Principal, item: Item, *, create: bool) -> Item:
        cat = self._fresh()
        existing = cat.items.get(item.code)
        if create and existing is not None:
            raise Conflict(f"互认项目 {item.code} 已存在", problems=[Problem("code", "已存在")])
        if not create:
            if existing is None:
                raise NotFound(f"互认项目 {item.code} 不存在")
            for v in cat.item_lists:
                if item.code in v.item_codes and not can_act_in_scope(
                    principal, v.jurisdiction, cat.graph
                ):
                    raise _forbidden(
                        "code",
                        f"项目 {item.code} 也在 {v.jurisdiction} 的清单（{v.version}）中，"
                        "只能由该辖区或平台运维修改",
                    )
        if create:
            self.store.insert_item(item)
        else:
            self.store.update_item(item)
        self._done()
        return item

    def create_list_version(
        self, principal: Principal, version: ItemListVersion, order: Sequence[str] = ()
    ) -> int:
        """Publish a new version of a jurisdiction's item list. ``order`` is the items as
        the client sent them, so that problems name the position it knows."""
        cat = self._fresh()
        errors = ProblemCollector()
        if version.jurisdiction not in cat.graph.scopes:
            errors.add("jurisdiction", f"辖区 {version.jurisdiction} 不存在")
        else:
            self._require_scope(principal, version.jurisdiction, cat.graph, "jurisdiction")
        if version.effective_to is not None and version.effective_to <= version.effective_from:
            errors.add("effective_to", "失效日期必须晚于生效日期")
        for i, code in enumerate(order or sorted(version.item_codes)):
            if code not in cat.items:
                errors.add(f"items[{i}]", f"互认项目 {code} 不存在")
        same = [v for v in cat.item_lists if v.jurisdiction == version.jurisdiction]
        if any(v.version == version.version for v in same):
            errors.add("version", f"版本号 {version.version} 已存在")
        elif not errors.problems:
            for p in overlapping_versions([*same, version]):
                errors.add("effective_from", p.message)
        errors.raise_if_any("清单版本未通过校验")
        vid = self.store.insert_list_version(version, self.clock.now())
        self._done()
        return vid

    # ------------------------------------------------------------ qualifications
    def grant_qualification(self, principal: Principal, q: Qualification, reason: str) -> int:
        cat = self._fresh()
        errors = ProblemCollector()
        if q.institution not in cat.institutions:
            errors.add("institution", f"医疗机构 {q.institution} 不存在")
        if q.scope not in cat.graph.scopes:
            errors.add("scope", f"互认范围 {q.scope} 不存在")
        if bool(q.item) == bool(q.group):
            errors.add("item", "须且只能指定 item（项目）或 group（项目组）之一")
        elif q.item and q.item not in cat.items:
            errors.add("item", f"互认项目 {q.item} 不存在")
        elif q.group and not any(i.group == q.group for i in cat.items.values()):
            errors.add("group", f"项目组 {q.group} 不存在")
        if q.valid_to is not None and q.valid_to < q.valid_from:
            errors.add("valid_to", "有效期止不能早于有效期起")
        if (
            q.institution in cat.institutions
            and q.scope in cat.graph.scopes
            and not cat.graph.contains(q.scope, q.institution)
        ):
            errors.add("scope", f"医疗机构 {q.institution} 不在互认范围 {q.scope} 内")
        errors.raise_if_any("互认资质未通过校验")
        self._require_scope(principal, q.scope, cat.graph, "scope")
        qid = self.store.insert_qualification(q, _actor(principal), reason, self.clock.now())
        self._done()
        return qid

    def change_qualification_status(
        self, principal: Principal, qid: int, status: QualificationStatus, reason: str
    ) -> StoredQualification:
        cat = self._fresh()
        stored = self.qualification(qid)
        self._require_scope(principal, stored.qualification.scope, cat.graph, "scope")
        current = stored.qualification.status
        if status == current:
            raise Conflict(
                f"资质状态已是 {status.value}", problems=[Problem("status", "状态未变化")]
            )
        if status not in ALLOWED_TRANSITIONS[current]:
            raise ValidationFailed(
                f"资质状态不能从 {current.value} 变为 {status.value}",
                problems=[Problem("status", f"不允许 {current.value} → {status.value}")],
            )
        if not reason.strip():
            raise ValidationFailed("须说明变更原因", problems=[Problem("reason", "不能为空")])
        self.store.change_qualification(qid, status, _actor(principal), reason, self.clock.now())
        self._done()
        return replace(stored, qualification=replace(stored.qualification, status=status))

    # ------------------------------------------------------------ negative list
    def put_negative_reason(self, principal: Principal, reason: NegativeReason) -> NegativeReason:
        cat = self._fresh()
        if reason.jurisdiction not in cat.graph.scopes:
            raise ValidationFailed(
                "负面清单条目未通过校验",
                problems=[Problem("jurisdiction", f"辖区 {reason.jurisdiction} 不存在")],
            )
        self._require_scope(principal, reason.jurisdiction, cat.graph, "jurisdiction")
        self.store.put_negative_reason(reason)
        self._done()
        return reason

    # ------------------------------------------------------------ code maps (对码)
    def _require_own_institution(
        self, principal: Principal, institution: str, cat: Catalog
    ) -> None:
        if principal.role is Role.OPERATOR:
            return
        if principal.role is Role.INSTITUTION_ADMIN and principal.institution == institution:
            return
        raise _forbidden("institution", "只有本机构管理员或平台运维可以编辑对码")

    def put_code_map(self, principal: Principal, mapping: CodeMapping) -> CodeMapChange:
        cat = self._fresh()
        if mapping.institution not in cat.institutions:
            raise NotFound(f"医疗机构 {mapping.institution} 不存在")
        self._require_own_institution(principal, mapping.institution, cat)
        if mapping.unified_code not in cat.items:
            raise ValidationFailed(
                "对码未通过校验",
                problems=[Problem("unified_code", f"统一编码 {mapping.unified_code} 不存在")],
            )
        self.store.put_code_map(mapping, self.clock.now())
        self._done()
        return CodeMapChange(mapping, self._remap(mapping.institution, mapping.local_code))

    def delete_code_map(self, principal: Principal, institution: str, local_code: str) -> None:
        cat = self._fresh()
        if institution not in cat.institutions:
            raise NotFound(f"医疗机构 {institution} 不存在")
        self._require_own_institution(principal, institution, cat)
        if not self.store.delete_code_map(institution, local_code):
            raise NotFound(f"本地编码 {local_code} 的对码不存在")
        self._done()
