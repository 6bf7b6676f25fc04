"""Code tables shipped with HuRen as data files under ``huren/data`` (design: code tables
are data, not ``if`` chains)."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import resources
from typing import Any

from huren.adapters.db.masterdata import quality_from_json
from huren.domain.masterdata import (
    Category,
    Item,
    MarkSymbol,
    NegativeReason,
    Scope,
    ScopeKind,
)
from huren.services.synth import AnalyteSpec, CitySpec, ReferenceData


def load_json(name: str) -> Any:
    return json.loads(resources.files("huren.data").joinpath(name).read_text("utf-8"))


def negative_reasons() -> list[NegativeReason]:
    out: list[NegativeReason] = []
    for lst in load_json("negative_reasons.json")["lists"]:
        for jurisdiction in lst["jurisdictions"]:
            for r in lst["reasons"]:
                out.append(
                    NegativeReason(
                        jurisdiction=jurisdiction,
                        code=r["code"],
                        number=r["number"],
                        text=r["text"],
                        source=lst["source"],
                        imaging_only=r.get("imaging_only", False),
                        requires_free_text=r.get("requires_free_text", False),
                    )
                )
    return out


def mark_symbols() -> list[MarkSymbol]:
    return [
        MarkSymbol(
            scope=s["scope"],
            category=Category(s["category"]) if s["category"] else None,
            symbol=s["symbol"],
            symbol_en=s["symbol_en"],
        )
        for s in load_json("mark_symbols.json")["symbols"]
    ]


# ---------------------------------------------------------------- jurisdictions and items
# jurisdictions.json: provinces with their cities and GB/T 2260 division codes, the regions
# (京津冀, 长三角, 成渝), cross-province agreements and NATIONAL. items.json: the item
# catalogue with analytes (lab) and findings texts (imaging) for the synthetic world.


def scopes() -> list[Scope]:
    """Every jurisdiction and region scope: NATIONAL, provinces, their cities (for the
    直辖市 the districts), regions and agreements. Alliances are not reference data."""
    data = load_json("jurisdictions.json")
    provinces = data["provinces"]
    nat = data["national"]
    out = [
        Scope(
            nat["code"],
            nat["name"],
            ScopeKind.NATIONAL,
            member_scopes=frozenset(p["code"] for p in provinces),
            abbreviation=nat["abbreviation"],
        )
    ]
    for p in provinces:
        out.append(Scope(p["code"], p["name"], ScopeKind.PROVINCE, abbreviation=p["abbreviation"]))
        for c in p["cities"]:
            out.append(Scope(c["code"], c["name"], ScopeKind.CITY, parent=p["code"]))
    for kind, key in ((ScopeKind.REGION, "regions"), (ScopeKind.AGREEMENT, "agreements")):
        for r in data[key]:
            out.append(
                Scope(
                    r["code"],
                    r["name"],
                    kind,
                    member_scopes=frozenset(r["members"]),
                    abbreviation=r["abbreviation"],
                )
            )
    return out


def cities() -> list[CitySpec]:
    """Cities with the 6-digit division codes of their counties (身份证 address prefixes)."""
    return [
        CitySpec(
            code=c["code"],
            name=c["name"],
            province=p["code"],
            division=c["division"],
            counties=tuple((k["division"], k["name"]) for k in c["counties"]),
            fallback_divisions=(
                c["division"],
                c["division"][:4] + "00",
                p["division"],
                *p.get("legacy_divisions", ()),
            ),
        )
        for p in load_json("jurisdictions.json")["provinces"]
        for c in p["cities"]
    ]


def municipalities() -> frozenset[str]:
    """直辖市: provinces whose districts serve as cities."""
    return frozenset(
        p["code"] for p in load_json("jurisdictions.json")["provinces"] if p.get("municipality")
    )


def _item(d: dict[str, Any]) -> Item:
    return Item(
        code=d["code"],
        name=d["name"],
        category=Category(d["category"]),
        time_limit=timedelta(hours=d["time_limit_hours"]),
        price_fen=d["price_fen"],
        group=d.get("group", ""),
        modality=d.get("modality", ""),
        body_part=d.get("body_part", ""),
        specimen=d.get("specimen", ""),
        loinc=d.get("loinc", ""),
        quality=quality_from_json(d.get("quality")),
    )


def items() -> list[Item]:
    """The item catalogue (互认项目目录) shipped as data."""
    return [_item(d) for d in load_json("items.json")["items"]]


def analytes() -> dict[str, tuple[AnalyteSpec, ...]]:
    """Per lab item, the analytes it reports, with units and reference intervals."""
    out: dict[str, tuple[AnalyteSpec, ...]] = {}
    for d in load_json("items.json")["items"]:
        specs = []
        for a in d.get("analytes", ()):
            qualitative = "normal_text" in a
            specs.append(
                AnalyteSpec(
                    code=a["code"],
                    name=a["name"],
                    loinc=a["loinc"],
                    unit=a.get("unit", ""),
                    low=a.get("low"),
                    high=a.get("high"),
                    decimals=a.get("decimals", 0),
                    qualitative=qualitative,
                    normal_text=a.get("normal_text", ""),
                    abnormal_text=a.get("abnormal_text", ""),
                    abnormal_rate=a.get("abnormal_rate", 0.0),
                )
            )
        if specs:
            out[d["code"]] = tuple(specs)
    return out


def synth_reference() -> ReferenceData:
    """Everything the synthetic world generator reads, from the shipped data files."""
    data = load_json("items.json")
    return ReferenceData(
        scopes=tuple(scopes()),
        cities=tuple(cities()),
        municipalities=municipalities(),
        items=tuple(items()),
        analytes=analytes(),
        findings={k: tuple((f, c) for f, c in v) for k, v in data["imaging_findings"].items()},
        body_part_findings=dict(data["body_part_findings"]),
        negative_reasons=tuple(negative_reasons()),
        mark_symbols=tuple(mark_symbols()),
    )
