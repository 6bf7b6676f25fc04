"""Master data: the three lists of R1 (互认项目清单, 机构清单, 负面清单), scopes and 对码.

Plain frozen dataclasses. Persistence lives in ``huren.adapters.db``; rules that read
these live in ``marks``, ``recognition`` and ``qc``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum

from huren.domain.errors import Problem, ScopeCycle


class Category(StrEnum):
    """检查检验类别."""

    LAB = "lab"  # 检验
    IMAGING = "imaging"  # 影像检查
    OTHER = "other"  # 心电、超声、病理等其他检查


CATEGORY_LABELS: Mapping[Category, str] = {
    Category.LAB: "检验",
    Category.IMAGING: "影像检查",
    Category.OTHER: "其他检查",
}


class ScopeKind(StrEnum):
    """互认范围的种类. Scopes do not nest by kind: a scope is a set of members."""

    ALLIANCE = "alliance"  # 紧密型医联体 / 城市医疗集团 / 县域医共体
    CITY = "city"  # 市
    PROVINCE = "province"  # 省
    REGION = "region"  # 京津冀、长三角、成渝
    AGREEMENT = "agreement"  # 跨省协议, e.g. 甘肃等八省
    NATIONAL = "national"  # 全国


SCOPE_KIND_LABELS: Mapping[ScopeKind, str] = {
    ScopeKind.ALLIANCE: "医联体",
    ScopeKind.CITY: "市",
    ScopeKind.PROVINCE: "省",
    ScopeKind.REGION: "区域",
    ScopeKind.AGREEMENT: "跨省协议",
    ScopeKind.NATIONAL: "全国",
}


class InstitutionLevel(StrEnum):
    """医院等级."""

    TERTIARY = "tertiary"  # 三级
    SECONDARY = "secondary"  # 二级
    PRIMARY = "primary"  # 一级
    UNRATED = "unrated"  # 未定级


LEVEL_LABELS: Mapping[InstitutionLevel, str] = {
    InstitutionLevel.TERTIARY: "三级",
    InstitutionLevel.SECONDARY: "二级",
    InstitutionLevel.PRIMARY: "一级",
    InstitutionLevel.UNRATED: "未定级",
}


class QualificationBasis(StrEnum):
    """互认资质的依据."""

    QC_EVALUATION = "qc_evaluation"  # 质控中心质量评价
    EQA = "eqa"  # 室间质评
    ALLIANCE_COMPARISON = "alliance_comparison"  # 医联体牵头单位组织的室间比对
    SPOT_CHECK = "spot_check"  # 放射影像质量抽查 (沪)


class QualificationStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"
    FAILED = "failed"  # 评价不合格


QUALIFICATION_STATUS_LABELS: Mapping[QualificationStatus, str] = {
    QualificationStatus.ACTIVE: "有效",
    QualificationStatus.SUSPENDED: "暂停",
    QualificationStatus.REVOKED: "撤销",
    QualificationStatus.EXPIRED: "过期",
    QualificationStatus.FAILED: "不合格",
}


@dataclass(frozen=True, slots=True)
class Scope:
    """互认范围 / 辖区. ``parent`` gives the administrative hierarchy (city → province);
    ``member_scopes`` and ``member_institutions`` give the membership of regions,
    agreements and alliances. Coverage is the union of all of these."""

    code: str
    name: str
    kind: ScopeKind
    parent: str | None = None
    member_scopes: frozenset[str] = frozenset()
    member_institutions: frozenset[str] = frozenset()
    abbreviation: str = ""  # 拼音首字母, e.g. SH, CSJ


@dataclass(frozen=True, slots=True)
class Institution:
    """医疗机构. ``jurisdiction`` is the city (or province) scope it lies in."""

    code: str
    name: str
    level: InstitutionLevel
    public: bool
    jurisdiction: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class SeriesRequirement:
    """A DICOM series an imaging item requires (沪: CT 厚层+薄层+后处理; MR 全部序列)."""

    name: str  # e.g. "薄层", "厚层", "T1WI"
    slice_thickness_max_mm: float | None = None
    slice_thickness_min_mm: float | None = None
    description_keywords: tuple[str, ...] = ()
    derived: bool = False  # 后处理图像 (ImageType DERIVED/SECONDARY)


@dataclass(frozen=True, slots=True)
class QualityRequirements:
    text: str = ""
    required_series: tuple[SeriesRequirement, ...] = ()
    min_images: int = 0  # 普通放射、钡餐、乳腺: 全部图像 → number of views
    requires_report: bool = True


@dataclass(frozen=True, slots=True)
class Item:
    """互认项目. ``time_limit`` is the 参考时限: a reference, not a hard gate."""

    code: str
    name: str
    category: Category
    time_limit: timedelta
    price_fen: int = 0  # 价格, in 分 to stay exact
    group: str = ""
    modality: str = ""
    body_part: str = ""
    specimen: str = ""
    loinc: str = ""
    quality: QualityRequirements = field(default_factory=QualityRequirements)


@dataclass(frozen=True, slots=True)
class ItemListVersion:
    """A jurisdiction's item list as in force from ``effective_from`` (inclusive) to
    ``effective_to`` (exclusive, None = open)."""

    jurisdiction: str
    version: str
    effective_from: date
    effective_to: date | None
    item_codes: frozenset[str]

    def in_force(self, on: date) -> bool:
        return self.effective_from <= on and (self.effective_to is None or on < self.effective_to)


def overlapping_versions(versions: Iterable[ItemListVersion]) -> list[Problem]:
    """Versions of one jurisdiction's list may not overlap in time."""
    problems: list[Problem] = []
    by_jurisdiction: dict[str, list[ItemListVersion]] = {}
    for v in versions:
        by_jurisdiction.setdefault(v.jurisdiction, []).append(v)
    for jurisdiction, vs in by_jurisdiction.items():
        vs.sort(key=lambda v: v.effective_from)
        for earlier, later in itertools.pairwise(vs):
            if earlier.effective_to is None or earlier.effective_to > later.effective_from:
                problems.append(
                    Problem(
                        f"{jurisdiction}/{later.version}: effective_from",
                        f"版本 {later.version} 与版本 {earlier.version} 的生效期重叠",
                    )
                )
    return problems


