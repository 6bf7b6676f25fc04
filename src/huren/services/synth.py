# Synthetic data needs reproducible seeded randomness, not secrecy:
# ruff: noqa: S311
"""A synthetic world for demos, tests and benchmarks (issue 3 item 8).

Pure generation from ``random.Random(seed)``: the same seed and configuration give the
same world, the same patients and the same results, row for row. Nothing here touches a
database; a ``SynthSink`` (``huren.adapters.db.bulk``) writes what is generated, in large
batches, so that ten million results stream through in constant memory.

What is generated, and the rules it follows:
- the reference data (jurisdictions, items, mark symbols, negative lists) as shipped in
  ``huren/data``; an item list version per province with effective dates;
- institutions of every level with realistic names, departments, alliances (城市医疗集团 /
  县域医共体) each led by a hospital;
- qualifications by rule: 冀卫医政函〔2025〕7号 二(二)1 imaging QC at every level, 二(二)2 lab
  EQA at 二级 and above (lower levels only after passing EQA), 二(二)3 alliance
  comparison inside the alliance, and 京津冀 for some; 沪卫医〔2024〕135号 四(一)/(三)
  上海 by EQA / 放射影像质量抽查 and 长三角 for some, re-evaluated every 6 months
  (四(六)); 甘卫医政函〔2025〕16号 三(一)2 yearly re-evaluation and the 8-province
  agreement for some. Some evaluations fail, some are suspended midway, some expired;
- 对码 maps per institution (local codes differ from the unified codes);
- patients with valid 居民身份证 numbers (GB 11643-1999 check digit), stored like the
  intake path stores them: keyed hash, encrypted value, masked value;
- results over about two years, in time order, with observations, marks computed at issue
  time with ``Catalog.mark_for``, a version row each, and some corrected, amended or
  entered in error;
- the point of care over that history (``run_activity``, after the results are written):
  reminders whose counts are what ``domain.recognition`` gives for the priors stored at
  the time, accepted decisions (EMR text, money saved), declines with the ordering
  institution's own negative list (冀 二(四), 沪 四(五)), reminders left without a decision,
  repeats without any reminder, and a few planted outliers for monitoring to find.
"""

from __future__ import annotations

import functools
import hashlib
import random
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

from huren.domain.china_time import CHINA_TZ
from huren.domain.decisions import (
    Action,
    Explanation,
    ReportForRecord,
    choose_reason,
    emr_text,
    patient_explanation,
    saved_fen,
)
from huren.domain.errors import ValidationFailed
from huren.domain.identity import (
    IdentifierKind,
    mask_id,
    mask_name,
    national_id_check_digit,
    validate_national_id,
)
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
    Scope,
    ScopeKind,
)
from huren.domain.monitoring import MIN_PEERS
from huren.domain.recognition import (
    UNKNOWN_STUDY,
    ItemRecognition,
    PriorResult,
    exclusions_in_force,
    recognizable_priors,
)
from huren.domain.results import (
    ObservationValue,
    ResultStatus,
    StoredResult,
    ValueType,
    number_text,
)
from huren.services.catalog import Catalog, MasterDataRecords
from huren.services.ports import IdentifierVault
from huren.services.recognition import PRIORS_PER_ITEM


