"""Code tables shipped with HuRen as data files under ``huren/data`` (design: code tables
are data, not ``if`` chains)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from huren.domain.masterdata import Category, MarkSymbol, NegativeReason


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