@dataclass(frozen=True, slots=True)
class Qualification:
    """机构清单 entry: institution qualified for an item (or an item group) in a scope."""

    institution: str
    scope: str
    basis: QualificationBasis
    valid_from: date
    valid_to: date | None
    status: QualificationStatus
    item: str = ""
    group: str = ""

    def covers(self, item: Item) -> bool:
        return (self.item != "" and self.item == item.code) or (
            self.group != "" and self.group == item.group
        )

    def in_force(self, at: datetime) -> bool:
        day = at.date()
        return (
            self.status is QualificationStatus.ACTIVE
            and self.valid_from <= day
            and (self.valid_to is None or day <= self.valid_to)
        )


@dataclass(frozen=True, slots=True)
class NegativeReason:
    """负面清单 entry: a condition under which a prior result may be set aside, with the
    jurisdiction's own number and wording taken verbatim from its source."""

    jurisdiction: str
    code: str
    number: int
    text: str
    source: str
    imaging_only: bool = False
    requires_free_text: bool = False


@dataclass(frozen=True, slots=True)
class ItemExclusion:
    """Item-level exclusion: an item never recognized, or recognized only within a scope."""

    jurisdiction: str
    item: str
    reason: str
    only_within_scope: str = ""


@dataclass(frozen=True, slots=True)
class MarkSymbol:
    """How a mark is written for a scope and category (data, per jurisdiction)."""

    scope: str
    category: Category | None  # None: the same for every category
    symbol: str
    symbol_en: str = ""


@dataclass(frozen=True, slots=True)
class CodeMapping:
    """对码: an institution's local item code → the unified code."""

    institution: str
    local_code: str
    unified_code: str
    local_name: str = ""


class ScopeGraph:
    """Resolves which institutions a scope covers. Built once from the scope and
    institution tables; answers ``contains`` in O(1)."""

    def __init__(self, scopes: Iterable[Scope], institutions: Iterable[Institution]) -> None:
        self.scopes: dict[str, Scope] = {s.code: s for s in scopes}
        self._children: dict[str, set[str]] = {}
        for s in self.scopes.values():
            if s.parent:
                self._children.setdefault(s.parent, set()).add(s.code)
        self._direct: dict[str, set[str]] = {}
        for inst in institutions:
            self._direct.setdefault(inst.jurisdiction, set()).add(inst.code)
        self._coverage: dict[str, frozenset[str]] = {}
        for code in self.scopes:
            self._resolve(code, ())

    def _resolve(self, code: str, path: tuple[str, ...]) -> frozenset[str]:
        if code in self._coverage:
            return self._coverage[code]
        if code in path:
            cycle = " → ".join((*path[path.index(code) :], code))
            raise ScopeCycle(f"互认范围存在循环: {cycle}", problems=[Problem("scope", cycle)])
        scope = self.scopes.get(code)
        covered: set[str] = set(self._direct.get(code, ()))
        if scope is not None:
            covered |= scope.member_institutions
            subs = set(scope.member_scopes) | self._children.get(code, set())
            for sub in subs:
                covered |= self._resolve(sub, (*path, code))
        result = frozenset(covered)
        self._coverage[code] = result
        return result

    def coverage(self, scope: str) -> frozenset[str]:
        return self._coverage.get(scope, frozenset())

    def contains(self, scope: str, institution: str) -> bool:
        """Does ``scope`` cover ``institution``? (R2: is the ordering institution inside
        the mark's scope.)"""
        return institution in self.coverage(scope)

    def breadth(self, scope: str) -> int:
        """How wide a scope is: the number of institutions it covers."""
        return len(self.coverage(scope))

    def ancestors(self, scope: str) -> list[str]:
        """The administrative chain upwards, nearest first (city → province)."""
        chain: list[str] = []
        current = self.scopes.get(scope)
        while current is not None and current.parent and current.parent not in chain:
            chain.append(current.parent)
            current = self.scopes.get(current.parent)
        return chain
