"""The point-of-care data files under ``huren/data``: minimum retest intervals and the
patient explanations per negative-list reason."""

from __future__ import annotations

from huren.adapters.reference_data import load_json
from huren.domain.decisions import Explanation
from huren.domain.recognition import RetestInterval


def retest_intervals() -> list[RetestInterval]:
    return [
        RetestInterval(
            key=d["key"],
            label=d["label"],
            days=float(d["days"]),
            source=d["source"],
            loinc=frozenset(d.get("loinc", ())),
            item_codes=frozenset(d.get("item_codes", ())),
            keywords=tuple(d.get("keywords", ())),
        )
        for d in load_json("retest_intervals.json")["intervals"]
    ]


def patient_explanations() -> dict[str, Explanation]:
    return {
        code: Explanation(why=e["why"], purpose=e["purpose"])
        for code, e in load_json("patient_explanations.json")["explanations"].items()
    }
