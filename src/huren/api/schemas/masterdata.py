"""Master-data REST models: ``XIn`` what a client sends, ``XOut`` what it gets back.

String lengths follow the column sizes in ``adapters/db/tables.py`` and text may not carry
NUL characters (PostgreSQL refuses them), so malformed input is a 422 naming the field,
never a database error."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from huren.domain.masterdata import (
    Category,
    CodeMapping,
    Institution,
    InstitutionLevel,
    Item,
    ItemListVersion,
    NegativeReason,
    Qualification,
    QualificationBasis,
    QualificationStatus,
    QualityRequirements,
    Scope,
    ScopeKind,
    SeriesRequirement,
)

NO_NUL = r"^[^\x00]*$"
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

Code = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=CODE_PATTERN)]
LocalCode = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00/]+$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NO_NUL)]
LongName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]


Short = Annotated[str, StringConstraints(max_length=16, pattern=NO_NUL)]
Medium = Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)]
Address = Annotated[str, StringConstraints(max_length=300, pattern=NO_NUL)]
Prose = Annotated[str, StringConstraints(max_length=4000, pattern=NO_NUL)]
Int32 = Annotated[int, Field(ge=0, le=2_147_483_647)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- pages
class PageMeta(BaseModel):
    total: int
    limit: int
    offset: int


# ---------------------------------------------------------------- scopes
class ScopeIn(_In):
    code: Code
    name: Name
    kind: ScopeKind
    parent: Code | None = None
    abbreviation: Short = ""
    member_scopes: list[Code] = Field(default_factory=list, max_length=500)
    member_institutions: list[Code] = Field(default_factory=list, max_length=5000)

    def to_domain(self) -> Scope:
        return Scope(
            code=self.code,
            name=self.name,
            kind=self.kind,
            parent=self.parent,
            member_scopes=frozenset(self.member_scopes),
            member_institutions=frozenset(self.member_institutions),
            abbreviation=self.abbreviation,
        )


class ScopeUpdateIn(_In):
    name: Name
    kind: ScopeKind
    parent: Code | None = None
    abbreviation: Short = ""
    member_scopes: list[Code] = Field(default_factory=list, max_length=500)
    member_institutions: list[Code] = Field(default_factory=list, max_length=5000)

    def to_domain(self, code: str) -> Scope:
        return ScopeIn(code=code, **self.model_dump()).to_domain()


class ScopeOut(BaseModel):
    code: str
    name: str
    kind: ScopeKind
    parent: str | None
    abbreviation: str
    member_scopes: list[str]
    member_institutions: list[str]
    children: list[str] = Field(description="下级行政范围")
    institutions_covered: int = Field(description="覆盖的医疗机构数")

    @classmethod
    def of(cls, s: Scope, children: list[str], covered: int) -> ScopeOut:
        return cls(
            code=s.code,
            name=s.name,
            kind=s.kind,
            parent=s.parent,
            abbreviation=s.abbreviation,
            member_scopes=sorted(s.member_scopes),
            member_institutions=sorted(s.member_institutions),
            children=children,
            institutions_covered=covered,
        )


# ---------------------------------------------------------------- institutions
class DepartmentIn(_In):
    code: Code
    name: Name


class DepartmentOut(BaseModel):
    code: str
    name: str


class InstitutionIn(_In):
    code: Code
    name: LongName
    level: InstitutionLevel
    public: bool = True
    jurisdiction: Code = Field(description="所在市或省的范围代码")
    address: Address = ""
    departments: list[DepartmentIn] = Field(default_factory=list, max_length=500)

    def to_domain(self) -> Institution:
        return Institution(
            self.code, self.name, self.level, self.public, self.jurisdiction, self.address
        )


class InstitutionUpdateIn(_In):
    name: LongName
    level: InstitutionLevel
    public: bool = True
    jurisdiction: Code
    address: Address = ""

    def to_domain(self, code: str) -> Institution:
        return Institution(
            code, self.name, self.level, self.public, self.jurisdiction, self.address
        )


class InstitutionOut(BaseModel):
    code: str
    name: str
    level: InstitutionLevel
    public: bool
    jurisdiction: str
    province: str
    address: str
    departments: list[DepartmentOut] | None = None

    @classmethod
    def of(
        cls, i: Institution, province: str, departments: list[DepartmentOut] | None = None
    ) -> InstitutionOut:
        return cls(
            code=i.code,
            name=i.name,
            level=i.level,
            public=i.public,
            jurisdiction=i.jurisdiction,
            province=province,
            address=i.address,
            departments=departments,
        )


class InstitutionPage(PageMeta):
    items: list[InstitutionOut]


# ---------------------------------------------------------------- items
class SeriesRequirementModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
    slice_thickness_max_mm: Annotated[float, Field(gt=0, le=100)] | None = None
    slice_thickness_min_mm: Annotated[float, Field(gt=0, le=100)] | None = None
    description_keywords: list[Medium] = Field(default_factory=list, max_length=20)
    derived: bool = False


class QualityModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Prose = ""
    required_series: list[SeriesRequirementModel] = Field(default_factory=list, max_length=20)
    min_images: Annotated[int, Field(ge=0, le=10_000)] = 0
    requires_report: bool = True

    def to_domain(self) -> QualityRequirements:
        return QualityRequirements(
            text=self.text,
            min_images=self.min_images,
            requires_report=self.requires_report,
            required_series=tuple(
                SeriesRequirement(
                    s.name,
                    s.slice_thickness_max_mm,
                    s.slice_thickness_min_mm,
                    tuple(s.description_keywords),
                    s.derived,
                )
                for s in self.required_series
            ),
        )

    @classmethod
    def of(cls, q: QualityRequirements) -> QualityModel:
        return cls(
            text=q.text,
            min_images=q.min_images,
            requires_report=q.requires_report,
            required_series=[
                SeriesRequirementModel(
                    name=s.name,
                    slice_thickness_max_mm=s.slice_thickness_max_mm,
                    slice_thickness_min_mm=s.slice_thickness_min_mm,
                    description_keywords=list(s.description_keywords),
                    derived=s.derived,
                )
                for s in q.required_series
            ],
        )


class _ItemFields(_In):
    name: LongName
    category: Category
    group: Annotated[str, StringConstraints(max_length=32, pattern=NO_NUL)] = ""
    modality: Short = ""
    body_part: Medium = ""
    specimen: Medium = ""
    loinc: Annotated[str, StringConstraints(max_length=32, pattern=r"^([0-9]{1,7}-[0-9])?$")] = ""
    time_limit_hours: Annotated[int, Field(ge=1, le=24 * 366 * 10, description="参考时限（小时）")]
    price_fen: Int32 = 0
    quality: QualityModel = Field(default_factory=QualityModel)

    def _item(self, code: str) -> Item:
        return Item(
            code=code,
            name=self.name,
            category=self.category,
            time_limit=timedelta(hours=self.time_limit_hours),
            price_fen=self.price_fen,
            group=self.group,
            modality=self.modality,
            body_part=self.body_part,
            specimen=self.specimen,
            loinc=self.loinc,
            quality=self.quality.to_domain(),
        )


class ItemIn(_ItemFields):
    code: Code

    def to_domain(self) -> Item:
        return self._item(self.code)


class ItemUpdateIn(_ItemFields):
    def to_domain(self, code: str) -> Item:
        return self._item(code)


class ItemOut(BaseModel):
    code: str
    name: str
    category: Category
    group: str
    modality: str
    body_part: str
    specimen: str
    loinc: str
    time_limit_hours: int
    price_fen: int
    quality: QualityModel

    @classmethod
    def of(cls, i: Item) -> ItemOut:
        return cls(
            code=i.code,
            name=i.name,
            category=i.category,
            group=i.group,
            modality=i.modality,
            body_part=i.body_part,
            specimen=i.specimen,
            loinc=i.loinc,
            time_limit_hours=int(i.time_limit.total_seconds() // 3600),
            price_fen=i.price_fen,
            quality=QualityModel.of(i.quality),
        )


class ItemPage(PageMeta):
    items: list[ItemOut]


class ItemListVersionIn(_In):
    jurisdiction: Code
    version: Code
    effective_from: date
    effective_to: date | None = Field(None, description="失效日期（不含），空 = 长期有效")
    items: list[Code] = Field(min_length=1, max_length=10_000)

    def to_domain(self) -> ItemListVersion:
        return ItemListVersion(
            self.jurisdiction,
            self.version,
            self.effective_from,
            self.effective_to,
            frozenset(self.items),
        )


class ItemListVersionOut(BaseModel):
    id: int
    jurisdiction: str
    version: str
    effective_from: date
    effective_to: date | None
    published_at: datetime | None
    in_force_today: bool
    items: list[str]

    @classmethod
    def of(
        cls, vid: int, v: ItemListVersion, published_at: datetime | None, today: date
    ) -> ItemListVersionOut:
        return cls(
            id=vid,
            jurisdiction=v.jurisdiction,
            version=v.version,
            effective_from=v.effective_from,
            effective_to=v.effective_to,
            published_at=published_at,
            in_force_today=v.in_force(today),
            items=sorted(v.item_codes),
        )


class ItemsInForceOut(BaseModel):
    jurisdiction: str
    on: date
    items: list[str]


# ---------------------------------------------------------------- qualifications
class QualificationIn(_In):
    institution: Code
    item: Annotated[
        str, StringConstraints(max_length=32, pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*)?$")
    ] = ""
    group: Annotated[str, StringConstraints(max_length=32, pattern=NO_NUL)] = ""
    scope: Code
    basis: QualificationBasis
    valid_from: date
    valid_to: date | None = None
    status: QualificationStatus = QualificationStatus.ACTIVE
    reason: Prose = Field("", description="授予依据或说明，记入资质历史")

    def to_domain(self) -> Qualification:
        return Qualification(
            institution=self.institution,
            scope=self.scope,
            basis=self.basis,
            valid_from=self.valid_from,
            valid_to=self.valid_to,
            status=self.status,
            item=self.item,
            group=self.group,
        )


class QualificationStatusIn(_In):
    status: QualificationStatus
    reason: Annotated[str, StringConstraints(min_length=1, max_length=4000, pattern=NO_NUL)]


class MarkOut(BaseModel):
    scope: str
    symbol: str
    symbol_en: str


class QualificationEventOut(BaseModel):
    at: datetime
    actor: str
    old_status: QualificationStatus | None
    new_status: QualificationStatus
    reason: str


class QualificationOut(BaseModel):
    id: int
    institution: str
    item: str
    group: str
    scope: str
    basis: QualificationBasis
    valid_from: date
    valid_to: date | None
    status: QualificationStatus
    updated_at: datetime
    mark: MarkOut | None = Field(description="本资质今天给出的标识（无效则为空）")
    effective_mark: MarkOut | None = Field(
        description="该机构该项目今天结果所标注的标识（取最大互认范围）；项目组资质为空"
    )
    history: list[QualificationEventOut] | None = None


# ---------------------------------------------------------------- negative list, symbols
class NegativeReasonIn(_In):
    number: Annotated[int, Field(ge=1, le=1000)]
    text: Annotated[str, StringConstraints(min_length=1, max_length=4000, pattern=NO_NUL)]
    source: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
    imaging_only: bool = False
    requires_free_text: bool = False

    def to_domain(self, jurisdiction: str, code: str) -> NegativeReason:
        return NegativeReason(
            jurisdiction,
            code,
            self.number,
            self.text,
            self.source,
            self.imaging_only,
            self.requires_free_text,
        )


class NegativeReasonOut(BaseModel):
    jurisdiction: str
    code: str
    number: int
    text: str
    source: str
    imaging_only: bool
    requires_free_text: bool

    @classmethod
    def of(cls, r: NegativeReason) -> NegativeReasonOut:
        return cls(
            jurisdiction=r.jurisdiction,
            code=r.code,
            number=r.number,
            text=r.text,
            source=r.source,
            imaging_only=r.imaging_only,
            requires_free_text=r.requires_free_text,
        )


class ItemExclusionOut(BaseModel):
    item: str
    reason: str
    only_within_scope: str


class NegativeListOut(BaseModel):
    jurisdiction: str
    reasons: list[NegativeReasonOut]
    exclusions: list[ItemExclusionOut]


class MarkSymbolOut(BaseModel):
    scope: str
    category: Category | None
    symbol: str
    symbol_en: str


# ---------------------------------------------------------------- code maps
class CodeMapIn(_In):
    unified_code: Code
    local_name: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] = ""

    def to_domain(self, institution: str, local_code: str) -> CodeMapping:
        return CodeMapping(institution, local_code, self.unified_code, self.local_name)


class CodeMapOut(BaseModel):
    institution: str
    local_code: str
    unified_code: str
    local_name: str
    updated_at: datetime
    remapped: int = Field(
        default=0,
        description="本次保存后重新对码的已存结果数（此前以该本地编码接收、未对码的结果）",
    )