# ---------------------------------------------------------------- reference data input
@dataclass(frozen=True, slots=True)
class AnalyteSpec:
    """One analyte a lab item reports, with the adult reference interval."""

    code: str
    name: str
    loinc: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    decimals: int = 0
    qualitative: bool = False
    normal_text: str = ""
    abnormal_text: str = ""
    abnormal_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class CitySpec:
    code: str
    name: str
    province: str
    division: str
    counties: tuple[tuple[str, str], ...]  # (GB/T 2260 code, name)
    # Codes to fall back on when no county code was in use in a person's birth year (the
    # 身份证 address check knows when each code was assigned): city, province, legacy.
    fallback_divisions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReferenceData:
    """What the generator reads (``huren.adapters.reference_data.synth_reference``)."""

    scopes: tuple[Scope, ...]
    cities: tuple[CitySpec, ...]
    municipalities: frozenset[str]
    items: tuple[Item, ...]
    analytes: Mapping[str, tuple[AnalyteSpec, ...]]
    findings: Mapping[str, tuple[tuple[str, str], ...]]  # group → (findings, conclusion)
    body_part_findings: Mapping[str, str]
    negative_reasons: tuple[NegativeReason, ...]
    mark_symbols: tuple[MarkSymbol, ...]


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class SynthConfig:
    seed: int
    results: int
    until: datetime  # the end of the generated history (the clock's now)
    institutions: int = 300
    patients: int = 0  # 0: one patient for every eight results (at least 50)
    days: int = 730  # about two years of history
    batch_size: int = 5000  # results per batch handed to the sink

    @property
    def patient_count(self) -> int:
        return self.patients or max(50, self.results // 8)

    @property
    def start(self) -> datetime:
        return self.until - timedelta(days=self.days)


# Shares of institutions by province: the home province of the demo node (河北) largest.
PROVINCE_WEIGHTS: Mapping[str, float] = {
    "HE": 0.30,
    "BJ": 0.06,
    "TJ": 0.05,
    "SH": 0.08,
    "JS": 0.07,
    "ZJ": 0.06,
    "AH": 0.05,
    "GS": 0.12,
    "SC": 0.05,
    "CQ": 0.04,
    "SN": 0.03,
    "QH": 0.02,
    "NX": 0.02,
    "XJ": 0.02,
    "NM": 0.03,
}

LEVEL_SHARES: Sequence[tuple[InstitutionLevel, float]] = (
    (InstitutionLevel.TERTIARY, 0.14),
    (InstitutionLevel.SECONDARY, 0.30),
    (InstitutionLevel.PRIMARY, 0.48),
    (InstitutionLevel.UNRATED, 0.08),
)

# Evaluation cycles (R8): 沪 ≥ every 6 months (沪卫医〔2024〕135号 四(六)); 甘 yearly
# (甘卫医政函〔2025〕16号 三(一)2); others yearly.
CYCLE_DAYS: Mapping[str, int] = {"SH": 182}
DEFAULT_CYCLE_DAYS = 365

# Regions and agreements a province's tertiary hospitals may join.
WIDER_SCOPES: Mapping[str, tuple[str, ...]] = {
    "HE": ("JJJ",),
    "BJ": ("JJJ",),
    "TJ": ("JJJ",),
    "SH": ("CSJ",),
    "JS": ("CSJ",),
    "ZJ": ("CSJ",),
    "AH": ("CSJ",),
    "SC": ("CY", "GS-8P"),
    "CQ": ("CY", "GS-8P"),
    "GS": ("GS-8P",),
    "SN": ("GS-8P",),
    "QH": ("GS-8P",),
    "NX": ("GS-8P",),
    "XJ": ("GS-8P",),
    "NM": ("GS-8P",),
}

LAB_GROUPS = ("血液", "生化", "免疫", "凝血", "尿液")
BASIC_LAB_GROUPS = ("血液", "尿液", "生化")
IMAGING_GROUPS_BY_LEVEL: Mapping[InstitutionLevel, tuple[str, ...]] = {
    InstitutionLevel.TERTIARY: ("CT", "MR", "DR", "乳腺X线", "消化道造影"),
    InstitutionLevel.SECONDARY: ("CT", "DR", "MR", "乳腺X线"),
    InstitutionLevel.PRIMARY: ("DR",),
    InstitutionLevel.UNRATED: (),
}

# Items a 一级 institution or 卫生院 typically performs.
BASIC_ITEMS = frozenset(
    {
        "JY-XY-001",
        "JY-NY-001",
        "JY-SH-001",
        "JY-SH-002",
        "JY-SH-003",
        "JY-SH-005",
        "JY-SH-010",
        "JY-NY-002",
        "YX-DR-001",
        "YX-DR-002",
        "QT-ECG-001",
        "QT-US-001",
    }
)
ADVANCED_ITEMS = frozenset(
    {"YX-CT-010", "YX-MR-013", "YX-MR-014", "YX-MR-019", "JY-MY-033", "JY-MY-029"}
)
MALE_ONLY = frozenset({"JY-MY-015", "JY-MY-016", "YX-MR-013"})
FEMALE_ONLY = frozenset(
    {"JY-MY-012", "JY-MY-027", "JY-NY-003", "YX-MG-001", "YX-MG-002", "YX-MR-014", "JY-MY-014"}
)

# How often an item is ordered, relative to the others (common panels dominate).
ITEM_FREQUENCY: Mapping[str, float] = {
    "JY-XY-001": 30,
    "JY-SH-001": 14,
    "JY-SH-002": 14,
    "JY-SH-003": 9,
    "JY-SH-004": 8,
    "JY-SH-005": 9,
    "JY-NY-001": 14,
    "JY-MY-019": 6,
    "JY-NX-001": 7,
    "JY-SH-010": 5,
    "JY-MY-005": 4,
    "YX-CT-001": 10,
    "YX-DR-001": 10,
    "YX-CT-002": 5,
    "YX-MR-001": 3,
    "YX-MR-006": 2,
    "QT-ECG-001": 10,
    "QT-US-001": 6,
}
DEFAULT_FREQUENCY = 1.0

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN_CHARS = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红建国建华志强文斌海燕丹波宁欣怡梓涵子轩浩然宇辰佳怡雨萱思远晨阳俊杰嘉欣婷颖鹏飞振宇金凤淑珍玉梅凤英秀珍"
STREETS = (
    "建设路",
    "中山路",
    "人民路",
    "解放路",
    "和平路",
    "胜利路",
    "新华路",
    "东风路",
    "长江路",
    "民主路",
    "光明路",
    "文化路",
)
TOWNS = (
    "城关镇",
    "东关镇",
    "西关镇",
    "新城镇",
    "南关镇",
    "北关镇",
    "河口镇",
    "马庄镇",
    "王庄镇",
    "李村镇",
    "龙泉镇",
    "石桥镇",
)

CLINICAL_DEPARTMENTS = (
    ("XNK", "心血管内科"),
    ("HXK", "呼吸与危重症医学科"),
    ("XHK", "消化内科"),
    ("SJNK", "神经内科"),
    ("NFMK", "内分泌科"),
    ("PWK", "普通外科"),
    ("GK", "骨科"),
    ("FCK", "妇产科"),
    ("EK", "儿科"),
    ("JZK", "急诊科"),
)
SERVICE_DEPARTMENTS = (
    ("JYK", "检验科"),
    ("FSK", "放射科"),
    ("CSK", "超声医学科"),
    ("XDT", "心电图室"),
)


# ---------------------------------------------------------------- generated world
@dataclass(frozen=True, slots=True)
class Department:
    institution: str
    code: str
    name: str


@dataclass
class SynthWorld:
    """Master data of the synthetic world plus what the result generator needs."""

    records: MasterDataRecords
    departments: list[Department]
    alliance_leads: dict[str, str]  # alliance scope → lead institution
    offered: dict[str, tuple[str, ...]]  # institution → items it performs
    local_codes: dict[tuple[str, str], tuple[str, str]]  # (inst, item) → (local code, name)
    city_of: dict[str, str]  # institution → city scope
    institutions_by_city: dict[str, list[str]] = field(default_factory=dict)
    institutions_by_province: dict[str, list[str]] = field(default_factory=dict)


def _weighted_counts(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by weight (largest remainder), deterministic."""
    s = sum(weights.values())
    raw = {k: total * w / s for k, w in weights.items()}
    counts = {k: int(v) for k, v in raw.items()}
    rest = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (raw[k] - counts[k], k), reverse=True)[:rest]:
        counts[k] += 1
    return counts


def _province_short(name: str) -> str:
    for suffix in ("维吾尔自治区", "回族自治区", "自治区", "省", "市"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _city_short(name: str) -> str:
    for suffix in ("回族自治州", "藏族自治州", "市", "区"):
        if name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix)]
    return name


class _Names:
    """Unique institution names: a template is used once per place."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def take(self, candidates: Sequence[str]) -> str:
        for c in candidates:
            if c not in self.used:
                self.used.add(c)
                return c
        base = candidates[-1]
        n = 2
        while f"{base}（{n}院区）" in self.used:
            n += 1
        name = f"{base}（{n}院区）"
        self.used.add(name)
        return name


def _institution_name(
    rng: random.Random,
    names: _Names,
    level: InstitutionLevel,
    city: CitySpec,
    province_name: str,
    municipality: bool,
    is_capital: bool,
) -> tuple[str, str, bool]:
    """(name, address, public) for an institution of ``level`` in ``city``."""
    _division, county = rng.choice(city.counties)
    cshort = _city_short(city.name)
    pshort = _province_short(province_name)
    street = rng.choice(STREETS)
    address = (
        f"{province_name}{'' if municipality else city.name}{county}{street}{rng.randint(1, 399)}号"
    )
    if level is InstitutionLevel.TERTIARY:
        cands = [
            f"{cshort}市第一医院",
            f"{cshort}市中心医院",
            f"{cshort}市人民医院",
            f"{cshort}市中医院",
        ]
        if municipality:
            cands = [f"{pshort}市{city.name}中心医院", f"{pshort}市第{rng.randint(1, 9)}人民医院"]
        if is_capital or municipality:
            cands = [
                f"{pshort}省人民医院" if not municipality else f"{pshort}市人民医院",
                f"{pshort}医科大学第一附属医院",
                f"{pshort}医科大学第二附属医院",
                f"{pshort}省肿瘤医院" if not municipality else f"{pshort}市肿瘤医院",
                *cands,
            ]
        return names.take(cands), address, True
    if level is InstitutionLevel.SECONDARY:
        cands = [
            f"{county}人民医院",
            f"{county}中医医院",
            f"{cshort}市第二医院",
            f"{cshort}市第三医院",
            f"{county}妇幼保健院",
            f"{cshort}市妇幼保健院",
        ]
        if municipality:
            cands = [
                f"{pshort}市{county}人民医院",
                f"{pshort}市{county}中医医院",
                f"{pshort}市{county}妇幼保健院",
            ]
        return names.take(cands), address, rng.random() < 0.9
    if level is InstitutionLevel.PRIMARY:
        if county.endswith("区"):
            cands = [f"{county}{s}社区卫生服务中心" for s in rng.sample(STREETS, len(STREETS))]
        else:
            cands = [f"{county}{t}卫生院" for t in rng.sample(TOWNS, len(TOWNS))]
        return names.take(cands), address, True
    cands = [f"{cshort}康华医学检验实验室", f"{cshort}仁和医学影像诊断中心", f"{cshort}博爱门诊部"]
    return names.take(cands), address, False


def _cycles(start: date, end: date, cycle_days: int) -> list[tuple[date, date]]:
    """Evaluation windows covering [start, end], each ``cycle_days`` long."""
    windows = []
    current = start
    while current <= end:
        last = current + timedelta(days=cycle_days - 1)
        windows.append((current, last))
        current = last + timedelta(days=1)
    return windows


def _local_code_scheme(index: int, inst_index: int, item: Item) -> tuple[str, str]:
    """An institution's own code for an item: each hospital numbers its LIS/RIS codes its
    own way, so local codes differ from the unified ones (对码)."""
    style = inst_index % 4
    if style == 0:
        return f"{'LIS' if item.category is Category.LAB else 'RIS'}{1000 + index:05d}", item.name
    if style == 1:
        return f"{inst_index % 97:02d}{index:04d}", f"{item.name}（院内）"
    if style == 2:
        return f"{item.code.replace('-', '')}L", item.name
    return f"X{(index * 37 + inst_index) % 100000:05d}-{index}", f"{item.name}检查"


def generate_world(ref: ReferenceData, cfg: SynthConfig) -> SynthWorld:
    """The master data of the synthetic world. Deterministic for ``cfg.seed``."""
    rng = random.Random(f"world:{cfg.seed}")
    scopes = list(ref.scopes)
    scope_by_code = {s.code: s for s in scopes}
    provinces = [p for p in PROVINCE_WEIGHTS if p in scope_by_code]
    cities_by_province: dict[str, list[CitySpec]] = {}
    for c in ref.cities:
        cities_by_province.setdefault(c.province, []).append(c)

    counts = _weighted_counts(cfg.institutions, {p: PROVINCE_WEIGHTS[p] for p in provinces})
    names = _Names()
    institutions: list[Institution] = []
    city_of: dict[str, str] = {}
    per_division: dict[str, int] = {}
    for prov in provinces:
        pcities = cities_by_province.get(prov, [])
        if not pcities or counts[prov] == 0:
            continue
        n = counts[prov]
        level_counts = _weighted_counts(n, {lv.value: w for lv, w in LEVEL_SHARES})
        # Every province gets a tertiary hospital if it gets any institution.
        if level_counts["tertiary"] == 0:
            level_counts["tertiary"] = 1
            biggest = max(("primary", "secondary", "unrated"), key=lambda k: level_counts[k])
            level_counts[biggest] -= 1
        municipality = prov in ref.municipalities
        for level_value, k in level_counts.items():
            level = InstitutionLevel(level_value)
            for j in range(k):
                # Tertiary hospitals cluster in the capital (the first city listed).
                if level is InstitutionLevel.TERTIARY and j < max(1, k // 2):
                    city = pcities[0]
                else:
                    city = pcities[rng.randrange(len(pcities))]
                name, address, public = _institution_name(
                    rng,
                    names,
                    level,
                    city,
                    scope_by_code[prov].name,
                    municipality,
                    city is pcities[0],
                )
                division = city.division if not municipality else city.counties[0][0]
                seq = per_division.get(division, 0) + 1
                per_division[division] = seq
                code = f"H{division}{seq:03d}"
                institutions.append(Institution(code, name, level, public, city.code, address))
                city_of[code] = city.code

    inst_by_code = {i.code: i for i in institutions}
    by_city: dict[str, list[str]] = {}
    by_province: dict[str, list[str]] = {}
    province_of_city = {c.code: c.province for c in ref.cities}
    for inst in institutions:
        by_city.setdefault(inst.jurisdiction, []).append(inst.code)
        by_province.setdefault(province_of_city[inst.jurisdiction], []).append(inst.code)

    # Departments
    departments: list[Department] = []
    for inst in institutions:
        services = (
            SERVICE_DEPARTMENTS
            if inst.level is not InstitutionLevel.UNRATED
            else SERVICE_DEPARTMENTS[:2]
        )
        clinical = (
            CLINICAL_DEPARTMENTS
            if inst.level in (InstitutionLevel.TERTIARY, InstitutionLevel.SECONDARY)
            else CLINICAL_DEPARTMENTS[:2]
            if inst.level is InstitutionLevel.PRIMARY
            else ()
        )
        for code, dname in (*services, *clinical):
            departments.append(Department(inst.code, code, dname))

    # Alliances: a 城市医疗集团 led by a tertiary hospital per city that has one, and a
    # 县域医共体 led by a secondary (county) hospital; members are the lower levels nearby.
    alliances: list[Scope] = []
    leads: dict[str, str] = {}
    for city_code in sorted(by_city):
        members = [inst_by_code[c] for c in by_city[city_code]]
        tertiary = [m for m in members if m.level is InstitutionLevel.TERTIARY]
        secondary = [m for m in members if m.level is InstitutionLevel.SECONDARY]
        primary = [m for m in members if m.level is InstitutionLevel.PRIMARY]
        n_group = 0
        for lead_list, suffix, pool in (
            (tertiary, "医联体", secondary + primary),
            (secondary, "医共体", primary),
        ):
            if not lead_list or not pool:
                continue
            lead = lead_list[0]
            chosen = [m for m in pool if m.code != lead.code and rng.random() < 0.6]
            if not chosen:
                continue
            n_group += 1
            code = f"{city_code}-YLT{n_group}"
            alliances.append(
                Scope(
                    code,
                    f"{lead.name}{suffix}",
                    ScopeKind.ALLIANCE,
                    parent=city_code,
                    member_institutions=frozenset({lead.code, *(m.code for m in chosen)}),
                    abbreviation=f"YLT{n_group}",
                )
            )
            leads[code] = lead.code

    # Items offered, by level
    items = list(ref.items)
    offered: dict[str, tuple[str, ...]] = {}
    for inst in institutions:
        imaging_groups = set(IMAGING_GROUPS_BY_LEVEL[inst.level])
        if inst.level is InstitutionLevel.SECONDARY and rng.random() < 0.4:
            imaging_groups.discard("MR")
        codes = []
        for it in items:
            if inst.level is InstitutionLevel.PRIMARY and it.code not in BASIC_ITEMS:
                continue
            if inst.level is InstitutionLevel.SECONDARY and it.code in ADVANCED_ITEMS:
                continue
            if it.category is Category.IMAGING and it.group not in imaging_groups:
                continue
            if inst.level is InstitutionLevel.UNRATED and it.category is Category.OTHER:
                continue
            codes.append(it.code)
        offered[inst.code] = tuple(codes)

    # 对码: local codes per institution; most items mapped, a few left unmapped on purpose
    # (R1.4: unmapped results are stored and flagged, never dropped).
    code_maps: list[CodeMapping] = []
    local_codes: dict[tuple[str, str], tuple[str, str]] = {}
    item_index = {it.code: n for n, it in enumerate(items)}
    item_by_code = {it.code: it for it in items}
    for inst_index, inst in enumerate(institutions):
        for code in offered[inst.code]:
            local, lname = _local_code_scheme(item_index[code], inst_index, item_by_code[code])
            local_codes[(inst.code, code)] = (local, lname)
            if rng.random() < 0.97:
                code_maps.append(CodeMapping(inst.code, local, code, lname))

    quals = _qualifications(
        rng, cfg, institutions, province_of_city, alliances, offered, item_by_code
    )

    # Item list versions: each province publishes a list; a first version a year before the
    # history starts and a second, larger one halfway through (half-yearly publication, 甘).
    item_lists: list[ItemListVersion] = []
    switch = (cfg.start + timedelta(days=cfg.days // 2)).date()
    first_from = (cfg.start - timedelta(days=365)).date()
    all_codes = [it.code for it in items]
    for prov in provinces:
        first = frozenset(c for c in all_codes if rng.random() < 0.85)
        item_lists.append(ItemListVersion(prov, f"{first_from.year}-1", first_from, switch, first))
        item_lists.append(
            ItemListVersion(
                prov, f"{switch.year}-{switch.month:02d}", switch, None, frozenset(all_codes)
            )
        )

    records = MasterDataRecords(
        scopes=scopes + alliances,
        institutions=institutions,
        items=items,
        item_lists=item_lists,
        qualifications=quals,
        symbols=list(ref.mark_symbols),
        negative_reasons=list(ref.negative_reasons),
        exclusions=[],
        code_maps=code_maps,
    )
    return SynthWorld(
        records=records,
        departments=departments,
        alliance_leads=leads,
        offered=offered,
        local_codes=local_codes,
        city_of=city_of,
        institutions_by_city=by_city,
        institutions_by_province=by_province,
    )


def _qualifications(
    rng: random.Random,
    cfg: SynthConfig,
    institutions: Sequence[Institution],
    province_of_city: Mapping[str, str],
    alliances: Sequence[Scope],
    offered: Mapping[str, tuple[str, ...]],
    items: Mapping[str, Item],
) -> list[Qualification]:
    """Qualifications by rule, per evaluation window.

    Statuses are chosen so that the catalog as written gives, at every moment, the marks
    that were in force then: a failed window carries FAILED; a suspension splits a window
    into an ACTIVE part and a SUSPENDED part; an EXPIRED qualification is a window that
    ended before the history starts and was not renewed."""
    out: list[Qualification] = []
    first = (cfg.start - timedelta(days=120)).date()
    last = (cfg.until + timedelta(days=180)).date()
    T, S = InstitutionLevel.TERTIARY, InstitutionLevel.SECONDARY

    def windows_for(inst: Institution, group: str, scope: str, basis: QualificationBasis) -> None:
        prov = province_of_city[inst.jurisdiction]
        cycle = CYCLE_DAYS.get(prov, DEFAULT_CYCLE_DAYS)
        offset = timedelta(days=rng.randrange(cycle))
        wins = _cycles(first - offset, last, cycle)
        if rng.random() < 0.05:  # an older evaluation that lapsed (过期未复评)
            lapsed_to = wins[0][0] - timedelta(days=1)
            out.append(
                Qualification(
                    inst.code,
                    scope,
                    basis,
                    lapsed_to - timedelta(days=cycle - 1),
                    lapsed_to,
                    QualificationStatus.EXPIRED,
                    group=group,
                )
            )
        for vf, vt in wins:
            roll = rng.random()
            if roll < 0.05:  # 评价不合格: no mark (沪 四(四); 甘 三(二)4)
                out.append(
                    Qualification(
                        inst.code, scope, basis, vf, vt, QualificationStatus.FAILED, group=group
                    )
                )
            elif roll < 0.07:  # suspended midway by the authority (沪: 可暂停)
                cut = vf + timedelta(days=rng.randrange(30, max(31, (vt - vf).days)))
                out.append(
                    Qualification(
                        inst.code,
                        scope,
                        basis,
                        vf,
                        cut - timedelta(days=1),
                        QualificationStatus.ACTIVE,
                        group=group,
                    )
                )
                out.append(
                    Qualification(
                        inst.code, scope, basis, cut, vt, QualificationStatus.SUSPENDED, group=group
                    )
                )
            else:
                out.append(
                    Qualification(
                        inst.code, scope, basis, vf, vt, QualificationStatus.ACTIVE, group=group
                    )
                )

    for inst in institutions:
        prov = province_of_city[inst.jurisdiction]
        groups_offered = {items[c].group for c in offered[inst.code]}
        imaging = sorted(
            g for g in groups_offered if g in ("CT", "MR", "DR", "乳腺X线", "消化道造影")
        )
        other = sorted(g for g in groups_offered if g in ("心电", "超声"))
        labs = sorted(g for g in groups_offered if g in LAB_GROUPS)
        shanghai = prov == "SH"
        imaging_basis = (
            QualificationBasis.SPOT_CHECK if shanghai else QualificationBasis.QC_EVALUATION
        )
        # Imaging: 冀 二(二)1 every level (三级 by the provincial, 二级及以下 by the city centre).
        for g in imaging + other:
            if inst.level is InstitutionLevel.UNRATED and rng.random() < 0.5:
                continue
            windows_for(inst, g, prov, imaging_basis)
        # Lab: 冀 二(二)2 二级 and above; lower levels only after passing EQA.
        for g in labs:
            if inst.level in (T, S) or rng.random() < 0.15:
                windows_for(inst, g, prov, QualificationBasis.EQA)
        # Regions and agreements for some tertiary (and a few secondary) hospitals.
        if inst.level is T or (inst.level is S and rng.random() < 0.1):
            for wider in WIDER_SCOPES.get(prov, ()):
                if rng.random() < (0.5 if inst.level is T else 0.3):
                    for g in (imaging + labs)[: rng.randint(1, max(1, len(imaging + labs)))]:
                        basis = QualificationBasis.EQA if g in LAB_GROUPS else imaging_basis
                        windows_for(inst, g, wider, basis)
    # 冀 二(二)3: inside an alliance, members recognise each other after the lead's comparison.
    for alliance in alliances:
        for member in sorted(alliance.member_institutions):
            groups = sorted({items[c].group for c in offered[member]})
            for g in groups:
                windows_for(
                    next(i for i in institutions if i.code == member),
                    g,
                    alliance.code,
                    QualificationBasis.ALLIANCE_COMPARISON,
                )
    return out


# ---------------------------------------------------------------- patients
@dataclass(frozen=True, slots=True)
class PatientProfile:
    """What results need to know about patient ``index``; derived, never stored in memory."""

    index: int
    city: str
    sex: str  # M | F
    birth: date


class PatientDirectory:
    """Patient profiles as a pure function of (seed, index): the result generator asks for
    any patient without holding all of them in memory."""

    def __init__(
        self,
        seed: int,
        count: int,
        world: SynthWorld,
        ref: ReferenceData,
        until: date,
        first_index: int = 0,
    ) -> None:
        self.seed = seed
        self.count = count
        self.first_index = first_index  # > 0 when appending to patients generated before
        self.until = until
        city_weights: dict[str, int] = {}
        for city in world.city_of.values():  # people live where the institutions are
            city_weights[city] = city_weights.get(city, 0) + 1
        self._cities = sorted(city_weights)
        cum = 0
        self._cum: list[int] = []
        for c in self._cities:
            cum += city_weights[c]
            self._cum.append(cum)
        self._total = cum
        self._city_spec = {c.code: c for c in ref.cities}

    def profile(self, index: int) -> PatientProfile:
        r = random.Random(self.seed * 1_000_003 + index)
        pick = r.randrange(self._total)
        lo, hi = 0, len(self._cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._cum[mid] > pick:
                hi = mid
            else:
                lo = mid + 1
        sex = "M" if r.random() < 0.49 else "F"
        # Patients skew old: age from a triangular distribution peaking in the sixties.
        age_days = int(r.triangular(0, 95, 62) * 365.25)
        birth = self.until - timedelta(days=age_days + r.randrange(365))
        return PatientProfile(index, self._cities[lo], sex, birth)

    def city(self, code: str) -> CitySpec:
        return self._city_spec[code]


def chinese_name(r: random.Random, sex: str) -> str:
    surname = SURNAMES[min(int(r.expovariate(1 / 25)), len(SURNAMES) - 1)]
    given = "".join(r.choice(GIVEN_CHARS) for _ in range(1 if r.random() < 0.3 else 2))
    return surname + given


@functools.lru_cache(maxsize=65536)
def _division_in_use(county: str, year: int) -> bool:
    """Was ``county`` an address code in ``year``, as the 身份证 check sees it?"""
    probe = f"{county}{year}0101001"
    try:
        validate_national_id(probe + national_id_check_digit(probe))
    except ValidationFailed:
        return False
    return True


def national_id(r: random.Random, city: CitySpec, birth: date, sex: str, taken: set[int]) -> str:
    """A synthetic 18-digit 居民身份证 number with a valid check digit (GB 11643-1999):
    6-digit address code in use in the birth year, 8-digit birth date, 3-digit sequence
    (odd for men), check character. Valid by ``validate_national_id`` as intake checks."""
    first = r.choice(city.counties)[0]
    candidates = [first, *(c for c, _ in city.counties if c != first), *city.fallback_divisions]
    seq = r.randrange(500)
    for county in candidates:
        if not _division_in_use(county, birth.year):
            continue
        for _ in range(500):
            order = seq * 2 + (1 if sex == "M" else 0)
            first17 = f"{county}{birth:%Y%m%d}{order:03d}"
            key = int(first17)
            if key not in taken:
                taken.add(key)
                return first17 + national_id_check_digit(first17)
            seq = (seq + 1) % 500
    raise ValueError(f"{city.code}: 没有可用的身份证地址码（{birth:%Y}年）")


@dataclass(frozen=True, slots=True)
class SynthPatient:
    id: int
    name: str
    sex: str
    birth: date
    national_id: str
    insurance_no: str  # "" when the patient has none recorded


def generate_patients(directory: PatientDirectory, first_id: int) -> Iterator[SynthPatient]:
    """Patients ``0 .. count-1`` with ids from ``first_id``, in order."""
    taken: set[int] = set()
    for j in range(directory.count):
        k = directory.first_index + j
        p = directory.profile(k)
        r = random.Random(f"patient:{directory.seed}:{k}")
        name = chinese_name(r, p.sex)
        nid = national_id(r, directory.city(p.city), p.birth, p.sex, taken)
        insurance = f"{nid[:4]}{r.randrange(10**6):06d}{k:010d}" if r.random() < 0.6 else ""
        yield SynthPatient(first_id + j, name, p.sex, p.birth, nid, insurance)


# ---------------------------------------------------------------- rows
# Column orders of the rows handed to the sink (tables in huren.adapters.db.tables).
PATIENT_COLUMNS = (
    "id",
    "name_enc",
    "name_masked",
    "sex",
    "birth_date",
    "merged_into",
    "created_at",
)
IDENTIFIER_COLUMNS = ("patient_id", "kind", "assigner", "value_hash", "value_enc", "value_masked")
RESULT_COLUMNS = (
    "id", "patient_id", "institution_code", "department", "report_no", "local_code", "local_name",
    "item_code", "category", "status", "performed_at", "issued_at", "performer", "signer",
    "findings", "conclusion", "accession_number", "study_uid", "mark_scope", "mark_symbol",
    "version", "content_hash", "source_message_id", "updated_at", "comment",
)  # fmt: skip
VERSION_COLUMNS = ("result_id", "version", "status", "recorded_at", "reason", "snapshot")
OBSERVATION_COLUMNS = (
    "result_id", "seq", "code", "loinc", "name", "value_type", "value_num", "value_text",
    "unit", "ref_low", "ref_high", "ref_text", "flag", "comment",
)  # fmt: skip
# Point-of-care activity, column for column as services/recognition.py records it.
REMINDER_COLUMNS = (
    "id", "at", "channel", "institution_code", "department", "clinician", "patient_id",
    "item_code", "local_code", "candidates", "recognizable", "request_id",
)  # fmt: skip
DECISION_COLUMNS = (
    "id", "reminder_id", "at", "institution_code", "department", "clinician", "patient_id",
    "item_code", "result_id", "result_version", "action", "reason_code", "reason_text",
    "saved_fen", "emr_text", "patient_explanation", "external_report",
)  # fmt: skip

Row = tuple[Any, ...]


@dataclass
class Batch:
    """Rows for one write, in foreign-key order."""

    patients: list[Row] = field(default_factory=list)
    identifiers: list[Row] = field(default_factory=list)
    results: list[Row] = field(default_factory=list)
    versions: list[Row] = field(default_factory=list)
    observations: list[Row] = field(default_factory=list)
    reminders: list[Row] = field(default_factory=list)
    decisions: list[Row] = field(default_factory=list)

    def tables(self) -> list[tuple[str, tuple[str, ...], list[Row]]]:
        return [
            ("patient", PATIENT_COLUMNS, self.patients),
            ("patient_identifier", IDENTIFIER_COLUMNS, self.identifiers),
            ("result", RESULT_COLUMNS, self.results),
            ("result_version", VERSION_COLUMNS, self.versions),
            ("observation", OBSERVATION_COLUMNS, self.observations),
            ("reminder", REMINDER_COLUMNS, self.reminders),
            ("decision", DECISION_COLUMNS, self.decisions),
        ]

    @property
    def rows(self) -> int:
        return sum(len(rows) for _, _, rows in self.tables())


def patient_rows(
    p: SynthPatient, vault: IdentifierVault, created_at: datetime
) -> tuple[Row, list[Row]]:
    """The patient row and identifier rows exactly as the intake path stores them
    (services/patients.PatientMatcher: kind value string, assigner "" except MRN, value
    hashed with the vault key, encrypted, masked)."""
    row: Row = (p.id, vault.encrypt(p.name), mask_name(p.name), p.sex, p.birth, None, created_at)
    idents: list[Row] = []
    for kind, value in (
        (IdentifierKind.NATIONAL_ID, p.national_id),
        (IdentifierKind.INSURANCE, p.insurance_no),
    ):
        if not value:
            continue
        k = str(kind)
        idents.append(
            (p.id, k, "", vault.lookup_hash(k, "", value), vault.encrypt(value), mask_id(value))
        )
    return row, idents


# ---------------------------------------------------------------- results
DOCTOR_NAMES_PER_INSTITUTION = 6


@dataclass(frozen=True, slots=True)
class _Obs:
    code: str
    loinc: str
    name: str
    value_type: str
    value_num: float | None
    value_text: str
    unit: str
    ref_low: float | None
    ref_high: float | None
    ref_text: str
    flag: str
    comment: str = ""

    def json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "code": self.code,
            "name": self.name,
            "value_type": self.value_type,
            "value_num": self.value_num,
            "value_text": self.value_text,
            "unit": self.unit,
            "ref_low": self.ref_low,
            "ref_high": self.ref_high,
            "ref_text": self.ref_text,
            "flag": self.flag,
            "loinc": self.loinc,
        }
        if self.comment:  # as intake stores it: an empty comment left out
            out["comment"] = self.comment
        return out


# The comments (备注) laboratories attach, at rates of the order seen in Chinese LIS
# exports: haemolysis on the analytes it raises (potassium, LDH, AST, CK, iron), a
# re-test on a value far outside its range, and now and then a remark on the specimen
# for the whole report. They decide whether a prior value may be accepted, so the
# synthetic world carries some (the points of care and the benchmarks show them).
HAEMOLYSIS_SENSITIVE = frozenset({"K", "LDH", "AST", "CK", "FE"})
HAEMOLYSIS_RATE, RETEST_RATE, REPORT_REMARK_RATE = 0.03, 0.3, 0.005
HAEMOLYSIS_COMMENT = "标本轻度溶血，可能影响结果，请结合临床"
RETEST_COMMENT = "结果已复查"
REPORT_REMARKS = (
    "标本采集至送检超过2小时",
    "标本量偏少，已优先检测主要项目",
    "患者采血前未空腹",
)


def _commented(r: random.Random, obs: list[_Obs]) -> tuple[list[_Obs], str]:
    """``obs`` with the comments a laboratory would attach, and the report's remark."""
    out = []
    for o in obs:
        comment = ""
        if o.code in HAEMOLYSIS_SENSITIVE and r.random() < HAEMOLYSIS_RATE:
            comment = HAEMOLYSIS_COMMENT
        elif o.value_num is not None and o.ref_low is not None and o.ref_high is not None:
            span = o.ref_high - o.ref_low
            far = o.value_num > o.ref_high + span / 2 or o.value_num < o.ref_low - span / 4
            if far and r.random() < RETEST_RATE:
                comment = RETEST_COMMENT
        out.append(replace(o, comment=comment) if comment else o)
    remark = r.choice(REPORT_REMARKS) if obs and r.random() < REPORT_REMARK_RATE else ""
    return out, remark


def _lab_value(r: random.Random, a: AnalyteSpec) -> _Obs:
    if a.qualitative:
        abnormal = r.random() < a.abnormal_rate
        text = a.abnormal_text if abnormal else a.normal_text
        flag = "A" if abnormal and a.normal_text in ("阴性", "阳性") else ""
        return _Obs(
            a.code,
            a.loinc,
            a.name,
            str(ValueType.ST),
            None,
            text,
            a.unit,
            None,
            None,
            a.normal_text,
            flag,
        )
    low = a.low if a.low is not None else 0.0
    high = a.high if a.high is not None else low + 1.0
    span = high - low
    roll = r.random()
    if roll < 0.08:
        value = high + span * r.uniform(0.02, 0.9)
    elif roll < 0.13 and low > 0:
        value = low - min(low * 0.6, span * r.uniform(0.02, 0.4))
    else:
        value = low + span * min(max(r.gauss(0.5, 0.2), 0.02), 0.98)
    value = round(value, a.decimals)
    flag = "H" if value > high else "L" if value < low else "N"
    ref_text = f"{low:g}-{high:g}"
    return _Obs(
        a.code, a.loinc, a.name, str(ValueType.NM), value, "", a.unit, a.low, a.high, ref_text, flag
    )


class ResultGenerator:
    """Streams results in time order. Marks are computed at issue time with the
    ``Catalog`` of the world (``Catalog.mark_for``), cached per day because qualification
    windows are whole days."""

    def __init__(
        self, world: SynthWorld, ref: ReferenceData, cfg: SynthConfig, directory: PatientDirectory
    ) -> None:
        self.world = world
        self.ref = ref
        self.cfg = cfg
        self.directory = directory
        self.catalog = Catalog.build(world.records, cfg.until)
        self.items = {it.code: it for it in world.records.items}
        self.inst = {i.code: i for i in world.records.institutions}
        self.province_of = {c.code: c.province for c in ref.cities}
        self._mark_cache: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        self._mark_day: date | None = None
        # per institution: item codes and cumulative weights
        self._menu: dict[str, tuple[list[str], list[float]]] = {}
        for inst, codes in world.offered.items():
            weights, cum = [], 0.0
            for c in codes:
                cum += ITEM_FREQUENCY.get(c, DEFAULT_FREQUENCY)
                weights.append(cum)
            self._menu[inst] = (list(codes), weights)
        self._capitals = {
            prov: [c for c in codes if self.inst[c].level is InstitutionLevel.TERTIARY] or codes
            for prov, codes in world.institutions_by_province.items()
        }
        self._all = sorted(self.inst)
        # Comments draw from their own stream: the world of a seed is the same with them.
        self._comments = random.Random(f"comments:{cfg.seed}")
        rng = random.Random(f"doctors:{cfg.seed}")
        self._doctors = {
            code: [chinese_name(rng, "M") for _ in range(DOCTOR_NAMES_PER_INSTITUTION)]
            for code in self._all
        }

    def _mark(
        self, institution: str, item_code: str, issued_at: datetime
    ) -> tuple[str | None, str | None]:
        day = issued_at.date()
        if day != self._mark_day:
            self._mark_cache.clear()
            self._mark_day = day
        key = (institution, item_code)
        cached = self._mark_cache.get(key)
        if cached is None:
            mark = self.catalog.mark_for(institution, item_code, issued_at)
            cached = (mark.scope, mark.symbol) if mark else (None, None)
            self._mark_cache[key] = cached
        return cached

    def _institution_for(self, r: random.Random, city: str) -> str:
        roll = r.random()
        if roll < 0.7:
            local = self.world.institutions_by_city.get(city)
            if local:
                return r.choice(local)
        prov = self.province_of[city]
        if roll < 0.92:
            return r.choice(self._capitals.get(prov) or self._all)
        return r.choice(self._all)

    def _item_for(self, r: random.Random, inst: str, sex: str) -> str | None:
        codes, cum = self._menu[inst]
        if not codes:
            return None
        for _ in range(4):
            x = r.random() * cum[-1]
            lo, hi = 0, len(cum) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if cum[mid] > x:
                    hi = mid
                else:
                    lo = mid + 1
            code = codes[lo]
            if (sex == "M" and code in FEMALE_ONLY) or (sex == "F" and code in MALE_ONLY):
                continue
            return code
        return codes[0]

    def results(self, first_id: int) -> Iterator[tuple[list[Row], list[Row], list[Row]]]:
        """Yields (result row, version rows, observation rows) per result, oldest first."""
        cfg = self.cfg
        total = cfg.results
        start = cfg.start
        span = (cfg.until - start).total_seconds() - 3 * 86400  # leave time to issue
        r = random.Random(f"results:{cfg.seed}:{first_id}")
        n_patients = self.directory.count
        for i in range(total):
            rid = first_id + i
            # Stratified in time so the stream is in order; working hours in 北京时间.
            t = start + timedelta(seconds=span * (i + r.random()) / total)
            local = t.astimezone(CHINA_TZ)
            hour = 7 + int(r.triangular(0, 11, 2.5))
            performed = local.replace(
                hour=hour, minute=r.randrange(60), second=r.randrange(60), microsecond=0
            ).astimezone(UTC)
            patient_index = self.directory.first_index + min(
                int(n_patients * r.random() ** 1.6), n_patients - 1
            )
            profile = self.directory.profile(patient_index)
            inst = self._institution_for(r, profile.city)
            code = self._item_for(r, inst, profile.sex)
            if code is None:
                inst = self._all[0]
                code = self._item_for(r, inst, profile.sex) or next(iter(self.items))
            yield self._one(r, rid, profile, inst, code, performed)

    # The patient id of index k is patient_first_id + k; set by ``run`` before iterating.
    patient_first_id: int = 1

    def _one(
        self,
        r: random.Random,
        rid: int,
        profile: PatientProfile,
        inst: str,
        code: str,
        performed: datetime,
    ) -> tuple[list[Row], list[Row], list[Row]]:
        item = self.items[code]
        cat = item.category
        if cat is Category.LAB:
            issued = performed + timedelta(minutes=r.randrange(40, 360))
            dept = "检验科"
            prefix = "JY"
        elif cat is Category.IMAGING:
            issued = performed + timedelta(minutes=r.randrange(30, 2880))
            dept = "放射科"
            prefix = "YX"
        else:
            issued = performed + timedelta(minutes=r.randrange(10, 240))
            dept = "心电图室" if item.modality == "ECG" else "超声医学科"
            prefix = "QT"
        if issued > self.cfg.until:
            issued = self.cfg.until
        local_code, local_name = self.world.local_codes.get((inst, code), (code, item.name))
        mapped = self.catalog.unified_code(inst, local_code)
        item_code = mapped if mapped == code else None
        mark_scope, mark_symbol = self._mark(inst, code, issued) if item_code else (None, None)
        doctors = self._doctors[inst]
        performer, signer = r.choice(doctors), r.choice(doctors)
        findings = conclusion = ""
        obs: list[_Obs] = []
        remark = ""
        if cat is Category.LAB:
            obs, remark = _commented(
                self._comments, [_lab_value(r, a) for a in self.ref.analytes.get(code, ())]
            )
            abnormal = [o for o in obs if o.flag not in ("", "N")]
            findings = "；".join(
                f"{o.name} {o.value_text if o.value_num is None else number_text(o.value_num)}{o.unit}"
                for o in obs[:6]
            )
            conclusion = "异常项目: " + "、".join(o.name for o in abnormal) if abnormal else ""
        else:
            group = self.ref.body_part_findings.get(item.body_part, "OTHER")
            options = self.ref.findings.get(group) or self.ref.findings.get("OTHER") or (("", ""),)
            findings, conclusion = options[0] if r.random() < 0.55 else r.choice(options)
        pid = self.patient_first_id + profile.index - self.directory.first_index
        report_no = f"{prefix}{performed.astimezone(CHINA_TZ):%Y%m%d}{rid:09d}"
        accession = f"A{rid:010d}" if cat is not Category.LAB else ""
        study_uid = (
            f"1.2.826.0.1.3680043.10.1453.{self.cfg.seed}.{rid}" if cat is Category.IMAGING else ""
        )
        roll = r.random()
        statuses = [ResultStatus.FINAL]
        reason = ""
        if roll < 0.015:
            statuses.append(ResultStatus.CORRECTED)
            reason = "报告更正: 数值或描述录入有误"
        elif roll < 0.02:
            statuses.append(ResultStatus.AMENDED)
            reason = "报告修订: 补充描述"
        elif roll < 0.025:
            statuses.append(ResultStatus.ENTERED_IN_ERROR)
            reason = "录入错误: 患者信息与报告不符，已作废"
        version = len(statuses)
        status = statuses[-1]
        content = f"{inst}|{report_no}|{local_code}|{status}|{findings}|{conclusion}|{[o.value_num for o in obs]}"
        content_hash = hashlib.sha256(content.encode()).hexdigest()
        updated = (
            issued
            if version == 1
            else min(issued + timedelta(hours=r.randrange(2, 72)), self.cfg.until)
        )
        row: Row = (
            rid, pid, inst, dept, report_no, local_code, local_name, item_code, cat.value, status.value,
            performed, issued, performer, signer, findings, conclusion, accession, study_uid,
            mark_scope, mark_symbol, version, content_hash, None, updated, remark,
        )  # fmt: skip
        versions: list[Row] = []
        for v, st in enumerate(statuses, start=1):
            v_obs = obs
            v_findings = findings
            if (
                v < version
                and st is ResultStatus.FINAL
                and obs
                and statuses[-1] is ResultStatus.CORRECTED
            ):
                first = obs[0]
                if first.value_num is not None:
                    v_obs = [
                        replace(first, value_num=round(first.value_num * 1.1 + 1, 2)),
                        *obs[1:],
                    ]
            snapshot = {
                "patient_id": pid,
                "institution": inst,
                "department": dept,
                "report_no": report_no,
                "local_code": local_code,
                "local_name": local_name,
                "item_code": item_code,
                "category": cat.value,
                "status": st.value,
                "performed_at": performed.isoformat(),
                "issued_at": issued.isoformat(),
                "performer": performer,
                "signer": signer,
                "findings": v_findings,
                "conclusion": conclusion,
                "accession_number": accession,
                "study_uid": study_uid,
                "mark_scope": mark_scope,
                "mark_symbol": mark_symbol,
                "observations": [o.json() for o in v_obs],
            }
            if remark:
                snapshot["comment"] = remark
            versions.append(
                (
                    rid,
                    v,
                    st.value,
                    issued if v == 1 else updated,
                    "" if v == 1 else reason,
                    snapshot,
                )
            )
        obs_rows: list[Row] = [
            (
                rid,
                seq,
                o.code,
                o.loinc,
                o.name,
                o.value_type,
                o.value_num,
                o.value_text,
                o.unit,
                o.ref_low,
                o.ref_high,
                o.ref_text,
                o.flag,
                o.comment,
            )
            for seq, o in enumerate(obs, start=1)
        ]
        return [row], versions, obs_rows


# ---------------------------------------------------------------- running it
class SynthSink(Protocol):
    """Where the generated world goes (``huren.adapters.db.bulk.BulkSink``)."""

    def write_master(self, world: SynthWorld, now: datetime) -> None:
        """Master data of the world, in one transaction."""
        ...

    def next_id(self, table: str) -> int:
        """The first free id of ``patient`` / ``result``."""
        ...

    def write(self, batch: Batch) -> None:
        """One batch of rows, in foreign-key order, in one transaction."""
        ...

    def finish(self) -> None:
        """Called once after the last batch (sequence repair, ANALYZE …)."""
        ...


@dataclass(frozen=True, slots=True)
class SynthReport:
    institutions: int
    alliances: int
    qualifications: int
    code_maps: int
    patients: int
    results: int
    observations: int
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"机构 {self.institutions}，医联体 {self.alliances}，资质 {self.qualifications}，"
            f"对码 {self.code_maps}，患者 {self.patients}，结果 {self.results}，"
            f"检验明细 {self.observations}；共 {self.rows} 行，用时 {self.seconds:.1f} 秒，"
            f"{self.rows_per_second:,.0f} 行/秒"
        )


def run_synth(
    ref: ReferenceData,
    cfg: SynthConfig,
    vault: IdentifierVault,
    sink: SynthSink,
    *,
    timer: Callable[[], float],
    progress: Callable[[int], None] | None = None,
    master: bool = True,
) -> SynthReport:
    """Generate the world of ``cfg`` and hand it to ``sink`` in batches. ``progress`` is
    called with the number of results written since the last call. ``master=False``
    adds patients and results to a database that already holds this world's master data."""
    t0 = timer()
    world = generate_world(ref, cfg)
    if master:
        sink.write_master(world, cfg.until)
    first_patient = sink.next_id("patient")
    directory = PatientDirectory(
        cfg.seed, cfg.patient_count, world, ref, cfg.until.date(), first_index=first_patient - 1
    )
    first_result = sink.next_id("result")
    rows = 0
    n_obs = 0
    created = cfg.start
    batch = Batch()
    for p in generate_patients(directory, first_patient):
        prow, idents = patient_rows(p, vault, created)
        batch.patients.append(prow)
        batch.identifiers.extend(idents)
        if len(batch.patients) >= cfg.batch_size * 2:
            rows += batch.rows
            sink.write(batch)
            batch = Batch()
    gen = ResultGenerator(world, ref, cfg, directory)
    gen.patient_first_id = first_patient
    pending = 0
    for res, versions, obs in gen.results(first_result):
        batch.results.extend(res)
        batch.versions.extend(versions)
        batch.observations.extend(obs)
        n_obs += len(obs)
        pending += 1
        if pending >= cfg.batch_size:
            rows += batch.rows
            sink.write(batch)
            batch = Batch()
            if progress:
                progress(pending)
            pending = 0
    rows += batch.rows
    sink.write(batch)
    if progress and pending:
        progress(pending)
    sink.finish()
    rec = world.records
    master_rows = (
        len(rec.scopes) + len(rec.institutions) + len(rec.items) + len(rec.qualifications) + len(rec.code_maps)
        + len(world.departments)
    )  # fmt: skip
    return SynthReport(
        institutions=len(rec.institutions),
        alliances=len(world.alliance_leads),
        qualifications=len(rec.qualifications),
        code_maps=len(rec.code_maps),
        patients=directory.count,
        results=cfg.results,
        observations=n_obs,
        rows=rows + master_rows,
        seconds=timer() - t0,
    )


def demo_config(
    until: datetime, *, seed: int = 20260615, institutions: int = 300, results: int = 30_000
) -> SynthConfig:
    """The demo's world: a few hundred institutions and tens of thousands of results."""
    return SynthConfig(seed=seed, results=results, until=until, institutions=institutions)


def build_demo_world(
    ref: ReferenceData,
    vault: IdentifierVault,
    sink: SynthSink,
    until: datetime,
    *,
    timer: Callable[[], float],
    seed: int = 20260615,
    institutions: int = 300,
    results: int = 30_000,
    progress: Callable[[int], None] | None = None,
) -> SynthReport:
    """Fill a fresh, migrated database with the demo world (``huren demo``)."""
    return run_synth(
        ref,
        demo_config(until, seed=seed, institutions=institutions, results=results),
        vault,
        sink,
        timer=timer,
        progress=progress,
    )


# ---------------------------------------------------------------- point-of-care activity
# The synthetic history of the point of care (R5) and what monitoring (R9) counts from it:
# reminders shown while clinicians ordered, and their decisions. Generated from the results
# already written (read back patient by patient through ``SynthHistory``), so that every
# reminder's counts are those the recognition rules give for the priors that existed then.
#
# Two kinds of order are derived from a patient's history of one item:
# - a *repeat*: a stored result was ordered at its institution shortly before it was
#   performed. If the patient had prior results of the item then, the clinician saw a
#   reminder; with a recognizable prior the test was still repeated, so the reminder was
#   declined with a reason, or ignored (no decision: monitoring then finds the repeat from
#   the results alone). Orders at institutions not yet connected, or outside the hook,
#   leave no reminder at all.
# - a *follow-up*: a later order of the same item at the same or another institution
#   inside the time limit, where the clinician could accept the prior instead of repeating
#   the test (互认: no new result). Each clinician keeps to a target share of accepted
#   reminders (a quota over time, so that ratios hold at any size); a follow-up beyond it is
#   declined or left without a decision.


@dataclass(frozen=True, slots=True)
class HistoryVersion:
    version: int
    status: ResultStatus
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """A stored result of a mapped item, as the activity generator reads it back, with its
    versions (oldest first) so that the version in force at any moment is known."""

    id: int
    patient_id: int
    institution: str
    item_code: str
    category: Category
    report_no: str
    local_code: str
    local_name: str
    department: str
    performed_at: datetime
    issued_at: datetime
    mark_scope: str | None
    mark_symbol: str | None
    versions: tuple[HistoryVersion, ...]

    def version_at(self, at: datetime) -> HistoryVersion | None:
        """The version a reader saw at ``at``; None before the result arrived."""
        found = None
        for v in self.versions:
            if v.recorded_at > at:
                break
            found = v
        return found

    def stored(self, v: HistoryVersion) -> StoredResult:
        return StoredResult(
            id=self.id,
            patient_id=self.patient_id,
            institution=self.institution,
            report_no=self.report_no,
            local_code=self.local_code,
            local_name=self.local_name,
            item_code=self.item_code,
            category=self.category,
            status=v.status,
            performed_at=self.performed_at,
            issued_at=self.issued_at,
            version=v.version,
            mark_scope=self.mark_scope,
            mark_symbol=self.mark_symbol,
            department=self.department,
        )


class SynthHistory(Protocol):
    """Reads back what was generated (``huren.adapters.db.bulk.SqlSynthHistory``)."""

    def patient_span(self) -> tuple[int, int]:
        """The lowest and highest patient id; (1, 0) when there are none."""
        ...

    def results_of_patients(self, first: int, last: int) -> list[HistoryResult]:
        """Results with a unified item code of patients ``first..last``, ordered by
        patient, item and performed time."""
        ...

    def snapshots(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        """The ``result_version.snapshot`` of each (result id, version)."""
        ...


@dataclass(frozen=True, slots=True)
class ActivityConfig:
    seed: int
    until: datetime
    days: int = 730
    patients_per_batch: int = 5_000  # patients whose results are read back at once
    rows_per_write: int = 5_000  # reminders per write (with their decisions)
    follow_up_rate: float = 1.2  # follow-up orders per stored result (before the rules)
    plant_outliers: bool = True

    @classmethod
    def of(cls, cfg: SynthConfig, **kw: Any) -> ActivityConfig:
        return cls(seed=cfg.seed, until=cfg.until, days=cfg.days, **kw)

    @property
    def start(self) -> datetime:
        return self.until - timedelta(days=self.days)

    @property
    def latest(self) -> datetime:
        # Everything generated lies well before ``until`` so that monitoring, which only
        # counts rows older than its settle time, takes all of it at once.
        return self.until - timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class DecisionStyle:
    """How a clinician answers reminders that propose a recognizable prior."""

    accept: float  # share of such reminders accepted (the 互认比例 aimed at)
    decline_repeat: float  # test repeated anyway: share with a recorded decline (rest ignored)
    decline_follow_up: float  # follow-up beyond the quota: share declined (rest ignored)
    reason_weight: Mapping[str, float] = field(default_factory=dict)  # × the usual weight
    free_texts: tuple[str, ...] = ()  # for 其他情形 (free text required); default texts if ()


# How often each negative-list reason is chosen, by code, before department effects.
# 冀卫医政函〔2025〕7号 二(四) (HB, also 甘 and the national list) and 沪卫医〔2024〕135号 四(五) (SH).
DECLINE_REASON_WEIGHTS: Mapping[str, float] = {
    "HB-1": 30, "HB-2": 22, "HB-3": 18, "HB-4": 13, "HB-5": 2, "HB-6": 12,
    "SH-1": 22, "SH-2": 14, "SH-3": 14, "SH-4": 9, "SH-5": 10, "SH-6": 12, "SH-7": 11,
    "SH-8": 2, "SH-9": 4, "SH-10": 2,
}  # fmt: skip
EMERGENCY_REASONS = frozenset({"HB-4", "SH-4"})  # 急诊、急救等紧急状态
MAJOR_TREATMENT_REASONS = frozenset({"HB-3", "SH-3"})  # 手术、输血等重大医疗措施前
SURGICAL_DEPARTMENTS = frozenset({"普通外科", "骨科", "妇产科"})

# What clinicians write for 其他情形确需复查的 (the reason requires free text).
OTHER_REASON_TEXTS = (
    "外院报告单信息不全，无法核对检查条件",
    "近期调整用药，需复查评估疗效",
    "需与本院既往结果动态对比",
    "拟行介入治疗，需本院近期结果",
    "患者症状与外院结果不符，需再次确认",
    "参加临床研究，方案要求本中心检测",
)
# The planted clinician who declines nearly everything with 其他情形.
HABITUAL_RETEST_TEXTS = (
    "本科室要求以本院结果为准",
    "本院复查",
    "按科室常规复查",
    "外院结果仅供参考，本院复查",
)

# Clinical departments' share of orders, and items they order more often than others.
DEPARTMENT_WEIGHTS: Mapping[str, float] = {
    "心血管内科": 1.3,
    "呼吸与危重症医学科": 1.1,
    "消化内科": 1.0,
    "神经内科": 0.9,
    "内分泌科": 0.9,
    "普通外科": 0.8,
    "骨科": 0.7,
    "妇产科": 0.5,
    "儿科": 0.3,
    "急诊科": 1.4,
}
DEPARTMENT_AFFINITY: Sequence[tuple[str, tuple[str, ...]]] = (
    ("心血管内科", ("心电", "心肌", "血脂", "脑钠肽", "心脏", "冠状动脉")),
    ("呼吸与危重症医学科", ("胸部", "肺", "血气")),
    ("消化内科", ("肝", "腹部", "消化道", "上腹", "胃")),
    ("神经内科", ("头颅", "颅脑", "颈椎", "头部")),
    ("内分泌科", ("糖", "甲状腺", "胰岛素")),
    ("骨科", ("关节", "腰椎", "膝", "骨")),
    ("妇产科", ("乳腺", "妇科", "子宫", "盆腔", "孕")),
)
CHANNEL_LABELS: Mapping[str, str] = {
    "cds-hooks": "CDS Hooks",
    "rest": "REST",
    "workbench": "工作台",
}


@dataclass(frozen=True, slots=True)
class Clinician:
    id: str  # as the channel records it: the HIS staff number, Practitioner/<id> over CDS Hooks
    department: str
    style: DecisionStyle


@dataclass(frozen=True, slots=True)
class PlantedOutlier:
    kind: str  # institution | clinician
    institution: str
    clinician: str
    description: str


@dataclass
class _PointOfCare:
    """An institution as an orderer: when it was connected, how, and who orders there."""

    code: str
    channel: str
    connected_from: datetime | None  # None: never connected to the reminder
    departments: list[tuple[str, list[Clinician], list[float]]]  # name, clinicians, cum weights


@dataclass(slots=True)
class _Order:
    at: datetime
    kind: str  # repeat | follow_up
    patient_id: int
    institution: str
    item: Item
    local_code: str
    clinician: Clinician
    candidates: int
    recognizable: int
    best: StoredResult | None  # the best recognizable prior
    roll: float  # the patient's draw for the outcome
    reason_roll: float
    text_roll: float
    inpatient: bool
    request_id: str
    decided_after: timedelta
    outcome: str = ""  # accepted | declined | ignored


@dataclass(frozen=True, slots=True)
class ActivityReport:
    reminders: int
    decisions: int
    accepted: int
    declined: int
    saved_fen: int
    planted: tuple[PlantedOutlier, ...]
    seconds: float

    def summary(self) -> str:
        lines = [
            f"互认提醒 {self.reminders}，互认决定 {self.decisions}（接受 {self.accepted}，"
            f"不予互认 {self.declined}），节约费用 {self.saved_fen / 100:,.2f} 元；"
            f"用时 {self.seconds:.1f} 秒"
        ]
        lines += [f"  预置异常: {p.description}" for p in self.planted]
        return "\n".join(lines)


def _normal_style(r: random.Random) -> DecisionStyle:
    return DecisionStyle(
        accept=r.uniform(0.76, 0.88),
        decline_repeat=r.uniform(0.6, 0.85),
        decline_follow_up=r.uniform(0.3, 0.5),
    )


class ActivityGenerator:
    """Reminders and decisions for the stored history of a synthetic world. Pure: reads
    ``HistoryResult`` lists, returns rows; deterministic for the seed and configuration."""

    def __init__(
        self,
        world: SynthWorld,
        cfg: ActivityConfig,
        explanations: Mapping[str, Explanation],
    ) -> None:
        self.world = world
        self.cfg = cfg
        self.explanations = dict(explanations)
        self.catalog = Catalog.build(world.records, cfg.until)
        self.items = self.catalog.items
        self.planted: list[PlantedOutlier] = []
        # (institution, clinician) → [recognizable reminders shown, accepted]
        self._quota: dict[tuple[str, str], list[float]] = {}
        self._dept_weights: dict[tuple[str, str], list[float]] = {}
        self._exclusions: dict[tuple[str, str], list[ItemExclusion]] = {}
        self._capitals: dict[str, list[str]] = {}
        r = random.Random(f"activity-world:{cfg.seed}")
        self.points: dict[str, _PointOfCare] = {}
        clinical = {name for _, name in CLINICAL_DEPARTMENTS}
        depts: dict[str, list[Department]] = {}
        for d in world.departments:
            if d.name in clinical:
                depts.setdefault(d.institution, []).append(d)
        for inst in sorted(world.records.institutions, key=lambda i: i.code):
            self.points[inst.code] = self._point_of_care(r, inst, depts.get(inst.code, []))
        for prov, codes in world.institutions_by_province.items():
            tertiary = [
                c for c in codes if self.catalog.institutions[c].level is InstitutionLevel.TERTIARY
            ]
            self._capitals[prov] = sorted(tertiary or codes)
        if cfg.plant_outliers:
            self._plant()

    # -- the institutions as orderers
    def _point_of_care(
        self, r: random.Random, inst: Institution, depts: Sequence[Department]
    ) -> _PointOfCare:
        level = inst.level
        start = self.cfg.start
        # Connection to the reminder rolls out over the history: tertiary hospitals first
        # (冀卫医政函〔2025〕7号: 嵌入医院信息系统), county hospitals and 卫生院 later, some never.
        connected: datetime | None
        if level is InstitutionLevel.TERTIARY:
            connected = start + timedelta(days=r.uniform(0, 45))
        elif level is InstitutionLevel.SECONDARY:
            connected = start + timedelta(days=r.uniform(30, 240)) if r.random() < 0.92 else None
        else:
            connected = start + timedelta(days=r.uniform(120, 480)) if r.random() < 0.75 else None
        if level in (InstitutionLevel.TERTIARY, InstitutionLevel.SECONDARY):
            channel = "cds-hooks" if r.random() < 0.7 else "rest"
        else:
            channel = "workbench" if r.random() < 0.6 else "rest"
        style = _normal_style(r)
        per_dept = {InstitutionLevel.TERTIARY: (2, 4), InstitutionLevel.SECONDARY: (1, 3)}.get(
            level, (1, 2)
        )
        departments = []
        for d in depts:
            clinicians, cum, total = [], [], 0.0
            for n in range(r.randint(*per_dept)):
                staff = f"{d.code}{n + 1:03d}"
                cid = f"Practitioner/{staff}" if channel == "cds-hooks" else staff
                c_style = replace(
                    style, accept=min(0.97, max(0.05, style.accept + r.uniform(-0.04, 0.04)))
                )
                clinicians.append(Clinician(cid, d.name, c_style))
                total += 1 / (n + 1)  # a few clinicians order most
                cum.append(total)
            departments.append((d.name, clinicians, cum))
        return _PointOfCare(inst.code, channel, connected, departments)

    def _plant(self) -> None:
        """Outliers the dashboard should find: in every province with enough tertiary
        hospitals to compare, one that accepts far less than its peers; and in the largest
        province, one clinician who declines nearly everything with 其他情形."""
        cat = self.catalog
        by_province: dict[str, list[str]] = {}
        for code, inst in cat.institutions.items():
            if inst.level is InstitutionLevel.TERTIARY and self.points[code].departments:
                by_province.setdefault(cat.province_of(code), []).append(code)
        # Enough peers to compare once one of them is planted (domain.monitoring.MIN_PEERS).
        large = sorted(p for p, codes in by_province.items() if len(codes) > MIN_PEERS)
        names = {c: s.name for c, s in cat.graph.scopes.items()}
        low_accept = DecisionStyle(
            accept=0.3,
            decline_repeat=0.92,
            decline_follow_up=0.8,
            reason_weight={"HB-1": 2.5, "HB-6": 2.0, "SH-5": 3.0, "SH-7": 2.5},
        )
        chosen: set[str] = set()
        for prov in large:
            codes = sorted(by_province[prov])
            # Among the hospitals of the provincial capital, the last by code (the demo
            # story prefers the first).
            capital_city = self._capital_city(prov)
            capital = [c for c in codes if cat.institutions[c].jurisdiction == capital_city]
            pick = (capital or codes)[-1]
            self._restyle_institution(pick, low_accept)
            chosen.add(pick)
            self.planted.append(
                PlantedOutlier(
                    "institution",
                    pick,
                    "",
                    f"{cat.institutions[pick].name}（{names.get(prov, prov)}三级医院）互认比例约 30%，明显低于同组",
                )
            )
        if not large:
            return
        prov = max(large, key=lambda p: (len(by_province[p]), p))
        hosts = [c for c in sorted(by_province[prov]) if c not in chosen]
        if not hosts:
            return
        host = self.points[hosts[0]]
        name, clinicians, _cum = max(
            host.departments, key=lambda d: (DEPARTMENT_WEIGHTS.get(d[0], 0.5), d[0])
        )
        first = clinicians[0]
        habitual = DecisionStyle(
            accept=0.03,
            decline_repeat=1.0,
            decline_follow_up=0.97,
            reason_weight={"HB-6": 400.0, "SH-9": 400.0},
            free_texts=HABITUAL_RETEST_TEXTS,
        )
        clinicians[0] = Clinician(first.id, first.department, habitual)
        self.planted.append(
            PlantedOutlier(
                "clinician",
                host.code,
                first.id,
                f"{cat.institutions[host.code].name}{name}医师 {first.id} 几乎全部以“其他情形确需复查”不予互认",
            )
        )

    def _capital_city(self, province: str) -> str:
        codes = self.world.institutions_by_province.get(province, [])
        tertiary = [
            c for c in codes if self.catalog.institutions[c].level is InstitutionLevel.TERTIARY
        ]
        # generate_world puts half of a province's tertiary hospitals in its first city
        cities = [self.world.city_of[c] for c in tertiary]
        return max(sorted(set(cities)), key=cities.count) if cities else ""

    def _restyle_institution(self, code: str, style: DecisionStyle) -> None:
        point = self.points[code]
        point.departments = [
            (name, [Clinician(c.id, c.department, style) for c in cs], cum)
            for name, cs, cum in point.departments
        ]

    # -- orders
    def _clinician(self, r: random.Random, point: _PointOfCare, item: Item) -> Clinician:
        key = (point.code, item.code)
        cum = self._dept_weights.get(key)
        if cum is None:
            cum, total = [], 0.0
            text = f"{item.name}{item.body_part}{item.group}"
            for name, _cs, _w in point.departments:
                w = DEPARTMENT_WEIGHTS.get(name, 0.5)
                for dept, words in DEPARTMENT_AFFINITY:
                    if dept == name and any(word in text for word in words):
                        w *= 4
                total += w
                cum.append(total)
            self._dept_weights[key] = cum
        name, clinicians, ccum = point.departments[_pick(cum, r.random() * cum[-1])]
        return clinicians[_pick(ccum, r.random() * ccum[-1])]

    def _exclusions_for(self, item: Item, institution: str) -> list[ItemExclusion]:
        province = self.catalog.province_of(institution)
        key = (item.code, province)
        got = self._exclusions.get(key)
        if got is None:
            got = exclusions_in_force(item, (province, "NATIONAL"), self.catalog.exclusions)
            self._exclusions[key] = got
        return got

    def _recognition(
        self, item: Item, history: Sequence[HistoryResult], institution: str, at: datetime
    ) -> ItemRecognition | None:
        """What the reminder showed at ``at``: the newest priors then stored (as
        ``RecognitionService.check`` reads them), assessed by the domain rules. Imaging
        studies count as not known (the synthetic world holds no DICOM)."""
        priors: list[PriorResult] = []
        for h in reversed(history):  # newest first
            if h.issued_at > at:
                continue
            v = h.version_at(at)
            if v is None:
                continue
            priors.append(PriorResult(h.stored(v), UNKNOWN_STUDY))
            if len(priors) >= PRIORS_PER_ITEM:
                break
        if not priors:
            return None
        return recognizable_priors(
            item,
            institution,
            at,
            priors,
            self.catalog.graph,
            self._exclusions_for(item, institution),
        )

    def _order(
        self,
        r: random.Random,
        kind: str,
        history: Sequence[HistoryResult],
        point: _PointOfCare,
        item: Item,
        local_code: str,
        at: datetime,
    ) -> _Order | None:
        rec = self._recognition(item, history, point.code, at)
        if rec is None:
            return None
        clinician = self._clinician(r, point, item)
        best = rec.candidates[0].result if rec.candidates else None
        return _Order(
            at=at,
            kind=kind,
            patient_id=history[0].patient_id,
            institution=point.code,
            item=item,
            local_code=local_code,
            clinician=clinician,
            candidates=len(rec.all()),
            recognizable=len(rec.candidates),
            best=best,
            roll=r.random(),
            reason_roll=r.random(),
            text_roll=r.random(),
            inpatient=clinician.department != "急诊科" and r.random() < 0.35,
            request_id=str(uuid.UUID(int=r.getrandbits(128), version=4)),
            decided_after=timedelta(seconds=r.uniform(20, 480)),
        )

    def _connected(self, point: _PointOfCare, at: datetime) -> bool:
        return (
            bool(point.departments)
            and point.connected_from is not None
            and at >= point.connected_from
        )

    def orders_of(self, history: Sequence[HistoryResult]) -> list[_Order]:
        """The orders of one patient for one item (``history`` oldest first)."""
        first = history[0]
        r = random.Random(f"activity:{self.cfg.seed}:{first.patient_id}:{first.item_code}")
        item = self.items[first.item_code]
        orders: list[_Order] = []
        latest = self.cfg.latest
        for h in history:
            # The order behind a stored result, shortly before it was performed.
            if item.category is Category.IMAGING:
                lead = timedelta(minutes=r.uniform(30, 3 * 24 * 60))
            else:
                lead = timedelta(minutes=r.uniform(10, 180))
            at = h.performed_at - lead
            point = self.points[h.institution]
            bypass = r.random() < 0.03  # ordered outside the hook (paper, another screen)
            if self._connected(point, at) and not bypass and at <= latest:
                order = self._order(r, "repeat", history, point, item, h.local_code, at)
                if order is not None:
                    orders.append(order)
            # Follow-up orders inside the time limit.
            rate = self.cfg.follow_up_rate
            n = int(rate) + (r.random() < rate - int(rate))
            for _ in range(n if h.mark_scope is not None else 0):
                follow = self._follow_up(r, h, item, history)
                if follow is not None:
                    orders.append(follow)
        return orders

    def _follow_up(
        self, r: random.Random, h: HistoryResult, item: Item, history: Sequence[HistoryResult]
    ) -> _Order | None:
        limit = item.time_limit
        span = limit * (r.uniform(0.03, 0.9) ** 1.3)
        at = h.issued_at + max(span, timedelta(minutes=40))
        if limit >= timedelta(days=2):  # days away: an order in working hours (北京时间)
            local = at.astimezone(CHINA_TZ)
            at = local.replace(
                hour=8 + int(r.triangular(0, 10, 1.5)), minute=r.randrange(60)
            ).astimezone(UTC)
        if at <= h.issued_at + timedelta(minutes=20) or at > self.cfg.latest:
            return None
        roll = r.random()
        if roll < 0.15:
            where = h.institution
        elif roll < 0.65:
            where = r.choice(self.world.institutions_by_city[self.world.city_of[h.institution]])
        else:
            prov = self.catalog.province_of(h.institution)
            where = r.choice(self._capitals.get(prov) or [h.institution])
        point = self.points[where]
        if not self._connected(point, at) or h.mark_scope is None:
            return None
        if not self.catalog.graph.contains(h.mark_scope, where):
            return None  # not proposed there: the test is simply done again (not modelled)
        local = self.world.local_codes.get((where, item.code))
        if local is None or self.catalog.unified_code(where, local[0]) != item.code:
            return None  # not performed there, or not mapped (对码): no reminder about it
        order = self._order(r, "follow_up", history, point, item, local[0], at)
        if order is None or order.best is None:
            return None
        return order

    # -- outcomes
    def decide(self, orders: Sequence[_Order]) -> None:
        """Set each order's outcome, in time order. A clinician's accepted share of
        recognizable reminders follows the style's target (rising a little over the history
        as the reminder becomes familiar); the quota carries over from batch to batch."""
        start = self.cfg.start
        days = self.cfg.days
        for o in sorted(orders, key=_order_key):
            if o.best is None:
                continue
            style = o.clinician.style
            q = self._quota.setdefault((o.institution, o.clinician.id), [0.0, 0.0])
            q[0] += 1
            if o.kind == "repeat":
                o.outcome = "declined" if o.roll < style.decline_repeat else "ignored"
                continue
            progress = min(1.0, max(0.0, (o.at - start).total_seconds() / (days * 86400)))
            target = style.accept - 0.08 * (1 - progress)
            if q[1] + 1 <= target * q[0] + 0.5:
                q[1] += 1
                o.outcome = "accepted"
            else:
                o.outcome = "declined" if o.roll < style.decline_follow_up else "ignored"

    def reason(self, o: _Order) -> tuple[NegativeReason, str]:
        """A negative-list reason of the ordering institution's jurisdiction, weighted by
        how often it is used and by the department, with the free text where required."""
        reasons = self.catalog.reasons_for(o.institution)
        style = o.clinician.style
        weights, total = [], 0.0
        for reason in reasons:
            if reason.imaging_only and o.item.category is not Category.IMAGING:
                weights.append(total)
                continue
            w = DECLINE_REASON_WEIGHTS.get(reason.code, 1.0)
            if reason.code in EMERGENCY_REASONS:
                w *= 6 if o.clinician.department == "急诊科" else 0.5
            if (
                reason.code in MAJOR_TREATMENT_REASONS
                and o.clinician.department in SURGICAL_DEPARTMENTS
            ):
                w *= 3
            w *= style.reason_weight.get(reason.code, 1.0)
            total += w
            weights.append(total)
        chosen = reasons[_pick(weights, o.reason_roll * total)]
        text = ""
        if chosen.requires_free_text:
            texts = style.free_texts or OTHER_REASON_TEXTS
            text = texts[int(o.text_roll * len(texts)) % len(texts)]
        # The same check the service makes (imaging-only reasons, free text required).
        return choose_reason(reasons, chosen.code, o.item, text), text


def _order_key(o: _Order) -> tuple[datetime, int, str, str]:
    return (o.at, o.patient_id, o.item.code, o.request_id)


_ACTION = DECISION_COLUMNS.index("action")
_SAVED = DECISION_COLUMNS.index("saved_fen")


def _pick(cum: Sequence[float], x: float) -> int:
    """Index of the first cumulative weight above ``x``."""
    lo, hi = 0, len(cum) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _observations(snapshot: Mapping[str, Any]) -> tuple[ObservationValue, ...]:
    return tuple(
        ObservationValue(
            code=o.get("code", ""),
            name=o.get("name", ""),
            value_type=ValueType(o.get("value_type", "ST")),
            value_num=o.get("value_num"),
            value_text=o.get("value_text", ""),
            unit=o.get("unit", ""),
            ref_low=o.get("ref_low"),
            ref_high=o.get("ref_high"),
            ref_text=o.get("ref_text", ""),
            flag=o.get("flag", ""),
            loinc=o.get("loinc", ""),
            comment=o.get("comment", ""),
        )
        for o in snapshot.get("observations", ())
    )


def activity_rows(
    gen: ActivityGenerator,
    orders: Sequence[_Order],
    snapshots: Callable[[Sequence[tuple[int, int]]], Mapping[tuple[int, int], Any]],
    first_reminder: int,
    first_decision: int,
) -> tuple[list[Row], list[Row]]:
    """Reminder and decision rows for decided orders, ids from the given firsts, in time
    order; the texts as ``RecognitionService.decide`` builds them (EMR text from the result
    as it stood then, patient explanation from the reason)."""
    cat = gen.catalog
    ordered = sorted(orders, key=_order_key)
    accepted = {(o.best.id, o.best.version) for o in ordered if o.outcome == "accepted" and o.best}
    snaps = snapshots(sorted(accepted)) if accepted else {}
    reminders: list[Row] = []
    decisions: list[tuple[datetime, Row]] = []
    for n, o in enumerate(ordered):
        rid = first_reminder + n
        point = gen.points[o.institution]
        reminders.append(
            (
                rid, o.at, point.channel, o.institution, o.clinician.department, o.clinician.id,
                o.patient_id, o.item.code, o.local_code, o.candidates,
                o.recognizable, o.request_id,
            )
        )  # fmt: skip
        if o.best is None or o.outcome not in ("accepted", "declined"):
            continue
        best = o.best
        at = min(o.at + o.decided_after, gen.cfg.latest)
        prior_inst = cat.institutions.get(best.institution)
        prior_name = prior_inst.name if prior_inst else best.institution
        reason_code = reason_text = text = explanation = ""
        if o.outcome == "accepted":
            snap = snaps.get((best.id, best.version), {})
            shown = replace(
                best, findings=snap.get("findings", ""), observations=_observations(snap)
            )
            text = emr_text(ReportForRecord.of(shown, o.item, prior_name), inpatient=o.inpatient)
            action = Action.ACCEPTED
        else:
            reason, free = gen.reason(o)
            reason_code = reason.code
            reason_text = reason.text + (f"：{free}" if free else "")
            explanation = patient_explanation(
                reason, o.item, gen.explanations, free_text=free, prior_institution=prior_name
            )
            action = Action.DECLINED
        decisions.append(
            (
                at,
                (
                    rid, at, o.institution, o.clinician.department, o.clinician.id, o.patient_id,
                    o.item.code, best.id, best.version, str(action), reason_code, reason_text,
                    saved_fen(o.item, action), text, explanation, None,
                ),
            )
        )  # fmt: skip
    decisions.sort(key=lambda d: (d[0], d[1][0]))
    return reminders, [(first_decision + n, *row) for n, (_at, row) in enumerate(decisions)]


def run_activity(
    world: SynthWorld,
    cfg: ActivityConfig,
    history: SynthHistory,
    sink: SynthSink,
    *,
    explanations: Mapping[str, Explanation],
    timer: Callable[[], float],
    patients: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ActivityReport:
    """Generate the point-of-care activity of the patients ``patients`` (first, last id;
    default all) from their stored results and hand it to ``sink`` a batch of patients at
    a time. ``progress`` is called with the number of patients done since the last call."""
    t0 = timer()
    gen = ActivityGenerator(world, cfg, explanations)
    first, last = patients if patients is not None else history.patient_span()
    next_reminder = sink.next_id("reminder")
    next_decision = sink.next_id("decision")
    n_reminders = n_accepted = n_declined = saved = 0
    lo = first
    while lo <= last:
        hi = min(last, lo + cfg.patients_per_batch - 1)
        rows = history.results_of_patients(lo, hi)
        orders: list[_Order] = []
        start = 0
        for end in range(1, len(rows) + 1):
            if end == len(rows) or (
                rows[end].patient_id != rows[start].patient_id
                or rows[end].item_code != rows[start].item_code
            ):
                if rows[start].item_code in gen.items:
                    orders.extend(gen.orders_of(rows[start:end]))
                start = end
        gen.decide(orders)
        orders.sort(key=_order_key)
        del rows
        # Rows (with their texts and the snapshots behind them) a slice at a time.
        for n in range(0, len(orders), cfg.rows_per_write):
            reminders, decisions = activity_rows(
                gen,
                orders[n : n + cfg.rows_per_write],
                history.snapshots,
                next_reminder,
                next_decision,
            )
            next_reminder += len(reminders)
            n_reminders += len(reminders)
            next_decision += len(decisions)
            for d in decisions:
                if d[_ACTION] == "accepted":
                    n_accepted += 1
                    saved += d[_SAVED]
                else:
                    n_declined += 1
            sink.write(Batch(reminders=reminders, decisions=decisions))
        if progress:
            progress(hi - lo + 1)
        lo = hi + 1
    sink.finish()
    return ActivityReport(
        reminders=n_reminders,
        decisions=n_accepted + n_declined,
        accepted=n_accepted,
        declined=n_declined,
        saved_fen=saved,
        planted=tuple(gen.planted),
        seconds=timer() - t0,
    )
